//! Switchyard: a discovery-aware L7 load balancer that replaces etcd + confd + HAProxy.
//!
//! [`run`] wires the parts together and owns the lifecycle: it starts discovery, health checks,
//! the admin server and one accept loop per frontend on listeners the caller bound (so tests can
//! bind port 0), applies config reloads, and on cancellation stops accepting, drains in-flight
//! requests for up to the shutdown grace period, and returns. Started by a takeover
//! (`takeover.rs`), it serves on inherited sockets, and hands its own over when asked.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod exposition;
pub mod health;
pub mod http;
pub mod listener;
pub mod log_limit;
pub mod metrics;
pub mod migrate;
pub mod proxy_protocol;
pub mod register;
pub mod route;
pub mod signal;
pub mod snapshot;
pub mod sni;
pub mod split;
pub mod stats;
pub mod takeover;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod value;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, Frontend};
use crate::http::HttpFrontend;
use crate::snapshot::Publisher;

/// The sockets `run` serves on: the admin listener and one per frontend (by name).
pub struct Listeners {
    admin: TcpListener,
    frontends: Vec<(String, TcpListener)>,
}

impl Listeners {
    /// Binds the admin address and every frontend's address (port 0 picks a free port). An
    /// error names the listener: `admin.listen` or `frontend "NAME"`, with the address.
    pub async fn bind(cfg: &Config) -> std::io::Result<Listeners> {
        let named = |what: String| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let admin = bind(cfg.admin_listen)
            .await
            .map_err(named("admin.listen".to_string()))?;
        let mut frontends = Vec::with_capacity(cfg.frontends.len());
        for f in &cfg.frontends {
            let l = bind(f.bind)
                .await
                .map_err(named(format!("frontend {:?}", f.name)))?;
            frontends.push((f.name.clone(), l));
        }
        Ok(Listeners { admin, frontends })
    }

    /// Like [`Listeners::bind`], but first takes each listener from `inherited` (a takeover's
    /// or systemd's sockets, see `takeover::take`); what is left there is closed.
    pub async fn bind_with(
        cfg: &Config,
        mut inherited: Vec<takeover::Inherited>,
    ) -> std::io::Result<Listeners> {
        let named = |what: String| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let admin = match takeover::take(&mut inherited, true, takeover::ADMIN, cfg.admin_listen) {
            Some(l) => adopt(l).map_err(named("admin.listen".to_string()))?,
            None => bind(cfg.admin_listen)
                .await
                .map_err(named("admin.listen".to_string()))?,
        };
        let mut frontends = Vec::with_capacity(cfg.frontends.len());
        for f in &cfg.frontends {
            let l = match takeover::take(&mut inherited, false, &f.name, f.bind) {
                Some(l) => {
                    info!(frontend = %f.name, bind = %f.bind, "listening socket inherited");
                    adopt(l)
                }
                None => bind(f.bind).await,
            };
            frontends.push((
                f.name.clone(),
                l.map_err(named(format!("frontend {:?}", f.name)))?,
            ));
        }
        for i in inherited {
            info!(name = %i.name, bind = %i.bind, "inherited listening socket not in the configuration; closed");
        }
        Ok(Listeners { admin, frontends })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn frontend_addr(&self, name: &str) -> Option<SocketAddr> {
        let (_, l) = self.frontends.iter().find(|(n, _)| n == name)?;
        l.local_addr().ok()
    }
}

/// An inherited listening socket, on this runtime.
fn adopt(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))
}

/// A started frontend, ready to run accept loops (one per thread with `work_stealing = false`).
enum Serve {
    Http(HttpFrontend),
    Tcp(tcp::TcpFrontend),
}

impl Serve {
    fn accept(
        &self,
        listener: Arc<TcpListener>,
        limit: Arc<listener::ConnLimit>,
        thread: usize,
        stop: CancellationToken,
        shutdown: signal::Signal,
        tracker: TaskTracker,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        match self {
            Serve::Http(fe) => Box::pin(crate::http::serve(
                listener,
                fe.clone(),
                limit,
                thread,
                stop,
                shutdown,
                tracker,
            )),
            Serve::Tcp(fe) => Box::pin(tcp::serve(
                listener,
                fe.clone(),
                limit,
                thread,
                stop,
                shutdown,
                tracker,
            )),
        }
    }
}

/// One frontend's accept loop and the listener it owns.
struct FrontendTask {
    config: Frontend,
    listener: Arc<TcpListener>,
    stop_accept: CancellationToken,
}

struct Runtime {
    config: Config,
    /// The running config, for the admin API.
    running: Arc<arc_swap::ArcSwap<Config>>,
    publisher: Arc<Publisher>,
    discovery_status: Arc<ArcSwapOption<discovery::Status>>,
    discovery_cancel: CancellationToken,
    frontends: HashMap<String, FrontendTask>,
    cancel: CancellationToken,
    /// Fired at shutdown: every connection finishes its in-flight request and closes.
    conn_shutdown: signal::Signal,
    tracker: TaskTracker,
    /// The access log writer the frontends hand their records to (`None`: off).
    access_log: Option<access_log::AccessLog>,
    /// The frontends' counters, by name, for the admin API.
    stats: Arc<stats::Registry>,
    /// With `work_stealing = false`: the other threads' runtimes, each of which accepts on every
    /// frontend too and serves the connections it accepted.
    workers: Vec<tokio::runtime::Handle>,
    /// The admin listener (a duplicate: the admin server owns it) and the address it was bound
    /// for, to hand over in a takeover. Closed when the drain begins.
    admin_listener: Option<(SocketAddr, OwnedFd)>,
}

impl Runtime {
    /// Duplicates of the listening sockets in use, for a takeover.
    fn handed(&self) -> std::io::Result<Vec<takeover::Handed>> {
        let mut handed = Vec::with_capacity(self.frontends.len() + 1);
        if let Some((bind, fd)) = &self.admin_listener {
            handed.push(takeover::Handed {
                admin: true,
                name: takeover::ADMIN.to_string(),
                bind: *bind,
                fd: fd.try_clone()?,
            });
        }
        for (name, t) in &self.frontends {
            handed.push(takeover::Handed {
                admin: false,
                name: name.clone(),
                bind: t.config.bind,
                fd: t.listener.as_fd().try_clone_to_owned()?,
            });
        }
        Ok(handed)
    }

    fn start_discovery(&mut self) {
        self.discovery_cancel = self.cancel.child_token();
        let status = discovery::spawn(
            &self.config,
            Arc::clone(&self.publisher),
            self.discovery_cancel.clone(),
        );
        self.discovery_status.store(status);
    }

    fn start_frontend(&mut self, config: Frontend, listener: Arc<TcpListener>) {
        let stop_accept = self.cancel.child_token();
        let stats = self.stats.frontend(&config.name);
        let fe = Arc::new(config.clone());
        let started = match config.mode {
            crate::config::Mode::Http => HttpFrontend::new(
                fe,
                self.publisher.shared(),
                self.access_log.clone(),
                Arc::clone(&stats),
            )
            .map(Serve::Http),
            crate::config::Mode::Tcp => tcp::TcpFrontend::new(
                fe,
                self.publisher.shared(),
                self.access_log.clone(),
                Arc::clone(&stats),
            )
            .map(Serve::Tcp),
        };
        match started {
            Ok(serve) => {
                // One `maxconn` for the frontend, whichever thread accepts.
                let threads = 1 + self.workers.len();
                let limit = Arc::new(listener::ConnLimit::new(&config, stats, threads));
                let accept = |listener, thread| {
                    serve.accept(
                        listener,
                        Arc::clone(&limit),
                        thread,
                        stop_accept.clone(),
                        self.conn_shutdown.clone(),
                        self.tracker.clone(),
                    )
                };
                tokio::spawn(accept(Arc::clone(&listener), 0));
                for (i, worker) in self.workers.iter().enumerate() {
                    match listener::listener_for(&listener, worker) {
                        Ok(l) => drop(worker.spawn(accept(Arc::new(l), i + 1))),
                        Err(e) => {
                            error!(frontend = %config.name, error = %e, "a worker thread cannot accept on this frontend; the others do")
                        }
                    }
                }
            }
            Err(e) => {
                error!(frontend = %config.name, error = %e, "frontend not started: TLS setup failed")
            }
        }
        self.frontends.insert(
            config.name.clone(),
            FrontendTask {
                config,
                listener,
                stop_accept,
            },
        );
    }

    /// Applies a validated new config. Listeners whose frontend keeps its name and bind address
    /// are kept (their accept loop restarts if other settings changed); new ones are bound.
    async fn reload(&mut self, mut new: Config) -> Result<(), String> {
        new.keep_rate_limits(&self.config);
        if new.admin_listen != self.config.admin_listen {
            warn!(old = %self.config.admin_listen, new = %new.admin_listen,
                "admin.listen changes need a restart; keeping the old admin listener");
        }
        // Bind new addresses first: if one fails, the whole reload is refused.
        let mut fresh = HashMap::new();
        for f in &new.frontends {
            let keep = self
                .frontends
                .get(&f.name)
                .is_some_and(|t| t.config.bind == f.bind);
            if !keep {
                match bind(f.bind).await {
                    Ok(l) => {
                        fresh.insert(f.name.clone(), Arc::new(l));
                    }
                    Err(e) => {
                        error!(frontend = %f.name, error = %e, "reload refused; the running configuration stays");
                        crate::metrics::reload_refused();
                        return Err(format!("frontend {:?}: {e}", f.name));
                    }
                }
            }
        }
        // A new access log setting gets a new writer (the old one ends with the connections
        // that still hold it) and restarts every accept loop so new connections use it.
        let relog = new.log != self.config.log;
        if relog {
            match access_log::AccessLog::start(&new.log) {
                Ok(log) => self.access_log = log,
                Err(e) => {
                    error!(error = %e, "reload refused; the running configuration stays");
                    crate::metrics::reload_refused();
                    return Err(format!("log.access_file: {e}"));
                }
            }
        }
        self.publisher.apply_config(&new);
        // A tree's watch knows its position, layout, name templates and linger (`discovery/tree.rs`).
        let watched = |c: &Config| {
            (
                c.etcd.clone(),
                c.backends
                    .iter()
                    .map(|b| (b.name.clone(), b.etcd_prefix.clone()))
                    .collect::<Vec<_>>(),
                c.service_trees
                    .iter()
                    .map(|t| {
                        (
                            t.etcd_prefix.clone(),
                            t.servers_dir.clone(),
                            t.host.clone(),
                            t.path_prefix.clone(),
                            t.service_linger,
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let restart_discovery = watched(&new) != watched(&self.config);
        self.config = new.clone();
        if restart_discovery {
            self.discovery_cancel.cancel();
            self.start_discovery();
        }
        let mut old = std::mem::take(&mut self.frontends);
        for f in new.frontends {
            let listener = match fresh.remove(&f.name) {
                Some(l) => {
                    if let Some(t) = old.remove(&f.name) {
                        t.stop_accept.cancel();
                    }
                    l
                }
                None => {
                    let t = old.remove(&f.name).expect("kept frontends exist");
                    // A TLS frontend restarts its accept loop on every reload, so SIGHUP re-reads
                    // its certificates (validated before the reload got here); established
                    // connections keep the old ones.
                    if t.config == f && f.tls.is_none() && !relog {
                        self.frontends.insert(f.name.clone(), t);
                        continue;
                    }
                    t.stop_accept.cancel();
                    t.listener
                }
            };
            self.start_frontend(f, listener);
        }
        for (name, t) in old {
            info!(frontend = %name, "frontend removed");
            t.stop_accept.cancel();
        }
        crate::metrics::reload_applied();
        self.running.store(Arc::new(self.config.clone()));
        info!("configuration reloaded");
        Ok(())
    }
}

/// How often histogram samples are drained and idle upstream connections past their
/// `pool_idle_timeout` are closed (so one may outlive it by up to this much).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Finishes drains of removed servers (see `Publisher::sweep_draining`) every 100 ms.
async fn sweep_drains(publisher: Arc<Publisher>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => publisher.sweep_draining(),
        }
    }
}

/// Runs Switchyard until `cancel` fires, then drains and returns. Each config received on
/// `reloads` (already validated) replaces the running one.
pub async fn run(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
    reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    run_with(config, listeners, cancel, reloads, Control::default()).await
}

/// What the binary adds to [`run`]: takeovers, word once it serves, and the threads of
/// `work_stealing = false`.
#[derive(Debug, Default)]
pub struct Control {
    /// Requests from the upgrade socket (`takeover::serve`).
    pub takeovers: Option<mpsc::Receiver<takeover::Request>>,
    /// Told once every accept loop is started.
    pub serving: Option<oneshot::Sender<()>>,
    /// The runtimes of other threads (`work_stealing = false`: one current-thread runtime per
    /// thread), each of which accepts on every frontend too and serves what it accepted.
    /// Everything else, discovery, health checks, the admin server, runs on the caller's.
    pub workers: Vec<tokio::runtime::Handle>,
}

/// [`run`], answering takeover requests: after `takeover::Request::Stop` it stops accepting
/// and drains as on `cancel`, but as a handoff (`Signal::fire_handoff`).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    cancel: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
    control: Control,
) -> anyhow::Result<()> {
    let Control {
        takeovers,
        serving,
        workers,
    } = control;
    // A closed channel when there is no upgrade socket: its branch below is then disabled.
    let mut takeovers = takeovers.unwrap_or_else(|| mpsc::channel(1).1);
    // The recorder first: anything recorded before it is installed is lost.
    let metrics = crate::metrics::handle();
    crate::metrics::config_loaded(true);
    let publisher = Arc::new(Publisher::new(&config));
    let access_log = access_log::AccessLog::start(&config.log)
        .map_err(|e| anyhow::anyhow!("log.access_file: {e}"))?;
    let stats = Arc::new(stats::Registry::default());
    let mut rt = Runtime {
        access_log,
        stats: Arc::clone(&stats),
        publisher: Arc::clone(&publisher),
        discovery_status: Arc::new(ArcSwapOption::empty()),
        discovery_cancel: cancel.child_token(),
        frontends: HashMap::new(),
        cancel: cancel.clone(),
        conn_shutdown: signal::Signal::new(),
        tracker: TaskTracker::new(),
        running: Arc::new(arc_swap::ArcSwap::from_pointee(config.clone())),
        config: config.clone(),
        workers,
        admin_listener: None,
    };
    rt.admin_listener = Some((
        config.admin_listen,
        listeners.admin.as_fd().try_clone_to_owned()?,
    ));
    rt.start_discovery();
    let (admin_reload_tx, mut admin_reloads) = mpsc::channel::<admin::ReloadRequest>(1);
    let admin = admin::Admin {
        shared: publisher.shared(),
        discovery: Arc::clone(&rt.discovery_status),
        metrics,
        publisher: Arc::clone(&publisher),
        running: Arc::clone(&rt.running),
        reload: admin_reload_tx,
        stats,
    };
    // Histogram samples pile up in the recorder until an upkeep drains them; without a
    // Prometheus scraping /metrics that would grow without bound, so drain them here too.
    // The same tick closes idle upstream connections past their backend's pool_idle_timeout.
    let upkeep = admin.metrics.clone();
    let upkeep_cancel = cancel.clone();
    let upkeep_shared = publisher.shared();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = upkeep_cancel.cancelled() => return,
                _ = tick.tick() => {
                    upkeep.run_upkeep();
                    crate::http::close_idle_connections(&upkeep_shared.load());
                }
            }
        }
    });
    let admin_task = tokio::spawn(admin::serve(listeners.admin, admin, cancel.clone()));
    let health_task = tokio::spawn(health::run(publisher.shared(), cancel.clone()));
    let sweep_task = tokio::spawn(sweep_drains(Arc::clone(&publisher), cancel.clone()));
    // NOTE: the snapshot file path is read at start; a reload that changes it needs a restart.
    if let Some(path) = config.etcd.as_ref().and_then(|e| e.snapshot_file.clone()) {
        tokio::spawn(discovery::run_snapshot_writer(
            path,
            publisher.shared(),
            cancel.clone(),
        ));
    }
    for (name, listener) in listeners.frontends {
        let f = config
            .frontends
            .iter()
            .find(|f| f.name == name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("listener for unknown frontend {name:?}"))?;
        rt.start_frontend(f, Arc::new(listener));
    }
    if let Some(serving) = serving {
        let _ = serving.send(());
    }
    let mut handoff = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(req) = takeovers.recv(), if !takeovers.is_closed() => match req {
                takeover::Request::Listeners(reply) => {
                    let _ = reply.send(rt.handed());
                }
                takeover::Request::Stop(reply) => {
                    info!("taken over: another process accepts on these sockets now");
                    handoff = true;
                    cancel.cancel();
                    let _ = reply.send(());
                    break;
                }
            },
            // `None`: nobody can send SIGHUP reloads any more; the admin API still can.
            next = reloads.recv(), if !reloads.is_closed() => if let Some(new) = next {
                let _ = rt.reload(new).await;
            },
            Some((new, reply)) = admin_reloads.recv() => {
                let _ = reply.send(rt.reload(new).await);
            }
        }
    }

    // Shutdown: the accept loops stopped with `cancel` (their tokens are its children). Now ask
    // every connection to finish its in-flight request and close, and wait up to the grace.
    info!(grace = ?rt.config.shutdown_grace, "shutting down: draining connections");
    // Close the listening sockets (once their accept loops let go of them too), so that new
    // clients are refused at once instead of queueing in a backlog nobody accepts from.
    rt.frontends.clear();
    rt.admin_listener = None;
    if handoff {
        rt.conn_shutdown.fire_handoff();
    } else {
        rt.conn_shutdown.fire();
    }
    rt.tracker.close();
    if tokio::time::timeout(rt.config.shutdown_grace, rt.tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?rt.config.shutdown_grace, "grace period over; closing the connections still open");
    }
    let _ = admin_task.await;
    let _ = health_task.await;
    let _ = sweep_task.await;
    info!("stopped");
    Ok(())
}
