//! `admin.spare_fds` (A5): the descriptors kept so the admin endpoint answers while the process
//! is out of them are in `/config` and change live with a reload. (The binary's `fd_limit` test
//! runs them under a real `RLIMIT_NOFILE`.)

use crate::support;

use std::time::Duration;

use poolserve_pool::PoolSettings;
use poolserve_server::config::DEFAULT_SPARE_FDS;
use support::*;

async fn spare_fds_in_config(admin_addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = admin(admin_addr, "/config").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["admin"]["spare_fds"].clone()
}

#[tokio::test]
async fn spare_fds_are_in_config_and_reload_live() {
    let h = start_with(PoolSettings::default(), Duration::from_secs(5)).await;
    assert_eq!(spare_fds_in_config(h.admin).await, DEFAULT_SPARE_FDS);
    let mut next = h.runtime.config();
    next.admin_spare_fds = 1;
    let report = h.runtime.reload(&next).await.unwrap();
    let admin_changes = &report
        .changed
        .iter()
        .find(|(name, _)| name == "admin")
        .unwrap_or_else(|| panic!("{report:?}"))
        .1;
    let change = admin_changes
        .iter()
        .find(|c| c.field == "spare_fds")
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!((change.old.as_str(), change.new.as_str()), ("4", "1"));
    assert_eq!(spare_fds_in_config(h.admin).await, 1);
    assert_eq!(h.runtime.config().admin_spare_fds, 1);
    // The same value again changes nothing.
    let report = h.runtime.reload(&next).await.unwrap();
    assert!(report.changed.is_empty(), "{report:?}");
}
