//! The admin endpoint: bearer token, probes and the metrics exposition.

mod support;

use std::time::Duration;

use poolserve_pool::PoolSettings;
use support::*;

#[tokio::test]
async fn bearer_token_guards_every_admin_path() {
    let h = start_full(
        PoolSettings::default(),
        Duration::from_secs(5),
        Some("s3cret"),
    )
    .await;
    for path in ["/metrics", "/health", "/livez", "/readyz"] {
        assert_eq!(admin_with(h.admin, path, None).await.0, 401, "{path}");
        assert_eq!(
            admin_with(h.admin, path, Some("wrong")).await.0,
            401,
            "{path}"
        );
        assert_eq!(
            admin_with(h.admin, path, Some("s3cret")).await.0,
            200,
            "{path}"
        );
    }
    // The servers themselves are not behind the token.
    assert_eq!(get(h.http, "/").await.status(), 200);
}

#[tokio::test]
async fn metrics_expose_every_spec_family_for_every_pool() {
    let h = start(PoolSettings {
        max_connections: Some(10),
        ..Default::default()
    })
    .await;
    assert_eq!(get(h.http, "/").await.status(), 200);
    let (status, body) = admin(h.admin, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "poolserve_connections_active{",
        "poolserve_connections_accepted_total{",
        "poolserve_connections_rejected_total{",
        "poolserve_connections_closed_total{",
        "poolserve_timeouts_total{",
        "poolserve_requests_total{",
        "poolserve_request_duration_seconds_bucket{",
        "poolserve_request_duration_seconds_count{",
        "poolserve_pool_max_connections{",
        "poolserve_pool_health{",
    ] {
        for server in [
            "server=\"web\",protocol=\"http\"",
            "server=\"web-tls\",protocol=\"https\"",
        ] {
            assert!(
                body.lines()
                    .any(|l| l.starts_with(family) && l.contains(server)),
                "{family} {server} missing in\n{body}"
            );
        }
    }
    assert_eq!(
        metric(
            h.admin,
            "poolserve_pool_health",
            "server=\"web\",protocol=\"http\",status=\"healthy\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_requests_total", "server=\"web\"").await,
        1.0
    );
    assert_eq!(
        metric(h.admin, "poolserve_pool_max_connections", "server=\"web\"").await,
        10.0
    );
}
