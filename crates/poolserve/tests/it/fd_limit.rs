//! Accept pressure (A5): the binary under a lowered `RLIMIT_NOFILE`, a server driven out of
//! file descriptors by real connections. The failed accepts are counted
//! (`poolserve_accept_errors_total{kind="emfile"}`), announced (`accept_error` on `/events`),
//! make the pool `degraded` with a message naming them, and the admin endpoint answers
//! throughout (it spends a spare descriptor); once the clients leave, the server accepts again
//! and its health recovers once a health window passes without a failed accept.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{free_port, BIN};
const WAIT: Duration = Duration::from_secs(15);
/// The descriptor limit the child runs under: its own dozen or so, four spares for the admin
/// endpoint, and room for about 80 connections.
const NOFILE: u32 = 96;
/// Clients connecting to the server: more than it has descriptors for.
const CLIENTS: usize = 140;

/// Kills the child if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a fresh connection, answered within a few seconds: the whole response.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply)
}

fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `poolserve_accept_errors_total{server="web",kind}`.
fn accept_errors(admin: SocketAddr, kind: &str) -> f64 {
    let metrics = get(admin, "/metrics").expect("/metrics answers");
    metrics
        .lines()
        .find(|l| {
            l.starts_with("poolserve_accept_errors_total{")
                && l.contains("server=\"web\"")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no accept_errors sample for web, {kind}:\n{metrics}"))
}

/// The `web` pool in `/health`.
fn web_health(admin: SocketAddr) -> serde_json::Value {
    let reply = get(admin, "/health").expect("/health answers");
    let doc: serde_json::Value = serde_json::from_str(body(&reply)).unwrap();
    doc["pools"]["web"].clone()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follows `/events`: each server-sent event's data, as JSON.
fn follow_events(admin: SocketAddr) -> mpsc::Receiver<serde_json::Value> {
    let mut s = TcpStream::connect(admin).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            if let Ok(v) = serde_json::from_str(data.trim()) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The binary under `RLIMIT_NOFILE` = [`NOFILE`], on a config with an admin endpoint and one
/// `http` server `web` (health window 2s), both on free ports.
struct Child96 {
    running: Running,
    web: SocketAddr,
    admin: SocketAddr,
    /// Its log lines, read so that it never blocks writing them.
    _logs: mpsc::Receiver<serde_json::Value>,
    dir: std::path::PathBuf,
}

impl Child96 {
    fn start(name: &str) -> Child96 {
        let (web, admin) = (free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("poolserve-fd-limit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("poolserve.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[admin]
listen = "127.0.0.1:{admin}"
[log]
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:{web}"
  [server.pool.health]
  window = "2s"
"#
            ),
        )
        .unwrap();
        // sh's ulimit lowers the limit for the process it execs: no unsafe code here.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {NOFILE} && exec \"$0\" --config \"$1\""))
            .arg(BIN)
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let running = Running(child);
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        wait_log(&logs, |l| l["message"] == "poolserve is up");
        Child96 {
            running,
            web: SocketAddr::from(([127, 0, 0, 1], web)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            _logs: logs,
            dir,
        }
    }
}

impl Drop for Child96 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Child96 {
    /// How many of the child's descriptors are `/dev/null`: the admin endpoint's spares, and
    /// whatever it inherited.
    fn dev_nulls(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.running.0.id());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target == std::path::Path::new("/dev/null"))
            .count()
    }
}

/// The next log line that `pred` accepts.
fn wait_log(
    logs: &mpsc::Receiver<serde_json::Value>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = logs.recv_timeout(WAIT).expect("the log line awaited");
        if pred(&line) {
            return line;
        }
    }
}

#[test]
fn a_server_out_of_file_descriptors_counts_announces_and_degrades_while_the_admin_endpoint_answers()
{
    let child = Child96::start("pressure");
    let (web, admin) = (child.web, child.admin);
    let whole_reserve = child.dev_nulls();
    let events = follow_events(admin);
    assert_eq!(accept_errors(admin, "emfile"), 0.0);

    // More clients than the process has descriptors for: the kernel completes every
    // handshake, the server accepts until EMFILE.
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect_timeout(&web, Duration::from_secs(2)).unwrap())
        .collect();
    wait_until("a failed accept counted", || {
        accept_errors(admin, "emfile") > 0.0
    });
    let announced = loop {
        let e = events
            .recv_timeout(WAIT)
            .expect("an accept_error event on /events");
        if e["event"] == "accept_error" && e["pool"] == "web" {
            break e;
        }
    };
    assert_eq!(announced["kind"], "emfile", "{announced}");
    assert!(announced["failures"].as_u64() >= Some(1), "{announced}");
    let health = web_health(admin);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["message"]
            .as_str()
            .unwrap()
            .contains("accept failing (emfile)"),
        "{health}"
    );
    // The admin endpoint answers, again and again, while the server is still out of room.
    for _ in 0..10 {
        let livez = get(admin, "/livez").expect("/livez answers");
        assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
    }
    let failed_before = accept_errors(admin, "emfile");
    wait_until("accepts still failing", || {
        accept_errors(admin, "emfile") > failed_before
    });

    // The clients leave: the server accepts again, serves, and is healthy once a health
    // window (2s) has passed without a failed accept.
    drop(clients);
    wait_until("the server to serve again", || {
        get(web, "/").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    wait_until("web healthy again", || {
        web_health(admin)["status"] == "healthy"
    });
    let livez = get(admin, "/livez").expect("/livez answers");
    assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
    // Every spare the admin endpoint spent is back.
    wait_until("the spares back", || child.dev_nulls() == whole_reserve);
}
