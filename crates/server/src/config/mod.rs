//! The config file (SPEC C) and applying a new one to a running process.

mod file;
mod reload;

pub use file::{
    default_admin_pool, AdminSection, ConfigFileError, FileConfig, LogConfig, LogSection,
    RunConfig, ServerSection, ServerSpec, ADMIN_POOL, DEFAULT_ADMIN_LISTEN, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_SPARE_FDS, MAX_SPARE_FDS,
};
pub(crate) use reload::{plan as plan_reload, recorded as recorded_after_reload};
pub use reload::{ReloadError, ReloadReport};
