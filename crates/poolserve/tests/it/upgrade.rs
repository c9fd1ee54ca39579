//! Zero-downtime binary upgrade: SIGUSR2 starts the binary found at the process's path (here
//! replaced on disk first) on the same listening sockets; under continuous load on http, h2c
//! and grpc (Python's http.client and grpcio in `upgrade_load.py`, hyper's HTTP/2 client here)
//! no request fails and no connection is refused, the old process exits 0, and what answers afterwards, the admin
//! endpoint included, is the new process, which systemd is told about (`NOTIFY_SOCKET`). A new
//! binary that fails, or is not ready within `drain_timeout`, leaves the old one serving.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{http_get, json_lines, signal, venv_python, wait_exit, BIN};
const WAIT: Duration = Duration::from_secs(20);

/// A directory of this test's own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("poolserve-upgrade-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes to kill if the test ends early: the new poolserve is not this test's child.
#[derive(Default)]
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Puts a copy of `from` at `to` the way an install does: a new file renamed over the old
/// one, so a process running the old file keeps it.
fn install(from: &Path, to: &Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

fn wait_for(
    logs: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line: {what}"));
        if matches(&line) {
            return line;
        }
    }
}

/// Where each server listens, the admin endpoint and the process id, from the start-up log.
fn started(
    logs: &mpsc::Receiver<serde_json::Value>,
) -> (
    std::collections::HashMap<String, SocketAddr>,
    SocketAddr,
    u32,
) {
    let mut servers = std::collections::HashMap::new();
    loop {
        let line = wait_for(logs, "poolserve is up", |l| {
            l["message"] == "ready" || l["message"] == "poolserve is up"
        });
        if line["message"] == "ready" {
            servers.insert(
                line["server"].as_str().unwrap().to_owned(),
                line["addr"].as_str().unwrap().parse().unwrap(),
            );
        } else {
            let admin = line["admin"].as_str().unwrap().parse().unwrap();
            return (servers, admin, line["pid"].as_u64().unwrap() as u32);
        }
    }
}

/// The `pid` of `/stats`: the process answering on the admin endpoint's address.
fn stats_pid(admin: SocketAddr) -> u64 {
    let reply = http_get(admin, "/stats");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{reply}"));
    doc["pid"].as_u64().unwrap()
}

/// Whether process `pid` is gone (or a zombie nobody reaped: it no longer runs).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// h2c load: GETs back to back with hyper's HTTP/2 client (prior knowledge; a connection that
/// got a GOAWAY is replaced, and a request it never sent is retried), each answer checked.
#[derive(Default)]
struct H2cLoad {
    ok: AtomicU64,
    after_mark: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    marked: AtomicBool,
    stop: AtomicBool,
}

impl H2cLoad {
    fn run(self: Arc<Self>, addr: SocketAddr) -> std::thread::JoinHandle<()> {
        use http_body_util::{BodyExt, Empty};
        use hyper::body::Bytes;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build_http::<Empty<Bytes>>();
                let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
                let limit = Instant::now() + Duration::from_secs(120);
                while !self.stop.load(Ordering::Relaxed) && Instant::now() < limit {
                    let marked = self.marked.load(Ordering::Relaxed);
                    let answer = tokio::time::timeout(Duration::from_secs(10), async {
                        let res = client
                            .get(uri.clone())
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                        let (status, version) = (res.status(), res.version());
                        let body = res
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                        Ok::<_, String>((status, version, body.to_bytes()))
                    })
                    .await;
                    match answer {
                        Ok(Ok((status, version, _)))
                            if status == 200 && version == hyper::Version::HTTP_2 =>
                        {
                            self.ok.fetch_add(1, Ordering::Relaxed);
                            if marked {
                                self.after_mark.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => {
                            self.failed.fetch_add(1, Ordering::Relaxed);
                            let mut errors = self.errors.lock().unwrap();
                            if errors.len() < 5 {
                                errors.push(format!("{other:?}"));
                            }
                        }
                    }
                }
            });
        })
    }
}

/// Polls `cond` until it holds, failing after [`WAIT`].
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config(dir: &Path, drain_timeout: &str) -> PathBuf {
    let path = dir.join("poolserve.toml");
    std::fs::write(
        &path,
        format!(
            r#"
drain_timeout = "{drain_timeout}"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
accept_loops = 2
[[server]]
name = "h2c"
protocol = "http2"
listen = "127.0.0.1:0"
[[server]]
name = "rpc"
protocol = "grpc"
listen = "127.0.0.1:0"
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn sigusr2_upgrades_under_load_without_a_failed_request_and_the_new_process_serves() {
    let dir = Dir::new("load");
    let program = dir.0.join("poolserve");
    std::fs::copy(BIN, &program).unwrap();
    let config = config(&dir.0, "10s");
    let notify_path = dir.0.join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let mut reaper = Reaper::default();

    let mut old = Command::new(&program)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    reaper.0.push(old.id());
    let logs = json_lines(old.stdout.take().unwrap());
    let (servers, admin, old_pid) = started(&logs);
    assert_eq!(old_pid, old.id());
    let mut note = [0u8; 128];
    let n = systemd.recv(&mut note).expect("READY=1 at start");
    assert_eq!(&note[..n], b"READY=1");
    assert_eq!(stats_pid(admin), u64::from(old_pid));

    let mut load = Command::new(venv_python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/upgrade_load.py"))
        .arg(servers["web"].to_string())
        .arg(servers["rpc"].to_string())
        .arg(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    reaper.0.push(load.id());
    let (said, heard) = mpsc::channel();
    let load_out = load.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(load_out).lines().map_while(Result::ok) {
            if said.send(line).is_err() {
                return;
            }
        }
    });
    let h2c = Arc::new(H2cLoad::default());
    let h2c_thread = h2c.clone().run(servers["h2c"]);
    assert_eq!(heard.recv_timeout(WAIT).expect("the load runs"), "running");
    wait_until("h2c answers", || h2c.ok.load(Ordering::Relaxed) > 0);

    // A new binary is installed over the one running, then SIGUSR2.
    install(Path::new(BIN), &program);
    let old_exe = std::fs::read_link(format!("/proc/{old_pid}/exe")).unwrap();
    assert!(
        old_exe.to_string_lossy().ends_with("(deleted)"),
        "the old process runs the file replaced: {}",
        old_exe.display()
    );
    // A long request the old process holds through its drain.
    let sleeper = servers["web"];
    let held = std::thread::spawn(move || http_get(sleeper, "/sleep?ms=2500"));
    wait_until("the long request is in", || {
        http_get(admin, "/metrics")
            .contains("poolserve_requests_in_flight{server=\"web\",protocol=\"http\"} 1")
    });
    signal("USR2", old_pid);
    let up = wait_for(&logs, "the new process is up", |l| {
        l["message"] == "poolserve is up" && l["pid"].as_u64() != Some(u64::from(old_pid))
    });
    let new_pid = up["pid"].as_u64().unwrap() as u32;
    reaper.0.push(new_pid);
    assert_eq!(
        up["admin"].as_str(),
        Some(admin.to_string().as_str()),
        "the same admin address"
    );
    let n = systemd.recv(&mut note).expect("MAINPID= after the upgrade");
    assert_eq!(
        std::str::from_utf8(&note[..n]).unwrap(),
        format!("MAINPID={new_pid}")
    );
    // The new process runs the file now at the path.
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(exe, program.canonicalize().unwrap(), "{}", exe.display());

    // A stop meant for the service (systemd signals every process of the unit) reaches the old
    // process while it drains: it goes on draining, and the long request is answered.
    wait_for(&logs, "the old process drains", |l| {
        l["message"] == "upgrade: the new process is ready; this one stops accepting and drains"
    });
    signal("TERM", old_pid);
    let status = wait_exit(old);
    assert_eq!(status.code(), Some(0), "the old process drains and exits 0");
    let reply = held.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Requests go on against the new process alone.
    std::fs::write(dir.0.join("mark"), "").unwrap();
    h2c.marked.store(true, Ordering::Relaxed);
    assert_eq!(
        heard.recv_timeout(WAIT).expect("answers after the upgrade"),
        "marked"
    );
    wait_until("h2c answers after the upgrade", || {
        h2c.after_mark.load(Ordering::Relaxed) >= 20
    });
    std::fs::write(dir.0.join("stop"), "").unwrap();
    h2c.stop.store(true, Ordering::Relaxed);
    let report = heard.recv_timeout(WAIT).expect("the load's report");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(load.wait().unwrap().success());
    h2c_thread.join().unwrap();
    for proto in ["http", "grpc"] {
        let r = &report[proto];
        assert_eq!(r["failed"], 0, "{proto}: {r}");
        assert!(r["after_mark"].as_u64().unwrap() >= 20, "{proto}: {r}");
    }
    assert_eq!(
        h2c.failed.load(Ordering::Relaxed),
        0,
        "h2c: {} answered, failures: {:?}",
        h2c.ok.load(Ordering::Relaxed),
        h2c.errors.lock().unwrap()
    );
    assert_eq!(
        stats_pid(admin),
        u64::from(new_pid),
        "the admin endpoint is the new one's"
    );
    let reply = http_get(servers["web"], "/");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let (_, doc) = http_get(admin, "/config")
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let web = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(
        web["listening_sockets"], 2,
        "both of web's sockets went along: {web}"
    );

    signal("TERM", new_pid);
    let deadline = Instant::now() + WAIT;
    while !ended(new_pid) {
        assert!(
            Instant::now() < deadline,
            "the new process did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    reaper.0.clear();
}

#[test]
fn a_new_binary_that_fails_or_is_not_ready_in_time_leaves_the_old_one_serving() {
    let dir = Dir::new("fail");
    let program = dir.0.join("poolserve");
    std::fs::copy(BIN, &program).unwrap();
    let config = config(&dir.0, "2s");
    let mut reaper = Reaper::default();
    let mut old = Command::new(&program)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    reaper.0.push(old.id());
    let logs = json_lines(old.stdout.take().unwrap());
    let (servers, admin, pid) = started(&logs);

    for (script, why) in [
        // Exits at once: the old process sees the channel close.
        ("#!/bin/sh\nexit 3\n", "exit status: 3"),
        // Never says it is ready: the old process gives up after drain_timeout (2s).
        (
            "#!/bin/sh\nexec sleep 30\n",
            "not ready within drain_timeout",
        ),
    ] {
        let staged = dir.0.join("script");
        std::fs::write(&staged, script).unwrap();
        let mut perms = std::fs::metadata(&staged).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&staged, perms).unwrap();
        std::fs::rename(&staged, &program).unwrap();
        signal("USR2", pid);
        let failed = wait_for(&logs, "upgrade failed", |l| {
            l["message"] == "upgrade failed; this process serves on"
        });
        let logged = failed["why"].as_str().unwrap();
        assert!(logged.contains(why), "{logged}");
        assert!(old.try_wait().unwrap().is_none(), "the old process runs on");
        for (addr, path) in [(servers["web"], "/"), (admin, "/livez")] {
            let reply = http_get(addr, path);
            assert!(reply.starts_with("HTTP/1.1 200"), "{addr}{path}: {reply}");
        }
        assert_eq!(stats_pid(admin), u64::from(pid));
    }
    signal("TERM", pid);
    assert_eq!(wait_exit(old).code(), Some(0));
    reaper.0.clear();
}
