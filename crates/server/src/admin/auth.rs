//! The admin token: `Authorization: Bearer TOKEN`, the scheme matched case-insensitively (RFC
//! 7235 §2.1, RFC 6750 §2.1) and the token compared in time that does not depend on where a
//! wrong token first differs.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::state::AdminState;

/// Answers 401 to a request without the configured token; passes every request when none is set.
pub(super) async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        if !presented.is_some_and(|p| same_token(p, token.as_bytes())) {
            let mut res =
                (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"poolserve-admin\""),
            );
            return res;
        }
    }
    next.run(req).await
}

/// The credentials of an `Authorization` value in the `Bearer` scheme, whatever its case;
/// one or more spaces separate scheme and token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether `presented` is `expected`, in time that does not depend on where a wrong token
/// first differs (`subtle`), so a caller cannot learn a token byte by byte from how fast wrong
/// guesses are refused; only a length mismatch is told at once.
fn same_token(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_matched_in_any_case() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "BeArEr  abc",
            "Bearer abc ",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"abc"[..]), "{v:?}");
        }
        for v in [
            "Basic abc",
            "Bearerabc",
            "Bearer",
            "Bearer ",
            "Token abc",
            "",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn only_the_same_token_matches() {
        assert!(same_token(b"s3cret", b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret!",
            b"S3cret",
            b"x3cret",
            b"s3creu",
        ] {
            assert!(!same_token(wrong, b"s3cret"), "{wrong:?}");
        }
        // A presented token that ends in NUL bytes is not padded into a match.
        assert!(!same_token(b"ab\0", b"ab"));
        assert!(!same_token(b"ab", b"ab\0"));
    }
}
