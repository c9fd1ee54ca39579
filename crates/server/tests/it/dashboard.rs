//! The admin dashboard in a real browser: Debian's Chromium driven by playwright-core (both
//! installed by scripts/test). The page shows a pool turn overloaded when load fills it, and a
//! refused connection in its event log; a screenshot is saved under the test's target dir.

use crate::support;

use std::process::Stdio;

use poolserve_pool::PoolSettings;
use support::outside::system_tool;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How long the browser may take to start and load the page.
const BROWSER_START: std::time::Duration = std::time::Duration::from_secs(45);

#[tokio::test]
async fn the_dashboard_shows_a_pool_turning_overloaded() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let (status, page) = admin(h.admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>poolserve</title>"));

    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test (it runs npm ci in {})",
        browser_dir.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run scripts/test (it installs Debian's chromium)"
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut node = Command::new(system_tool("node"))
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{}/", h.admin))
        .arg("web")
        .arg(&screenshot)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    // Chromium's first start on a fresh machine, with the rest of the suite running beside it,
    // has taken more than `WAIT`; later starts take about a second.
    let first = tokio::time::timeout(BROWSER_START, lines.next_line())
        .await
        .expect("the page shows the pool healthy")
        .unwrap();
    assert_eq!(first.as_deref(), Some("watching"));

    // Two held connections fill the pool (overloaded); a third is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.http).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        held.push(s);
    }
    let refused = raw_exchange(h.http, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    let status = tokio::time::timeout(std::time::Duration::from_secs(40), node.wait())
        .await
        .expect("the page shows the overload")
        .unwrap();
    let shown = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(status.success(), "the browser script failed: {shown}");
    assert_eq!(shown, "overloaded active=2 / 2");
    assert!(screenshot.exists());
    drop(held);
}
