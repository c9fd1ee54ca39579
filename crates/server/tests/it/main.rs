//! poolserve-server's integration tests, against real sockets and real clients: one test
//! binary (one link), a module per area. Tests that time something hold
//! [`support::isolation::timing`], tests that load the machine (a browser, Python clients,
//! load generators) hold [`support::isolation::heavy`], so the two never run side by side.

mod support;

mod accept_loops;
mod admin;
mod builtin;
mod dashboard;
mod drain_delay;
mod grpc;
mod handover;
mod http;
mod http2;
mod layers;
mod lifetime;
mod limits;
mod outside_clients;
mod outside_h2_grpc;
mod reload;
mod session_memory;
mod shutdown;
mod spare_fds;
mod timeouts;
mod user_services;
mod websocket;
