//! Both sides of the same-binary duel answer the demo app: `same_binary bare http|http2` and
//! `same_binary pool --config FILE`, each started on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_same_binary");
const WAIT: Duration = Duration::from_secs(10);

/// Starts `same_binary ARGS`; returns it and the address of its first "listening on" line.
fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("same_binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (child, addr)
}

/// `GET /` over HTTP/1.1: the demo app answers `hello`.
fn assert_hello(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello"), "{response}");
}

#[test]
fn the_bare_side_serves_the_demo_app_over_http1_and_h2c() {
    let (mut http, addr) = spawn(&["bare", "http", "127.0.0.1:0"]);
    assert_hello(addr);
    http.kill().unwrap();
    http.wait().unwrap();

    let (mut h2, addr) = spawn(&["bare", "http2", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // The client preface and an empty SETTINGS frame: the server answers with its SETTINGS.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 0x4, "first frame type: {head:?}");
    h2.kill().unwrap();
    h2.wait().unwrap();
}

#[test]
fn the_pool_side_serves_the_demo_app_from_a_config_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("same-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pool.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n\
         [[server]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (child, addr) = spawn(&["pool", "--config", config.to_str().unwrap()]);
    assert_hello(addr);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    std::fs::remove_dir_all(&dir).unwrap();
}
