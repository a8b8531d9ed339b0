//! The narration: numbered step headings, each checked claim with a ✔ or ✘ and its evidence, and
//! the verdict at the end. It also keeps the list of failed claims, which decides the exit status.
//! Colour only when stdout is a terminal, so logs and CI output stay plain text.

use std::path::Path;
use std::process::ExitCode;

/// Prints the story and remembers which claims failed.
pub(crate) struct Narrator {
    color: bool,
    steps: u32,
    failures: Vec<String>,
}

impl Narrator {
    /// A narrator; `color` adds ANSI bold, green and red.
    pub(crate) fn new(color: bool) -> Self {
        Self {
            color,
            steps: 0,
            failures: Vec::new(),
        }
    }

    /// Prints `text` as it is.
    pub(crate) fn say(&self, text: &str) {
        println!("{text}");
    }

    /// Opens the next step, numbered from 1.
    pub(crate) fn step(&mut self, title: &str) {
        self.steps += 1;
        print!("{}", self.heading(title));
    }

    /// Records one checked claim with its evidence (blank evidence lines are left out).
    pub(crate) fn check(&mut self, ok: bool, claim: &str, evidence: &str) {
        print!("{}", self.claim(ok, claim, evidence));
        if !ok {
            self.failures.push(claim.to_string());
        }
    }

    /// Whether every claim so far held.
    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Prints the verdict and returns the exit status: success only if the scenario ran to the
    /// end (`outcome` is Ok) and every claim held. `dir` is the temp dir, kept when `keep`.
    pub(crate) fn report(&self, outcome: Result<(), String>, keep: bool, dir: &Path) -> ExitCode {
        print!("{}", self.verdict(&outcome, keep, dir));
        if outcome.is_ok() && self.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn heading(&self, title: &str) -> String {
        let t = format!("── {}. {title}", self.steps);
        if self.color {
            format!("\n\x1b[1m{t}\x1b[0m\n")
        } else {
            format!("\n{t}\n")
        }
    }

    fn claim(&self, ok: bool, claim: &str, evidence: &str) -> String {
        let (mark, color) = if ok {
            ("✔", "\x1b[32m")
        } else {
            ("✘", "\x1b[31m")
        };
        let mut out = if self.color {
            format!("  {color}{mark}\x1b[0m {claim}\n")
        } else {
            format!("  {mark} {claim}\n")
        };
        for line in evidence.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("      {line}\n"));
        }
        out
    }

    fn verdict(&self, outcome: &Result<(), String>, keep: bool, dir: &Path) -> String {
        if outcome.is_ok() && self.passed() {
            let kept = if keep {
                format!(" Kept {}", dir.display())
            } else {
                String::new()
            };
            return format!("\nAll steps passed.{kept}\n");
        }
        let mut out = String::new();
        if let Err(e) = outcome {
            out.push_str(&format!("\nstopped: {e}\n"));
        }
        for f in &self.failures {
            out.push_str(&format!("failed: {f}\n"));
        }
        out.push_str(&format!(
            "(logs, configs and state kept in {})\n",
            dir.display()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_in_order() {
        let mut n = Narrator::new(false);
        n.step("first");
        assert_eq!(n.heading("second"), "\n── 1. second\n");
        n.step("second");
        assert_eq!(n.heading("third"), "\n── 2. third\n");
    }

    #[test]
    fn a_claim_shows_its_evidence_without_blank_lines() {
        let n = Narrator::new(false);
        assert_eq!(
            n.claim(true, "it works", "one\n\n  \ntwo"),
            "  ✔ it works\n      one\n      two\n"
        );
        assert_eq!(n.claim(false, "no", ""), "  ✘ no\n");
        assert!(Narrator::new(true)
            .claim(false, "no", "")
            .contains("\x1b[31m✘"));
    }

    #[test]
    fn a_failed_claim_fails_the_verdict() {
        let dir = Path::new("/tmp/x");
        let mut n = Narrator::new(false);
        n.check(true, "fine", "");
        assert_eq!(n.verdict(&Ok(()), false, dir), "\nAll steps passed.\n");
        assert_eq!(
            n.verdict(&Ok(()), true, dir),
            "\nAll steps passed. Kept /tmp/x\n"
        );
        n.check(false, "broken", "");
        assert!(!n.passed());
        assert_eq!(
            n.verdict(&Err("interrupted".into()), false, dir),
            "\nstopped: interrupted\nfailed: broken\n(logs, configs and state kept in /tmp/x)\n"
        );
    }
}
