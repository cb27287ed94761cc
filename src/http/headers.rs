//! Header rules: hop-by-hop fields stripped (including those `Connection` names), upgrades and
//! tunnels recognised, forbidden trailer fields dropped, gRPC trailers announced to HTTP/1.1
//! clients, Host syntax, and the rewrite of a client's request into the upstream one
//! (X-Forwarded-*, Host, the target's form and version).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::Either;

use crate::http::h2 as h2_conn;

use super::*;

/// What a registered name may hold besides letters and digits (RFC 3986 3.2.2: unreserved and
/// sub-delims), except `,`: a Host with a comma is a list of Hosts.
pub(crate) const REG_NAME_MARKS: &[u8] = b"-._~!$&'()*+;=";

/// The host and port of a Host header value, `host[:port]` (RFC 9110 7.2, RFC 3986 3.2.2): a
/// registered name or IPv4 address, or an IP literal in brackets; no userinfo, no list, no
/// percent-encoding outside an IP literal. Parsed in place (`http::uri::Authority` would copy
/// the value, and accepts userinfo).
pub(crate) fn split_host(v: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if v.starts_with('[') {
        let end = v.find(']')?;
        let literal = &v[1..end];
        let ok = literal.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'%' | b'-' | b'_' | b'~')
        });
        if literal.is_empty() || !ok {
            return None;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        let end = v.find(':').unwrap_or(v.len());
        let name = &v[..end];
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || REG_NAME_MARKS.contains(&b));
        if name.is_empty() || !ok {
            return None;
        }
        (name, &v[end..])
    };
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return None,
        // RFC 3986 allows an empty port: the scheme's default.
        Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Hop-by-hop headers (RFC 9110 7.6.1), plus the non-standard ones proxies must not forward.
/// (`Trailer` is end-to-end: it announces the trailer fields, which an HTTP/1.1 client only
/// receives when they are announced.)
pub(crate) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    // An h2c upgrade's settings: meant for this hop, and never passed on (see `wants_upgrade`).
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

// Built at compile time: `HeaderName::from_static` called at run time validates its input.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `Connection` tokens that name no header to remove beyond `HOP_BY_HOP` itself.
pub(crate) const CONNECTION_TOKENS: [&str; 4] = ["keep-alive", "close", "upgrade", "te"];

/// Hop-by-hop headers that survive stripping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    /// `Connection: upgrade` and `Upgrade` (a protocol switch, asked or granted).
    upgrade: bool,
    /// `TE: trailers` (required by gRPC; the only TE value HTTP/2 allows).
    te_trailers: bool,
}

impl Keep {
    pub(crate) const NONE: Keep = Keep {
        upgrade: false,
        te_trailers: false,
    };
    pub(crate) const UPGRADE: Keep = Keep {
        upgrade: true,
        te_trailers: false,
    };
}

/// Whether the `Connection` header lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` and `Upgrade: X`) to
/// something other than `h2c`. An h2c upgrade is never passed on: after the server's `101`,
/// the tunnel would carry HTTP/2 requests that this proxy never sees (nor adds its
/// X-Forwarded-For to), so `Upgrade: h2c` and `HTTP2-Settings` are dropped like any other
/// hop-by-hop field and the request goes on as a plain one.
pub(crate) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    // `contains_key` first: that one lookup answers for nearly every request.
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && upgrade_tokens(req.headers()).next().is_some()
        && connection_has(req.headers(), "upgrade")
}

/// An HTTP/1.1 request that becomes a tunnel if the server agrees: an upgrade (`101`), or a
/// CONNECT (`2xx`; refused before it gets here unless the frontend has `allow_connect`).
pub(crate) fn wants_tunnel<B>(req: &Request<B>) -> bool {
    wants_upgrade(req) || (req.method() == Method::CONNECT && req.version() == Version::HTTP_11)
}

/// Whether `status`, answering `method`, makes the connection a tunnel.
pub(crate) fn opens_tunnel(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// The protocols the `Upgrade` fields ask for, `h2c` left out.
pub(crate) fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("h2c"))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names (a client
/// sending `Connection: X-Forwarded-For` must not strip ours; Host is never stripped this
/// way), except what `keep` asks for.
/// Transfer-Encoding is left to hyper, which frames each hop itself.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep: Keep) {
    // Most messages carry none of them, or only `Connection: keep-alive`: one pass over the
    // names (standard names compare by their tag) finds which are present, so only those are
    // removed, instead of a dozen hashed removals per message.
    let mut present = 0u8;
    let mut te = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    if present == 0 && !te {
        return;
    }
    let upgrade: Option<HeaderValue> = if keep.upgrade {
        let tokens: Vec<&str> = upgrade_tokens(headers).collect();
        HeaderValue::from_str(&tokens.join(", ")).ok()
    } else {
        None
    };
    let te_trailers = keep.te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // Headers the `Connection` header names (beyond the usual tokens, which are no headers or
    // hop-by-hop anyway).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !CONNECTION_TOKENS.iter().any(|c| t.eq_ignore_ascii_case(c)))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        // Host is end-to-end whatever the client says: without it the server gets a request
        // that HTTP/1.1 forbids, aimed at no virtual host.
        .filter(|h| *h != header::HOST)
        .collect();
    for h in &named {
        headers.remove(h);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if te {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if let Some(v) = upgrade.filter(|v| !v.is_empty()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Fields that must not be taken from a trailer section (RFC 9110 6.5.1): framing, routing,
/// request modifiers and authentication, response control data, and how to read the content
/// (with every other `content-*` field too). Applied to the trailers of every body passed on,
/// request or response, HTTP/1.1 or HTTP/2: a `content-length` or `host` that arrives after
/// the body would otherwise reach a server that may merge it into the header section.
pub(crate) static FORBIDDEN_TRAILERS: [HeaderName; 31] = [
    header::AGE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::COOKIE,
    header::DATE,
    header::EXPECT,
    header::EXPIRES,
    header::HOST,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_RANGE,
    header::IF_UNMODIFIED_SINCE,
    HeaderName::from_static("keep-alive"),
    header::LOCATION,
    header::MAX_FORWARDS,
    header::PRAGMA,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::RANGE,
    header::RETRY_AFTER,
    header::SET_COOKIE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::VARY,
    header::WWW_AUTHENTICATE,
];

/// Whether a field may not be taken from a trailer section (see `FORBIDDEN_TRAILERS`).
pub(crate) fn forbidden_trailer(name: &HeaderName) -> bool {
    name.as_str().starts_with("content-") || FORBIDDEN_TRAILERS.contains(name)
}

/// Takes the forbidden fields out of a polled body frame if it is a trailer section (in
/// place: a data frame, nearly every frame, costs one check).
pub(crate) fn drop_forbidden_trailers<E>(frame: &mut Option<Result<hyper::body::Frame<Bytes>, E>>) {
    if let Some(Ok(frame)) = frame
        && let Some(map) = frame.trailers_mut()
        && map.keys().any(forbidden_trailer)
    {
        let names: Vec<HeaderName> = map
            .keys()
            .filter(|n| forbidden_trailer(n))
            .cloned()
            .collect();
        for n in &names {
            map.remove(n);
        }
    }
}

/// gRPC trailers the response does not announce (gRPC servers never do over HTTP/2).
pub(crate) const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// Announces the gRPC trailers on a gRPC response that does not announce its own, so that an
/// HTTP/1.1 client that sent `TE: trailers` gets them (`h1::server` sends only announced
/// fields). For HTTP/1.1 clients only: to an HTTP/2 client the announcement would be one more
/// field, which a gRPC client reads as metadata (the trailing metadata of a trailers-only
/// answer).
pub(crate) fn announce_grpc_trailers(headers: &mut HeaderMap) {
    if h2_conn::is_grpc(headers) && !headers.contains_key(header::TRAILER) {
        headers.insert(header::TRAILER, HeaderValue::from_static(GRPC_TRAILERS));
    }
}

/// Turns the client's request into the upstream one: hop-by-hop headers removed (before ours
/// are added; upgrade and `TE: trailers` kept when `target` calls for them), X-Forwarded-For
/// appended, X-Forwarded-Proto and X-Forwarded-Host set, a Host header for an HTTP/1.0
/// absolute-form target (HTTP/2 requests have theirs from `h2_rules::h2_to_h1`), and the URI
/// and version of the upstream protocol: origin-form and HTTP/1.1, or absolute (for `:scheme`
/// and `:authority`) and HTTP/2.
pub(crate) fn rewrite_request(
    req: Request<ReqBody>,
    conn: &Conn,
    backend: &str,
    target: Target,
) -> Request<UpBody> {
    let (mut parts, body) = req.into_parts();
    if parts.version == Version::HTTP_2 {
        // What our HTTP/1.x server drops while parsing (see `h1::request::aliases_framing`).
        let aliases: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|n| crate::http::h1::request::aliases_framing(n))
            .cloned()
            .collect();
        for n in &aliases {
            parts.headers.remove(n);
        }
    }
    strip_hop_by_hop(
        &mut parts.headers,
        Keep {
            upgrade: target.upgrade,
            te_trailers: target.h2,
        },
    );
    // Host survives the stripping above (`Connection` cannot name it), so it is set only when
    // the request has none: an HTTP/1.0 absolute-form target (`h2_rules::h2_to_h1` gave every
    // HTTP/2 request its `:authority` as Host).
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let h = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            match &h {
                Some(h) => {
                    parts.headers.insert(header::HOST, h.clone());
                }
                // An HTTP/1.0 request without any: it goes on as HTTP/1.1, which must have a
                // Host (RFC 9112 3.2), so it gets the backend's name, as nginx sends its
                // upstream's. No X-Forwarded-Host: the client named no host.
                None => {
                    let name = HeaderValue::from_str(backend)
                        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
                    parts.headers.insert(header::HOST, name);
                }
            }
            h
        }
    };
    if let Some(h) = &host {
        parts.headers.insert(X_FORWARDED_HOST, h.clone());
    }
    let xff = X_FORWARDED_FOR;
    // NOTE: like HAProxy's `option forwardfor`, the client's own X-Forwarded-For is kept and our
    // peer address appended; only the last entry is trustworthy.
    let value = if parts.headers.contains_key(&xff) {
        let prior: Vec<&str> = parts
            .headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = conn.xff.to_str().unwrap_or("unknown");
        HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
    } else {
        Some(conn.xff.clone())
    };
    if let Some(v) = value {
        parts.headers.insert(xff, v);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.https { "https" } else { "http" }),
    );
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if target.h2 {
        // The Host header stays too: RFC 9113 8.3.1 lets an intermediary keep it.
        let scheme = if target.tls { "https" } else { "http" };
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .unwrap_or(backend);
        parts.uri = Uri::try_from(format!("{scheme}://{authority}{pq}"))
            .or_else(|_| Uri::try_from(format!("{scheme}://localhost{pq}")))
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
    } else {
        // Origin-form already (the usual HTTP/1.1 request) stays as it is; a CONNECT keeps its
        // authority-form target (RFC 9112 3.2.3).
        if parts.method != Method::CONNECT
            && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
        {
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = Version::HTTP_11;
    }
    let limit = parts.extensions.remove::<super::body_limit::BodyLimit>();
    Request::from_parts(
        parts,
        Either::Left(ClientBody::new(body, limit.map(|l| l.0))),
    )
}

/// Gives the request a fresh `X-Request-Id` (a random per-process prefix and a counter)
/// unless it has one, which then goes upstream unchanged. NOTE: not a UUID: one relaxed counter
/// increment, 33 bytes formatted by hand and one allocation, no system call per request; unique
/// within a process, and across processes by its 64 random bits.
pub(crate) fn set_request_id(headers: &mut HeaderMap) {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if headers.contains_key(X_REQUEST_ID) {
        return;
    }
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut buf = [b'-'; 33];
    let hex = |v: u64, out: &mut [u8]| {
        for (i, b) in out.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
    };
    hex(prefix, &mut buf[..16]);
    hex(n, &mut buf[17..]);
    let id = HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value");
    headers.insert(X_REQUEST_ID, id);
}

pub(crate) const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_strip_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, x-secret"),
        );
        h.insert(header::HOST, HeaderValue::from_static("x"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h, Keep::NONE);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host"]);
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, x-secret"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h, Keep::NONE);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn upgrade_and_te_trailers_survive_when_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("sec-websocket-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(
            &mut h,
            Keep {
                upgrade: true,
                te_trailers: true,
            },
        );
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.get("x-secret").is_none());
        assert!(h.get("sec-websocket-key").is_some());
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let req = |conn: &str, up: Option<&str>, v: Version| {
            let mut b = Request::builder().version(v).header("connection", conn);
            if let Some(u) = up {
                b = b.header("upgrade", u);
            }
            b.body(()).unwrap()
        };
        assert!(wants_upgrade(&req(
            "keep-alive, Upgrade",
            Some("websocket"),
            Version::HTTP_11
        )));
        assert!(!wants_upgrade(&req(
            "keep-alive",
            Some("websocket"),
            Version::HTTP_11
        )));
        assert!(!wants_upgrade(&req("upgrade", None, Version::HTTP_11)));
        assert!(!wants_upgrade(&req(
            "upgrade",
            Some("websocket"),
            Version::HTTP_10
        )));
    }

    #[test]
    fn forwarded_for_matches_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "192.168.10.99",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(ip).to_str().unwrap(), ip.to_string());
        }
        let mapped: std::net::IpAddr = "::ffff:1.20.3.40".parse().unwrap();
        assert_eq!(forwarded_for(mapped).to_str().unwrap(), "1.20.3.40");
    }

    #[test]
    fn grpc_responses_announce_their_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        announce_grpc_trailers(&mut h);
        assert_eq!(h[header::TRAILER], GRPC_TRAILERS);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        announce_grpc_trailers(&mut h);
        assert!(h.get(header::TRAILER).is_none());
    }

    #[test]
    fn request_ids_are_made_unless_present() {
        let id = |h: &mut HeaderMap| {
            set_request_id(h);
            h[X_REQUEST_ID].clone()
        };
        let mut h = HeaderMap::new();
        let a = id(&mut h).to_str().unwrap().to_string();
        assert_eq!(a.len(), 33);
        assert_eq!(a.as_bytes()[16], b'-');
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        let mut h = HeaderMap::new();
        let b = id(&mut h);
        assert_ne!(b.to_str().unwrap(), a);
        // Same process: the same prefix, another counter.
        assert_eq!(&b.to_str().unwrap()[..16], &a[..16]);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("mine"));
        assert_eq!(id(&mut h), "mine");
        assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
    }
}
