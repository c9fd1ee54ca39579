//! The Kubernetes manifest in deploy/ agrees with poolserve: its embedded config passes
//! `poolserve --check` without a warning, the admin token is a file a Secret mounts, the probes
//! point at the admin endpoint's `/livez` and `/readyz` and at the gRPC server, the ports are
//! the config's, the Service leaves the admin port out, `drain_delay` (not a `preStop` sleep)
//! covers the readiness probe's window, and the grace period outlasts the delay and the drain.
//! (The manifest is read with PyYAML from the test venv that scripts/test installs.)

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{venv_python, BIN};

#[test]
fn the_kubernetes_manifest_matches_the_config_it_carries() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("poolserve-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("poolserve.toml");
    let out = Command::new(venv_python())
        .arg(root.join("crates/poolserve/tests/it/k8s_manifest.py"))
        .arg(root.join("deploy/kubernetes/poolserve.yaml"))
        .arg(&toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The admin token is read from a file a Secret mounts; here a file of our own stands in.
    let token_file = m["admin_token_file"]
        .as_str()
        .expect("the admin token comes from a file");
    assert!(
        m["secret_files"][token_file].is_array(),
        "{token_file} is not a file a Secret mounts: {}",
        m["secret_files"]
    );
    let stand_in = dir.join("admin-token");
    std::fs::write(&stand_in, "a-token\n").unwrap();
    let config = std::fs::read_to_string(&toml).unwrap().replace(
        &format!("{token_file:?}"),
        &format!("{:?}", stand_in.display().to_string()),
    );
    std::fs::write(&toml, config).unwrap();
    let check = Command::new(BIN)
        .arg("--check")
        .arg(&toml)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "the embedded config is refused: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.stderr.is_empty(),
        "the embedded config is warned about: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let admin = m["admin_port"].as_u64().unwrap();
    assert_eq!(m["liveness"]["path"], "/livez");
    assert_eq!(m["liveness"]["port"].as_u64(), Some(admin));
    assert_eq!(m["readiness"]["path"], "/readyz");
    assert_eq!(m["readiness"]["port"].as_u64(), Some(admin));
    let grpc_port = m["servers"]
        .as_object()
        .unwrap()
        .values()
        .find(|s| s[0] == "grpc")
        .map(|s| s[1].as_u64().unwrap())
        .expect("a grpc server for the gRPC probe");
    assert_eq!(m["startup"]["grpc"].as_u64(), Some(grpc_port));
    // Every server's port and the admin port are container ports the Service targets.
    let ports: Vec<u64> = m["container_ports"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_u64().unwrap())
        .collect();
    for server in m["servers"].as_object().unwrap().values() {
        assert!(ports.contains(&server[1].as_u64().unwrap()), "{server}");
    }
    assert!(ports.contains(&admin));
    // The Service publishes every server and not the admin endpoint (PATCH changes limits).
    let targets = m["service_targets"].as_array().unwrap();
    for (name, port) in m["container_ports"].as_object().unwrap() {
        let published = targets.iter().any(|t| t == name);
        if port.as_u64() == Some(admin) {
            assert!(!published, "the Service publishes the admin port");
        } else {
            assert!(published, "Service misses {name}");
        }
    }
    // The pod serves on, unready, for longer than the readiness probe takes to notice; poolserve
    // does that itself, so no preStop sleep.
    let delay = humantime_secs(
        m["drain_delay"]
            .as_str()
            .expect("drain_delay is set, so the pod serves on while it leaves the endpoints"),
    );
    let noticed = Duration::from_secs(m["readiness_window_seconds"].as_u64().unwrap());
    assert!(
        delay > noticed,
        "drain_delay {delay:?} must outlast the readiness probe's window {noticed:?}"
    );
    assert!(m["pre_stop"].is_null(), "a preStop hook: {}", m["pre_stop"]);
    // The kubelet waits longer than poolserve's delay and drain.
    let drain = humantime_secs(m["drain_timeout"].as_str().unwrap());
    let grace = Duration::from_secs(m["grace_seconds"].as_u64().unwrap());
    assert!(
        grace > delay + drain,
        "grace {grace:?} must outlast drain_delay {delay:?} + drain_timeout {drain:?}"
    );
    // The container runs the mounted config.
    let args: Vec<&str> = m["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "--config");
    assert!(args[1].starts_with(m["config_mount"].as_str().unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seconds of a `"25s"`-style duration (the manifest uses whole seconds).
fn humantime_secs(text: &str) -> Duration {
    Duration::from_secs(text.trim_end_matches('s').parse().unwrap())
}
