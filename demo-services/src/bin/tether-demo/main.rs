//! `tether-demo`: the whole Tether mesh on one machine, narrated and checked.
//!
//! ```sh
//! make demo                                  # builds release binaries, then runs this
//! target/release/tether-demo                 # the same, once built
//! KEEP=1 target/release/tether-demo          # keep the temp dir also when every step passes
//! TETHER_DEMO_BASE_PORT=20000 target/release/tether-demo   # fixed ports instead of free ones
//! ```
//!
//! user → gateway sidecar → (two replicas of) service-a behind their sidecars → service-b behind
//! its sidecar, with a CA issuing every identity from one-time tokens. Every claim printed is
//! checked; the exit status is 0 only if every step passed (1 if one failed, 2 if the demo could
//! not start). Every process started is stopped on every exit path, Ctrl-C included.
//!
//! # Layout
//! - [`steps`]: the story, one function per narrated step, and [`steps::scenario`] listing them.
//! - [`mesh`]: the mesh as data: identities, named ports, policies and sidecar configs.
//! - [`supervisor`]: starts and stops every child, owns the temp dir and its logs.
//! - [`narrate`]: prints the steps and checked claims, and gives the verdict.
//! - [`probes`]: the HTTP, admin, TLS and metrics checks the steps make.

mod mesh;
mod narrate;
mod probes;
mod steps;
mod supervisor;

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::mesh::{PortSource, Ports};
use crate::narrate::Narrator;
use crate::steps::Demo;
use crate::supervisor::Supervisor;

#[tokio::main]
async fn main() -> ExitCode {
    let procs = match Supervisor::new() {
        Ok(procs) => procs,
        Err(e) => {
            eprintln!("tether-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let mut demo = Demo {
        procs,
        narrator: Narrator::new(std::io::stdout().is_terminal()),
        ports: Ports::allocate(&mut PortSource::from_env()),
    };
    let dir = demo.procs.dir().to_path_buf();
    demo.narrator.say(&format!(
        "Tether demo — state, configs and logs in {}",
        dir.display()
    ));
    let outcome = tokio::select! {
        r = steps::scenario(&mut demo) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    // Stop everything before reporting, on every path.
    demo.procs.stop_all();
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    demo.procs
        .finish(outcome.is_ok() && demo.narrator.passed(), keep);
    demo.narrator.report(outcome, keep, &dir)
}
