//! poolserve behind a real load balancer: HAProxy (Debian's, installed by scripts/test) in front
//! of three instances, health-checking each one's `/readyz` (deploy/haproxy/haproxy.cfg).
//! A rolling restart under steady load loses no request, and with `drain_delay` HAProxy never
//! even has to retry one: each instance turns unready at SIGTERM and serves on until HAProxy has
//! taken it out of rotation. An instance driven to overloaded gets no new connections until it
//! recovers.
//!
//! HAProxy's config needs the backends' ports before they start, and a restarted instance must
//! come back on the same ports, so the ports are chosen by binding port 0 and releasing it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::support::{free_port, BIN};
const WAIT: Duration = Duration::from_secs(15);
/// Each instance's `drain_delay`: twenty times HAProxy's check interval (100 ms, down after one
/// failure), margin for a loaded machine.
const DRAIN_DELAY: &str = "2s";

fn haproxy_bin() -> std::path::PathBuf {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("haproxy is missing: run scripts/test (it installs Debian's haproxy)")
}

struct Instance {
    web: u16,
    admin: u16,
    config: std::path::PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn new(dir: &std::path::Path, name: &str, max_connections: u32) -> Instance {
        let (web, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
drain_timeout = "5s"
drain_delay = "{DRAIN_DELAY}"
[admin]
listen = "127.0.0.1:{admin}"
[log]
level = "info"
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:{web}"
  [server.pool]
  max_connections = {max_connections}
"#
            ),
        )
        .unwrap();
        let mut i = Instance {
            web,
            admin,
            config,
            child: None,
        };
        i.start();
        i
    }

    /// Starts the binary and waits for its "poolserve is up" log line.
    fn start(&mut self) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("poolserve is up") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("poolserve starts");
        self.child = Some(child);
    }

    /// SIGTERM, then waits for exit 0.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let exit = rx.recv_timeout(WAIT).expect("poolserve exits").unwrap();
        assert_eq!(exit.code(), Some(0));
    }

    /// Requests this instance's `web` server has served, from its metrics.
    fn requests(&self) -> u64 {
        let metrics = http_get(SocketAddr::from(([127, 0, 0, 1], self.admin)), "/metrics")
            .unwrap_or_default();
        metrics
            .lines()
            .find(|l| l.starts_with("poolserve_requests_total{") && l.contains("server=\"web\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `GET` on a fresh connection; the whole response, or why not.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply)
}

/// The body of a chunked HTTP/1.1 response (HAProxy's statistics page is one).
fn dechunk(mut chunked: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = chunked.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        body.push_str(&rest[..size]);
        let after = &rest[size..];
        chunked = after.strip_prefix("\r\n").unwrap_or(after);
    }
    body
}

struct Balancer {
    front: SocketAddr,
    /// HAProxy's statistics page (added by the test, not part of the recipe).
    stats: SocketAddr,
    child: Child,
}

impl Balancer {
    /// The `poolserve` backend's retries and redispatches so far (HAProxy's `wretr` and
    /// `wredis`): requests HAProxy had to send again because an instance failed them.
    fn retries(&self) -> (u64, u64) {
        let reply = http_get(self.stats, "/stats;csv").unwrap();
        let body = dechunk(reply.split_once("\r\n\r\n").map_or("", |(_, b)| b));
        let mut lines = body.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no {name} column in:\n{body}"))
        };
        let (retr, redis) = (column("wretr"), column("wredis"));
        let backend: Vec<&str> = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&"poolserve") && row.get(1) == Some(&"BACKEND"))
            .unwrap_or_else(|| panic!("no poolserve backend in:\n{body}"));
        let number = |i: usize| backend[i].parse::<u64>().unwrap_or(0);
        (number(retr), number(redis))
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_haproxy(dir: &std::path::Path, instances: &[&Instance]) -> Balancer {
    let (front, stats) = (free_port(), free_port());
    let recipe = include_str!("../../../../deploy/haproxy/haproxy.cfg");
    let mut cfg = recipe.replace("@FRONT@", &front.to_string());
    cfg.push_str(&format!(
        "\nlisten stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n"
    ));
    for (i, name) in ["A", "B", "C"].iter().enumerate() {
        cfg = cfg
            .replace(&format!("@WEB_{name}@"), &instances[i].web.to_string())
            .replace(&format!("@ADMIN_{name}@"), &instances[i].admin.to_string());
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(haproxy_bin())
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    let stats = SocketAddr::from(([127, 0, 0, 1], stats));
    let started = Instant::now();
    while http_get(front, "/").map_or(true, |r| !r.starts_with("HTTP/1.1 200")) {
        assert!(started.elapsed() < WAIT, "haproxy never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    Balancer {
        front,
        stats,
        child,
    }
}

/// Waits until `cond` holds, polling (the balancer's health checks run on their own clock).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("poolserve-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_rolling_restart_behind_haproxy_loses_no_request() {
    let dir = temp_dir().join("rolling");
    std::fs::create_dir_all(&dir).unwrap();
    let mut instances: Vec<Instance> = ["a", "b", "c"]
        .iter()
        .map(|n| Instance::new(&dir, n, 1000))
        .collect();
    let lb = start_haproxy(&dir, &instances.iter().collect::<Vec<_>>());

    // Steady load: four clients, each sending requests through HAProxy back to back, each on
    // a fresh connection, so requests are in flight whenever an instance gets its SIGTERM.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, front) = (stop.clone(), ok.clone(), failed.clone(), lb.front);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    match http_get(front, "/sleep?ms=5") {
                        Ok(r) if r.starts_with("HTTP/1.1 200") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{other:?}"));
                        }
                    }
                }
                failures
            })
        })
        .collect();
    for instance in instances.iter_mut() {
        let before = ok.load(Ordering::Relaxed);
        instance.stop();
        // The others carry the load while this one is down.
        wait_until("requests served with one instance down", || {
            ok.load(Ordering::Relaxed) >= before + 100
        });
        instance.start();
        // Back in rotation: the new process serves requests through the balancer.
        wait_until("the restarted instance to get traffic", || {
            instance.requests() > 0
        });
        assert!(
            ok.load(Ordering::Relaxed) > before,
            "requests went on during the restart"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = loaders
        .into_iter()
        .flat_map(|l| l.join().unwrap())
        .collect();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests lost: {failures:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 300,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    // No request needed HAProxy's retry: every instance was out of rotation before it closed
    // its listener (without drain_delay, HAProxy redispatches dozens of requests here).
    assert_eq!(lb.retries(), (0, 0), "(retries, redispatches)");
    drop(lb);
}

#[test]
fn an_overloaded_instance_gets_no_new_connections_until_it_recovers() {
    let dir = temp_dir().join("overload");
    std::fs::create_dir_all(&dir).unwrap();
    let instances = [
        Instance::new(&dir, "a", 1000),
        Instance::new(&dir, "b", 1000),
        Instance::new(&dir, "c", 2),
    ];
    let lb = start_haproxy(&dir, &instances.iter().collect::<Vec<_>>());
    // Two idle keep-alive connections fill instance c: 100 % utilisation is overloaded, so its
    // /readyz turns 503 and HAProxy takes it out of rotation.
    let web_c = SocketAddr::from(([127, 0, 0, 1], instances[2].web));
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(web_c).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.read_exact(&mut head).unwrap();
            s
        })
        .collect();
    let admin_c = SocketAddr::from(([127, 0, 0, 1], instances[2].admin));
    wait_until("instance c not ready", || {
        http_get(admin_c, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 503"))
    });
    // Two health-check intervals for HAProxy to see it.
    std::thread::sleep(Duration::from_millis(300));
    let before = instances[2].requests();
    for _ in 0..60 {
        let r = http_get(lb.front, "/").unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert_eq!(
        instances[2].requests(),
        before,
        "the overloaded instance got no new request"
    );
    // It recovers: the connections go, /readyz turns 200 and traffic comes back.
    held.clear();
    wait_until("instance c ready again", || {
        http_get(admin_c, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    wait_until("traffic back on instance c", || {
        let _ = http_get(lb.front, "/");
        instances[2].requests() > before
    });
    drop(lb);
}
