//! The `poolserve` binary as users run it: `--check`, and SIGTERM draining in-flight requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_poolserve");
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
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
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
    let path = write_config(
        "run.toml",
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
            s.write_all(b"GET /sleep?ms=700 HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            done_tx.send(reply).unwrap();
        });
    }
    // Five connections admitted, then the signal.
    let mut added = 0;
    while added < 5 {
        let line = logs.recv_timeout(WAIT).expect("connection logs");
        if line["message"] == "connection added" {
            added += 1;
        }
    }
    assert_eq!(send_sigterm(child.id()), 0);
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

fn send_sigterm(pid: u32) -> i32 {
    // The kill(1) utility keeps this test free of unsafe code.
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or(1)
}

fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(WAIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("poolserve did not exit after SIGTERM");
        }
    }
}
