//! The RFC 6455 opening handshake: the answer to an HTTP/1.1 upgrade request.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res
}

/// Answers the upgrade request: 101 with the accept key, or why not.
pub(super) fn handshake(req: &mut Request<Incoming>) -> (Response<Full<Bytes>>, Option<OnUpgrade>) {
    let h = req.headers();
    if req.method() != Method::GET
        || !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        let mut res = reply(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send a GET with Upgrade: websocket\n",
        );
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return (res, None);
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut res = reply(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version\n",
        );
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return (res, None);
    }
    // A valid key is 16 random bytes in base64: 24 characters ending in "==".
    let key = match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if k.len() == 24 && k.as_bytes().ends_with(b"==") => k.as_bytes().to_vec(),
        _ => {
            return (
                reply(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n"),
                None,
            )
        }
    };
    let accept = derive_accept_key(&key);
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = res.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    (res, Some(hyper::upgrade::on(req)))
}
