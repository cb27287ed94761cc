//! The watch loop of one prefix ([`Watcher`]): list it, then follow its changes (v2 long-polls
//! or a v3 watch stream), re-list it when etcd says events were lost ([`Resync`]), back off and
//! rotate endpoints while etcd is unreachable, keep the prefix's mirror, and hand it to the
//! watch's [`Sink`] after every change, which publishes: one backend's servers
//! ([`BackendSink`]), or a service tree's services (`tree.rs`). The sink also serves the
//! snapshot file's servers if etcd does not answer at start, and may ask for a timer (a tree's
//! service linger), which the loop runs while it waits on etcd.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Status;
use super::mirror::{Applied, Mirror};
use crate::config::{EtcdApi, EtcdConfig};
use crate::etcd::v2::{self, Wait};
use crate::etcd::v3;
use crate::etcd::{Backoff, Endpoints, EtcdError};
use crate::metrics as m;
use crate::snapshot::{Publisher, ServerSpec};

/// While etcd has not answered a first listing (and no snapshot file is served), a WARN naming
/// the endpoints at once and then at most once per this interval, whichever prefix fails.
pub(super) const START_WARN_INTERVAL: Duration = Duration::from_secs(10);

static START_WARNINGS: std::sync::LazyLock<crate::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| crate::log_limit::LogLimit::new(START_WARN_INTERVAL));

/// What a watch does with its mirror: the one part in which a backend's watch and a service
/// tree's differ.
pub(super) trait Sink: Send + 'static {
    /// An authoritative listing replaced the mirror (`changed`: it differs from before;
    /// `first`: this watch's first listing, after which the snapshot file is not served).
    /// Returns whether a snapshot was published.
    fn listed(&mut self, mirror: &Mirror, changed: bool, first: bool, now: Instant) -> bool;
    /// An event changed `key` in the mirror. Returns whether a snapshot was published.
    fn changed(&mut self, mirror: &Mirror, key: &str, now: Instant) -> bool;
    /// etcd did not answer the first listing: publishes what the snapshot file held for this
    /// prefix, once. Returns how many servers, `None` when it held nothing.
    fn serve_saved(&mut self) -> Option<usize>;
    /// When [`Sink::expire`] is next due, if ever.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// The deadline passed (`now`).
    fn expire(&mut self, _now: Instant) {}
}

/// The sink of a backend's `etcd_prefix`: every change publishes the backend's whole server list.
pub(super) struct BackendSink {
    pub(super) backend: String,
    pub(super) publisher: Arc<Publisher>,
    /// Servers from the snapshot file, published if etcd does not answer the first listing.
    pub(super) fallback: Option<Vec<ServerSpec>>,
}

impl Sink for BackendSink {
    fn listed(&mut self, mirror: &Mirror, changed: bool, first: bool, _now: Instant) -> bool {
        if first {
            self.fallback = None;
        }
        (changed || first)
            && self
                .publisher
                .publish_discovered(&self.backend, mirror.specs())
    }

    fn changed(&mut self, mirror: &Mirror, _key: &str, _now: Instant) -> bool {
        self.publisher
            .publish_discovered(&self.backend, mirror.specs())
    }

    fn serve_saved(&mut self) -> Option<usize> {
        let servers = self.fallback.take()?;
        self.publisher.publish_discovered(&self.backend, &servers);
        Some(servers.len())
    }
}

/// What every watch shares: etcd's settings and client, the status the admin API shows, the
/// publisher, and the count of prefixes not listed yet (readiness).
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) etcd: EtcdConfig,
    pub(super) client: reqwest::Client,
    pub(super) status: Arc<Status>,
    pub(super) publisher: Arc<Publisher>,
    pub(super) pending: Arc<AtomicUsize>,
}

pub(super) struct Watcher<S> {
    /// How logs name this watch: the backend, or `service_tree[i]`.
    name: String,
    prefix: String,
    /// The watch's slot in [`Status`].
    slot: usize,
    mirror: Mirror,
    sink: S,
    shared: Shared,
    endpoints: Endpoints,
    backoff: Backoff,
    listed_once: bool,
    counted_ready: bool,
    /// Serving the snapshot file's servers until the first listing.
    served_saved: bool,
}

/// Why the mirror is re-read in full.
#[derive(Debug, Clone, Copy)]
enum Resync {
    Start,
    IndexCleared,
    Compacted,
    Reconnect,
}

impl Resync {
    fn as_str(self) -> &'static str {
        match self {
            Resync::Start => "start",
            Resync::IndexCleared => "index_cleared",
            Resync::Compacted => "compacted",
            Resync::Reconnect => "reconnect",
        }
    }
}

impl<S: Sink> Watcher<S> {
    pub(super) fn new(
        name: String,
        prefix: String,
        slot: usize,
        mirror: Mirror,
        sink: S,
        shared: &Shared,
    ) -> Watcher<S> {
        Watcher {
            name,
            prefix,
            slot,
            mirror,
            sink,
            endpoints: Endpoints::new(shared.etcd.endpoints.clone()),
            backoff: Backoff::new(shared.etcd.backoff_min, shared.etcd.backoff_max),
            shared: shared.clone(),
            listed_once: false,
            counted_ready: false,
            served_saved: false,
        }
    }

    pub(super) async fn run(self, cancel: CancellationToken) {
        info!(watch = %self.name, prefix = %self.prefix, api = self.shared.etcd.api.as_str(), "discovery started");
        match self.shared.etcd.api {
            EtcdApi::V2 => self.run_v2(cancel).await,
            EtcdApi::V3 => self.run_v3(cancel).await,
        }
    }

    /// v2: recursive GET, then `wait=true` long-polls from `modifiedIndex + 1`.
    async fn run_v2(mut self, cancel: CancellationToken) {
        let mut need_list = Some(Resync::Start);
        let mut cursor = 0u64;
        loop {
            if let Some(reason) = need_list {
                let list = v2::list(
                    &self.shared.client,
                    self.endpoints.current(),
                    &self.prefix,
                    self.shared.etcd.request_timeout,
                );
                let Some(listed) = until(&cancel, &mut self.sink, list).await else {
                    break;
                };
                match listed {
                    Ok(listing) => {
                        self.on_listing(listing.index, &listing.leaves, reason);
                        cursor = listing.index.saturating_add(1);
                        need_list = None;
                    }
                    Err(e) => {
                        if !self.on_error(&e, &cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let wait = v2::wait(
                &self.shared.client,
                self.endpoints.current(),
                &self.prefix,
                cursor,
                self.shared.etcd.poll_timeout,
            );
            let Some(waited) = until(&cancel, &mut self.sink, wait).await else {
                break;
            };
            match waited {
                Ok(Wait::Event(ev)) => {
                    cursor = ev.node.modified_index.saturating_add(1);
                    let changed = self.mirror.apply(&ev) == Applied::Changed;
                    self.on_change(&ev.action, &ev.node.key, changed, ev.node.modified_index);
                }
                Ok(Wait::Cleared { current }) => {
                    info!(watch = %self.name, prefix = %self.prefix, cursor, current,
                        "etcd event index cleared; re-reading the prefix");
                    need_list = Some(Resync::IndexCleared);
                }
                Ok(Wait::Idle) => {
                    debug!(watch = %self.name, cursor, "long-poll deadline; re-arming");
                }
                Err(e) => {
                    if !self.on_error(&e, &cancel).await {
                        break;
                    }
                    // The cursor is portable between members, but a member may have been
                    // restored from an older or newer state: re-read to be sure nothing was missed.
                    need_list = Some(Resync::Reconnect);
                }
            }
        }
        debug!(watch = %self.name, "discovery stopped");
    }

    /// v3: range the prefix, then one watch stream from `revision + 1`; after events the cursor
    /// is the highest `mod_revision + 1`. A stream that is silent for `poll_timeout` (no event,
    /// no progress notification) is re-opened from the cursor.
    async fn run_v3(mut self, cancel: CancellationToken) {
        let mut need_list = Some(Resync::Start);
        let mut cursor = 0i64;
        // With `username`/`password`, a token per connection: fetched before the first call
        // and again after any error (it may have expired, or the member changed).
        let mut token: Option<String> = None;
        'outer: loop {
            if let (Some(user), Some(pass), None) = (
                &self.shared.etcd.username,
                &self.shared.etcd.password,
                &token,
            ) {
                let authenticate = v3::authenticate(
                    &self.shared.client,
                    self.endpoints.current(),
                    user,
                    pass,
                    self.shared.etcd.request_timeout,
                );
                let Some(auth) = until(&cancel, &mut self.sink, authenticate).await else {
                    break;
                };
                match auth {
                    Ok(t) => token = Some(t),
                    Err(e) => {
                        if !self.on_error(&e, &cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if let Some(reason) = need_list {
                let list = v3::list(
                    &self.shared.client,
                    self.endpoints.current(),
                    &self.prefix,
                    token.as_deref(),
                    self.shared.etcd.request_timeout,
                );
                let Some(listed) = until(&cancel, &mut self.sink, list).await else {
                    break;
                };
                match listed {
                    Ok(listing) => {
                        self.on_listing(listing.revision as u64, &listing.leaves, reason);
                        cursor = listing.revision.saturating_add(1);
                        need_list = None;
                    }
                    Err(e) => {
                        token = None;
                        if !self.on_error(&e, &cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let watch = v3::watch(
                &self.shared.client,
                self.endpoints.current(),
                &self.prefix,
                cursor,
                token.as_deref(),
                self.shared.etcd.request_timeout,
            );
            let Some(opened) = until(&cancel, &mut self.sink, watch).await else {
                break;
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    token = None;
                    if !self.on_error(&e, &cancel).await {
                        break;
                    }
                    need_list = Some(Resync::Reconnect);
                    continue;
                }
            };
            loop {
                let message = stream.next(self.shared.etcd.poll_timeout);
                let Some(next) = until(&cancel, &mut self.sink, message).await else {
                    break 'outer;
                };
                let failure = match next {
                    Ok(None) => {
                        debug!(watch = %self.name, cursor, "watch silent; re-opening");
                        continue 'outer;
                    }
                    Ok(Some(v3::Message::Created { .. })) => continue,
                    Ok(Some(v3::Message::Progress { revision })) => {
                        // Nothing for us up to `revision`: safe to resume after it.
                        cursor = cursor.max(revision.saturating_add(1));
                        continue;
                    }
                    Ok(Some(v3::Message::Events(events))) => {
                        for ev in &events {
                            let (action, key, revision, changed) = match ev {
                                v3::Event::Put {
                                    key,
                                    value,
                                    revision,
                                } => (
                                    "put",
                                    key,
                                    *revision,
                                    self.mirror.put(key, value) == Applied::Changed,
                                ),
                                v3::Event::Delete { key, revision } => (
                                    "delete",
                                    key,
                                    *revision,
                                    self.mirror.delete(key) == Applied::Changed,
                                ),
                            };
                            cursor = cursor.max(revision.saturating_add(1));
                            self.on_change(action, key, changed, revision as u64);
                        }
                        continue;
                    }
                    Ok(Some(v3::Message::Compacted { compact_revision })) => {
                        info!(watch = %self.name, prefix = %self.prefix, cursor, compact_revision,
                            "etcd compacted past our revision; re-reading the prefix");
                        need_list = Some(Resync::Compacted);
                        continue 'outer;
                    }
                    Ok(Some(v3::Message::Failed(msg))) => EtcdError::Decode {
                        endpoint: self.endpoints.current().to_string(),
                        detail: msg,
                    },
                    Err(e) => e,
                };
                token = None;
                if !self.on_error(&failure, &cancel).await {
                    break 'outer;
                }
                need_list = Some(Resync::Reconnect);
                continue 'outer;
            }
        }
        debug!(watch = %self.name, "discovery stopped");
    }

    fn on_listing(&mut self, index: u64, leaves: &[(String, String)], reason: Resync) {
        let changed = self.mirror.replace(leaves) == Applied::Changed;
        let published = self
            .sink
            .listed(&self.mirror, changed, !self.listed_once, Instant::now());
        if !matches!(reason, Resync::Start) {
            metrics::counter!(m::DISCOVERY_RESYNCS, "reason" => reason.as_str()).increment(1);
        }
        self.shared.status.update(self.slot, |s| {
            s.from_file = false;
            s.connected = true;
            s.index = index;
            s.last_sync = Some(SystemTime::now());
            if !matches!(reason, Resync::Start) {
                s.resyncs += 1;
            }
        });
        set_last_sync();
        self.backoff.reset();
        info!(watch = %self.name, prefix = %self.prefix, index,
            servers = self.mirror.len(), published, reason = reason.as_str(),
            "etcd listing loaded");
        if !self.listed_once && self.mirror.is_empty() {
            warn!(watch = %self.name, prefix = %self.prefix, index,
                "etcd prefix is empty: nothing is registered under it (yet); check the prefix and the sidekicks");
        }
        if !self.listed_once {
            self.listed_once = true;
            self.count_ready();
        }
    }

    /// This prefix has something authoritative enough to serve (a listing, or the snapshot
    /// file while etcd is away); the last prefix to get there makes the snapshot ready.
    fn count_ready(&mut self) {
        if self.counted_ready {
            return;
        }
        self.counted_ready = true;
        if self.shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.publisher.set_ready();
            info!("discovery ready: every prefix loaded");
        }
    }

    /// After one event was applied to the mirror: count it, publish if it changed something.
    fn on_change(&mut self, action: &str, key: &str, changed: bool, index: u64) {
        metrics::counter!(m::DISCOVERY_EVENTS, "backend" => self.mirror.label(key).to_string(), "action" => action.to_string())
            .increment(1);
        let published = changed && self.sink.changed(&self.mirror, key, Instant::now());
        self.shared.status.update(self.slot, |s| {
            s.index = s.index.max(index);
            s.last_sync = Some(SystemTime::now());
        });
        set_last_sync();
        if published {
            info!(watch = %self.name, action, key, index,
                servers = self.mirror.len(), "snapshot published");
        } else {
            debug!(watch = %self.name, action, key, "event changed nothing");
        }
    }

    /// Logs the error, marks the prefix disconnected, rotates and backs off. Returns false when
    /// cancelled meanwhile.
    async fn on_error(&mut self, e: &EtcdError, cancel: &CancellationToken) -> bool {
        if !self.listed_once
            && let Some(servers) = self.sink.serve_saved()
        {
            warn!(watch = %self.name, servers, error = %e,
                "etcd unreachable at start: serving the servers saved in the snapshot file until it answers");
            self.shared.status.update(self.slot, |s| s.from_file = true);
            self.served_saved = true;
            self.count_ready();
        }
        let status = &self.shared.status;
        let was_connected = status.view().connected;
        status.update(self.slot, |s| s.connected = false);
        let delay = self.backoff.next_delay();
        if was_connected {
            warn!(watch = %self.name, error = %e, retry_in = ?delay,
                "etcd unreachable; keeping the last published servers");
        } else if !self.listed_once
            && !self.served_saved
            && let Some(suppressed) = START_WARNINGS.admit("start", std::time::Instant::now())
        {
            warn!(watch = %self.name, endpoints = ?self.shared.etcd.endpoints, error = %e,
                suppressed, "etcd unreachable at start and no snapshot file to serve: discovered backends have no servers until it answers");
        } else {
            debug!(watch = %self.name, error = %e, retry_in = ?delay, "etcd still unreachable");
        }
        self.endpoints.rotate();
        until(cancel, &mut self.sink, tokio::time::sleep(delay))
            .await
            .is_some()
    }
}

/// Awaits `fut` unless `cancel` fires first (then `None`), running the sink's timer (a tree's
/// service linger) whenever it is due meanwhile. `fut` is polled on, never restarted, so a
/// long-poll or a watch stream loses nothing to a timer.
async fn until<S: Sink, F: Future>(
    cancel: &CancellationToken,
    sink: &mut S,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let due = sink.deadline();
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return None,
            r = &mut fut => return Some(r),
            _ = timer => sink.expire(Instant::now()),
        }
    }
}

fn set_last_sync() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    metrics::gauge!(m::DISCOVERY_LAST_SYNC).set(now);
}
