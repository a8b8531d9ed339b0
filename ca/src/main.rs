//! `tether-ca`: the command-line entry point. Everything lives in the library; this file parses
//! arguments, starts a runtime for `serve`, and turns errors into exit statuses.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;

use tether_ca::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve {
            listen,
            metrics_listen,
        } => serve(&cli, *listen, *metrics_listen),
        _ => tether_ca::cli::run(&cli).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `serve` has started the JSON log by now: its last line is JSON too.
        Err(e)
            if matches!(cli.command, Command::Serve { .. })
                && cli.log_format == tether_net::LogFormat::Json =>
        {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tether-ca: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    cli: &Cli,
    listen: std::net::SocketAddr,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    tether_net::init_logging(cli.log_format);
    let authority = Arc::new(tether_ca::Authority::open(&cli.state_dir)?);
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the API listener {listen}"))?;
        let registry = prometheus::Registry::new();
        if let Some(addr) = metrics_listen {
            let ml = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            tokio::spawn(tether_ca::api::run_metrics(
                ml,
                registry.clone(),
                tether_net::shutdown_signal(),
            ));
        }
        tracing::info!(
            "tether-ca serving trust domain {} on https://{}",
            authority.trust_domain(),
            listener.local_addr()?
        );
        tether_ca::api::run(listener, authority, registry, tether_net::shutdown_signal()).await?;
        tracing::info!("tether-ca stopped");
        Ok(())
    })
}
