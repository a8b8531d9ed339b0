//! The process supervisor: finds the programs the demo runs, owns its temp dir, starts every
//! child with its output in `{name}.log` there, and stops every child on every exit path (a
//! finished run, a failed step, Ctrl-C, a panic: dropping the supervisor kills what is left).
//! At the end it removes the temp dir after a run that passed (unless `KEEP=1`) and keeps it,
//! printing the last lines of every log, after one that did not.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The programs the demo runs. They are looked for next to `tether-demo` itself, where
/// `cargo build --release --workspace --bins` puts them all.
const NEEDED: [&str; 4] = ["tether-ca", "tether-proxy", "service-a", "service-b"];

/// How many lines of each log a failed run prints: enough for the error and what led to it.
const TAIL_LINES: usize = 12;

/// Starts, watches and stops the demo's children. Dropping it kills every child still running,
/// so no exit path leaves a process behind.
pub(crate) struct Supervisor {
    bin: PathBuf,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Supervisor {
    /// Finds the programs next to this executable and creates the temp dir. Err says which
    /// program is missing or why the dir could not be made.
    pub(crate) fn new() -> Result<Self, String> {
        let bin = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release"));
        for needed in NEEDED {
            if !bin.join(needed).exists() {
                return Err(format!(
                    "{} is missing; run `make demo` (it builds everything first)",
                    bin.join(needed).display()
                ));
            }
        }
        let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self::with(bin, dir))
    }

    /// A supervisor running programs from `bin` with its files in `dir` (which must exist).
    fn with(bin: PathBuf, dir: PathBuf) -> Self {
        Self {
            bin,
            dir,
            children: Vec::new(),
        }
    }

    /// The temp dir: state, configs and logs.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `file` inside the temp dir.
    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Starts `program` as child `name`, its stdout and stderr in `{name}.log`.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
    ) -> Result<(), String> {
        let log =
            std::fs::File::create(self.path(&format!("{name}.log"))).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(self.bin.join(program))
            .args(args)
            .env("TETHER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Runs `program` to completion and returns what it printed and its status.
    pub(crate) fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        Command::new(self.bin.join(program))
            .args(args)
            .output()
            .map_err(|e| format!("running {program}: {e}"))
    }

    /// Whether child `name` is still running (a port someone else holds makes a server exit at
    /// once, while a plain connect to that port still succeeds).
    pub(crate) fn running(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills child `name` and waits for it; nothing if there is none.
    pub(crate) fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every child, the last started first (sidecars before the CA they renew from), and
    /// waits for each.
    pub(crate) fn stop_all(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Cleans up after the run: a run that passed removes the temp dir unless `keep`; one that
    /// did not keeps it and prints its logs' last lines, because on CI that output is all there
    /// is to diagnose it with.
    pub(crate) fn finish(&self, passed: bool, keep: bool) {
        if !passed {
            print!("{}", log_tails(&self.dir));
        } else if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The last lines of every `*.log` in `dir`, by file name, each under a heading.
fn log_tails(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut logs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n── last lines of {}\n", log.display()));
        for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
            out.push_str(&format!("   {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tether-demo-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A supervisor that runs programs from /bin, where `sleep` is.
    fn sleeper(dir: &Path) -> Supervisor {
        Supervisor::with(PathBuf::from("/bin"), dir.to_path_buf())
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn kill_stops_one_child_and_drop_stops_the_rest() {
        let dir = scratch("kill");
        let mut s = sleeper(&dir);
        s.spawn("one", "sleep", &["30".into()]).unwrap();
        s.spawn("two", "sleep", &["30".into()]).unwrap();
        let pids: Vec<u32> = s.children.iter().map(|(_, c)| c.id()).collect();
        assert!(s.running("one") && s.running("two"));
        s.kill("one");
        assert!(!s.running("one") && !alive(pids[0]));
        assert!(s.running("two"));
        drop(s);
        assert!(
            !alive(pids[1]),
            "dropping the supervisor leaves no child behind"
        );
        assert!(dir.join("two.log").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_passed_run_removes_the_dir_unless_kept() {
        let dir = scratch("keep");
        sleeper(&dir).finish(true, true);
        assert!(dir.exists());
        sleeper(&dir).finish(true, false);
        assert!(!dir.exists());
    }

    #[test]
    fn log_tails_show_the_last_lines_of_each_log() {
        let dir = scratch("tails");
        let text: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.join("b.log"), &text).unwrap();
        std::fs::write(dir.join("a.log"), "only\n").unwrap();
        std::fs::write(dir.join("b.toml"), "not a log\n").unwrap();
        let tails = log_tails(&dir);
        let a = tails.find("a.log").unwrap();
        let b = tails.find("b.log").unwrap();
        assert!(a < b, "sorted by name");
        assert!(tails.contains("   line 9\n") && tails.contains("   line 20\n"));
        assert!(!tails.contains("   line 8\n") && !tails.contains("not a log"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
