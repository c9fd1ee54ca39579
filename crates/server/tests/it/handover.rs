//! Handing listening sockets to another runtime, as the binary's upgrade does between two
//! processes: the second runtime starts on the first one's sockets (by server name, by exact
//! address for a renamed server, the admin endpoint's too), binds what it lacks and retires
//! what it has too many of; the first then stops accepting everywhere and drains what it has.

use crate::support;

use poolserve_pool::PoolSettings;
use poolserve_server::config::AcceptLoops;
use poolserve_server::Runtime;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_second_runtime_starts_on_the_first_ones_sockets_and_the_first_drains() {
    let a = start_tuned(PoolSettings::default(), WAIT, |c| {
        for s in &mut c.servers {
            if s.name == "web" {
                s.accept_loops = AcceptLoops::Count(2);
            }
        }
    })
    .await;
    // A request in flight on the first runtime before the second starts.
    let mut held = tokio::net::TcpStream::connect(a.http).await.unwrap();
    held.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab")
        .await
        .unwrap();
    let old_web = a.runtime.server("web").unwrap();
    wait_until("a request in flight", || {
        old_web.pool().metrics().requests_in_flight > 0
    })
    .await;

    let sockets = a.runtime.listening_sockets().unwrap();
    let mut names: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["admin", "h2", "h2c", "live", "live-tls", "rpc", "rpc-tls", "web", "web", "web-tls"]
    );

    // The second runtime's file: `web` with three loops, `h2c` renamed on its exact address,
    // `live` gone; every other server on port 0 as before.
    let mut next = a.runtime.config();
    for s in &mut next.servers {
        match s.name.as_str() {
            "web" => s.accept_loops = AcceptLoops::Count(3),
            "h2c" => {
                s.name = "h2c-renamed".into();
                s.listen = a.h2c;
            }
            _ => {}
        }
    }
    next.servers.retain(|s| s.name != "live");
    let b = Runtime::start_with_sockets(
        &next,
        poolserve_demo::routes::service(),
        poolserve_demo::grpc::services(),
        sockets,
    )
    .await
    .unwrap();
    let new_web = b.server("web").unwrap();
    assert_eq!(new_web.local_addr(), a.http);
    assert_eq!(new_web.listening_sockets(), 3, "two handed over, one bound");
    assert_eq!(b.server("h2c-renamed").unwrap().local_addr(), a.h2c);
    assert_eq!(b.server("rpc").unwrap().local_addr(), a.grpc);
    assert_eq!(b.server("web-tls").unwrap().local_addr(), a.https);
    assert_eq!(b.admin_addr(), a.admin);
    assert!(b.server("live").is_none());

    let Harness {
        runtime: first,
        http,
        ws,
        admin: admin_addr,
        ..
    } = a;
    let drained = tokio::spawn(first.drain_handed_over());
    wait_until("the first runtime to stop accepting", || {
        old_web.accepted_by_socket().is_empty()
    })
    .await;
    // Every new connection is the second runtime's, the admin endpoint's included.
    let before = new_web.pool().metrics().accepted;
    for _ in 0..20 {
        assert_eq!(get(http, "/").await.status(), 200);
    }
    assert_eq!(new_web.pool().metrics().accepted, before + 20);
    let (status, stats) = admin(admin_addr, "/stats").await;
    assert_eq!(status, 200);
    assert!(stats.contains("\"h2c-renamed\""), "{stats}");
    let (mut h2, _conn) = H2Client::connect(a_h2c(&b)).await;
    assert_eq!(h2.get("/").await.status(), 200);

    // The request in flight finishes on the first runtime, which then ends.
    held.write_all(b"cde").await.unwrap();
    let reply = read_to_close(&mut held).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("abcde"), "{reply}");
    let reports = tokio::time::timeout(WAIT, drained).await.unwrap().unwrap();
    assert!(reports.iter().any(|(name, _)| name == "web"), "{reports:?}");
    // Nobody took `live`'s socket: with the first runtime gone, its address is closed.
    assert!(tokio::net::TcpStream::connect(ws).await.is_err());
    b.shutdown().await;
}

fn a_h2c(b: &Runtime) -> std::net::SocketAddr {
    b.server("h2c-renamed").unwrap().local_addr()
}
