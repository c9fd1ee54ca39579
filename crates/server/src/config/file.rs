//! The TOML config file (SPEC C): parsed into raw sections, then validated once into a
//! [`RunConfig`], naming every bad field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use poolserve_pool::{parse_duration_setting, FieldError, PoolConfig, PoolSettings};
use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::transport::tls::TlsFiles;

/// The admin endpoint's default address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// How long shutdown waits for in-flight work by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Spare file descriptors kept for the admin endpoint when `admin.spare_fds` is left out: one
/// per admin connection it can open while the process is out of descriptors (a probe, a
/// scrape, an event stream).
pub const DEFAULT_SPARE_FDS: usize = 4;
/// The most `admin.spare_fds` may ask for (the admin endpoint's default connection cap).
pub const MAX_SPARE_FDS: usize = 64;
/// The name of the admin endpoint's own pool (in `/health` and `/metrics`); no server may take it.
pub const ADMIN_POOL: &str = "admin";
/// Most listening sockets (accept loops) one server may run.
pub const MAX_ACCEPT_LOOPS: usize = 1024;
/// Most worker threads the async runtime may run.
pub const MAX_WORKER_THREADS: usize = 1024;

/// How many listening sockets, each with its own accept loop, a server runs on its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptLoops {
    /// One per worker thread of the async runtime the server runs on.
    Auto,
    /// This many, 1 to [`MAX_ACCEPT_LOOPS`].
    Count(usize),
}

impl Default for AcceptLoops {
    fn default() -> Self {
        AcceptLoops::Count(1)
    }
}

impl AcceptLoops {
    /// How many sockets this means on the current async runtime (`Auto`: its worker threads;
    /// 1 outside a runtime).
    pub fn resolve(self) -> usize {
        match self {
            AcceptLoops::Count(n) => n.clamp(1, MAX_ACCEPT_LOOPS),
            AcceptLoops::Auto => tokio::runtime::Handle::try_current()
                .map_or(1, |h| h.metrics().num_workers())
                .clamp(1, MAX_ACCEPT_LOOPS),
        }
    }

    /// As written in the file: a number or `"auto"`.
    pub fn to_setting(self) -> AcceptLoopsSetting {
        match self {
            AcceptLoops::Auto => AcceptLoopsSetting::Word("auto".into()),
            AcceptLoops::Count(n) => AcceptLoopsSetting::Count(n as i64),
        }
    }
}

impl std::fmt::Display for AcceptLoops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptLoops::Auto => f.write_str("auto"),
            AcceptLoops::Count(n) => write!(f, "{n}"),
        }
    }
}

/// `accept_loops` as written: a number or a word (only `"auto"` is valid).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AcceptLoopsSetting {
    /// A count.
    Count(i64),
    /// `"auto"`.
    Word(String),
}

/// The admin endpoint's pool settings when `[admin.pool]` leaves them out: a few connections
/// and short timeouts, so a client that holds admin connections open runs out of room there,
/// not out of the process's file descriptors.
pub fn default_admin_pool() -> PoolConfig {
    PoolConfig {
        max_connections: Some(64),
        // One address cannot take every slot and fail the liveness probes of the rest.
        max_connections_per_ip: Some(16),
        headers_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    }
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// How long shutdown waits for in-flight work, e.g. `"30s"`.
    pub drain_timeout: Option<String>,
    /// How long a server goes on serving, announced as not ready, before its listener closes
    /// and its drain begins, e.g. `"5s"`; absent: no delay.
    pub drain_delay: Option<String>,
    /// The admin endpoint.
    pub admin: Option<AdminSection>,
    /// Logging.
    pub log: Option<LogSection>,
    /// The async runtime.
    pub runtime: Option<RuntimeSection>,
    /// The servers.
    #[serde(default)]
    pub server: Vec<ServerSection>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Worker threads of the async runtime (default: one per core).
    pub worker_threads: Option<i64>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Bearer token every admin request must carry.
    pub token: Option<String>,
    /// A file holding the token (a mounted secret), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Whether `/livez` and `/readyz` need the token too (default: they do not).
    pub probes_need_token: Option<bool>,
    /// File descriptors held in reserve so the admin endpoint answers while the process is
    /// out of them (default [`DEFAULT_SPARE_FDS`]).
    pub spare_fds: Option<usize>,
    /// The admin endpoint's pool settings, over [`default_admin_pool`].
    pub pool: Option<PoolSettings>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter: `info`, `debug`, `poolserve_pool=debug,info`, ...
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

/// `[[server]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Unique name.
    pub name: String,
    /// `http`, `https`, `http2`, `grpc`, `ws` or `wss`.
    pub protocol: String,
    /// Address to listen on.
    pub listen: String,
    /// Certificate and key files.
    pub tls: Option<TlsFiles>,
    /// Listening sockets on the address, each with its own accept loop: a number or `"auto"`.
    pub accept_loops: Option<AcceptLoopsSetting>,
    /// Pool settings.
    #[serde(default)]
    pub pool: PoolSettings,
}

/// A validated server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Unique name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificate files; `None` on a TLS protocol means a self-signed certificate.
    pub tls: Option<TlsFiles>,
    /// Listening sockets (`SO_REUSEPORT`) on the address, each with its own accept loop.
    pub accept_loops: AcceptLoops,
    /// The pool's config.
    pub pool: PoolConfig,
}

/// A validated log section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The tracing filter.
    pub level: String,
    /// Whether lines are JSON.
    pub json: bool,
}

/// A validated config: what a poolserve process runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Admin endpoint address.
    pub admin_listen: SocketAddr,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Whether the probes (`/livez`, `/readyz`) need the admin token too.
    pub admin_probes_need_token: bool,
    /// The admin endpoint's pool.
    pub admin_pool: PoolConfig,
    /// File descriptors held in reserve for the admin endpoint.
    pub admin_spare_fds: usize,
    /// Shutdown drain deadline.
    pub drain_timeout: Duration,
    /// How long a server stopping (shutdown, or removed by a reload) goes on serving while
    /// announced as not ready, before it drains; zero for no delay.
    pub drain_delay: Duration,
    /// Logging.
    pub log: LogConfig,
    /// Worker threads of the async runtime; `None` for one per core. Read by the binary when
    /// it builds its runtime.
    pub worker_threads: Option<usize>,
    /// The servers.
    pub servers: Vec<ServerSpec>,
}

/// Why a config was refused: every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError(pub Vec<FieldError>);

impl std::fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFileError {}

fn field_error(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl RunConfig {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<RunConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigFileError(vec![field_error(
                "(file)",
                path.display(),
                format!("cannot read: {e}"),
            )])
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates config text.
    pub fn from_toml(text: &str) -> Result<RunConfig, ConfigFileError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| format!(" (bytes {}..{})", s.start, s.end))
                .unwrap_or_default();
            ConfigFileError(vec![field_error(
                "(syntax)",
                span.trim(),
                e.message().to_owned(),
            )])
        })?;
        file.validate()
    }

    /// The built-in default: one server of every protocol, all on loopback (the binary answers
    /// them with the demo app).
    pub fn builtin() -> RunConfig {
        let spec = |name: &str, protocol, port: u16| ServerSpec {
            name: name.to_owned(),
            protocol,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            accept_loops: AcceptLoops::default(),
            pool: PoolConfig::default(),
        };
        RunConfig {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            admin_probes_need_token: false,
            admin_pool: default_admin_pool(),
            admin_spare_fds: DEFAULT_SPARE_FDS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_delay: Duration::ZERO,
            log: LogConfig {
                level: "info".into(),
                json: false,
            },
            worker_threads: None,
            servers: vec![
                spec("web", Protocol::Http, 3000),
                spec("web-tls", Protocol::Https, 3443),
                spec("h2", Protocol::Http2, 3080),
                spec("rpc", Protocol::Grpc, 50051),
                spec("live", Protocol::Ws, 3001),
            ],
        }
    }

    /// What is valid but likely a mistake, for `--check` and the start-up log: an admin
    /// endpoint other hosts can reach with no token.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut warnings = Vec::new();
        if self.admin_token.is_none() && !self.admin_listen.ip().to_canonical().is_loopback() {
            warnings.push(field_error(
                "admin.listen",
                self.admin_listen,
                "not a loopback address, and no admin.token or admin.token_file: anyone who \
                 reaches it can read every pool and change its limits",
            ));
        }
        warnings
    }
}

impl FileConfig {
    /// Validates every section, collecting every bad field.
    pub fn validate(&self) -> Result<RunConfig, ConfigFileError> {
        let mut errors = Vec::new();
        let admin = self.admin.clone().unwrap_or_default();
        let admin_listen = admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let admin_listen = admin_listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(field_error(
                "admin.listen",
                format!("{admin_listen:?}"),
                "not an IP:port address",
            ));
            SocketAddr::from(([127, 0, 0, 1], 9090))
        });
        if let Some(t) = &admin.token {
            if t.trim().is_empty() {
                errors.push(field_error(
                    "admin.token",
                    "\"\"",
                    "must not be empty (leave it out for no token)",
                ));
            } else if t.trim() != t || t.chars().any(char::is_control) {
                // A presented token is read up to the header's end: spaces around it, or a
                // control character in it, could never match.
                errors.push(field_error(
                    "admin.token",
                    "(hidden)",
                    "must not start or end with whitespace nor hold control characters",
                ));
            }
        }
        let admin_token = match (&admin.token, &admin.token_file) {
            (Some(_), Some(path)) => {
                errors.push(field_error(
                    "admin.token_file",
                    format!("{:?}", path.display().to_string()),
                    "admin.token is set too: give one of them",
                ));
                None
            }
            (token, None) => token.clone(),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                // A secret file often ends with a newline, which is not part of the token.
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                Ok(_) => {
                    errors.push(field_error(
                        "admin.token_file",
                        format!("{:?}", path.display().to_string()),
                        "the file is empty",
                    ));
                    None
                }
                Err(e) => {
                    errors.push(field_error(
                        "admin.token_file",
                        format!("{:?}", path.display().to_string()),
                        format!("cannot read: {e}"),
                    ));
                    None
                }
            },
        };
        let admin_pool = match default_admin_pool()
            .apply(&admin.pool.clone().unwrap_or_default(), "admin.pool.")
        {
            Ok((pool, _)) => pool,
            Err(e) => {
                errors.extend(e.0);
                default_admin_pool()
            }
        };
        let admin_spare_fds = match admin.spare_fds {
            None => DEFAULT_SPARE_FDS,
            Some(n) if n <= MAX_SPARE_FDS => n,
            Some(n) => {
                errors.push(field_error(
                    "admin.spare_fds",
                    n,
                    format!(
                        "must be between 0 and {MAX_SPARE_FDS} (0: none, and the admin endpoint \
                         goes unanswered while the process is out of file descriptors)"
                    ),
                ));
                DEFAULT_SPARE_FDS
            }
        };
        let drain_timeout = match &self.drain_timeout {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(raw) => match parse_duration_setting(raw) {
                Ok(d) => d,
                Err(reason) => {
                    errors.push(field_error("drain_timeout", format!("{raw:?}"), reason));
                    DEFAULT_DRAIN_TIMEOUT
                }
            },
        };
        let drain_delay = match &self.drain_delay {
            None => Duration::ZERO,
            Some(raw) => parse_duration_setting(raw).unwrap_or_else(|reason| {
                errors.push(field_error(
                    "drain_delay",
                    format!("{raw:?}"),
                    format!("{reason} (leave it out for no delay)"),
                ));
                Duration::ZERO
            }),
        };
        let log = self.log.clone().unwrap_or_default();
        let json = match log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                errors.push(field_error(
                    "log.format",
                    format!("{other:?}"),
                    "must be \"text\" or \"json\"",
                ));
                false
            }
        };
        let log = LogConfig {
            level: log.level.unwrap_or_else(|| "info".into()),
            json,
        };
        let worker_threads = match self.runtime.as_ref().and_then(|r| r.worker_threads) {
            None => None,
            Some(n) if (1..=MAX_WORKER_THREADS as i64).contains(&n) => Some(n as usize),
            Some(n) => {
                errors.push(field_error(
                    "runtime.worker_threads",
                    n,
                    format!("must be between 1 and {MAX_WORKER_THREADS} (leave it out for one per core)"),
                ));
                None
            }
        };

        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut servers = Vec::new();
        for (i, s) in self.server.iter().enumerate() {
            let at = if s.name.is_empty() {
                format!("server[{i}]")
            } else {
                format!("server[{i}] ({})", s.name)
            };
            if s.name.trim().is_empty() {
                errors.push(field_error(
                    format!("{at}.name"),
                    "\"\"",
                    "must not be empty",
                ));
            } else if s.name == ADMIN_POOL {
                errors.push(field_error(
                    format!("{at}.name"),
                    format!("{:?}", s.name),
                    "reserved for the admin endpoint's pool",
                ));
            } else if !names.insert(s.name.clone()) {
                errors.push(field_error(
                    format!("{at}.name"),
                    format!("{:?}", s.name),
                    "another server has this name",
                ));
            }
            let protocol = Protocol::from_name(&s.protocol);
            if protocol.is_none() {
                let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
                errors.push(field_error(
                    format!("{at}.protocol"),
                    format!("{:?}", s.protocol),
                    format!("must be one of {}", names.join(", ")),
                ));
            }
            let listen = match s.listen.parse::<SocketAddr>() {
                Ok(a) => {
                    if a.port() != 0 && !addrs.insert(a) {
                        errors.push(field_error(
                            format!("{at}.listen"),
                            format!("{:?}", s.listen),
                            "another server listens here",
                        ));
                    }
                    Some(a)
                }
                Err(_) => {
                    errors.push(field_error(
                        format!("{at}.listen"),
                        format!("{:?}", s.listen),
                        "not an IP:port address",
                    ));
                    None
                }
            };
            if let (Some(p), Some(_)) = (protocol, &s.tls) {
                if !p.accepts_tls() {
                    errors.push(field_error(
                        format!("{at}.tls"),
                        "{ cert, key }",
                        format!("protocol {} does not use TLS", p.as_str()),
                    ));
                }
            }
            if let Some(tls) = &s.tls {
                for (what, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if !path.is_file() {
                        errors.push(field_error(
                            format!("{at}.tls.{what}"),
                            format!("{:?}", path.display().to_string()),
                            "no such file",
                        ));
                    }
                }
            }
            let accept_loops = match &s.accept_loops {
                None => Some(AcceptLoops::default()),
                Some(AcceptLoopsSetting::Count(n)) if (1..=MAX_ACCEPT_LOOPS as i64).contains(n) => {
                    Some(AcceptLoops::Count(*n as usize))
                }
                Some(AcceptLoopsSetting::Word(w)) if w == "auto" => Some(AcceptLoops::Auto),
                Some(other) => {
                    let value = match other {
                        AcceptLoopsSetting::Count(n) => n.to_string(),
                        AcceptLoopsSetting::Word(w) => format!("{w:?}"),
                    };
                    errors.push(field_error(
                        format!("{at}.accept_loops"),
                        value,
                        format!(
                            "must be between 1 and {MAX_ACCEPT_LOOPS}, or \"auto\" (one per worker thread)"
                        ),
                    ));
                    None
                }
            };
            let pool = match PoolConfig::default().apply(&s.pool, &format!("{at}.pool.")) {
                Ok((pool, _)) => Some(pool),
                Err(e) => {
                    errors.extend(e.0);
                    None
                }
            };
            if let (Some(protocol), Some(listen), Some(accept_loops), Some(pool)) =
                (protocol, listen, accept_loops, pool)
            {
                servers.push(ServerSpec {
                    name: s.name.clone(),
                    protocol,
                    listen,
                    tls: s.tls.clone(),
                    accept_loops,
                    pool,
                });
            }
        }
        if addrs.contains(&admin_listen) {
            errors.push(field_error(
                "admin.listen",
                admin_listen,
                "a server listens here too",
            ));
        }
        if self.server.is_empty() {
            // Most likely a file cut short; taken live, it would stop every server.
            errors.push(field_error(
                "server",
                "(none)",
                "at least one [[server]] is required",
            ));
        }
        if errors.is_empty() {
            Ok(RunConfig {
                admin_listen,
                admin_token,
                admin_probes_need_token: admin.probes_need_token.unwrap_or(false),
                admin_pool,
                admin_spare_fds,
                drain_timeout,
                drain_delay,
                log,
                worker_threads,
                servers,
            })
        } else {
            Err(ConfigFileError(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        let cfg = RunConfig::from_toml(
            r#"
            [admin]
            listen = "127.0.0.1:9090"
            [[server]]
            name = "web"
            protocol = "http"
            listen = "127.0.0.1:3000"
              [server.pool]
              max_connections = 1000
              connection_timeout = "30s"
              keep_alive_timeout = "5s"
              request_timeout = "30s"
              headers_timeout = "10s"
              [server.pool.http2]
              max_session_memory = 10485760
              max_header_list_size = 16384
              max_concurrent_streams = 250
              [server.pool.grpc]
              max_receive_message_length = 4194304
              max_send_message_length = 4194304
              keep_alive_time = "30s"
              [server.pool.websocket]
              ping_interval = "30s"
              pong_timeout = "10s"
              max_message_size = 16777216
            "#,
        )
        .unwrap();
        assert_eq!(cfg.servers.len(), 1);
        assert_eq!(cfg.servers[0].pool.max_connections, Some(1000));
        assert_eq!(cfg.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(cfg.drain_delay, Duration::ZERO, "absent: no delay");
    }

    #[test]
    fn drain_delay_is_a_bounded_duration() {
        let with = |delay: &str| {
            RunConfig::from_toml(&format!(
                "drain_delay = {delay:?}\n\
                 [[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n"
            ))
        };
        assert_eq!(with("5s").unwrap().drain_delay, Duration::from_secs(5));
        for (bad, why) in [
            ("0s", "greater than zero (leave it out for no delay)"),
            ("25h", "at most 24h"),
            ("soon", "not a duration"),
        ] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.0.len(), 1, "{err}");
            assert_eq!(err.0[0].field, "drain_delay");
            assert!(err.0[0].reason.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_documented_file_with_every_key_is_valid() {
        let doc = include_str!("../../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        let cfg = RunConfig::from_toml(&doc[start..end]).unwrap();
        let pool = &cfg.servers[0].pool;
        assert_eq!(pool.max_connection_age, Some(Duration::from_secs(600)));
        assert_eq!(pool.max_connection_age_grace, Duration::from_secs(30));
        assert_eq!(pool.max_requests_per_connection, Some(1000));
    }

    #[test]
    fn connection_lifetime_bounds_are_named_when_bad() {
        let err = RunConfig::from_toml(
            r#"
            [[server]]
            name = "a"
            protocol = "grpc"
            listen = "127.0.0.1:0"
            pool = { max_connection_age = "forever", max_connection_age_grace = "48h", max_requests_per_connection = 0 }
            "#,
        )
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "server[0] (a).pool.max_connection_age",
                "server[0] (a).pool.max_connection_age_grace",
                "server[0] (a).pool.max_requests_per_connection",
            ]
        );
        assert!(err.0[1].reason.contains("at most 24h"), "{err}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = RunConfig::from_toml(
            r#"
            drain_timeout = "never"
            drain_delay = "-1s"
            [[server]]
            name = "a"
            protocol = "gopher"
            listen = "nowhere"
            pool = { max_connections = 0, headers_timeout = "fast" }
            [[server]]
            name = "a"
            protocol = "http"
            listen = "127.0.0.1:0"
            tls = { cert = "/nonexistent.pem", key = "/nonexistent.key" }
            "#,
        )
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "drain_timeout",
                "drain_delay",
                "server[0] (a).protocol",
                "server[0] (a).listen",
                "server[0] (a).pool.max_connections",
                "server[0] (a).pool.headers_timeout",
                "server[1] (a).name",
                "server[1] (a).tls",
                "server[1] (a).tls.cert",
                "server[1] (a).tls.key",
            ]
        );
    }

    #[test]
    fn http2_and_grpc_servers_are_configured() {
        let cfg = RunConfig::from_toml(
            r#"
            [[server]]
            name = "h2"
            protocol = "http2"
            listen = "127.0.0.1:0"
              [server.pool.http2]
              keep_alive_interval = "15s"
              keep_alive_timeout = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.servers[0].protocol, Protocol::Http2);
        assert_eq!(
            cfg.servers[0].pool.http2.keep_alive_timeout,
            Duration::from_secs(5)
        );
        let grpc = RunConfig::from_toml(
            r#"
            [[server]]
            name = "g"
            protocol = "grpc"
            listen = "127.0.0.1:0"
              [server.pool.grpc]
              max_receive_message_length = 1024
              keep_alive_time = "20s"
            "#,
        )
        .unwrap();
        assert_eq!(grpc.servers[0].protocol, Protocol::Grpc);
        assert_eq!(grpc.servers[0].pool.grpc.max_receive_message_length, 1024);
        assert_eq!(
            grpc.servers[0].pool.grpc.keep_alive_time,
            Duration::from_secs(20)
        );
        let builtin = RunConfig::builtin();
        assert!(builtin
            .servers
            .iter()
            .any(|s| s.name == "h2" && s.protocol == Protocol::Http2));
        assert!(builtin
            .servers
            .iter()
            .any(|s| s.name == "rpc" && s.protocol == Protocol::Grpc));
    }

    #[test]
    fn accept_loops_and_worker_threads_are_read_and_bounded() {
        let cfg = RunConfig::from_toml(
            r#"
            [runtime]
            worker_threads = 3
            [[server]]
            name = "a"
            protocol = "http"
            listen = "127.0.0.1:0"
            accept_loops = 4
            [[server]]
            name = "b"
            protocol = "http"
            listen = "127.0.0.1:0"
            accept_loops = "auto"
            [[server]]
            name = "c"
            protocol = "http"
            listen = "127.0.0.1:0"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.worker_threads, Some(3));
        let loops: Vec<_> = cfg.servers.iter().map(|s| s.accept_loops).collect();
        assert_eq!(
            loops,
            [
                AcceptLoops::Count(4),
                AcceptLoops::Auto,
                AcceptLoops::Count(1)
            ]
        );
        assert_eq!(AcceptLoops::Count(4).resolve(), 4);
        assert_eq!(AcceptLoops::Auto.resolve(), 1, "outside a runtime");
        assert_eq!(RunConfig::builtin().worker_threads, None);

        let err = RunConfig::from_toml(
            r#"
            [runtime]
            worker_threads = 0
            [[server]]
            name = "a"
            protocol = "http"
            listen = "127.0.0.1:0"
            accept_loops = 0
            [[server]]
            name = "b"
            protocol = "http"
            listen = "127.0.0.1:0"
            accept_loops = "many"
            [[server]]
            name = "c"
            protocol = "http"
            listen = "127.0.0.1:0"
            accept_loops = 1025
            "#,
        )
        .unwrap_err();
        let lines: Vec<_> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "runtime.worker_threads = 0: must be between 1 and 1024 (leave it out for one per core)",
                "server[0] (a).accept_loops = 0: must be between 1 and 1024, or \"auto\" (one per worker thread)",
                "server[1] (b).accept_loops = \"many\": must be between 1 and 1024, or \"auto\" (one per worker thread)",
                "server[2] (c).accept_loops = 1025: must be between 1 and 1024, or \"auto\" (one per worker thread)",
            ]
        );
    }

    #[test]
    fn a_file_without_servers_is_refused() {
        let err = RunConfig::from_toml("[admin]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(err.to_string().contains("at least one [[server]]"), "{err}");
        assert!(RunConfig::from_toml("").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = RunConfig::from_toml(
            "[[server]]\nname='a'\nprotocol='http'\nlisten='127.0.0.1:1'\nmax_conns=5\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_conns"), "{err}");
    }

    #[test]
    fn an_admin_token_that_could_never_match_is_refused() {
        for token in [" secret", "secret\\n", "se\\tcret"] {
            let err = RunConfig::from_toml(&format!(
                "[admin]\ntoken = \"{token}\"\n[[server]]\nname = \"web\"\nprotocol = \"http\"\n\
                 listen = \"127.0.0.1:0\"\n"
            ))
            .unwrap_err();
            assert_eq!(err.0[0].field, "admin.token", "{token:?}: {err}");
            assert!(
                !err.to_string().contains("secret"),
                "the token stays hidden: {err}"
            );
        }
        assert_eq!(default_admin_pool().max_connections_per_ip, Some(16));
    }

    #[test]
    fn the_admin_section_takes_a_token_file_the_probe_rule_and_a_pool() {
        let dir = std::env::temp_dir().join(format!("poolserve-admin-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_file = {:?}\nprobes_need_token = true\n\
             spare_fds = 2\n\
             [admin.pool]\nmax_connections = 8\nheaders_timeout = \"1s\"\n\
             [[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n",
            secret.display().to_string()
        );
        let cfg = RunConfig::from_toml(&text).unwrap();
        assert_eq!(
            cfg.admin_token.as_deref(),
            Some("s3cret"),
            "newline trimmed"
        );
        assert!(cfg.admin_probes_need_token);
        assert_eq!(cfg.admin_pool.max_connections, Some(8));
        assert_eq!(cfg.admin_spare_fds, 2);
        assert_eq!(cfg.admin_pool.headers_timeout, Duration::from_secs(1));
        assert_eq!(
            cfg.admin_pool.request_timeout,
            default_admin_pool().request_timeout
        );
        assert!(cfg.warnings().is_empty(), "a token is set");

        let defaults = RunConfig::from_toml(
            "[[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        assert!(!defaults.admin_probes_need_token);
        assert_eq!(defaults.admin_pool, default_admin_pool());
        assert_eq!(defaults.admin_spare_fds, DEFAULT_SPARE_FDS);
        assert!(defaults.warnings().is_empty(), "loopback");

        let err = RunConfig::from_toml(&format!(
            "[admin]\ntoken = \"a\"\ntoken_file = {:?}\nspare_fds = 65\n\
             [admin.pool]\nmax_connections = 0\n\
             [[server]]\nname = \"admin\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n",
            dir.join("missing").display().to_string()
        ))
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "admin.token_file",
                "admin.pool.max_connections",
                "admin.spare_fds",
                "server[0] (admin).name"
            ],
            "{err}"
        );
        std::fs::write(&secret, " \n").unwrap();
        let err = RunConfig::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("the file is empty"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_admin_endpoint_off_loopback_without_a_token_is_warned_about() {
        let at = |listen: &str| {
            RunConfig::from_toml(&format!(
                "[admin]\nlisten = \"{listen}\"\n\
                 [[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n"
            ))
            .unwrap()
            .warnings()
        };
        for open in ["0.0.0.0:9090", "10.1.2.3:9090", "[::]:9090"] {
            let w = at(open);
            assert_eq!(w.len(), 1, "{open}");
            assert_eq!(w[0].field, "admin.listen");
        }
        for closed in [
            "127.0.0.1:9090",
            "127.0.0.2:9090",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            assert!(at(closed).is_empty(), "{closed}");
        }
    }
}
