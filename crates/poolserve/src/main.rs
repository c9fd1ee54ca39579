//! The `poolserve` binary: runs the built-in defaults or a TOML config file, with the demo app
//! answering on every server, until SIGTERM or SIGINT drains it. A config file is re-read when
//! it changes (checked every second) and on SIGHUP. SIGUSR2 upgrades the binary without
//! closing a listening socket (`upgrade.rs`).

#[cfg(unix)]
mod notify;
#[cfg(unix)]
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use poolserve_pool::FieldError;
use poolserve_server::config::{ConfigFileError, LogConfig, RunConfig};
use poolserve_server::{ListeningSocket, Runtime};
use tracing_subscriber::EnvFilter;

/// The process this one replaces, when a binary upgrade started it.
#[cfg(unix)]
type Predecessor = Option<upgrade::Predecessor>;
#[cfg(not(unix))]
type Predecessor = Option<std::convert::Infallible>;

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

/// Reads and validates the config file: its fields, and `log.level` as a tracing filter (which
/// the server crate, knowing no log subscriber, cannot check).
fn read_config(path: &std::path::Path) -> Result<RunConfig, ConfigFileError> {
    let cfg = RunConfig::from_file(path)?;
    match EnvFilter::try_new(&cfg.log.level) {
        Ok(_) => Ok(cfg),
        Err(e) => Err(ConfigFileError(vec![FieldError {
            field: "log.level".into(),
            value: format!("{:?}", cfg.log.level),
            reason: format!("not a tracing filter (e.g. \"info\", \"warn,poolserve=debug\"): {e}"),
        }])),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check {
        return match read_config(&path) {
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
    // Started by an upgrade: the sockets come first, so that whatever fails next is told to the
    // old process, which then serves on.
    #[cfg(unix)]
    let (predecessor, sockets) = match upgrade::receive_sockets() {
        Ok(Some((predecessor, sockets))) => (Some(predecessor), sockets),
        Ok(None) => (None, Vec::new()),
        Err(why) => {
            eprintln!("upgrade: {why}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(not(unix))]
    let (predecessor, sockets): (Predecessor, Vec<ListeningSocket>) = (None, Vec::new());
    // Taken before the file is read, so a change made while the servers start is still seen.
    let loaded_mtime = cli.config.as_deref().and_then(modified);
    let config = match &cli.config {
        Some(path) => match read_config(path) {
            Ok(cfg) => cfg,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", path.display());
                }
                if let Some(p) = predecessor {
                    failed(p, &format!("{}: {errors}", path.display()));
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
            if let Some(p) = predecessor {
                failed(p, &format!("cannot start the async runtime: {e}"));
            }
            return ExitCode::FAILURE;
        }
    };
    let started = Started {
        file: cli.config.map(|p| (p, loaded_mtime)),
        predecessor,
        sockets,
    };
    runtime.block_on(run(config, started))
}

/// How the process started: its config file (and that file's time when read), and, after an
/// upgrade, the process it replaces and the sockets it handed over.
struct Started {
    file: Option<(PathBuf, Option<std::time::SystemTime>)>,
    predecessor: Predecessor,
    sockets: Vec<ListeningSocket>,
}

/// Tells the process this one was to replace that it could not start.
#[cfg(unix)]
fn failed(predecessor: upgrade::Predecessor, why: &str) {
    predecessor.failed(why);
}
#[cfg(not(unix))]
fn failed(predecessor: std::convert::Infallible, _why: &str) {
    match predecessor {}
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
    let next = match read_config(path) {
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

async fn run(config: RunConfig, started: Started) -> ExitCode {
    let Started {
        file,
        predecessor,
        sockets,
    } = started;
    let mut signals = Signals::install();
    let servers = match Runtime::start_with_sockets(
        &config,
        poolserve_demo::routes::service(),
        poolserve_demo::grpc::services(),
        sockets,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            if let Some(p) = predecessor {
                failed(p, &e.to_string());
            }
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
    tracing::info!(admin = %servers.admin_addr(), pid = std::process::id(), "poolserve is up");
    #[cfg(unix)]
    match predecessor {
        Some(p) => {
            tracing::info!(old = %p.pid, "upgrade: serving; the old process stops accepting");
            p.ready();
        }
        None => notify::notify("READY=1"),
    }
    let stop = serve(&servers, file.as_ref(), &mut signals).await;
    // After an upgrade no signal asked for this drain: the first stop signal (a `systemctl
    // stop` reaching the old process too) is the one that leaves it be, a second cuts it.
    let mut stops_left = match stop {
        Stop::Signal(_) => 1,
        Stop::Upgraded => 2,
    };
    let shutdown = async {
        match stop {
            Stop::Signal(signal) => {
                tracing::info!(signal, "draining");
                servers.shutdown().await
            }
            Stop::Upgraded => servers.drain_handed_over().await,
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return ExitCode::SUCCESS,
            signal = signals.stop.next() => {
                stops_left -= 1;
                if stops_left == 0 {
                    tracing::warn!(signal, "second signal during drain: exiting at once");
                    return ExitCode::from(130);
                }
                tracing::info!(signal, "already draining after an upgrade; a second signal exits at once");
            }
        }
    }
}

/// Why the process stops serving.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// A new process took over the listening sockets (SIGUSR2).
    Upgraded,
}

/// Starts the binary anew on this process's sockets (SIGUSR2): true once the new process is
/// ready, false (logged) when it failed and this process serves on.
#[cfg(unix)]
async fn upgrade(servers: &Runtime) -> bool {
    let invocation = match upgrade::Invocation::current() {
        Ok(invocation) => invocation,
        Err(e) => {
            tracing::error!(error = %e, "upgrade failed: this process's program is not known; it serves on");
            return false;
        }
    };
    let deadline = servers.config().drain_timeout;
    match upgrade::start_successor(servers, &invocation, deadline).await {
        Ok(pid) => {
            notify::notify(&format!("MAINPID={pid}"));
            tracing::info!(
                new = pid,
                "upgrade: the new process is ready; this one stops accepting and drains"
            );
            true
        }
        Err(why) => {
            tracing::error!(%why, "upgrade failed; this process serves on");
            false
        }
    }
}

#[cfg(not(unix))]
async fn upgrade(_: &Runtime) -> bool {
    false
}

/// Serves until SIGTERM or SIGINT, or until a new process took over on SIGUSR2; with a config
/// file, reloads it when it changes or on SIGHUP.
async fn serve(
    servers: &Runtime,
    file: Option<&(PathBuf, Option<std::time::SystemTime>)>,
    signals: &mut Signals,
) -> Stop {
    let mut seen = file.and_then(|(_, loaded)| *loaded);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let Signals {
        stop,
        hangup,
        user2,
    } = signals;
    #[cfg(not(unix))]
    let Signals { stop } = signals;
    let stop = stop.next();
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        let (hup, usr2) = (recv(hangup.as_mut()), recv(user2.as_mut()));
        #[cfg(not(unix))]
        let (hup, usr2) = (std::future::pending::<()>(), std::future::pending::<()>());
        tokio::select! {
            signal = &mut stop => return Stop::Signal(signal),
            () = hup => {
                if file.is_none() {
                    tracing::info!("SIGHUP: no config file to re-read");
                }
                if let Some((path, _)) = file {
                    seen = modified(path);
                    reload(servers, path, "SIGHUP").await;
                }
            }
            () = usr2 => {
                tracing::info!("SIGUSR2: upgrading");
                // A stop signal meanwhile abandons the upgrade (the new process is stopped).
                tokio::select! {
                    signal = &mut stop => return Stop::Signal(signal),
                    upgraded = upgrade(servers) => if upgraded {
                        return Stop::Upgraded;
                    },
                }
            }
            _ = tick.tick(), if file.is_some() => {
                if let Some((path, _)) = file {
                    let now = modified(path);
                    // Read only a file that has settled: one still being written (truncated,
                    // say) waits for the next tick.
                    if now != seen && now == settled(path).await {
                        seen = now;
                        reload(servers, path, "file changed").await;
                    }
                }
            }
        }
    }
}

/// The signals the process answers, their handlers installed before it says it is up, so that
/// none sent once it is up meets the default action (for SIGHUP and SIGUSR2: exiting).
struct Signals {
    stop: StopSignals,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    user2: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let named = |kind, name: &str| {
                signal(kind)
                    .map_err(|e| tracing::error!(error = %e, signal = name, "cannot install a signal handler"))
                    .ok()
            };
            Signals {
                stop: StopSignals {
                    term: named(SignalKind::terminate(), "SIGTERM"),
                    int: named(SignalKind::interrupt(), "SIGINT"),
                },
                hangup: named(SignalKind::hangup(), "SIGHUP"),
                user2: named(SignalKind::user_defined2(), "SIGUSR2"),
            }
        }
        #[cfg(not(unix))]
        Signals {
            stop: StopSignals {},
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere).
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// The next stop signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
            tokio::select! {
                () = recv(self.term.as_mut()) => "SIGTERM",
                () = recv(self.int.as_mut()) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The next delivery of a signal, or never when its handler could not be installed.
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
