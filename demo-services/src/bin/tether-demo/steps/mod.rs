//! The story, one function per narrated step: [`scenario`] is the list of them, in order. Each
//! step prints its heading, does one thing to the mesh, and checks what it claims. A step returns
//! Err only when the rest of the story cannot go on (the CA or the sidecars did not start);
//! otherwise a failed claim is recorded and the story continues, so one run shows every failure.
//!
//! # Layout
//! - [`setup`]: steps 1–2, the CA and enrolment, then the apps and their sidecars.
//! - [`defence`]: steps 3–5, the allowed path, the policy denial and the handshake refusals.
//! - [`lifecycle`]: steps 6, 7, 9 and 10: revocation, rotation under traffic, an outage of every
//!   CA replica, and the metrics.
//! - [`replicas`]: step 8, one CA replica killed mid-traffic and the survivor taking over.

mod defence;
mod lifecycle;
mod replicas;
mod setup;

use std::time::Instant;

use crate::mesh::Ports;
use crate::narrate::Narrator;
use crate::supervisor::Supervisor;

/// The CA replicas' names as child processes (and their logs, `tether-ca.log`, …), each with the
/// state dir it serves: the first made by `init`, the second by `replica add`.
const CA_REPLICAS: [(&str, &str); 2] = [("tether-ca", "ca"), ("tether-ca-2", "ca2")];

/// Everything a step works with.
pub(crate) struct Demo {
    /// The children, the temp dir and the programs.
    pub(crate) procs: Supervisor,
    /// What is printed, and which claims failed.
    pub(crate) narrator: Narrator,
    /// Every process's ports.
    pub(crate) ports: Ports,
}

/// Runs the whole story. Err stops it early with the reason.
pub(crate) async fn scenario(d: &mut Demo) -> Result<(), String> {
    let started = Instant::now();
    setup::start_ca_and_enrol(d).await?;
    setup::start_apps_and_sidecars(d).await?;
    defence::user_reaches_service_b(d).await;
    defence::policy_denies_the_intruder(d).await?;
    defence::handshake_refuses_outsiders(d).await?;
    lifecycle::revoke_one_replica(d).await;
    lifecycle::rotate_under_traffic(d).await;
    replicas::lose_a_ca_replica(d).await?;
    lifecycle::survive_a_ca_outage(d).await?;
    lifecycle::show_the_metrics(d).await;
    d.narrator.say(&format!(
        "\nscenario finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

impl Demo {
    /// Runs `tether-ca {args}` on the first CA replica's state: its trimmed stdout, or Err with
    /// stderr.
    fn ca(&self, args: &[&str]) -> Result<String, String> {
        self.ca_at(0, args)
    }

    /// Runs `tether-ca {args}` on CA replica `i`'s state dir (any replica's dir works for every
    /// command: they share one database).
    fn ca_at(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let state = self.procs.path(CA_REPLICAS[i].1);
        let mut all = vec!["--state-dir", state.to_str().unwrap_or("ca")];
        all.extend_from_slice(args);
        let out = self.procs.run("tether-ca", &all)?;
        if !out.status.success() {
            return Err(format!(
                "tether-ca {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts CA replica `i` (0 or 1): `tether-ca serve` on its state dir and port.
    fn start_ca(&mut self, i: usize) -> Result<(), String> {
        let (name, state) = CA_REPLICAS[i];
        let port = [self.ports.ca, self.ports.ca2][i];
        let args = [
            "--state-dir".to_string(),
            self.procs.path(state).display().to_string(),
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        self.procs.spawn(name, "tether-ca", &args)
    }
}
