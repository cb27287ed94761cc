//! Serving one request: refusing what must not be forwarded (`answers`), picking a server,
//! sending the request over HTTP/1.1 (our client, `h1::client`), HTTP/2 or an upgrade (hyper's
//! client), retrying connect failures on another server and replaying what is safe to replay,
//! mapping failures to status codes (502, 503, 504), and recording metrics and the access log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use tracing::debug;

use crate::access_log::{HttpRequest, Pending, Termination};
use crate::balancer::BackendRuntime;
use crate::balancer::queue::NoSlot;
use crate::config::{Policy, Protocol};
use crate::http::h1::server as h1_server;
use crate::metrics::{self as m};
use crate::snapshot::{Server, Snapshot};

use super::*;

/// Serves one request: pick, forward, map failures to status codes, record metrics and the
/// access log line. Never fails (the `Result` is the shape a `hyper::service::Service` has, so
/// the HTTP/1.x server can run this future itself rather than one that wraps it: the wrapper
/// moved this whole future into its own state when first polled, several KiB per request).
pub(crate) async fn handle(
    conn: &Conn,
    req: Request<ReqBody>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let fe = &conn.fe;
    // An http-01 challenge of any instance of the fleet is answered before routing.
    if req.method() == Method::GET
        && let Some(answer) = fe.acme.http_answer(req.uri().path())
    {
        return Ok(super::answers::plain(StatusCode::OK, answer));
    }
    fe.stats.request();
    let mut req = req;
    // The id ties the access-log line to the server's own logs; without the log, the request
    // goes up as it came (as HAProxy's unique-id and nginx's $request_id, paid for when used).
    if fe.log.is_some() {
        set_request_id(req.headers_mut());
    }
    let mut trace = Trace::default();
    // Dropped with this future if the client goes away first: then it logs `client_abort`.
    trace.log = fe.log.as_ref().map(|log| {
        let mut p = Pending::new(log, conn.client, Arc::clone(&fe.name));
        let r = p.record();
        r.http = Some(HttpRequest {
            method: Some(req.method().clone()),
            uri: Some(req.uri().clone()),
            version: Some(req.version()),
            host: match req.headers().get(header::HOST) {
                Some(h) => Some(h.clone()),
                None => req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            },
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: req.headers().get(X_REQUEST_ID).cloned(),
            status: 0,
        });
        r.tls = conn.tls.clone();
        r.connections = Some(fe.stats.connections());
        p
    });
    let snap = fe.shared.load_full();
    let Picked {
        backend: picked,
        routing,
        policy,
        redirect,
    } = pick_backend(&snap, &fe.frontend.name, &mut req);
    let fallback = matches!(routing, Routing::Fallback);
    // allow/deny, then (unless redirected) rate_limit: `guard` answers these itself.
    let mut guarded = super::guard::check(conn, policy.as_deref(), redirect.is_some(), &req);
    // `max_body_size` by Content-Length, after those (`body_limit`).
    let too_large = (redirect.is_none() && guarded.is_none())
        .then(|| super::body_limit::check(policy.as_deref(), &mut req))
        .flatten();
    // A redirect or a refusal reaches no backend: counted, and logged, under the frontend alone.
    let picked = picked.filter(|_| redirect.is_none() && guarded.is_none() && too_large.is_none());
    let backend = picked.map(|i| &snap.backends[i]);
    if let (Some(b), Some(p)) = (backend, &mut trace.log) {
        p.record().backend = Some(Arc::clone(&b.config));
    }
    // CONNECT is passed on only where the frontend allows it, over HTTP/1.1 to HTTP/1.1.
    let connect_ok =
        fe.frontend.allow_connect && backend.is_some_and(|b| b.config.protocol == Protocol::Http1);
    let refused = match refuse(&req, fe.frontend.max_header_size, connect_ok) {
        // HTTP/2's own rules: Host and :authority, Content-Length, Cookie crumbs.
        None if req.version() == Version::HTTP_2 => {
            let (mut parts, body) = req.into_parts();
            let checked = crate::http::h2_rules::h2_to_h1(&mut parts);
            req = Request::from_parts(parts, body);
            checked
                .err()
                .map(|m| plain(StatusCode::BAD_REQUEST, format!("400 Bad Request: {m}\n")))
        }
        r => r,
    };
    let (mut resp, server) = match (refused, routing, picked) {
        (Some(resp), _, _) => {
            trace.termination = Termination::BadRequest;
            (resp, None)
        }
        // The policy, in the contract's order (README, "Traffic policy"): allow/deny,
        // redirect, rate_limit (both refusals in `guarded`), max_body_size, header rules, then
        // balancing.
        (None, _, _) if guarded.is_some() => {
            let refused = guarded.take().expect("matched just above");
            let (resp, termination) = super::guard::answer(conn, refused);
            trace.termination = termination;
            (resp, None)
        }
        // A redirect is answered by us: no backend, and the access log's termination is `ok`.
        (None, _, _) if redirect.is_some() => {
            let resp = *redirect.expect("matched just above");
            if resp.status() == StatusCode::BAD_REQUEST {
                trace.termination = Termination::BadRequest;
            }
            (resp, None)
        }
        (None, _, _) if too_large.is_some() => {
            trace.termination = Termination::BodyTooLarge;
            (*too_large.expect("matched just above"), None)
        }
        (None, Routing::BadPath(why), _) => {
            trace.termination = Termination::BadRequest;
            let body = format!("400 Bad Request: {why}\n");
            (plain(StatusCode::BAD_REQUEST, body), None)
        }
        (None, _, None) => {
            trace.termination = Termination::NoRoute;
            (no_route(&req), None)
        }
        (None, _, Some(index)) => {
            // Counted as a `client_abort` if the client leaves before the answer.
            trace.backend = Some(Arc::clone(&snap.backends[index].runtime));
            let rules = policy.as_deref();
            if let Some(r) = rules.and_then(|p| p.request_headers.as_ref()) {
                super::policy::apply(r, req.headers_mut());
            }
            let (mut resp, server) = forward(conn, &snap, index, req, &mut trace).await;
            // The upstream's answer only (our own 502, 503, 504 keep their headers).
            if let (Some(r), Either::Left(_)) =
                (rules.and_then(|p| p.response_headers.as_ref()), resp.body())
            {
                super::policy::apply(r, resp.headers_mut());
            }
            (resp, server)
        }
    };
    let code = resp.status().as_u16();
    let bytes_in = trace.body.as_ref().map_or(0, |b| b.bytes());
    if let Some(rt) = trace.backend.take() {
        // A server's body still to come ends the request later: `Guarded` counts how.
        let own = matches!(resp.body(), Either::Right(_));
        let failure = if own {
            trace.termination.failure()
        } else {
            None
        };
        rt.stats
            .finish(failure, trace.response.map(|_| start.elapsed()));
        rt.stats.received(bytes_in);
        match resp.body_mut() {
            Either::Left(body) if !hyper::body::Body::is_end_stream(&body.inner) => {
                body.stats = Some(rt)
            }
            _ => rt.stats.sent(
                hyper::body::Body::size_hint(resp.body())
                    .exact()
                    .unwrap_or(0),
            ),
        }
    }
    if trace.termination == Termination::BodyTooLarge {
        fe.count_refused(crate::stats::Refusal::BodyTooLarge);
    }
    if let Some(reason) = client_error(code, trace.termination) {
        fe.stats.error();
        count_client_error(&fe.frontend.name, reason);
    }
    if let Some(mut p) = trace.log.take() {
        let r = p.record();
        r.server = server.clone();
        r.retries = trace.retries;
        r.connect = trace.connect;
        r.response = trace.response;
        r.bytes_in = Some(bytes_in);
        if let Some(h) = &mut r.http {
            h.status = code;
        }
        match resp.body_mut() {
            // Written when the upstream body ends (or the client drops it).
            Either::Left(body) => {
                // hyper never polls a body that is already at its end (HEAD, 204, 304, empty).
                if hyper::body::Body::is_end_stream(&body.inner) {
                    p.record().termination = Termination::Ok;
                }
                body.log = Some(p);
            }
            Either::Right(_) => finish_log(&mut p, &resp, trace.termination),
        }
    }
    let backend_name = backend.map_or("", |b| b.config.name.as_str());
    match &server {
        Some(s) => s.count_request(&fe.name, backend_name, code),
        None => fe.no_server.with(
            |(b, c)| *c == code && b == backend_name,
            || {
                let c = metrics::counter!(m::REQUESTS,
                    "frontend" => fe.frontend.name.clone(), "backend" => backend_name.to_string(),
                    "server" => "", "code" => code.to_string());
                ((backend_name.to_string(), code), c)
            },
            |c| c.increment(1),
        ),
    }
    let took = start.elapsed().as_secs_f64();
    match backend {
        // The frontend's own backend has its handle at hand; others are looked up once.
        Some(_) if fallback => fe.duration.record(took),
        Some(b) => fe.durations.with(
            |n| **n == *b.config.name,
            || {
                let h = metrics::histogram!(m::REQUEST_DURATION,
                    "frontend" => fe.frontend.name.clone(), "backend" => b.config.name.clone());
                (Arc::from(b.config.name.as_str()), h)
            },
            |h| h.record(took),
        ),
        // Only the `404`: a request refused (400, 405, 414, 501) before or by routing was
        // answered for another reason, whether or not a route would have taken it.
        None if trace.termination == Termination::NoRoute => {
            metrics::counter!(m::NO_ROUTE, "frontend" => fe.frontend.name.clone()).increment(1)
        }
        None => {}
    }
    Ok(resp)
}

/// How a request the fallback takes was routed: [`Routing::Fallback`] names the frontend's own
/// backend; a split fallback's pick is another, counted like a route's.
fn fallback_routing<P>(table: &crate::route::Table<P>) -> Routing {
    match table.fallback_split() {
        Some(_) => Routing::Routed,
        None => Routing::Fallback,
    }
}

/// How the routing table took a request.
pub(crate) enum Routing {
    /// To the frontend's own backend (its `backend` key).
    Fallback,
    /// Picked (or not) by a route.
    Routed,
    /// The path cannot be routed safely (`400`).
    BadPath(String),
}

/// What routing made of a request.
pub(crate) struct Picked {
    /// An index into the snapshot's backends; `None`: no route and no fallback.
    pub(crate) backend: Option<usize>,
    pub(crate) routing: Routing,
    /// The route's policy (or the frontend's); `None` when it does nothing.
    pub(crate) policy: Option<Arc<Policy>>,
    /// The policy's redirect, answered instead of forwarding (unless the request is refused).
    /// Boxed: a response is ~150 bytes that every request would otherwise move several times
    /// through `handle`'s future (callgrind: +230 instructions of memcpy per request).
    pub(crate) redirect: Option<Box<Response<Body>>>,
}

/// The backend for `req`, with the request's path rewritten to the form it was routed by
/// (normalized) and without a stripped prefix, and the policy that applies. A frontend without
/// routes goes straight to its backend: no path is looked at.
pub(crate) fn pick_backend(snap: &Snapshot, frontend: &str, req: &mut Request<ReqBody>) -> Picked {
    let Some(table) = snap.table(frontend) else {
        return Picked {
            backend: None,
            routing: Routing::Routed,
            policy: None,
            redirect: None,
        };
    };
    let with_policy = |backend, routing, policy: &Arc<Policy>, req: &Request<ReqBody>| {
        let redirect = policy
            .redirect
            .as_ref()
            .map(|r| Box::new(super::policy::redirect(r, request_host(req), req)));
        Picked {
            backend,
            routing,
            policy: (!policy.is_empty()).then(|| Arc::clone(policy)),
            redirect,
        }
    };
    if table.is_trivial() {
        let backend = table.pick_fallback().map(|(i, _)| i);
        return with_policy(backend, fallback_routing(table), table.policy(), req);
    }
    let host = request_host(req);
    let routed = match table.route(host, req.uri().path()) {
        Ok(r) => r,
        Err(e) => {
            return Picked {
                backend: None,
                routing: Routing::BadPath(e.to_string()),
                policy: None,
                redirect: None,
            };
        }
    };
    let how = if routed.route.is_none() {
        fallback_routing(table)
    } else {
        Routing::Routed
    };
    // The redirect is made before the path is rewritten: `{path}` is the path as received.
    let picked = with_policy(routed.backend, how, routed.policy, req);
    if let std::borrow::Cow::Owned(path) = routed.path {
        set_path(req, &path);
    }
    picked
}

/// The host a request is for, as routing sees it: the absolute-form target's or HTTP/2's
/// authority without its userinfo (`http://user@host/` is for `host`, the part
/// `answers::refuse` holds equal to the Host field), else the Host field.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => {
            let a = a.as_str();
            Some(a.rsplit_once('@').map_or(a, |(_, host)| host))
        }
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok()),
    }
}

/// Replaces the path of `req`'s target, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) {
    let uri = req.uri();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = http::uri::PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// `404` for a request no route takes: `no route for HOST PATH`.
fn no_route<B>(req: &Request<B>) -> Response<Body> {
    let host = request_host(req).unwrap_or("-");
    let path = req.uri().path();
    plain(
        StatusCode::NOT_FOUND,
        format!("no route for {host} {path}\n"),
    )
}

/// Fills in the record of a request answered with one of our own (complete) bodies, or a
/// `101`; it is written when `p` is dropped.
pub(crate) fn finish_log(p: &mut Pending, resp: &Response<Body>, termination: Termination) {
    let r = p.record();
    if let Some(h) = &mut r.http {
        h.status = resp.status().as_u16();
    }
    r.bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    r.termination = termination;
}

/// How a request was forwarded, for the access log and the stats: the last attempt's timings,
/// the record being filled in, and the backend the request is counted under until it is.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// The access log record (present when the log is on).
    log: Option<Pending>,
    /// The backend's counters, until the request is counted there (`handle`); a request
    /// dropped before that (its client left) counts as a `client_abort`.
    backend: Option<Arc<BackendRuntime>>,
    /// The request body's state, with its byte count.
    body: Option<Arc<BodyState>>,
    /// Further servers tried after the first.
    retries: u32,
    /// Getting a connection to the server (about 0 for a pooled or shared one).
    pub(super) connect: Option<Duration>,
    /// From the connection being ready to the response head.
    pub(super) response: Option<Duration>,
    /// How it ended when our own answer (or a `101`) is the response.
    termination: Termination,
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(rt) = self.backend.take() {
            rt.stats
                .finish(Some(crate::stats::Failure::ClientAbort), None);
        }
    }
}

/// The head of a request that may be replayed on another server after it reached one: an
/// idempotent method and no body, so everything needed to send it again is here.
pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// Methods that may be sent twice (RFC 9110 9.2.2).
    pub(super) fn idempotent(method: &Method) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }

    fn of(req: &Request<UpBody>) -> Option<Replay> {
        let idempotent = Replay::idempotent(req.method());
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        (idempotent && bodiless).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<UpBody> {
        let mut r = Request::new(Either::Right(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

pub(crate) async fn forward(
    conn: &Conn,
    snap: &Arc<Snapshot>,
    index: usize,
    mut req: Request<ReqBody>,
    trace: &mut Trace,
) -> (Response<Body>, Option<Arc<Server>>) {
    let backend = &snap.backends[index];
    let cfg = &backend.config;
    // Our HTTP/1.x server gives a request that asks for a tunnel (`wants_tunnel`) the client's
    // side of it; taken before the request is rewritten, it resolves once our 101 (or 2xx to
    // CONNECT) reaches the client. (An empty extension map answers this without a lookup.)
    let mut client_upgrade = if cfg.protocol == Protocol::Http1 {
        req.extensions_mut().remove::<h1_server::ClientUpgrade>()
    } else {
        None
    };
    let target = Target {
        h2: cfg.protocol == Protocol::H2,
        tls: cfg.tls.is_some(),
        upgrade: client_upgrade.is_some(),
    };
    // HTTP/2 clients get trailers unannounced (`announce_grpc_trailers` is for HTTP/1.1).
    let client_version = req.version();
    let method = req.method().clone();
    let key = super::hash_key::of(cfg, &req, conn.client);
    let sticky = super::sticky::Cookie::of(backend, req.headers());
    let mut req = rewrite_request(req, conn, &cfg.name, target);
    // Kept to tell, once the body is gone upstream, whether a failure was the client's.
    let body_state = match req.body() {
        Either::Left(b) => b.state.clone(),
        Either::Right(_) => None,
    };
    trace.body = body_state.clone();
    // hyper (HTTP/2, upgrades) consumes the request; our HTTP/1.1 client gives it back.
    let replay = (target.h2 || target.upgrade)
        .then(|| Replay::of(&req))
        .flatten();
    let mut in_flight = backend.runtime.request();
    let mut tried: Vec<Arc<Server>> = Vec::new();
    // Why the last server tried failed: what the request ends as when none is left.
    let mut last = Cause::Connect("connect_failed");
    // A retry decided on, counted once another server is picked for it (not when none is left).
    let mut retry = None;
    loop {
        // The server the sticky cookie names, if it may take the request and has a slot; else a
        // slot on a server: at once, or after a wait in the backend's queue (`queue.rs`).
        let pinned = sticky
            .as_ref()
            .and_then(|c| c.pick(backend, &tried))
            .and_then(|s| backend.try_slot(s));
        let slot = match pinned {
            Some(slot) => Ok(slot),
            None => backend.acquire(key, &tried, &conn.fe.shared).await,
        };
        let (server, active) = match slot {
            Ok(slot) => slot,
            Err(NoSlot::Timeout(waited)) => {
                trace.termination = Termination::QueueTimeout;
                let body = format!(
                    "503 Service Unavailable: every server of backend {} stayed busy for {waited:?} (queue_timeout)\n",
                    cfg.name
                );
                return (plain(StatusCode::SERVICE_UNAVAILABLE, body), None);
            }
            Err(NoSlot::NoServer) if tried.is_empty() => {
                trace.termination = Termination::NoServer;
                let body = format!(
                    "503 Service Unavailable: no server available for backend {}\n",
                    cfg.name
                );
                return (plain(StatusCode::SERVICE_UNAVAILABLE, body), None);
            }
            Err(NoSlot::NoServer) => {
                trace.termination = last.termination();
                return exhausted(cfg, last, tried.pop());
            }
        };
        if let Some(cause) = retry.take() {
            count_retry(backend, cause);
            trace.retries += 1;
        }
        if let Some(p) = &mut trace.log {
            p.record().server = Some(Arc::clone(&server));
        }
        match send(&server, cfg, conn, req, target, trace).await {
            Ok(mut resp) => {
                crate::health::observe_response(backend, &server, resp.status().as_u16());
                if opens_tunnel(&method, resp.status()) {
                    let Some(client_side) = client_upgrade.take() else {
                        trace.termination = Termination::ServerError;
                        let body = format!(
                            "502 Bad Gateway: server {} of backend {} switched protocols unasked\n",
                            server.addr, cfg.name
                        );
                        return (plain(StatusCode::BAD_GATEWAY, body), Some(server));
                    };
                    let server_side = hyper::upgrade::on(&mut resp);
                    let (mut parts, _) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers, Keep::UPGRADE);
                    if let Some(c) = &sticky {
                        c.set_cookie(backend, &server, &mut parts.headers);
                    }
                    // A `2xx` to CONNECT has no content (RFC 9110 9.3.6): the tunnel follows.
                    parts.headers.remove(header::CONTENT_LENGTH);
                    tunnel(conn, &server, active, client_side, server_side);
                    trace.termination = Termination::Upgrade;
                    let empty = Either::Right(Full::new(Bytes::new()));
                    return (Response::from_parts(parts, empty), Some(server));
                }
                let (mut parts, body) = resp.into_parts();
                // Our HTTP/1.1 client leaves hop-by-hop fields out as it parses.
                if let RespBody::Hyper(_) = body {
                    strip_hop_by_hop(&mut parts.headers, Keep::NONE);
                }
                if client_version == Version::HTTP_11 {
                    announce_grpc_trailers(&mut parts.headers);
                }
                if let Some(c) = &sticky {
                    c.set_cookie(backend, &server, &mut parts.headers);
                }
                let origin = Some(Origin {
                    shared: Arc::clone(&conn.fe.shared),
                    server: Arc::clone(&server),
                });
                let body = Guarded {
                    inner: body,
                    _active: active,
                    log: None,
                    stats: None,
                    origin,
                };
                return (
                    Response::from_parts(parts, Either::Left(body)),
                    Some(server),
                );
            }
            Err(Failure::Connect(e, back, cause)) => {
                match cause {
                    Cause::Connect(_) => {
                        crate::upstream::warn_connect_failed(cfg, &server.addr, &e);
                        metrics::counter!(m::UPSTREAM_CONNECT_ERRORS,
                            "backend" => cfg.name.clone(), "server" => server.addr.clone())
                        .increment(1);
                        crate::health::observe_failure(backend, &server, &format!("connect: {e}"));
                    }
                    _ => {
                        debug!(server = %server.addr, error = %e, "upstream connection failed before the request was sent");
                        crate::health::observe_failure(backend, &server, &format!("upstream: {e}"));
                    }
                }
                last = cause;
                tried.push(server);
                // Nothing was sent, so any method may go to another server; no budget needed,
                // since the failed attempt loaded nobody.
                if tried.len() > cfg.retries as usize {
                    trace.termination = last.termination();
                    return exhausted(cfg, last, tried.pop());
                }
                retry = Some(cause);
                req = back;
            }
            Err(Failure::Sent(_, _)) if body_state.as_ref().is_some_and(|b| b.too_large()) => {
                trace.termination = Termination::BodyTooLarge;
                let limit = body_state.as_ref().map_or(0, |b| b.limit());
                return (super::body_limit::too_large(limit), Some(server));
            }
            Err(Failure::Sent(e, _)) if body_state.as_ref().is_some_and(|b| b.failed()) => {
                // The client's body broke (bad chunk, hung up mid-body): not the server's fault.
                debug!(server = %server.addr, error = %e, "client request body failed");
                trace.termination = Termination::BadRequest;
                let body = "400 Bad Request: the request body was malformed or cut short\n";
                return (refusal(StatusCode::BAD_REQUEST, body), Some(server));
            }
            Err(Failure::Sent(e, back)) => {
                debug!(server = %server.addr, error = %e, "upstream failed before a response");
                last = Cause::of_sent(&e);
                crate::health::observe_failure(backend, &server, &format!("upstream: {e}"));
                let body = format!(
                    "502 Bad Gateway: server {} of backend {} failed before answering\n",
                    server.addr, cfg.name
                );
                tried.push(Arc::clone(&server));
                // Replayed only if idempotent and bodiless, within `retries` and the budget.
                // NOTE: a server this failure (or a concurrent one) ejected takes no new
                // requests, so replaying what was caught on it cannot snowball: it is bounded by
                // what was in flight there. The budget guards failures that eject nobody
                // (checks off, error_limit 0, or max_ejected_percent reached).
                let ejected = !server.is_up();
                let again = back
                    .map(|parts| Request::from_parts(parts, Either::Right(Empty::new())))
                    .or_else(|| replay.as_ref().map(Replay::request));
                match again {
                    Some(r)
                        if tried.len() <= cfg.retries as usize
                            && (ejected
                                || in_flight
                                    .try_retry(cfg.retry_budget_percent, cfg.retry_budget_min)) =>
                    {
                        retry = Some(last);
                        req = r;
                    }
                    _ => {
                        trace.termination = Termination::ServerError;
                        return (plain(StatusCode::BAD_GATEWAY, body), Some(server));
                    }
                }
            }
            Err(Failure::Timeout) if body_state.as_ref().is_some_and(|b| b.waiting_on_client()) => {
                // The server is waiting for the rest of the body, and so are we: the client is
                // too slow, not the server.
                trace.termination = Termination::ClientTimeout;
                let body = format!(
                    "408 Request Timeout: the request body did not arrive within {:?}\n",
                    cfg.response_timeout
                );
                return (refusal(StatusCode::REQUEST_TIMEOUT, body), Some(server));
            }
            Err(Failure::Timeout) => {
                trace.termination = Termination::ServerTimeout;
                crate::health::observe_failure(backend, &server, "response timeout");
                let body = format!(
                    "504 Gateway Timeout: server {} of backend {} did not answer within {:?}\n",
                    server.addr, cfg.name, cfg.response_timeout
                );
                return (plain(StatusCode::GATEWAY_TIMEOUT, body), Some(server));
            }
        }
    }
}
