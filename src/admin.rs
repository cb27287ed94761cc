//! The admin server (the README's "Admin API"): `/healthz`, `/readyz`, `/api/v1/backends`,
//! `/api/v1/frontends`, `/api/v1/routes`,
//! `/metrics` and the stats page at `/`, plus the runtime API: set a server's administrative
//! state (drain, maint, ready), read the running config (secrets redacted), and reload the config
//! file. The write endpoints and the config need the bearer token when `[admin] token` is set.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::discovery;
use crate::snapshot::{AdminState, Publisher, Snapshot};
use tokio::sync::{mpsc, oneshot};

/// A reload asked through the API: the new config, and where to send the outcome.
pub type ReloadRequest = (Config, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct Admin {
    pub shared: Arc<ArcSwap<Snapshot>>,
    pub discovery: Arc<ArcSwapOption<discovery::Status>>,
    pub metrics: PrometheusHandle,
    pub publisher: Arc<Publisher>,
    pub running: Arc<ArcSwap<Config>>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// The frontends' counters (`GET /api/v1/frontends`).
    pub stats: Arc<crate::stats::Registry>,
    /// ACME state (`GET /api/v1/certificates`).
    pub acme: Arc<crate::acme::Acme>,
}

pub async fn serve(listener: TcpListener, admin: Admin, cancel: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening");
    }
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let builder = Arc::clone(&builder);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", v.to_string())
}

/// `None` when allowed; otherwise 401 (no token given) or 403 (a wrong one).
fn unauthorized(admin: &Admin, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let running = admin.running.load();
    let want = running.admin_token.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                json!({"error": "bearer token required"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Some(r)
        }
        Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => None,
        Some(_) => Some(json(StatusCode::FORBIDDEN, json!({"error": "wrong token"}))),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A write refused for its token is logged at WARN at most once per path per this interval
/// (anyone who reaches the port can send them); the next line counts those held back.
const REFUSED_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn warn_refused_token(path: &str, status: StatusCode) {
    static LIMIT: std::sync::LazyLock<crate::log_limit::LogLimit> =
        std::sync::LazyLock::new(|| crate::log_limit::LogLimit::new(REFUSED_WARN_INTERVAL));
    let why = if status == StatusCode::UNAUTHORIZED {
        "no bearer token"
    } else {
        "wrong bearer token"
    };
    match LIMIT.admit(path, std::time::Instant::now()) {
        Some(suppressed) => warn!(
            path,
            status = status.as_u16(),
            suppressed,
            "admin POST refused: {why}"
        ),
        None => debug!(path, status = status.as_u16(), "admin POST refused: {why}"),
    }
}

/// Largest admin request body read (a state change is a few bytes).
const MAX_BODY: usize = 4096;

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if req.method() == Method::POST {
        if let Some(r) = unauthorized(admin, &req) {
            warn_refused_token(&path, r.status());
            return r;
        }
        return post(admin, &path, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    if path == "/api/v1/config" {
        if let Some(r) = unauthorized(admin, &req) {
            return r;
        }
        return json(StatusCode::OK, redacted_config(&admin.running.load()));
    }
    match path.as_str() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if admin.shared.load().ready {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: waiting for the first etcd listing\n",
                )
            }
        }
        "/api/v1/backends" => respond(
            StatusCode::OK,
            "application/json",
            backends_json(admin).to_string(),
        ),
        "/api/v1/frontends" => respond(
            StatusCode::OK,
            "application/json",
            frontends_json(admin).to_string(),
        ),
        "/api/v1/certificates" => respond(
            StatusCode::OK,
            "application/json",
            admin.acme.status_json(&admin.running.load()).to_string(),
        ),
        "/api/v1/routes" => respond(
            StatusCode::OK,
            "application/json",
            routes_json(admin).to_string(),
        ),
        "/metrics" => {
            admin.metrics.run_upkeep();
            let snap = admin.shared.load();
            crate::exposition::register_zeros(&snap);
            let mut text = admin.metrics.render();
            crate::exposition::append(&snap, &mut text);
            respond(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", STATS_PAGE),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `POST /api/v1/reload` and `POST /api/v1/backends/{backend}/servers/{server}/state`.
async fn post(admin: &Admin, path: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "body too large"}),
            );
        }
    };
    if path == "/api/v1/reload" {
        let Some(file) = admin.running.load().path.clone() else {
            return json(
                StatusCode::CONFLICT,
                json!({"error": "not started from a config file"}),
            );
        };
        let new = match Config::load(&file) {
            Ok(c) => c,
            Err(e) => {
                warn!(path = %file.display(), error = %e, "POST /api/v1/reload refused: the running configuration stays");
                crate::metrics::reload_refused();
                return json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": e.to_string(), "reloaded": false}),
                );
            }
        };
        if let Err(e) = crate::tls::validate_files(&new) {
            warn!(path = %file.display(), error = %e, "POST /api/v1/reload refused: the running configuration stays");
            crate::metrics::reload_refused();
            return json(
                StatusCode::BAD_REQUEST,
                json!({"error": e.to_string(), "reloaded": false}),
            );
        }
        let (tx, rx) = oneshot::channel();
        if admin.reload.send((new, tx)).await.is_err() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "shutting down"}),
            );
        }
        return match rx.await {
            Ok(Ok(())) => json(StatusCode::OK, json!({"reloaded": true})),
            Ok(Err(e)) => {
                warn!(error = %e, "POST /api/v1/reload refused: the running configuration stays");
                json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": e, "reloaded": false}),
                )
            }
            Err(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "shutting down"}),
            ),
        };
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["api", "v1", "backends", backend, "servers", server, "state"] = parts.as_slice() else {
        return json(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    };
    let wanted = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(String::from));
    let Some(state) = wanted.as_deref().and_then(AdminState::parse) else {
        return json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body must be {\"state\": \"ready\" | \"drain\" | \"maint\"}"}),
        );
    };
    match admin.publisher.set_admin_state(backend, server, state) {
        Some(s) => json(
            StatusCode::OK,
            json!({"backend": backend, "name": s.name, "addr": s.addr,
                   "admin": s.admin().as_str(), "state": s.state_name()}),
        ),
        None => json(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no server {server:?} in backend {backend:?}")}),
        ),
    }
}

/// The running config as JSON, with the secrets replaced.
pub fn redacted_config(c: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or_else(|e| json!({"error": e.to_string()}));
    for ptr in ["/admin_token", "/etcd/password"] {
        if let Some(x) = v.pointer_mut(ptr)
            && !x.is_null()
        {
            *x = json!("<redacted>");
        }
    }
    v
}

/// The `/api/v1/backends` document.
/// `GET /api/v1/frontends`: each running frontend with its counters (zeros for one that has
/// not started: its TLS setup failed).
pub fn frontends_json(admin: &Admin) -> serde_json::Value {
    let running = admin.running.load();
    let frontends: Vec<_> = running
        .frontends
        .iter()
        .map(|f| {
            let stats = admin.stats.get(&f.name).unwrap_or_default();
            let mode = match f.mode {
                crate::config::Mode::Http => "http",
                crate::config::Mode::Tcp => "tcp",
            };
            crate::stats::frontend_json(&f.name, mode, &f.bind.to_string(), Some(f.maxconn), &stats)
        })
        .collect();
    json!({ "frontends": frontends })
}

pub fn backends_json(admin: &Admin) -> serde_json::Value {
    let snap = admin.shared.load();
    let discovery = admin.discovery.load().as_ref().map(|s| {
        let v = s.view();
        json!({
            "api": v.api,
            "connected": v.connected,
            "index": v.index,
            "last_sync_age_seconds": v.last_sync_age_seconds,
            "resyncs": v.resyncs,
            "from_snapshot_file": v.from_snapshot_file,
        })
    });
    let backends: Vec<_> = snap
        .backends
        .iter()
        .map(|b| {
            let limit =
                (b.config.max_conns_per_server > 0).then_some(b.config.max_conns_per_server);
            let servers: Vec<_> = b
                .servers
                .iter()
                .chain(b.draining.iter())
                .map(|s| {
                    let last = crate::health::last_check(s);
                    let view = crate::health::check_view(s);
                    let (down_transitions, downtime_ms) = s.downtime();
                    json!({
                        "name": s.name,
                        "addr": s.addr,
                        "source": s.source.as_str(),
                        "state": s.state_name(),
                        "admin": s.admin().as_str(),
                        "weight": s.weight,
                        "active": s.active(),
                        // HAProxy's "Sessions Cur/Limit": the slot limit, null without one.
                        "limit": limit,
                        "requests": s.request_counts().0,
                        "errors": s.request_counts().1,
                        "state_age_seconds": s.state_age_ms() as f64 / 1000.0,
                        "last_check": last.map(|(ok, _)| if ok { "passed" } else { "failed" }),
                        "last_check_age_seconds": last.map(|(_, age)| age.as_secs_f64()),
                        "check": view.last.map(|(o, age)| json!({
                            "ok": o.status.ok(),
                            "status": o.status.as_str(),
                            "reason": o.reason,
                            "duration_ms": o.duration.as_secs_f64() * 1000.0,
                            "age_seconds": age.as_secs_f64(),
                        })),
                        "checks": view.checks,
                        "check_failures": view.failures,
                        "down_transitions": down_transitions,
                        "downtime_seconds": downtime_ms as f64 / 1000.0,
                        "admin_age_seconds": s.admin_age_ms() as f64 / 1000.0,
                    })
                })
                .collect();
            json!({
                "name": b.name(),
                "etcd_prefix": b.config.etcd_prefix,
                "balance": format!("{:?}", b.config.balance).to_lowercase(),
                "servers": servers,
                "stats": b.runtime.stats.json(),
                // HAProxy's "Queue Cur/Max"; null without `max_conns_per_server`.
                "queue": limit.map(|limit| {
                    let q = &b.runtime.queue;
                    json!({
                        "current": q.depth(),
                        "max": q.max_depth(),
                        "queued": q.queued_total(),
                        "max_conns_per_server": limit,
                        "timeout_seconds": b.config.queue_timeout().as_secs_f64(),
                    })
                }),
            })
        })
        .collect();
    json!({"discovery": discovery, "backends": backends})
}

/// A weighted split as listed: `[{"name", "weight"}]`, in file order.
fn split_json(split: &crate::split::Split) -> serde_json::Value {
    let backends: Vec<_> = split
        .backends()
        .iter()
        .map(|w| json!({"name": &*w.name, "weight": w.weight}))
        .collect();
    json!(backends)
}

/// The `/api/v1/routes` document: each frontend's routes in precedence order (the first that
/// matches a request takes it) and its fallback backend.
pub fn routes_json(admin: &Admin) -> serde_json::Value {
    let snap = admin.shared.load();
    let frontends: Vec<_> = snap
        .routes
        .iter()
        .map(|(name, table)| {
            let routes: Vec<_> = table
                .routes()
                .iter()
                .map(|r| {
                    let mut route = json!({
                        "host": r.host,
                        "path_prefix": (!r.is_sni()).then_some(r.path_prefix.as_str()),
                        "sni": r.sni,
                        "backend": &*r.backend_name,
                        "strip_prefix": r.strip_prefix,
                        "source": r.source,
                    });
                    // A split: `backend` stays its heaviest, for readers that know one.
                    if let Some(split) = &r.split {
                        route["backends"] = split_json(split);
                    }
                    route
                })
                .collect();
            let mut frontend = json!({
                "name": name,
                "routes": routes,
                "fallback": table.fallback().map(|(_, name)| name.to_string()),
            });
            if let Some(split) = table.fallback_split() {
                frontend["fallback_backends"] = split_json(split);
            }
            frontend
        })
        .collect();
    json!({ "frontends": frontends })
}

/// The stats page (`stats.html`): one self-refreshing page with no external assets, built from
/// the admin JSON. Each backend's table carries `data-backend="NAME"` and each server row
/// `data-server="ADDR" data-state="STATE"` (`maint` for a server in maintenance), stable hooks for
/// scripts and for the browser test (`tests/stats_page.rs`).
const STATS_PAGE: &str = include_str!("stats.html");
