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
            k8s,
        } => serve(&cli, *listen, *metrics_listen, k8s),
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
    k8s: &tether_ca::cli::K8sArgs,
) -> anyhow::Result<()> {
    tether_net::init_logging(cli.log_format);
    let k8s = k8s.options().map_err(anyhow::Error::msg)?;
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
        let mut options = tether_ca::api::ServeOptions::default();
        if let Some(k8s) = k8s {
            let verifier = tether_ca::k8s::K8sVerifier::start(k8s).await?;
            tracing::info!("Kubernetes enrollment on: {}", verifier.describe());
            options.k8s = Some(verifier);
        }
        tracing::info!(
            "tether-ca serving trust domain {} on https://{}",
            authority.trust_domain(),
            listener.local_addr()?
        );
        let shutdown = tether_net::shutdown_signal();
        tether_ca::api::run_with(listener, authority, registry, options, shutdown).await?;
        tracing::info!("tether-ca stopped");
        Ok(())
    })
}
