//! Keeps tests that assert how long something took apart from tests that load the machine (a
//! headless browser, Python clients, load generators). All tests share one binary and run two
//! at a time; a timeout measured while Chromium starts up would measure the machine, not the
//! server. Timing tests share the gate with each other; a heavy test holds it alone.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static GATE: RwLock<()> = RwLock::const_new(());

/// Held for the whole of a test that asserts durations.
pub async fn timing() -> RwLockReadGuard<'static, ()> {
    GATE.read().await
}

/// Held for the whole of a test that runs heavy outside programs.
pub async fn heavy() -> RwLockWriteGuard<'static, ()> {
    GATE.write().await
}
