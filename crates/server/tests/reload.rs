//! Reloading a running config: pool settings live, a rotated certificate seen by new TLS
//! handshakes while open connections keep theirs, servers added and removed (draining), and a
//! broken file changing nothing.

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
    let report = h.runtime.reload(&h.runtime.config()).await.unwrap();
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
    let err = h.runtime.reload(&next).await.unwrap_err();
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
    let report = h.runtime.reload(&next).await.unwrap();
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
async fn servers_added_start_and_servers_removed_drain_while_the_others_serve() {
    let h = start(PoolSettings::default()).await;
    let mut busy = Client::connect(h.http).await;
    let in_flight = tokio::spawn(async move { busy.request("GET", "/sleep?ms=300", "").await });
    let web = h.runtime.server("web").unwrap();
    tokio::time::timeout(WAIT, async {
        while web.pool().metrics().requests_in_flight == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    let mut next = h.runtime.config();
    let mut extra = next
        .servers
        .iter()
        .find(|s| s.name == "web")
        .unwrap()
        .clone();
    extra.name = "extra".into();
    next.servers.retain(|s| s.name != "web");
    next.servers.push(extra);
    let report = h.runtime.reload(&next).await.unwrap();
    assert_eq!(report.servers_added, ["extra"]);
    assert_eq!(report.servers_removed, ["web"]);

    let added = h.runtime.server("extra").expect("the new server runs");
    assert_eq!(get(added.local_addr(), "/").await.status(), 200);
    assert!(h.runtime.server("web").is_none());
    let names: Vec<_> = h
        .runtime
        .config()
        .servers
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&"extra".to_string()) && !names.contains(&"web".to_string()));
    // The removed server's request in flight finishes; its listener is gone; others serve on.
    let res = in_flight.await.unwrap();
    assert_eq!(res.status(), 200);
    tokio::time::timeout(WAIT, async {
        while h.runtime.registry().get("web").is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the drained pool leaves the registry");
    assert!(
        TcpStream::connect(h.http).await.is_err(),
        "no longer listening"
    );
    let (mut h2, _conn) = H2Client::connect(h.h2c).await;
    assert_eq!(h2.get("/").await.status(), 200);
}

#[tokio::test]
async fn what_cannot_change_live_is_reported_and_left_as_it_runs() {
    let h = start(PoolSettings::default()).await;
    let mut next = h.runtime.config();
    next.servers[0].listen = "127.0.0.1:1".parse().unwrap();
    let moved = next.servers[0].name.clone();
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(
        report
            .not_applied
            .iter()
            .any(|n| n.contains(&format!("{moved:?}"))),
        "{report:?}"
    );
    // /config still shows what runs, and the server still serves where it was.
    let running = h.runtime.config();
    let kept = running.servers.iter().find(|s| s.name == moved).unwrap();
    assert_ne!(kept.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(get(h.http, "/").await.status(), 200);
}
