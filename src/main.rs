//! The `switchyard` binary: the command line (`run`, `check`, `register`), logging, signals,
//! the upgrade socket and systemd notifications, and exit codes.
//! Exit codes: 0 success, 1 invalid configuration or arguments, 2 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use switchyard::config::Config;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A discovery-aware load balancer fed by etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// Take the listening sockets over from the Switchyard listening on this upgrade
        /// socket, serve, then tell it to stop accepting and drain (a zero-downtime upgrade).
        #[arg(long, value_name = "SOCKET")]
        takeover: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
    /// Keep KEY=VALUE registered in etcd until SIGTERM/SIGINT, then remove it (the sidekick).
    Register(Box<switchyard::register::RegisterArgs>),
    /// Translate haproxy.cfg (and a confd template resource and template) into a switchyard.toml
    /// on stdout; what cannot be mapped is one warning line each on stderr.
    Migrate {
        /// The (rendered) haproxy.cfg.
        #[arg(long)]
        haproxy: PathBuf,
        /// The confd template resource, e.g. /etc/confd/conf.d/haproxy.toml.
        #[arg(long)]
        confd_toml: Option<PathBuf>,
        /// The confd template, e.g. /etc/confd/templates/haproxy.cfg.tmpl (default: the
        /// resource's `src` under <confdir>/templates).
        #[arg(long)]
        confd_template: Option<PathBuf>,
        /// etcd endpoint URL(s), comma-separated, for `[etcd] endpoints`.
        #[arg(long, default_value = switchyard::migrate::DEFAULT_ETCD)]
        etcd: String,
    },
}

/// mimalloc instead of glibc's malloc: each new client connection allocates a few blocks too
/// big for glibc's per-thread cache (hyper's buffers, tokio's cache-aligned task and I/O
/// registration), and glibc's slow path cost about 9,000 instructions per connection
/// (callgrind, one request per connection: 43.8k -> 38.8k instructions a request).
/// `no_thp`: without it, mimalloc asks for transparent huge pages on its arenas, which raised
/// peak RSS from 12 to 17 MB; with it, RSS stays within 0.5 MB of glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Once, before any TLS or HTTP client exists (reqwest is built without a provider of its own).
    switchyard::tls::install_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                let warnings = switchyard::config::warnings::unused_backends(&c)
                    .into_iter()
                    .chain(switchyard::config::warnings::unresolved_servers(&c))
                    .chain(switchyard::config::warnings::idle_queue_timeouts(&c));
                for w in warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!("configuration valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(1)
            }
        },
        Command::Run { config, takeover } => run(config, takeover),
        Command::Register(args) => match args.validate() {
            Ok(cfg) => {
                init_logging();
                switchyard::register::main(cfg)
            }
            Err(e) => {
                eprintln!("switchyard register: {e}");
                ExitCode::from(1)
            }
        },
        Command::Migrate {
            haproxy,
            confd_toml,
            confd_template,
            etcd,
        } => switchyard::migrate::main(switchyard::migrate::Options {
            haproxy,
            confd_toml,
            confd_template,
            etcd,
        }),
    }
}

/// Parses and validates the config file, including every TLS file it names.
fn load(path: &std::path::Path) -> Result<Config, switchyard::config::ConfigError> {
    let c = Config::load(path)?;
    switchyard::tls::validate_files(&c)?;
    Ok(c)
}

/// A valid config may still hold a backend that serves nothing: said at start and reload.
fn warn_unused(c: &Config) {
    let warnings = switchyard::config::warnings::unused_backends(c)
        .into_iter()
        .chain(switchyard::config::warnings::idle_queue_timeouts(c));
    for w in warnings {
        warn!("{w}");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(path: PathBuf, takeover: Option<PathBuf>) -> ExitCode {
    init_logging();
    let config = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    warn_unused(&config);
    // Before any other thread exists: taking systemd's sockets unsets LISTEN_FDS and LISTEN_PID.
    // A takeover inherits the running process's sockets instead.
    let systemd = if takeover.is_some() {
        Vec::new()
    } else {
        match switchyard::takeover::from_systemd() {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(2);
            }
        }
    };
    // One thread: tokio's current-thread scheduler, which skips the work-stealing machinery
    // (about 9% fewer instructions per request in tcp mode). More: one worker per thread, or
    // with `work_stealing = false` one current-thread runtime per thread.
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let per_thread = !config.work_stealing && threads > 1;
    let mut builder = if threads == 1 || per_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = if per_thread {
        match Workers::start(threads - 1) {
            Ok(w) => w,
            Err(e) => {
                error!("cannot start the worker threads: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        Workers::default()
    };
    let handles = workers.handles.clone();
    rt.block_on(async move {
        let (inherited, handoff) = match &takeover {
            None => (systemd, None),
            Some(socket) => match switchyard::takeover::connect(socket).await {
                Ok((t, inherited)) => {
                    info!(socket = %socket.display(), sockets = inherited.len(), "takeover: listening sockets received");
                    (inherited, Some((t, socket.clone())))
                }
                Err(e) => {
                    error!("takeover through {}: {e}; the running process keeps serving", socket.display());
                    return ExitCode::from(2);
                }
            },
        };
        let listeners = match switchyard::Listeners::bind_with(&config, inherited).await {
            Ok(l) => l,
            Err(e) => {
                if handoff.is_some() {
                    error!("takeover: {e}; the running process keeps serving");
                } else {
                    error!("{e}");
                }
                return ExitCode::from(2);
            }
        };
        let cancel = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        if let Err(e) = spawn_signals(path, cancel.clone(), reload_tx) {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
        let (serving_tx, serving_rx) = tokio::sync::oneshot::channel();
        let (takeover_tx, takeover_rx) = tokio::sync::mpsc::channel(1);
        let started = tokio::spawn(once_serving(
            serving_rx,
            handoff,
            config.upgrade_socket.clone(),
            takeover_tx,
            cancel.clone(),
        ));
        let control = switchyard::Control {
            takeovers: Some(takeover_rx),
            serving: Some(serving_tx),
            workers: handles,
        };
        match switchyard::run_with(config, listeners, cancel, reload_rx, control).await {
            // A takeover the old process did not finish: it kept serving, this one stopped.
            Ok(()) if matches!(started.await, Ok(Err(()))) => ExitCode::from(2),
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::from(2)
            }
        }
    })
}

/// The threads of `work_stealing = false` besides the main one: each runs a current-thread
/// runtime until dropped (`run` spawns accept loops on them through their handles).
#[derive(Default)]
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Workers> {
        let mut w = Workers::default();
        for i in 1..=n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stop.push(stop_tx);
            w.threads.push(
                std::thread::Builder::new()
                    .name(format!("switchyard-worker-{i}"))
                    .spawn(move || {
                        // Dropped with the sender, or sent: either ends the thread.
                        let _ = rt.block_on(stop_rx);
                    })?,
            );
        }
        Ok(w)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Once `run` serves: ends the takeover that started this process (the old one stops and lets
/// go of the upgrade socket), listens on the upgrade socket for the next one, and tells systemd
/// (`READY=1`; `STOPPING=1` when the drain begins). `Err` when the old process did not confirm
/// its stop and still listens on the upgrade socket: it keeps serving (it gives the socket up
/// as it stops), so this one drains and exits.
async fn once_serving(
    serving: tokio::sync::oneshot::Receiver<()>,
    handoff: Option<(switchyard::takeover::Takeover, PathBuf)>,
    upgrade_socket: PathBuf,
    takeovers: tokio::sync::mpsc::Sender<switchyard::takeover::Request>,
    cancel: CancellationToken,
) -> Result<(), ()> {
    use sd_notify::NotifyState;
    if serving.await.is_err() {
        return Ok(());
    }
    let taken_over = handoff.is_some();
    if let Some((t, old_socket)) = handoff {
        match t.serving().await {
            Ok(()) => info!("takeover done: the old process stopped accepting and drains"),
            Err(e) if tokio::net::UnixStream::connect(&old_socket).await.is_ok() => {
                error!(
                    "takeover: the old process did not confirm its stop ({e}) and still listens; it keeps serving, this process stops"
                );
                cancel.cancel();
                return Err(());
            }
            Err(e) => {
                warn!("takeover: the old process did not confirm its stop ({e}), but it is gone")
            }
        }
    }
    // NOTE: read at start; a reload that changes `upgrade_socket` needs a restart.
    match switchyard::takeover::UpgradeSocket::bind(&upgrade_socket).await {
        Ok(Some(socket)) => {
            tokio::spawn(switchyard::takeover::serve(
                socket,
                takeovers,
                cancel.clone(),
            ));
        }
        Ok(None) => warn!(path = %upgrade_socket.display(),
            "another process listens on global.upgrade_socket; this one cannot be taken over"),
        Err(e) => warn!(path = %upgrade_socket.display(), error = %e,
            "cannot listen on global.upgrade_socket; this process cannot be taken over"),
    }
    // After a takeover this process is the service's main one (systemd needs NotifyAccess=all
    // to accept that from it).
    let pid = std::process::id();
    let states: &[NotifyState] = if taken_over {
        &[NotifyState::MainPid(pid), NotifyState::Ready]
    } else {
        &[NotifyState::Ready]
    };
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
    cancel.cancelled().await;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    Ok(())
}

/// SIGTERM/SIGINT cancel; SIGHUP re-reads the config and hands a valid one to `run`.
fn spawn_signals(
    path: PathBuf,
    cancel: CancellationToken,
    reload_tx: tokio::sync::mpsc::Sender<Config>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); cancel.cancel(); return; }
                _ = int.recv() => { info!("SIGINT received"); cancel.cancel(); return; }
                _ = hup.recv() => {
                    info!(path = %path.display(), "SIGHUP received: reloading the configuration");
                    match load(&path) {
                        Ok(c) => { warn_unused(&c); let _ = reload_tx.send(c).await; }
                        Err(e) => {
                            switchyard::metrics::reload_refused();
                            error!("{}: {e}; reload refused, the running configuration stays", path.display());
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
