//! The `poolserve` binary as users run it: `--check`, and SIGTERM or SIGINT draining in-flight requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{http_get, json_lines, signal, wait_exit, BIN};
const WAIT: Duration = Duration::from_secs(15);

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("poolserve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_valid_file() {
    let path = write_config(
        "good.toml",
        "[[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n[server.pool]\nmax_connections = 10\n",
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_refuses_a_log_level_that_is_no_tracing_filter() {
    let path = write_config(
        "bad-level.toml",
        "[log]\nlevel = \"info,=,[\"\n[[server]]\nname = \"web\"\nprotocol = \"http\"\n\
         listen = \"127.0.0.1:0\"\n",
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("log.level = \"info,=,[\""), "{err}");
    // And the binary will not start on it either.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_names_each_bad_field_and_exits_2() {
    let path = write_config(
        "bad.toml",
        r#"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
  [server.pool]
  max_connections = 0
  keep_alive_timeout = "soon"
"#,
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server[0] (web).pool.max_connections = 0"),
        "{err}"
    );
    assert!(
        err.contains("server[0] (web).pool.keep_alive_timeout = \"soon\""),
        "{err}"
    );
}

#[test]
fn check_refuses_a_duration_past_its_bound_naming_the_field() {
    let path = write_config(
        "endless.toml",
        r#"
drain_timeout = "300000000000y"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
  [server.pool]
  keep_alive_timeout = "300000000000y"
"#,
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for field in ["drain_timeout", "server[0] (web).pool.keep_alive_timeout"] {
        let line = format!("{field} = \"300000000000y\": must be at most 24h");
        assert!(err.contains(&line), "{line} not in:\n{err}");
    }
}

#[test]
fn check_refuses_unknown_keys() {
    let path = write_config(
        "unknown.toml",
        "[admin]\nlisten = \"127.0.0.1:0\"\nport = 1\n",
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
}

#[test]
fn an_admin_endpoint_open_without_a_token_is_warned_about() {
    let text = |admin: &str, token: &str| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n{token}\n[log]\nformat = \"json\"\n\
             [[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    let check = |path: &std::path::Path| {
        let out = Command::new(BIN).arg("--check").arg(path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "valid, only warned about");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let open = write_config("admin-open.toml", &text("0.0.0.0:0", ""));
    let err = check(&open);
    assert!(err.contains("warning: admin.listen = 0.0.0.0:0"), "{err}");
    let with_token = write_config("admin-token.toml", &text("0.0.0.0:0", "token = \"t\""));
    assert_eq!(check(&with_token), "");
    let loopback = write_config("admin-loopback.toml", &text("127.0.0.1:0", ""));
    assert_eq!(check(&loopback), "");

    // At start, the same warning is logged.
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&open)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = json_lines(child.stdout.take().unwrap());
    let mut warned = None;
    loop {
        let line = rx.recv_timeout(WAIT).expect("the start-up log");
        if line["message"] == "config warning" {
            warned = Some(line.clone());
        }
        if line["message"] == "poolserve is up" {
            break;
        }
    }
    let warned = warned.expect("a config warning at start");
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["field"], "admin.listen", "{warned}");
    signal("TERM", child.id());
    assert_eq!(wait_exit(child).code(), Some(0));
}

/// Starts the binary on a config with port 0 everywhere and reads the bound addresses from its
/// JSON log lines.
fn spawn(config: &std::path::Path) -> (Child, SocketAddr, mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = json_lines(child.stdout.take().unwrap());
    let addr = loop {
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let status = child.try_wait();
            let _ = child.kill();
            panic!("poolserve did not log its address (exit status: {status:?})");
        };
        if line["message"] == "ready" && line["server"] == "web" {
            break line["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    (child, addr, rx)
}

fn wait_for_log(rx: &mpsc::Receiver<serde_json::Value>, message: &str) {
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if line["message"] == message {
            return;
        }
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    a_signal_drains_in_flight_requests_and_exits_0("TERM");
}

#[test]
fn sigint_drains_in_flight_requests_and_exits_0() {
    a_signal_drains_in_flight_requests_and_exits_0("INT");
}

fn a_signal_drains_in_flight_requests_and_exits_0(name: &str) {
    let path = write_config(
        &format!("run-{name}.toml"),
        r#"
drain_timeout = "10s"
[admin]
listen = "127.0.0.1:0"
[log]
level = "debug"
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
"#,
    );
    let (child, addr, logs) = spawn(&path);
    let (done_tx, done_rx) = mpsc::channel();
    for _ in 0..5 {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(b"GET /sleep?ms=1500 HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            done_tx.send(reply).unwrap();
        });
    }
    // The signal goes once all five requests are being handled: a connection whose request
    // was not read yet is closed at once by a drain, as it has nothing in flight.
    let admin = loop {
        let line = logs.recv_timeout(WAIT).expect("the start-up log");
        if line["message"] == "poolserve is up" {
            break line["admin"].as_str().unwrap().parse().unwrap();
        }
    };
    let deadline = std::time::Instant::now() + WAIT;
    while requests_in_flight(admin) < 5.0 {
        assert!(std::time::Instant::now() < deadline, "5 requests in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(name, child.id());
    wait_for_log(&logs, "draining");
    for _ in 0..5 {
        let reply = done_rx.recv_timeout(WAIT).expect("the request completes");
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert!(reply.ends_with("slept"), "{reply}");
    }
    let status = wait_exit(child);
    assert_eq!(status.code(), Some(0));
}

/// `poolserve_requests_in_flight` of the `web` server, from the admin endpoint.
fn requests_in_flight(admin: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .lines()
        .find(|l| l.starts_with("poolserve_requests_in_flight{") && l.contains("server=\"web\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no in-flight gauge for web in:\n{reply}"))
}

fn web_pool(config: &str) -> serde_json::Value {
    let body = config.split("\r\n\r\n").nth(1).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()["pool"]
        .clone()
}

#[test]
fn a_changed_config_file_applies_live_and_a_broken_one_is_refused() {
    let text = |max: u32, headers: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
  [server.pool]
  max_connections = {max}
  headers_timeout = "{headers}"
"#
        )
    };
    let path = write_config("reload.toml", &text(10, "10s"));
    let (child, addr, logs) = spawn(&path);
    let admin: SocketAddr = loop {
        let line = logs.recv_timeout(WAIT).expect("startup logs");
        if line["message"] == "poolserve is up" {
            break line["admin"].as_str().unwrap().parse().unwrap();
        }
    };
    assert_eq!(web_pool(&http_get(admin, "/config"))["max_connections"], 10);

    // The file changes: the watcher applies it.
    std::fs::write(&path, text(1, "3s")).unwrap();
    wait_for_log(&logs, "config reloaded");
    let pool = web_pool(&http_get(admin, "/config"));
    assert_eq!(pool["max_connections"], 1);
    assert_eq!(pool["headers_timeout"], "3s");
    // And takes effect: one connection is served, the next is refused with the 503.
    let mut held = TcpStream::connect(addr).unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    held.set_read_timeout(Some(WAIT)).unwrap();
    held.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut over = TcpStream::connect(addr).unwrap();
    over.set_read_timeout(Some(WAIT)).unwrap();
    let mut refused = String::new();
    let _ = over.read_to_string(&mut refused);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(held);

    // A broken file is refused, naming the field, and the running config stays.
    std::fs::write(&path, text(0, "3s")).unwrap();
    let refusal = loop {
        let line = logs.recv_timeout(WAIT).expect("a refusal is logged");
        if line["message"] == "config field refused" {
            break line;
        }
    };
    assert_eq!(refusal["field"], "server[0] (web).pool.max_connections");
    wait_for_log(&logs, "reload refused; the running config stays");
    assert_eq!(web_pool(&http_get(admin, "/config"))["max_connections"], 1);

    // SIGHUP re-reads the file even when its time did not change.
    std::fs::write(&path, text(5, "3s")).unwrap();
    wait_for_log(&logs, "config reloaded");
    assert_eq!(
        Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    let reloaded = loop {
        let line = logs
            .recv_timeout(WAIT)
            .expect("the SIGHUP reload is logged");
        if line["message"] == "config reloaded" {
            break line;
        }
    };
    assert_eq!(reloaded["why"], "SIGHUP");
    assert_eq!(web_pool(&http_get(admin, "/config"))["max_connections"], 5);
    signal("TERM", child.id());
    assert_eq!(wait_exit(child).code(), Some(0));
}

#[test]
fn worker_threads_sizes_the_runtime_and_auto_runs_an_accept_loop_on_each() {
    let path = write_config(
        "cores.toml",
        r#"
[runtime]
worker_threads = 3
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
accept_loops = "auto"
"#,
    );
    let (child, addr, logs) = spawn(&path);
    let admin: SocketAddr = loop {
        let line = logs.recv_timeout(WAIT).expect("startup logs");
        if line["message"] == "poolserve is up" {
            break line["admin"].as_str().unwrap().parse().unwrap();
        }
    };
    let config = http_get(admin, "/config");
    let doc: serde_json::Value =
        serde_json::from_str(config.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    assert_eq!(doc["runtime"]["worker_threads"], 3, "{doc}");
    let web = &doc["servers"][0];
    assert_eq!(web["accept_loops"], "auto", "{web}");
    assert_eq!(web["listening_sockets"], 3, "{web}");
    for _ in 0..30 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    signal("TERM", child.id());
    assert_eq!(wait_exit(child).code(), Some(0));

    let bad = write_config(
        "cores-bad.toml",
        "[runtime]\nworker_threads = 0\n[[server]]\nname = \"web\"\nprotocol = \"http\"\n\
         listen = \"127.0.0.1:0\"\naccept_loops = \"all\"\n",
    );
    let out = Command::new(BIN).arg("--check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runtime.worker_threads = 0: must be between 1"),
        "{err}"
    );
    assert!(
        err.contains("server[0] (web).accept_loops = \"all\": must be between 1"),
        "{err}"
    );
}
