//! The config file (SPEC C) and applying a new one to a running process.

mod file;
mod reload;

pub use file::{
    default_admin_pool, AcceptLoops, AcceptLoopsSetting, AdminSection, ConfigFileError, FileConfig,
    LogConfig, LogSection, RunConfig, RuntimeSection, ServerSection, ServerSpec, ADMIN_POOL,
    DEFAULT_ADMIN_LISTEN, DEFAULT_DRAIN_TIMEOUT, DEFAULT_SPARE_FDS, MAX_ACCEPT_LOOPS,
    MAX_SPARE_FDS, MAX_WORKER_THREADS,
};
pub(crate) use reload::{plan as plan_reload, recorded as recorded_after_reload};
pub use reload::{ReloadError, ReloadReport};
