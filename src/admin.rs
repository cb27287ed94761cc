//! The admin server (the README's "Admin API"): `/healthz`, `/readyz`, `/api/v1/backends`,
//! `/api/v1/routes`,
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
    /// The backends `switchyard_backend_servers` was last exported for.
    pub exported: Arc<std::sync::Mutex<Vec<String>>>,
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
        "/api/v1/routes" => respond(
            StatusCode::OK,
            "application/json",
            routes_json(admin).to_string(),
        ),
        "/metrics" => {
            admin.metrics.run_upkeep();
            export_backend_servers(&admin.shared.load(), &admin.exported);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                admin.metrics.render(),
            )
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
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "failure")
                    .increment(1);
                return json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": e.to_string(), "reloaded": false}),
                );
            }
        };
        if let Err(e) = crate::tls::validate_files(&new) {
            warn!(path = %file.display(), error = %e, "POST /api/v1/reload refused: the running configuration stays");
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "failure").increment(1);
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
            let servers: Vec<_> = b
                .servers
                .iter()
                .chain(b.draining.iter())
                .map(|s| {
                    let last = crate::health::last_check(s);
                    json!({
                        "name": s.name,
                        "addr": s.addr,
                        "source": s.source.as_str(),
                        "state": s.state_name(),
                        "admin": s.admin().as_str(),
                        "weight": s.weight,
                        "active": s.active(),
                        "requests": s.request_counts().0,
                        "errors": s.request_counts().1,
                        "state_age_seconds": s.state_age_ms() as f64 / 1000.0,
                        "last_check": last.map(|(ok, _)| if ok { "passed" } else { "failed" }),
                        "last_check_age_seconds": last.map(|(_, age)| age.as_secs_f64()),
                    })
                })
                .collect();
            json!({
                "name": b.name(),
                "etcd_prefix": b.config.etcd_prefix,
                "balance": format!("{:?}", b.config.balance).to_lowercase(),
                "servers": servers,
            })
        })
        .collect();
    json!({"discovery": discovery, "backends": backends})
}

/// Sets `switchyard_backend_servers{backend,state}` from `snap`: every state of every backend,
/// zeros included (an empty backend has series for the "no server up" alert to see), and zeros
/// for the backends gone since the last scrape (a removed tree service), so none keeps
/// reporting servers it no longer has. A server in maintenance counts as `maint` only;
/// removed servers still finishing requests count as `draining`.
fn export_backend_servers(snap: &Snapshot, exported: &std::sync::Mutex<Vec<String>>) {
    const STATES: [&str; 4] = ["up", "down", "draining", "maint"];
    let mut seen = exported.lock().unwrap_or_else(|e| e.into_inner());
    let set = |backend: &str, counts: [usize; 4]| {
        for (state, n) in STATES.iter().zip(counts) {
            metrics::gauge!(crate::metrics::BACKEND_SERVERS,
                "backend" => backend.to_string(), "state" => *state)
            .set(n as f64);
        }
    };
    for b in &snap.backends {
        let mut counts = [0usize; 4];
        for s in &b.servers {
            let i = if s.is_draining() {
                2
            } else if s.admin() == AdminState::Maint {
                3
            } else if s.is_up() {
                0
            } else {
                1
            };
            counts[i] += 1;
        }
        counts[2] += b.draining.len();
        set(b.name(), counts);
    }
    let current: std::collections::HashSet<&str> = snap.backends.iter().map(|b| b.name()).collect();
    for gone in seen.iter().filter(|n| !current.contains(n.as_str())) {
        set(gone, [0; 4]);
    }
    *seen = current.into_iter().map(String::from).collect();
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
                    json!({
                        "host": r.host,
                        "path_prefix": (!r.is_sni()).then_some(r.path_prefix.as_str()),
                        "sni": r.sni,
                        "backend": &*r.backend_name,
                        "strip_prefix": r.strip_prefix,
                        "source": r.source,
                    })
                })
                .collect();
            json!({
                "name": name,
                "routes": routes,
                "fallback": table.fallback().map(|(_, name)| name.to_string()),
            })
        })
        .collect();
    json!({ "frontends": frontends })
}

/// A minimal self-refreshing stats page; no external assets. Each backend's table carries
/// `data-backend="NAME"` and each server row `data-server="ADDR" data-state="STATE"`, stable hooks
/// for scripts and for the browser test (`tests/stats_page.rs`).
const STATS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Switchyard</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{font-size:1.5em;margin:0 0 .4em}h1 small{font-size:.55em;font-weight:normal;color:#777;margin-left:.8em}
h2{font-size:1.15em;margin:1.4em 0 .4em}h2 small{font-weight:normal;color:#666;margin-left:.8em}
#disc{display:inline-block;padding:.35em .8em;border-radius:4px;background:#e8eefc}#disc.bad{background:#fcc}
table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}th{background:#f2f2f2;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{background:#dfd}.down{background:#fcc}.draining{background:#ffc}td.st{font-weight:600}
</style>
</head><body><h1>Switchyard<small id="upd"></small></h1><div id="disc">loading…</div><div id="out"></div>
<script>
const e=s=>String(s).replace(/[&<>"']/g,c=>'&#'+c.charCodeAt(0)+';');
async function refresh(){
  const disc=document.getElementById('disc');
  try{
    const r=await fetch('/api/v1/backends');const j=await r.json();
    const d=j.discovery;
    disc.className=d&&!d.connected?'bad':'';
    disc.textContent=d?`discovery ${d.api}: ${d.connected?'connected':'DISCONNECTED'}, index ${d.index}, last sync ${d.last_sync_age_seconds==null?'never':d.last_sync_age_seconds.toFixed(1)+' s ago'}, resyncs ${d.resyncs}`:'no discovery';
    let h='';
    for(const b of j.backends){
      const up=b.servers.filter(s=>s.state==='up').length;
      h+=`<h2>${e(b.name)}<small>${up}/${b.servers.length} up · ${e(b.balance)}${b.etcd_prefix?' · etcd '+e(b.etcd_prefix):''}</small></h2>`;
      h+=`<table data-backend="${e(b.name)}"><tr><th>name</th><th>address</th><th>source</th><th>state</th><th>admin</th><th>weight</th><th>active</th><th>requests</th><th>5xx</th><th>last check</th><th>in state</th></tr>`;
      for(const s of b.servers){h+=`<tr class="${e(s.state)}" data-server="${e(s.addr)}" data-state="${e(s.state)}"><td>${e(s.name)}</td><td>${e(s.addr)}</td><td>${e(s.source)}</td><td class="st">${e(s.state)}</td><td>${e(s.admin)}</td><td class="n">${s.weight}</td><td class="n">${s.active}</td><td class="n">${s.requests}</td><td class="n">${s.errors}</td><td>${s.last_check==null?'-':e(s.last_check)+' '+s.last_check_age_seconds.toFixed(1)+' s ago'}</td><td class="n">${s.state_age_seconds.toFixed(0)} s</td></tr>`;}
      h+='</table>';
    }
    document.getElementById('out').innerHTML=h;
    document.getElementById('upd').textContent='updated '+new Date().toLocaleTimeString();
  }catch(err){disc.className='bad';disc.textContent='admin API unreachable: '+err;}
}
refresh();setInterval(refresh,2000);
</script></body></html>
"#;
