//! The `tether-ca` command line.
//!
//! Which commands talk to what: `serve` runs the HTTPS API; every other command works directly on
//! the state directory (SQLite serializes them with a running server), so they work whether or
//! not the server runs, and a revocation or root rotation made here reaches a running server
//! (and through it the long-polling sidecars) within the server's poll interval (100 ms).
//!
//! Exit status: 0 on success; 1 when the command failed or found a problem (`check` found
//! something, `revoke --wait` timed out, `root retire` was refused); 2 on a usage error.

use crate::authority::Authority;
use crate::error::CaError;
use crate::rotation::RotateOptions;

mod args;
mod commands;
mod k8s_args;
mod report;

pub use args::{Cli, Command, InitArgs, ReplicaCommand, RootCommand};
use commands::RevokeTarget;
pub use k8s_args::K8sArgs;

/// A command failure: printed as `tether-ca: <message>` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the authority.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
}

/// Runs every command except `serve` (which needs a runtime; see `main.rs`).
pub fn run(cli: &Cli) -> Result<(), CliError> {
    let dir = &cli.state_dir;
    let open = || Authority::open(dir);
    match &cli.command {
        Command::Init(args) => commands::init(dir, args),
        Command::Serve { .. } => Err(CliError::Other(
            "serve is run by main with a runtime".into(),
        )),
        Command::Enroll {
            spiffe_id,
            token_ttl,
        } => commands::enroll(&open()?, spiffe_id, *token_ttl),
        Command::Issue {
            spiffe_id,
            out,
            ttl,
        } => commands::issue(&open()?, spiffe_id, *ttl, out),
        Command::Revoke {
            serial,
            id,
            before,
            reason,
            wait,
            timeout,
        } => {
            let target = match (serial, id) {
                (Some(serial), _) => RevokeTarget::Serial(serial),
                (None, Some(id)) => RevokeTarget::Identity(id, *before),
                (None, None) => {
                    return Err(CliError::Other("give a SERIAL or --id SPIFFE_ID".into()))
                }
            };
            let wait = wait.then_some(*timeout);
            commands::revoke(&open()?, target, *reason, wait)
        }
        Command::Crl { out } => commands::crl(&open()?, out.as_ref()),
        Command::List {
            expiring_within,
            json,
        } => commands::list(&open()?, *expiring_within, *json),
        Command::Fleet { within, json } => report::fleet(&open()?, *within, *json),
        Command::Root { command } => root(&open()?, command),
        Command::Replica { command } => commands::replica(&open()?, command),
        Command::Check { warn_within } => report::check(&open()?, *warn_within),
    }
}

/// `root rotate | retire | list`.
fn root(ca: &Authority, command: &RootCommand) -> Result<(), CliError> {
    match command {
        RootCommand::Rotate {
            ttl,
            intermediate_ttl,
        } => report::rotate(
            ca,
            &RotateOptions {
                root_ttl: *ttl,
                intermediate_ttl: *intermediate_ttl,
            },
        ),
        RootCommand::Retire { fingerprint, force } => report::retire(ca, fingerprint, *force),
        RootCommand::List { json } => report::roots(ca, *json),
    }
}

/// Prints `value` as pretty JSON (`--json`). Our record types serialize infallibly.
fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
