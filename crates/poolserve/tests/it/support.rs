//! What the binary's tests share: the binary, the Python venv, free ports, signals, waiting
//! for a process to exit, and its JSON log lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

/// The poolserve binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_poolserve");

/// Bound on waiting for a process to exit.
pub const EXIT_WAIT: Duration = Duration::from_secs(20);

/// The Python of the test venv `scripts/test` installs; a missing venv fails the test.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("POOLSERVE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let bin = venv.join("bin/python");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test (it installs the Python test clients)",
        bin.display()
    );
    bin
}

/// A port free on 127.0.0.1 a moment ago, for a config that must name its port ahead.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends signal `name` (`TERM`, `USR2`, ...) to `pid`; the kill(1) utility keeps the tests free
/// of unsafe code.
pub fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits for `child` to exit, killing it and failing the test after [`EXIT_WAIT`].
pub fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(EXIT_WAIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("poolserve {pid} did not exit");
        }
    }
}

/// The JSON log lines written to `out` (a child's stdout), as they come.
pub fn json_lines(out: impl Read + Send + 'static) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// A one-shot `GET path` on a new connection to `addr`: the whole reply, head and body (empty
/// when the connection fails or [`EXIT_WAIT`] passes).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut reply = String::new();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return reply;
    };
    let _ = s.set_read_timeout(Some(EXIT_WAIT));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .is_ok()
    {
        let _ = s.read_to_string(&mut reply);
    }
    reply
}
