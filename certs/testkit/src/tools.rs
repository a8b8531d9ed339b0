//! Optional external tools. Some checks cross-examine our output with `openssl` or `curl`; where
//! the tool is missing the check is skipped (with a line on stderr saying so) rather than failed,
//! so the suites run on a bare CI image.

use std::process::Command;

/// Whether `tool` runs here (it answers `tool version` or `tool --version` successfully). Prints
/// which part is skipped when it does not.
pub fn have(tool: &str) -> bool {
    let answers = |arg: &str| {
        Command::new(tool)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let ok = answers("version") || answers("--version");
    if !ok {
        eprintln!("{tool} not found; skipping the {tool} part of this test");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_does_not_exist_is_not_had() {
        assert!(!have("tether-testkit-no-such-tool"));
    }
}
