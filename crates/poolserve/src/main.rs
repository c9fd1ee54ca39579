//! The `poolserve` binary: runs the built-in defaults or a TOML config file, with the demo app
//! answering on every server, until SIGTERM or SIGINT drains it. A config file is re-read when
//! it changes (checked every second) and on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use poolserve_server::config::{LogConfig, RunConfig};
use poolserve_server::Runtime;
use tracing_subscriber::EnvFilter;

/// Every protocol under one connection-pool manager.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run the servers of this TOML file instead of the built-in defaults.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    config: Option<PathBuf>,
    /// Validate this TOML file and exit: 0 when valid (warnings on stderr), 2 naming each bad
    /// field.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

fn init_logs(log: &LogConfig) {
    // RUST_LOG, when set, overrides the file's level.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if log.json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check {
        return match RunConfig::from_file(&path) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("{}: warning: {w}", path.display());
                }
                println!(
                    "{}: valid ({} server(s))",
                    path.display(),
                    cfg.servers.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", path.display());
                }
                ExitCode::from(2)
            }
        };
    }
    // Taken before the file is read, so a change made while the servers start is still seen.
    let loaded_mtime = cli.config.as_deref().and_then(modified);
    let config = match &cli.config {
        Some(path) => match RunConfig::from_file(path) {
            Ok(cfg) => cfg,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", path.display());
                }
                return ExitCode::from(2);
            }
        },
        None => RunConfig::builtin(),
    };
    init_logs(&config.log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, cli.config.map(|p| (p, loaded_mtime))))
}

/// How often the config file's modification time is checked.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// How long a changed file must stay unchanged before it is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The file's modification time after a short pause.
async fn settled(path: &std::path::Path) -> Option<std::time::SystemTime> {
    tokio::time::sleep(SETTLE).await;
    modified(path)
}

/// Re-reads the config file and applies it; a file with a bad field changes nothing.
async fn reload(servers: &Runtime, path: &std::path::Path, why: &'static str) {
    let next = match RunConfig::from_file(path) {
        Ok(next) => next,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %path.display(), field = %e.field, value = %e.value, reason = %e.reason, "config field refused");
            }
            tracing::error!(file = %path.display(), why, "reload refused; the running config stays");
            return;
        }
    };
    match servers.reload(&next).await {
        Ok(report) => {
            for note in &report.not_applied {
                tracing::warn!(file = %path.display(), note = %note, "not applied live");
            }
            let changed: usize = report.changed.iter().map(|(_, c)| c.len()).sum();
            tracing::info!(
                file = %path.display(),
                why,
                changed,
                added = ?report.servers_added,
                removed = ?report.servers_removed,
                replaced = ?report.servers_replaced,
                certificates = ?report.certificates_replaced,
                "config reloaded"
            );
        }
        Err(e) => {
            for f in &e.0 {
                tracing::error!(file = %path.display(), field = %f.field, value = %f.value, reason = %f.reason, "config field refused");
            }
            tracing::error!(file = %path.display(), why, "reload refused; the running config stays");
        }
    }
}

async fn run(
    config: RunConfig,
    file: Option<(PathBuf, Option<std::time::SystemTime>)>,
) -> ExitCode {
    let servers = match Runtime::start_with_grpc(
        &config,
        poolserve_demo::routes::service(),
        poolserve_demo::grpc::services(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    for s in servers.servers() {
        let self_signed = s.protocol().is_tls()
            && config
                .servers
                .iter()
                .any(|c| c.name == s.name() && c.tls.is_none());
        tracing::info!(
            server = s.name(),
            protocol = s.protocol().as_str(),
            addr = %s.local_addr(),
            self_signed,
            "ready"
        );
    }
    tracing::info!(admin = %servers.admin_addr(), "poolserve is up");
    let signal = match &file {
        Some((path, loaded)) => watch_config(&servers, path, *loaded).await,
        None => wait_for_signal().await,
    };
    tracing::info!(signal, "draining");
    let shutdown = servers.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => ExitCode::SUCCESS,
        second = wait_for_signal() => {
            tracing::warn!(signal = second, "second signal during drain: exiting at once");
            ExitCode::from(130)
        }
    }
}

/// Reloads the config file when it changes or on SIGHUP, until SIGTERM or SIGINT.
async fn watch_config(
    servers: &Runtime,
    path: &std::path::Path,
    loaded: Option<std::time::SystemTime>,
) -> &'static str {
    let mut seen = loaded;
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        tokio::select! {
            signal = &mut stop => return signal,
            () = hup => {
                seen = modified(path);
                reload(servers, path, "SIGHUP").await;
            }
            _ = tick.tick() => {
                let now = modified(path);
                // Read only a file that has settled: one still being written (truncated, say)
                // waits for the next tick.
                if now != seen && now == settled(path).await {
                    seen = now;
                    reload(servers, path, "file changed").await;
                }
            }
        }
    }
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
