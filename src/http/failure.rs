//! Why forwarding a request failed, and how a failure is named and counted: the failure of one
//! attempt (`Failure`) and its cause (`Cause`, the `switchyard_retries_by_cause_total` label),
//! the answer once every server failed (`502` as `connect_error` or `server_error`), the retry
//! counters, and the reason a refused request is counted under
//! (`switchyard_http_request_errors_total`). Whether to retry is `forward`'s.

use std::io;
use std::sync::Arc;

use http::{Request, Response, StatusCode};

use crate::access_log::Termination;
use crate::config::Backend;
use crate::metrics::{self as m};
use crate::snapshot::{BackendSet, Server};

use super::*;

/// Why a forward attempt failed. (Large, but moved once per attempt: boxing the request back
/// would add an allocation on the retry path for nothing.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Failure {
    /// Nothing was sent: the request comes back and may go to another server. The cause says
    /// whether connecting failed, or the connection did before the request went out on it.
    Connect(io::Error, Request<UpBody>, Cause),
    /// The request reached the server (at least partly) and no usable response came back.
    /// Our HTTP/1.1 client hands back the head of a replayable request (idempotent and
    /// bodiless), so it needs no `Replay` copy.
    Sent(BoxError, Option<http::request::Parts>),
    Timeout,
}

/// What made a forward attempt fail, as a `switchyard_retries_by_cause_total` cause. Nothing of
/// the request reached a server for the connect causes (`upstream::connect_cause`); the others
/// had a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Connecting failed: `connect_refused`, `connect_timeout`, `tls_error`, `connect_failed`.
    Connect(&'static str),
    /// The server closed or reset the connection before answering.
    ServerReset,
    /// The server answered with something that is not HTTP (or over our limits).
    ServerInvalid,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Connect(c) => c,
            Cause::ServerReset => "server_reset",
            Cause::ServerInvalid => "server_invalid",
        }
    }

    /// Why a request that reached a server failed.
    pub(crate) fn of_sent(e: &BoxError) -> Cause {
        match e.downcast_ref::<crate::http::h1::Error>() {
            Some(crate::http::h1::Error::Invalid(_)) => Cause::ServerInvalid,
            Some(_) => Cause::ServerReset,
            None => match e.downcast_ref::<hyper::Error>() {
                Some(h) if h.is_parse() || h.is_parse_status() => Cause::ServerInvalid,
                _ => Cause::ServerReset,
            },
        }
    }

    /// How a request ends when the last server tried failed this way.
    pub(crate) fn termination(self) -> Termination {
        match self {
            Cause::Connect(_) => Termination::ConnectError,
            Cause::ServerReset | Cause::ServerInvalid => Termination::ServerError,
        }
    }
}

/// Every server of the backend was tried (or `retries` ran out) and the last one failed as
/// `last`: `502`, as `connect_error` when it could not be reached, else `server_error`.
pub(crate) fn exhausted(
    cfg: &Backend,
    last: Cause,
    server: Option<Arc<Server>>,
) -> (Response<Body>, Option<Arc<Server>>) {
    let resp = match (last, &server) {
        (Cause::Connect(_), _) | (_, None) => unreachable_backend(&cfg.name),
        (_, Some(s)) => plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "502 Bad Gateway: server {} of backend {} failed before answering\n",
                s.addr, cfg.name
            ),
        ),
    };
    (resp, server)
}

/// Counts one more attempt, after a failure of `cause`.
pub(crate) fn count_retry(backend: &BackendSet, cause: Cause) {
    let name = &backend.config.name;
    metrics::counter!(m::RETRIES, "backend" => name.clone()).increment(1);
    metrics::counter!(m::RETRIES_BY_CAUSE, "backend" => name.clone(), "cause" => cause.as_str())
        .increment(1);
    backend.runtime.stats.retry();
}

/// The `switchyard_http_request_errors_total` reason of a request refused with `status`
/// (`head`: while its head was read, where a `408` is the header timeout).
pub(crate) fn refusal_reason(status: u16, head: bool) -> &'static str {
    match status {
        405 => "method_not_allowed",
        408 if head => "header_timeout",
        408 => "body_timeout",
        413 => "too_large",
        414 => "uri_too_long",
        431 => "headers_too_large",
        501 => "not_implemented",
        505 => "version",
        _ => "bad_request",
    }
}

/// The reason a request answered `code` and ending as `termination` is a client error: our
/// own refusal (not a server's 4xx passed on).
pub(crate) fn client_error(code: u16, termination: Termination) -> Option<&'static str> {
    matches!(
        termination,
        Termination::BadRequest | Termination::ClientTimeout
    )
    .then(|| refusal_reason(code, false))
}

/// Counts a refused request in `switchyard_http_request_errors_total`.
pub(crate) fn count_client_error(frontend: &str, reason: &'static str) {
    metrics::counter!(m::HTTP_REQUEST_ERRORS,
        "frontend" => frontend.to_string(), "reason" => reason)
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_after_the_connect_are_the_servers() {
        let reset: BoxError = Box::new(crate::http::h1::Error::Closed(None));
        assert_eq!(Cause::of_sent(&reset), Cause::ServerReset);
        let garbage: BoxError = Box::new(crate::http::h1::Error::Invalid("status line"));
        assert_eq!(Cause::of_sent(&garbage), Cause::ServerInvalid);
        assert_eq!(Cause::ServerReset.termination(), Termination::ServerError);
        assert_eq!(Cause::ServerInvalid.termination(), Termination::ServerError);
        assert_eq!(
            Cause::Connect("connect_refused").termination(),
            Termination::ConnectError
        );
        assert_eq!(refusal_reason(408, true), "header_timeout");
        assert_eq!(refusal_reason(408, false), "body_timeout");
        assert_eq!(refusal_reason(431, true), "headers_too_large");
        assert_eq!(client_error(400, Termination::Ok), None);
        assert_eq!(
            client_error(414, Termination::BadRequest),
            Some("uri_too_long")
        );
    }
}
