//! Reloading a running config: pool settings live, a rotated certificate seen by new TLS
//! handshakes while open connections keep theirs, and a broken file changing nothing.

mod support;

use poolserve_pool::PoolSettings;
use poolserve_server::tls::PemPair;
use support::*;
use tokio::net::TcpStream;

async fn tls_handshake(h: &Harness, trusted: &PemPair) -> Result<Client, std::io::Error> {
    let stream = TcpStream::connect(h.https).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(trusted).connect(name, stream).await?;
    Ok(Client::over(h.https, tls).await)
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_old_connections_continue() {
    let h = start(PoolSettings::default()).await;
    let mut old = tls_handshake(&h, &h.pem)
        .await
        .expect("the first certificate");
    assert_eq!(old.get("/").await.status(), 200);

    let config = h.runtime.config();
    let files = config
        .servers
        .iter()
        .find(|s| s.name == "web-tls")
        .and_then(|s| s.tls.clone())
        .unwrap();
    let rotated = PemPair::self_signed().unwrap();
    std::fs::write(&files.cert, &rotated.cert_pem).unwrap();
    std::fs::write(&files.key, &rotated.key_pem).unwrap();
    let report = h.runtime.reload(&h.runtime.config()).unwrap();
    assert!(
        report.certificates_replaced.iter().any(|s| s == "web-tls"),
        "{report:?}"
    );

    let mut new = tls_handshake(&h, &rotated)
        .await
        .expect("the new certificate");
    assert_eq!(new.get("/").await.status(), 200);
    assert!(
        tls_handshake(&h, &h.pem).await.is_err(),
        "new handshakes no longer present the old certificate"
    );
    // The connection made before the rotation goes on.
    assert_eq!(old.get("/").await.status(), 200);

    // A broken certificate file is refused by name and changes nothing, pool settings included.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let mut next = h.runtime.config();
    for s in &mut next.servers {
        s.pool = pool(PoolSettings {
            max_connections: Some(3),
            ..Default::default()
        });
    }
    let err = h.runtime.reload(&next).unwrap_err();
    assert!(
        err.0.iter().any(|f| f.field == "server[web-tls].tls"),
        "{err}"
    );
    assert_eq!(
        h.runtime
            .server("web")
            .unwrap()
            .pool()
            .config()
            .max_connections,
        None
    );
    let mut again = tls_handshake(&h, &rotated)
        .await
        .expect("still the rotated certificate");
    assert_eq!(again.get("/").await.status(), 200);

    // With the files whole again, the same change applies.
    std::fs::write(&files.cert, &rotated.cert_pem).unwrap();
    let report = h.runtime.reload(&next).unwrap();
    assert!(
        report.changed.iter().any(|(name, _)| name == "web"),
        "{report:?}"
    );
    assert_eq!(
        h.runtime
            .server("web")
            .unwrap()
            .pool()
            .config()
            .max_connections,
        Some(3)
    );
}

#[tokio::test]
async fn what_cannot_change_live_is_reported_and_left_as_it_runs() {
    let h = start(PoolSettings::default()).await;
    let mut next = h.runtime.config();
    next.servers.retain(|s| s.name != "live");
    next.servers[0].listen = "127.0.0.1:1".parse().unwrap();
    let moved = next.servers[0].name.clone();
    let report = h.runtime.reload(&next).unwrap();
    assert!(
        report
            .not_applied
            .iter()
            .any(|n| n.contains("\"live\" was removed")),
        "{report:?}"
    );
    assert!(
        report
            .not_applied
            .iter()
            .any(|n| n.contains(&format!("{moved:?}"))),
        "{report:?}"
    );
    // /config still shows what runs.
    let running = h.runtime.config();
    assert!(running.servers.iter().any(|s| s.name == "live"));
    assert_ne!(
        running
            .servers
            .iter()
            .find(|s| s.name == moved)
            .unwrap()
            .listen,
        "127.0.0.1:1".parse().unwrap()
    );
    assert_eq!(get(h.http, "/").await.status(), 200);
}
