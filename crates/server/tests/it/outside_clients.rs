//! Interoperability with outside implementations: Python `websockets` and the Autobahn
//! TestSuite cases (run by kosoku), installed by `scripts/test` into a venv.
//!
//! A missing venv fails the test with instructions; it never skips.

use crate::support;

use std::path::PathBuf;

use support::outside::{run, venv_bin};
use tokio::process::Command;

use poolserve_pool::PoolSettings;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_interoperates_over_ws_and_wss() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ws_client.py");
    run(Command::new(venv_bin("python"))
        .arg(&script)
        .arg(format!("ws://{}/", h.ws)))
    .await;
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &h.pem.cert_pem).unwrap();
    run(Command::new(venv_bin("python"))
        .arg(&script)
        .arg(format!("wss://localhost:{}/", h.wss.port()))
        .arg("--cafile")
        .arg(&ca))
    .await;
    let m = h.runtime.server("live").unwrap().pool().metrics();
    assert_eq!((m.messages_in, m.messages_out), (3, 3));
    assert_eq!(
        h.runtime
            .server("live-tls")
            .unwrap()
            .pool()
            .metrics()
            .messages_in,
        3
    );
}

/// Every Autobahn case of sections 1–10 (all but permessage-deflate, sections 12–13, which
/// tungstenite does not implement) must end OK, NON-STRICT or INFORMATIONAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_sections_1_to_10_pass() {
    let _isolated = support::isolation::heavy().await;
    let h = start(PoolSettings::default()).await;
    let dir = TempDir::new();
    let mut cmd = Command::new(venv_bin("kosoku"));
    cmd.arg(h.ws.to_string())
        .args(["-p", "4", "-o"])
        .arg(&dir.0);
    for section in ["1", "2", "3", "4", "5", "6", "7", "9", "10"] {
        cmd.arg("-i").arg(format!("{section}.*"));
    }
    let out = run(&mut cmd).await;
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("index.json")).unwrap()).unwrap();
    let mut cases = 0;
    for (_, agent) in index.as_object().unwrap() {
        for (case, result) in agent.as_object().unwrap() {
            cases += 1;
            let behavior = result["behavior"].as_str().unwrap_or("?");
            assert!(
                ["OK", "NON-STRICT", "INFORMATIONAL"].contains(&behavior),
                "case {case}: {behavior}\n{out}"
            );
        }
    }
    assert_eq!(cases, 301, "{out}");
}
