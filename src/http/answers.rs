//! Our own answers: the requests refused before anything is forwarded (`refuse`: framing,
//! Host, CONNECT, the request-target's length) and the short plain-text bodies of our error
//! statuses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};

use super::*;

/// A request that must not be forwarded, answered here (with a close, so nothing the client
/// sent after it is read as another request): a transfer coding other than one `chunked`
/// (hyper accepts any list that ends in `chunked`, and the other codings would be dropped when
/// the body is re-framed), an HTTP/1.1 request without exactly one valid Host (RFC 9112 3.2),
/// an absolute-form target whose authority differs from Host (HAProxy answers 400 too), and a
/// request-target longer than a quarter of `max_header_size` (414). Host rules here apply to
/// HTTP/1.x only: HTTP/2 requests get theirs (`:authority`) from `h2_rules::h2_to_h1`.
///
/// NOTE: on the path of every request, so it allocates nothing unless it refuses, and looks
/// up at most two headers: Host (HTTP/1.x), and Transfer-Encoding only when there is a body
/// (hyper gives a request with that header a body, or refuses it itself).
pub(crate) fn refuse<B: hyper::body::Body>(
    req: &Request<B>,
    max_header_size: usize,
    connect_ok: bool,
) -> Option<Response<Body>> {
    let bad = |why: &str| {
        Some(refusal(
            StatusCode::BAD_REQUEST,
            format!("400 Bad Request: {why}\n"),
        ))
    };
    if req.method() == Method::CONNECT && !(connect_ok && req.version() == Version::HTTP_11) {
        // Unless the frontend fronts forward proxies (`allow_connect`), a load balancer is no
        // forward proxy, and a `2xx` to a CONNECT turns the connection it went on into a
        // tunnel (nginx answers 400, and HAProxy passes it on). Over HTTP/2 a CONNECT is a
        // stream, which is not tunnelled here.
        return Some(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT is not served here\n",
        ));
    }
    if !req.body().is_end_stream() {
        let mut chunked = 0usize;
        for v in req.headers().get_all(header::TRANSFER_ENCODING) {
            let Ok(v) = v.to_str() else {
                return bad("invalid Transfer-Encoding");
            };
            for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !t.eq_ignore_ascii_case("chunked") {
                    return Some(refusal(
                        StatusCode::NOT_IMPLEMENTED,
                        format!("501 Not Implemented: transfer coding {t:?} is not supported\n"),
                    ));
                }
                chunked += 1;
            }
        }
        if chunked > 1 {
            return bad("chunked applied more than once");
        }
    }
    if uri_len(req.uri()) > max_header_size / 4 {
        return Some(refusal(
            StatusCode::URI_TOO_LONG,
            format!(
                "414 URI Too Long: the request-target is over {} bytes\n",
                max_header_size / 4
            ),
        ));
    }
    if req.version() > Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    // `None`: no Host (HTTP/1.0); `Some(None)`: an empty one (allowed when the target has no
    // authority); `Some(Some((host, port)))`.
    let host = match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => return bad("no Host header"),
        (None, _) => None,
        (Some(h), None) if h.is_empty() => Some(None),
        (Some(h), None) => match h.to_str().ok().and_then(split_host) {
            Some(hp) => Some(Some(hp)),
            None => return bad("invalid Host header"),
        },
        (Some(_), Some(_)) => return bad("more than one Host header"),
    };
    if let Some(target) = req.uri().authority() {
        let default = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let same = match host {
            Some(Some((h, port))) => {
                target.host().eq_ignore_ascii_case(h)
                    && target.port_u16().unwrap_or(default) == port.unwrap_or(default)
            }
            Some(None) => false,
            // HTTP/1.0 without Host: the target's authority is the only one.
            None => true,
        };
        if !same {
            return bad("the Host header does not match the absolute request-target");
        }
    }
    None
}

/// The length of the request-target as it was sent (scheme, authority, path and query).
pub(crate) fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + pq
}

/// Our own error answer to a request, closing the connection after it.
pub(crate) fn refusal(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = plain(status, body);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub(crate) fn unreachable_backend(backend: &str) -> Response<Body> {
    let body = format!("502 Bad Gateway: no server of backend {backend} could be reached\n");
    plain(StatusCode::BAD_GATEWAY, body)
}

pub(crate) fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_or_hostless_requests_are_refused() {
        let req = |v: Version, target: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().version(v).uri(target);
            for (n, val) in headers {
                b = b.header(*n, *val);
            }
            b.body(Full::new(Bytes::from_static(b"abc"))).unwrap()
        };
        let status =
            |r: &Request<Full<Bytes>>| refuse(r, 65536, false).map(|resp| resp.status().as_u16());
        let v11 = Version::HTTP_11;
        assert_eq!(status(&req(v11, "/", &[("host", "x")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "x:8080")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "[::1]:8080")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "")])), None);
        assert_eq!(status(&req(v11, "/", &[])), Some(400));
        assert_eq!(status(&req(Version::HTTP_10, "/", &[])), None);
        assert_eq!(
            status(&req(v11, "/", &[("host", "a"), ("host", "b")])),
            Some(400)
        );
        for bad in [
            "a, b", "a,b", "u@a", "a b", "a:b", "a:1:2", "a:99999", ":80", "[::1", "a/b",
        ] {
            assert_eq!(status(&req(v11, "/", &[("host", bad)])), Some(400), "{bad}");
        }
        assert_eq!(status(&req(v11, "http://a/", &[("host", "b")])), Some(400));
        assert_eq!(status(&req(v11, "http://a/", &[("host", "")])), Some(400));
        assert_eq!(status(&req(v11, "http://a/", &[])), Some(400));
        assert_eq!(status(&req(v11, "http://A:80/", &[("host", "a")])), None);
        assert_eq!(status(&req(v11, "http://a/", &[("host", "a:")])), None);
        assert_eq!(status(&req(v11, "https://a/", &[("host", "a:443")])), None);
        assert_eq!(
            status(&req(v11, "http://[::1]:81/", &[("host", "[::1]:81")])),
            None
        );
        assert_eq!(
            status(&req(v11, "http://a:8080/", &[("host", "a")])),
            Some(400)
        );
        assert_eq!(status(&req(Version::HTTP_10, "http://a/", &[])), None);
        // HTTP/2's Host rules are `h2_rules::h2_to_h1`'s, not `refuse`'s.
        assert_eq!(status(&req(Version::HTTP_2, "http://a/", &[])), None);
        let te = |v: &str| status(&req(v11, "/", &[("host", "x"), ("transfer-encoding", v)]));
        assert_eq!(te("chunked"), None);
        assert_eq!(te("Chunked"), None);
        assert_eq!(te("gzip, chunked"), Some(501));
        assert_eq!(te("chunked, chunked"), Some(400));
        let long = format!("/{}", "u".repeat(16 * 1024));
        assert_eq!(status(&req(v11, &long, &[("host", "x")])), Some(414));
        assert_eq!(
            status(&req(v11, &long[..16 * 1024], &[("host", "x")])),
            None
        );
        // Every refusal closes the connection.
        let resp = refuse(&req(v11, "/", &[]), 65536, false).unwrap();
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }
}
