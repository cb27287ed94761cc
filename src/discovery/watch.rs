//! The watch loop of one prefix ([`Watcher`]): list it, then follow its changes (v2 long-polls
//! or a v3 watch stream), re-list it when etcd says events were lost ([`Resync`]), back off and
//! rotate endpoints while etcd is unreachable, publish the prefix's servers on every change, and
//! serve the snapshot file's servers if etcd does not answer at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

pub(super) struct Watcher {
    /// Servers from the snapshot file, published if etcd does not answer the first listing.
    pub(super) fallback: Option<Vec<ServerSpec>>,
    pub(super) etcd: EtcdConfig,
    pub(super) client: reqwest::Client,
    pub(super) endpoints: Endpoints,
    pub(super) backoff: Backoff,
    pub(super) mirror: Mirror,
    pub(super) backend: String,
    pub(super) prefix: String,
    pub(super) slot: usize,
    pub(super) status: Arc<Status>,
    pub(super) publisher: Arc<Publisher>,
    pub(super) pending: Arc<AtomicUsize>,
    pub(super) listed_once: bool,
    pub(super) counted_ready: bool,
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

impl Watcher {
    pub(super) async fn run(self, cancel: CancellationToken) {
        info!(backend = %self.backend, prefix = %self.prefix, api = self.etcd.api.as_str(), "discovery started");
        match self.etcd.api {
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
                let listed = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = v2::list(&self.client, self.endpoints.current(), &self.prefix, self.etcd.request_timeout) => r,
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
            let waited = tokio::select! {
                _ = cancel.cancelled() => break,
                r = v2::wait(&self.client, self.endpoints.current(), &self.prefix, cursor, self.etcd.poll_timeout) => r,
            };
            match waited {
                Ok(Wait::Event(ev)) => {
                    cursor = ev.node.modified_index.saturating_add(1);
                    let changed = self.mirror.apply(&ev) == Applied::Changed;
                    self.on_change(&ev.action, &ev.node.key, changed, ev.node.modified_index);
                }
                Ok(Wait::Cleared { current }) => {
                    info!(backend = %self.backend, prefix = %self.prefix, cursor, current,
                        "etcd event index cleared; re-reading the prefix");
                    need_list = Some(Resync::IndexCleared);
                }
                Ok(Wait::Idle) => {
                    debug!(backend = %self.backend, cursor, "long-poll deadline; re-arming");
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
        debug!(backend = %self.backend, "discovery stopped");
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
            if let (Some(user), Some(pass), None) =
                (&self.etcd.username, &self.etcd.password, &token)
            {
                let auth = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = v3::authenticate(&self.client, self.endpoints.current(), user, pass, self.etcd.request_timeout) => r,
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
                let listed = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = v3::list(&self.client, self.endpoints.current(), &self.prefix, token.as_deref(), self.etcd.request_timeout) => r,
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
            let opened = tokio::select! {
                _ = cancel.cancelled() => break,
                r = v3::watch(&self.client, self.endpoints.current(), &self.prefix, cursor, token.as_deref(), self.etcd.request_timeout) => r,
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
                let next = tokio::select! {
                    _ = cancel.cancelled() => break 'outer,
                    m = stream.next(self.etcd.poll_timeout) => m,
                };
                let failure = match next {
                    Ok(None) => {
                        debug!(backend = %self.backend, cursor, "watch silent; re-opening");
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
                        info!(backend = %self.backend, prefix = %self.prefix, cursor, compact_revision,
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
        debug!(backend = %self.backend, "discovery stopped");
    }

    fn on_listing(&mut self, index: u64, leaves: &[(String, String)], reason: Resync) {
        let changed = self.mirror.replace(leaves) == Applied::Changed;
        let published = (changed || !self.listed_once)
            && self
                .publisher
                .publish_discovered(&self.backend, self.mirror.specs());
        if !matches!(reason, Resync::Start) {
            metrics::counter!(m::DISCOVERY_RESYNCS, "reason" => reason.as_str()).increment(1);
        }
        self.status.update(self.slot, |s| {
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
        info!(backend = %self.backend, prefix = %self.prefix, index,
            servers = self.mirror.len(), published, reason = reason.as_str(),
            "etcd listing loaded");
        if !self.listed_once {
            self.listed_once = true;
            self.fallback = None;
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
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.publisher.set_ready();
            info!("discovery ready: every prefix loaded");
        }
    }

    /// After one event was applied to the mirror: count it, publish if it changed something.
    fn on_change(&mut self, action: &str, key: &str, changed: bool, index: u64) {
        metrics::counter!(m::DISCOVERY_EVENTS, "backend" => self.backend.clone(), "action" => action.to_string())
            .increment(1);
        let published = changed
            && self
                .publisher
                .publish_discovered(&self.backend, self.mirror.specs());
        self.status.update(self.slot, |s| {
            s.index = s.index.max(index);
            s.last_sync = Some(SystemTime::now());
        });
        set_last_sync();
        if published {
            info!(backend = %self.backend, action, key, index,
                servers = self.mirror.len(), "snapshot published");
        } else {
            debug!(backend = %self.backend, action, key, "event changed nothing");
        }
    }

    /// Logs the error, marks the prefix disconnected, rotates and backs off. Returns false when
    /// cancelled meanwhile.
    async fn on_error(&mut self, e: &EtcdError, cancel: &CancellationToken) -> bool {
        if !self.listed_once
            && let Some(servers) = self.fallback.take()
        {
            warn!(backend = %self.backend, servers = servers.len(), error = %e,
                "etcd unreachable at start: serving the servers saved in the snapshot file until it answers");
            self.publisher.publish_discovered(&self.backend, &servers);
            self.status.update(self.slot, |s| s.from_file = true);
            self.count_ready();
        }
        let was_connected = self.status.view().connected;
        self.status.update(self.slot, |s| s.connected = false);
        let delay = self.backoff.next_delay();
        if was_connected {
            warn!(backend = %self.backend, error = %e, retry_in = ?delay,
                "etcd unreachable; keeping the last published servers");
        } else {
            debug!(backend = %self.backend, error = %e, retry_in = ?delay, "etcd still unreachable");
        }
        self.endpoints.rotate();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
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
