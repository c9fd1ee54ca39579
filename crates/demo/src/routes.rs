//! The demo app every default server answers with (SPEC D): `GET /`, `POST /echo`,
//! `GET /sleep?ms=N` and `GET /stream?chunks=N&interval_ms=M` (optionally `&size=B` to pad each
//! chunk to B bytes, for large streams).
//!
//! Generic over the request body so the same handler runs under poolserve and under a bare
//! hyper server in the benchmarks.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// The demo's response body.
pub type DemoBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Most chunks `/stream` sends, and the longest `/sleep`, so a request cannot pin a
/// connection forever.
pub const MAX_CHUNKS: u64 = 100_000;
/// Largest `/stream` chunk, in bytes.
pub const MAX_CHUNK_SIZE: u64 = 1 << 20;
/// Longest `/sleep` or `/stream` interval, in milliseconds.
pub const MAX_SLEEP_MS: u64 = 600_000;

fn text(status: StatusCode, body: &'static str) -> Response<DemoBody> {
    let mut res = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    res
}

fn query(req: &Request<impl Sized>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// Answers one demo request.
pub async fn handle<B>(req: Request<B>) -> Result<Response<DemoBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "hello"),
        (&Method::POST, "/echo") => {
            let mut res = Response::new(req.into_body().map_err(Into::into).boxed_unsync());
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        (&Method::GET, "/sleep") => {
            let ms = query(&req, "ms").unwrap_or(0).min(MAX_SLEEP_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slept")
        }
        (&Method::GET, "/stream") => {
            let chunks = query(&req, "chunks").unwrap_or(10).min(MAX_CHUNKS);
            let interval = query(&req, "interval_ms").unwrap_or(100).min(MAX_SLEEP_MS);
            let size = query(&req, "size").unwrap_or(0).min(MAX_CHUNK_SIZE) as usize;
            let body = ChunkStream {
                left: chunks,
                size,
                sent: 0,
                interval: Duration::from_millis(interval),
                sleep: None,
            };
            let mut res = Response::new(body.boxed_unsync());
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            res
        }
        (_, "/" | "/echo" | "/sleep" | "/stream") => {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            res.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
            res
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// A body that sends `chunk N\n` every interval.
struct ChunkStream {
    left: u64,
    size: usize,
    sent: u64,
    interval: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for ChunkStream {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.sent > 0 {
            let interval = self.interval;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        self.left -= 1;
        self.sent += 1;
        let mut chunk = format!("chunk {}\n", self.sent);
        if chunk.len() < self.size {
            chunk.insert_str(0, &".".repeat(self.size - chunk.len()));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// The demo app as a tower service.
pub fn service<B>() -> impl tower::Service<
    Request<B>,
    Response = Response<DemoBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tower::service_fn(handle::<B>)
}
