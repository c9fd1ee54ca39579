//! The handler bound, named once: what a user's service must be for poolserve to serve it.

use bytes::Bytes;
use http::{Request, Response};

use super::errors::BoxError;
use super::request_body::Body;

/// A response body a handler may answer with.
pub trait ResponseBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// A request handler: a tower `Service` from `Request<`[`Body`]`>` to a response with body `B`,
/// cloned once per connection. An axum `Router` is one.
pub trait Handler<B: ResponseBody>:
    tower::Service<
        Request<Body>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Handler<B> for S
where
    B: ResponseBody,
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}
