//! `max_body_size` (README, "Request body limits"): the largest request body a route forwards.
//! It owns the check at the head (a `Content-Length` over the limit is answered `413` at once,
//! before any upstream is picked or reached), the limit handed to the streamed body (a chunked
//! or HTTP/2 body without a length is counted as it goes up, `body::ClientBody`, and fails past
//! the limit), the `413` answer, and the refusal's metric. `forward::handle` calls it after the
//! redirect, as the contract orders (allow/deny, redirect, rate_limit, max_body_size, header
//! rules, balancing).
//!
//! As HAProxy and Envoy do: the answer closes an HTTP/1 connection (`Connection: close`; our
//! server drops what the client still sends, for a bounded time, so the answer is not lost to a
//! reset), and ends an HTTP/2 stream. A body found too large while the upstream's answer is
//! already on its way cannot be answered `413`: that answer is cut short and the connection
//! closed.

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};

use crate::config::Policy;

use super::Body;
use super::answers::refusal;

/// A request's body limit, carried in its extensions from `handle` to the body that goes
/// upstream (`headers::rewrite_request`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) u64);

/// The error a body over its limit ends with (the upstream request fails with it).
#[derive(Debug, thiserror::Error)]
#[error("the request body is over max_body_size")]
pub(crate) struct TooLarge;

/// Applies `policy`'s `max_body_size` to `req`: the `413` when its `Content-Length` is over
/// the limit; otherwise `None`, and a body without a length (chunked, HTTP/2) carries the limit
/// up to be counted as it streams.
pub(crate) fn check<B>(
    policy: Option<&Policy>,
    req: &mut Request<B>,
) -> Option<Box<Response<Body>>> {
    let limit = policy?.max_body_size?;
    match content_length(req.headers()) {
        Some(n) if n > limit => Some(Box::new(too_large(limit))),
        // Within the limit, and the framing holds it to that length.
        Some(_) => None,
        None => {
            req.extensions_mut().insert(BodyLimit(limit));
            None
        }
    }
}

/// The request's `Content-Length`, when it has exactly one that is a number (a malformed one
/// was refused before this, as a bad request).
fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    v.to_str().ok()?.trim().parse().ok()
}

/// The `413` for a body over `limit` bytes, closing the connection.
pub(crate) fn too_large(limit: u64) -> Response<Body> {
    refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "413 Payload Too Large: the request body is over this route's limit of {limit} bytes (max_body_size)\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u64) -> Policy {
        Policy {
            max_body_size: Some(limit),
            ..Policy::default()
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_and_one_without_carries_the_limit() {
        let p = policy(10);
        let mut over = Request::post("/")
            .header("content-length", "11")
            .body(())
            .unwrap();
        let resp = check(Some(&p), &mut over).expect("413");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let mut at = Request::post("/")
            .header("content-length", "10")
            .body(())
            .unwrap();
        assert!(check(Some(&p), &mut at).is_none());
        assert!(at.extensions().get::<BodyLimit>().is_none());
        let mut chunked = Request::post("/")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert!(check(Some(&p), &mut chunked).is_none());
        assert_eq!(
            chunked.extensions().get::<BodyLimit>().map(|l| l.0),
            Some(10)
        );
        // No limit: nothing done.
        let mut any = Request::post("/")
            .header("content-length", "99")
            .body(())
            .unwrap();
        assert!(check(Some(&Policy::default()), &mut any).is_none());
        assert!(check(None, &mut any).is_none());
        assert!(any.extensions().get::<BodyLimit>().is_none());
    }
}
