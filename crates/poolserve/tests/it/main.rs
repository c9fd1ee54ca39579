//! The poolserve binary's integration tests, against real sockets, signals and real clients:
//! one test binary (one link), a module per area.

mod support;

mod axum_upgrade;
mod cli;
mod deploy;
mod fd_limit;
mod haproxy;
mod upgrade;
