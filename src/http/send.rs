//! Sending one request to one server, once `forward` has picked it: over HTTP/1.1 with our
//! own client (a pooled connection or a new one, resent once on a fresh connection when a
//! pooled one turns out closed under a replayable request), over HTTP/2 on the server's shared
//! connection (re-created once if it had closed), or as an HTTP/1.1 upgrade through hyper. It
//! reports how the attempt failed (`failure::Failure`) and its timings (`forward::Trace`);
//! retrying, and what the failure means for the answer, are `forward`'s.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tracing::debug;

use crate::config::{Backend, ProxyVersion};
use crate::http::h1::client as h1_client;
use crate::snapshot::Server;

use super::*;

/// How the upstream request is framed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// HTTP/2 to the server (else HTTP/1.1).
    pub(crate) h2: bool,
    /// TLS to the server (the HTTP/2 `:scheme`).
    pub(crate) tls: bool,
    /// A tunnel if the server agrees (an upgrade, or a CONNECT): sent through hyper, which
    /// hands the socket over, keeping `Connection: upgrade` and `Upgrade`.
    pub(crate) upgrade: bool,
}

/// Sends one request to one server over its backend's protocol.
pub(crate) async fn send(
    server: &Arc<Server>,
    cfg: &Arc<Backend>,
    conn: &Conn,
    req: Request<UpBody>,
    target: Target,
    trace: &mut Trace,
) -> Result<Response<RespBody>, Failure> {
    // Built only when a connection is opened: a pooled or shared one needs none of it.
    let dial = || Dial::new(server, cfg, conn);
    // NOTE: a connection that began with a PROXY header speaks for one client only, so with
    // `send_proxy` connections are neither pooled nor shared (HAProxy marks them private too).
    let private = cfg.send_proxy != ProxyVersion::None;
    // HTTP/2 and upgrades are boxed: hyper's futures (and a TLS handshake) are several KiB,
    // which every request's future would otherwise carry and copy.
    let resp = if target.h2 {
        Box::pin(send_h2(
            server,
            dial,
            req,
            private,
            cfg.response_timeout,
            trace,
        ))
        .await
    } else if target.upgrade {
        // An upgraded connection is the tunnel's: hyper hands its socket over after the `101`.
        Box::pin(send_upgrade(dial, req, cfg.response_timeout, trace)).await
    } else {
        return send_h1(server, cfg, dial, req, private, trace).await;
    };
    resp.map(|r| r.map(RespBody::Hyper))
}

/// HTTP/1.1 with our own client: a pooled connection the server has not closed, else a new
/// one; the response body hands it back to the pool when it is read to the end (unless the
/// connection is `private` to this client). A replayable request (idempotent, bodiless)
/// that finds its pooled connection closed under it is sent again on a new one: the server
/// closing an idle connection as we reuse it is a race, not a failure.
pub(crate) async fn send_h1(
    server: &Arc<Server>,
    cfg: &Backend,
    dial: impl Fn() -> Dial,
    req: Request<UpBody>,
    private: bool,
    trace: &mut Trace,
) -> Result<Response<RespBody>, Failure> {
    let start = Instant::now();
    let pooled = (!private)
        .then(|| {
            server
                .pool::<crate::http::Pool>()
                .checkout(start, cfg.pool_idle_timeout)
        })
        .flatten();
    let (mut conn, mut reused) = match pooled {
        Some(c) => (c, true),
        None => match connect_raw(&dial()).await {
            Ok(c) => (c, false),
            Err(e) => {
                let cause = Cause::Connect(connect_cause(&e));
                return Err(Failure::Connect(e, req, cause));
            }
        },
    };
    let ready = Instant::now();
    trace.connect = Some(ready - start);
    let (parts, body) = req.into_parts();
    let body_empty = hyper::body::Body::is_end_stream(&body);
    let head = h1_client::RequestHead::encode(
        &parts,
        body_empty,
        hyper::body::Body::size_hint(&body).exact(),
    );
    let mut body = std::pin::pin!(body);
    let replayable = body_empty && Replay::idempotent(&parts.method);
    let response_timeout = cfg.response_timeout;
    let mut deadline = tokio::time::Instant::from_std(ready) + response_timeout;
    let resp_head = loop {
        let body = (!body_empty).then_some(body.as_mut());
        match h1_client::exchange(&mut conn, &head, body, deadline).await {
            Err(crate::http::h1::Error::TimedOut) => return Err(Failure::Timeout),
            Ok(h) => break h,
            Err(crate::http::h1::Error::Closed(_)) if reused && replayable => {
                debug!(server = %server.addr, "pooled connection closed under a request; resending");
                reused = false;
                conn = match connect_raw(&dial()).await {
                    Ok(c) => c,
                    Err(e) => {
                        let back = Request::from_parts(parts, Either::Right(Empty::new()));
                        let cause = Cause::Connect(connect_cause(&e));
                        return Err(Failure::Connect(e, back, cause));
                    }
                };
                deadline = tokio::time::Instant::now() + response_timeout;
            }
            Err(e) => return Err(Failure::Sent(e.into(), replayable.then_some(parts))),
        }
    };
    trace.response = Some(ready.elapsed());
    let pool = (!private).then(|| Arc::clone(server) as Arc<dyn h1_client::Checkin>);
    let body = h1_client::Body::new(conn, &resp_head, pool);
    let mut resp = Response::new(RespBody::H1(body));
    *resp.status_mut() = resp_head.status;
    *resp.version_mut() = resp_head.version;
    *resp.headers_mut() = resp_head.headers;
    Ok(resp)
}

/// An HTTP/1.1 request asking to upgrade, on a new connection through hyper, which hands the
/// socket to the tunnel after a `101` (the connection is never pooled).
pub(crate) async fn send_upgrade(
    dial: impl FnOnce() -> Dial,
    req: Request<UpBody>,
    response_timeout: Duration,
    trace: &mut Trace,
) -> Result<Response<Incoming>, Failure> {
    let start = Instant::now();
    let mut sender = match connect_h1(&dial()).await {
        Ok(s) => s,
        Err(e) => {
            let cause = Cause::Connect(connect_cause(&e));
            return Err(Failure::Connect(e, req, cause));
        }
    };
    let ready = Instant::now();
    trace.connect = Some(ready - start);
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(resp)) => {
            trace.response = Some(ready.elapsed());
            Ok(resp)
        }
        Ok(Err(mut e)) => match e.take_message() {
            // Refused before a byte was written: as good as a connect failure.
            Some(back) => Err(Failure::Connect(
                io::Error::other(e.into_error()),
                back,
                Cause::ServerReset,
            )),
            None => Err(Failure::Sent(e.into_error().into(), None)),
        },
    }
}

/// HTTP/2: the server's shared connection (or a private one), re-created once if it turns
/// out to have closed before taking the request.
pub(crate) async fn send_h2(
    server: &Arc<Server>,
    dial: impl Fn() -> Dial,
    mut req: Request<UpBody>,
    private: bool,
    response_timeout: Duration,
    trace: &mut Trace,
) -> Result<Response<Incoming>, Failure> {
    let start = Instant::now();
    let mut stale_ok = !private;
    loop {
        let sender = if private {
            connect_h2(&dial()).await
        } else {
            server.pool::<crate::http::Pool>().h2_sender(&dial).await
        };
        let mut sender = match sender {
            Ok(s) => s,
            Err(e) => {
                let cause = Cause::Connect(connect_cause(&e));
                return Err(Failure::Connect(e, req, cause));
            }
        };
        let ready = Instant::now();
        trace.connect = Some(ready - start);
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(resp)) => {
                trace.response = Some(ready.elapsed());
                return Ok(resp);
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if stale_ok => {
                    debug!(server = %server.addr, "shared HTTP/2 connection closed; reconnecting");
                    server.pool::<crate::http::Pool>().h2_forget_closed();
                    stale_ok = false;
                    req = back;
                }
                Some(back) => {
                    return Err(Failure::Connect(
                        io::Error::other(e.into_error()),
                        back,
                        Cause::ServerReset,
                    ));
                }
                None => return Err(Failure::Sent(e.into_error().into(), None)),
            },
        }
    }
}
