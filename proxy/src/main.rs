//! `tether-proxy`: the sidecar's command line. `run` starts the sidecar from a config file;
//! `check` validates a config file (and the policy it names) without starting anything;
//! `authz check` explains what the policy decides for one request. Everything else lives in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tether_proxy::config::{Config, ConfigError, IdentitySource, Overrides};
use tether_proxy::policy::{is_method_token, normalize_path_with, Decision, PathParams, Policy};

mod allocator;

/// Exit status for configuration errors (EX_USAGE from sysexits.h), so supervisors can tell a
/// bad config from a crash.
const EXIT_CONFIG: u8 = 64;

/// How many ready sockets the one-worker runtime takes from the kernel per poll (tokio's default
/// is 1,024). An event loop runs every task its poll woke before it polls again, so with 32
/// busy connections the outbound read all 32 requests before its HTTP/2 connection wrote any of
/// them to the inbound, and each sidecar waited while the other worked: 28 % of the 2 cores sat
/// idle at 32 connections. Taking 16 at a time sends the first requests on while the rest are
/// still being read. In four interleaved A/B runs (`peer_protocol = "h2"`, 32 connections) idle
/// fell to 21–23 % and req/s rose 3–11 %; 4 and 8 cut idle further but cost more CPU per request
/// in extra polls and smaller writes than they won back.
const IO_EVENTS_PER_TICK: usize = 16;

/// Tether's mTLS sidecar.
#[derive(Debug, Parser)]
#[command(name = "tether-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(RunArgs),
    /// Validate a config file and the inbound policy it names, starting nothing: prints
    /// `ok: FILE` and exits 0, or prints the problem and exits 64.
    Check(ConfigArgs),
    /// Policy tools.
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
}

/// The config file and the settings that override it: what `run` starts with and what `check`
/// judges, read the same way by both.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// The TOML config file.
    #[arg(long, env = "TETHER_PROXY_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

impl ConfigArgs {
    /// The file, validated, with the overrides applied.
    fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config, &self.overrides)
    }
}

/// `run`: the config, and how the process log is written.
#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    file: ConfigArgs,
    /// How the process log is written: "text" (the default) or "json", one object per line.
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value_t = tether_net::LogFormat::Text)]
    log_format: tether_net::LogFormat,
}

#[derive(Debug, Subcommand)]
enum AuthzCommand {
    /// Print the decision for one request: exit 0 allow, 1 deny, 2 bad input.
    Check {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The caller's SPIFFE ID.
        #[arg(long)]
        from: String,
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request path (normalized exactly as the sidecar does).
        #[arg(long)]
        path: String,
        /// Evaluate at this RFC 3339 time instead of now (for rules with `expires`).
        #[arg(long)]
        at: Option<String>,
        /// How `;` path parameters are read: "reject", "strip" or "keep", as the sidecar's
        /// `[inbound] path_params`.
        #[arg(long, default_value_t = PathParams::default())]
        path_params: PathParams,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Authz {
            command:
                AuthzCommand::Check {
                    policy,
                    from,
                    method,
                    path,
                    at,
                    path_params,
                },
        } => authz_check(&policy, &from, &method, &path, at.as_deref(), path_params),
    }
}

/// `tether-proxy run`: exit 64 on a bad config, 1 on a port that cannot be bound.
fn run(args: RunArgs) -> ExitCode {
    let cfg = match args.file.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tether_net::init_logging(args.log_format);
    if let IdentitySource::Ca(ca) = &cfg.identity {
        if !ca.has_enrollment_token() {
            // Not fatal: a cached certificate in state_dir is enough to start. Logged here, not
            // while parsing, because logging starts only once the config is known to be good.
            tracing::debug!("no enrollment token configured; relying on the cached certificate");
        }
    }
    let rt = match build_runtime(cfg.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.log_format == tether_net::LogFormat::Json;
    rt.spawn(allocator::wake_idle_threads());
    let result = rt.block_on(async move {
        let listeners = tether_proxy::Listeners::bind(&cfg).await?;
        tracing::info!(
            inbound = ?listeners.inbound.as_ref().and_then(|l| l.local_addr().ok()),
            outbound = ?listeners.outbound.as_ref().and_then(|l| l.local_addr().ok()),
            admin = ?listeners.admin.as_ref().and_then(|l| l.local_addr().ok()),
            workers = cfg.workers,
            "tether-proxy starting"
        );
        tether_proxy::run(cfg, listeners, prometheus::Registry::new(), async {
            tether_net::shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
        })
        .await
    });
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    // The log has started: under `--log-format json` the last line is JSON too.
    if json {
        tracing::error!("{e}");
    } else {
        eprintln!("tether-proxy: {e}");
    }
    match e {
        tether_proxy::StartError::Bind(..) | tether_proxy::StartError::Metrics(_) => {
            ExitCode::FAILURE
        }
        _ => ExitCode::from(EXIT_CONFIG),
    }
}

/// `tether-proxy check`: the config as `run` validates it, then the inbound policy through the
/// loader `run` uses; exit 0, or 64 as `run` would exit on the same problem. Certificates, the
/// CA and ports are not looked at: in CA mode they do not exist before the sidecar runs.
fn check(args: ConfigArgs) -> ExitCode {
    let checked = args
        .load()
        .map_err(|e| e.to_string())
        .and_then(|cfg| match &cfg.inbound {
            Some(inbound) => Policy::load(&inbound.policy)
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        });
    match checked {
        Ok(()) => {
            println!("ok: {}", args.config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-proxy check: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Builds the runtime for `workers` threads.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker: a current-thread runtime does the same work without cross-thread wakeups
    // (together with static hop-by-hop header names: +17 % req/s in the 32-connection bench).
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_io_events_per_tick(IO_EVENTS_PER_TICK)
            .on_thread_park(allocator::on_park)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_park(allocator::on_park)
            .build()
    }
}

/// `tether-proxy authz check`: exit 0 allow, 1 deny, 2 bad input.
fn authz_check(
    policy: &std::path::Path,
    from: &str,
    method: &str,
    path: &str,
    at: Option<&str>,
    path_params: PathParams,
) -> ExitCode {
    let bad = |msg: String| {
        eprintln!("tether-proxy authz check: {msg}");
        ExitCode::from(2)
    };
    let policy = match Policy::load(policy) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    let caller = match tether_certs::SpiffeId::parse(from) {
        Ok(id) => id,
        Err(e) => return bad(format!("--from {from:?}: {e}")),
    };
    if !is_method_token(method) {
        return bad(format!("--method {method:?} is not an HTTP method token"));
    }
    let path_only = path.split('?').next().unwrap_or(path);
    let normalized = match normalize_path_with(path_only, path_params) {
        Ok(p) => p,
        Err(e) => return bad(format!("--path {path:?}: {e} (the sidecar answers 400)")),
    };
    let now = match at {
        None => time::OffsetDateTime::now_utc(),
        Some(t) => {
            match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t,
                Err(e) => {
                    return bad(format!(
                        "--at {t:?}: {e} (use RFC 3339, e.g. 2026-12-31T00:00:00Z)"
                    ))
                }
            }
        }
    };
    // Methods are case-sensitive (RFC 9110), exactly as the sidecar compares them.
    println!("caller:          {caller}");
    println!("request:         {method} {normalized}");
    match policy.decide(&caller, Some(method), Some(&normalized), now) {
        Decision::Allow { rule } => {
            println!("decision:        ALLOW");
            println!("matched rule:    {rule}");
            ExitCode::SUCCESS
        }
        Decision::Deny => {
            println!("decision:        DENY");
            println!("matched rule:    no rule matched: default deny");
            if matches!(policy.mode(), tether_proxy::policy::Mode::Audit) {
                println!("note:            policy mode is audit: the sidecar would log this and allow it");
            }
            ExitCode::from(1)
        }
    }
}
