//! The HTTP request cycle shared by every protocol that runs on HTTP (HTTP/1.1, HTTP/2, the
//! WebSocket upgrade and what runs on them): the [`Handler`] bound, the adapter that records
//! each request in the pool, the request and response bodies that tell it when a request was
//! received and finished, the rules a protocol adds to them ([`RequestRules`]), keeping an
//! upgraded connection pooled, the timeout rule of an HTTP/1.1 connection (with the rule of an
//! upgraded one, which reads the `websocket` settings: an HTTP/1.1 handler's upgrade and a `ws`
//! server end the same way), which errors are the peer's, and a connection's budget for bytes
//! read ahead of its handlers. It knows no protocol's code above HTTP.

mod deadline;
mod errors;
mod handler;
mod read_budget;
mod request_body;
mod response_body;
mod rules;
mod service;
pub(crate) mod upgrade;

pub use deadline::{http1_deadline, http1_timer_at};
pub(crate) use errors::is_peer_fault;
pub use errors::BoxError;
pub use handler::{Handler, ResponseBody};
pub(crate) use read_budget::{ReadBudget, Reservation, Reserved};
pub use request_body::{Body, RequestTimeout};
pub use response_body::TrackedBody;
pub use rules::{PlainHttp, RequestRules};
pub(crate) use service::TrackedService;
pub use upgrade::PooledConnection;
