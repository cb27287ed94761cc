//! Discovery: turns etcd keys under each backend's `etcd_prefix` into published server sets.
//!
//! Owns the per-prefix mirror `key -> server` (values parsed by [`crate::value`]), the
//! application of v2 events and v3 watch events to that mirror, the resync on errorCode 401 (v2)
//! or compaction (v3), the reconnect loop, the readiness latch and the snapshot file. Deltas never
//! leave this module: each change publishes the prefix's whole server list through
//! [`Publisher::publish_discovered`], which publishes nothing when nothing changed.
//!
//! NOTE: one long-poll (v2) or watch stream (v3) per prefix rather than one over a common root. A watch on a common root
//! (often `/`) is woken by every unrelated write in the cluster, and one 401 would force a re-list
//! of everything; per-prefix watches only wake for their own keys, keep independent cursors, and
//! a resync re-reads one prefix. The cost is one idle HTTP connection per prefix.
//!
//! Unreachable is not empty: a transport error, a timeout or an undecodable answer never changes
//! membership. Only an authoritative listing or an event does.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, EtcdApi, EtcdConfig};
use crate::etcd::v2::{self, Wait};
use crate::etcd::v3;
use crate::etcd::{Backoff, Endpoints, EtcdError, http_client};
use crate::metrics as m;
use crate::snapshot::{Publisher, ServerSpec, Source};
use crate::value::MAX_WEIGHT;
// The value contract lives in `value`; these paths stay for the fuzz targets and benches.
pub use crate::value::{Value, ValueError, parse_addr, parse_value};

// ---------------------------------------------------------------------------------------------
// The mirror of one prefix.

/// `key -> server` for every valid key below one prefix, plus the invalid values already reported
/// (so each is warned about and counted once, not on every re-list). Each key's server is kept
/// as the spec to publish, so publishing after one event copies nothing per server.
#[derive(Debug, Default)]
pub struct Mirror {
    prefix: String,
    backend: String,
    servers: BTreeMap<String, ServerSpec>,
    reported_invalid: HashMap<String, String>,
}

/// What applying an event did to the mirror.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

impl Mirror {
    pub fn new(backend: &str, prefix: &str) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            backend: backend.to_string(),
            ..Mirror::default()
        }
    }

    /// The server list to publish, in key order.
    pub fn specs(&self) -> impl Iterator<Item = &ServerSpec> {
        self.servers.values()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Parses `raw` for `key` into the server to publish, named after the key's last segment
    /// (confd's `base`). An invalid value is reported once and yields `None`.
    fn parse(&mut self, key: &str, raw: &str) -> Option<ServerSpec> {
        match parse_value(raw) {
            Ok(v) => {
                self.reported_invalid.remove(key);
                Some(ServerSpec {
                    name: key.rsplit('/').next().unwrap_or(key).to_string(),
                    addr: v.addr,
                    weight: v.weight,
                    drain: v.drain,
                    source: Source::Etcd,
                })
            }
            Err(e) => {
                if self.reported_invalid.get(key).map(String::as_str) != Some(raw) {
                    warn!(backend = %self.backend, key, value = raw, error = %e,
                        "invalid value in etcd skipped");
                    metrics::counter!(m::DISCOVERY_INVALID_VALUES, "backend" => self.backend.clone())
                        .increment(1);
                    self.reported_invalid
                        .insert(key.to_string(), raw.to_string());
                }
                None
            }
        }
    }

    /// Replaces the whole mirror with an authoritative listing. A key whose new value is invalid
    /// keeps its last good value (as confd + HAProxy keep the last config that passed the check).
    pub fn replace(&mut self, leaves: &[(String, String)]) -> Applied {
        let mut next = BTreeMap::new();
        for (key, raw) in leaves {
            if let Some(v) = self.parse(key, raw) {
                next.insert(key.clone(), v);
            } else if let Some(old) = self.servers.get(key) {
                next.insert(key.clone(), old.clone());
            }
        }
        self.reported_invalid
            .retain(|k, _| leaves.iter().any(|(key, _)| key == k));
        if next == self.servers {
            Applied::Unchanged
        } else {
            self.servers = next;
            Applied::Changed
        }
    }

    /// A key was written (v2 set/create/update/compareAndSwap, v3 PUT). An invalid value keeps
    /// the last good one of that key (e.g. a heartbeat that blanked it).
    pub fn put(&mut self, key: &str, raw: &str) -> Applied {
        match self.parse(key, raw) {
            Some(v) if self.servers.get(key) == Some(&v) => Applied::Unchanged,
            Some(v) => {
                self.servers.insert(key.to_string(), v);
                Applied::Changed
            }
            None => Applied::Unchanged,
        }
    }

    /// A key was removed (v2 delete/compareAndDelete/expire, v3 DELETE, lease expiry).
    pub fn delete(&mut self, key: &str) -> Applied {
        self.reported_invalid.remove(key);
        self.remove(key)
    }

    /// Applies one v2 watch event.
    pub fn apply(&mut self, ev: &v2::Response) -> Applied {
        let node = &ev.node;
        match ev.action.as_str() {
            "set" | "create" | "update" | "compareAndSwap" => {
                if node.dir {
                    // A new (empty) directory holds no server; a dir replacing a key removes it.
                    return self.remove(&node.key);
                }
                self.put(&node.key, node.value.as_deref().unwrap_or(""))
            }
            "delete" | "compareAndDelete" | "expire" => {
                if node.dir || node.key == self.prefix {
                    // One event for a whole directory: drop every key below it.
                    let before = self.servers.len();
                    let dir = format!("{}/", node.key.trim_end_matches('/'));
                    self.servers.retain(|k, _| !k.starts_with(&dir));
                    self.reported_invalid.retain(|k, _| !k.starts_with(&dir));
                    if self.servers.len() == before {
                        Applied::Unchanged
                    } else {
                        Applied::Changed
                    }
                } else {
                    self.delete(&node.key)
                }
            }
            other => {
                debug!(action = other, key = %node.key, "unknown etcd action ignored");
                Applied::Unchanged
            }
        }
    }

    fn remove(&mut self, key: &str) -> Applied {
        if self.servers.remove(key).is_some() {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status shared with the admin API.

#[derive(Debug, Clone, Default)]
struct PrefixStatus {
    /// Serving what the snapshot file held, because etcd has not answered yet.
    from_file: bool,
    connected: bool,
    index: u64,
    last_sync: Option<SystemTime>,
    resyncs: u64,
}

/// Discovery health for `/api/v1/backends` and the metrics: one entry per watched prefix.
#[derive(Debug, Default)]
pub struct Status {
    api: &'static str,
    prefixes: Mutex<Vec<PrefixStatus>>,
}

/// What the admin API shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub api: &'static str,
    pub connected: bool,
    pub index: u64,
    pub last_sync_age_seconds: Option<f64>,
    pub resyncs: u64,
    pub from_snapshot_file: bool,
}

impl Status {
    fn new(api: &'static str, prefixes: usize) -> Status {
        Status {
            api,
            prefixes: Mutex::new(vec![PrefixStatus::default(); prefixes]),
        }
    }

    fn update(&self, slot: usize, f: impl FnOnce(&mut PrefixStatus)) {
        let view = {
            let mut all = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut all[slot]);
            aggregate(self.api, &all)
        };
        metrics::gauge!(m::DISCOVERY_CONNECTED).set(if view.connected { 1.0 } else { 0.0 });
        metrics::gauge!(m::DISCOVERY_INDEX).set(view.index as f64);
    }

    pub fn view(&self) -> StatusView {
        aggregate(
            self.api,
            &self.prefixes.lock().unwrap_or_else(|e| e.into_inner()),
        )
    }
}

fn aggregate(api: &'static str, all: &[PrefixStatus]) -> StatusView {
    // Connected only if every watch is; the oldest sync is the one that matters.
    let oldest = all.iter().map(|p| p.last_sync).min().flatten();
    StatusView {
        api,
        connected: !all.is_empty() && all.iter().all(|p| p.connected),
        index: all.iter().map(|p| p.index).max().unwrap_or(0),
        last_sync_age_seconds: oldest.map(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs_f64()
        }),
        resyncs: all.iter().map(|p| p.resyncs).sum(),
        from_snapshot_file: all.iter().any(|p| p.from_file),
    }
}

// ---------------------------------------------------------------------------------------------
// The watch loop.

/// Starts one watcher per backend that has an `etcd_prefix`. Returns the shared status (None
/// when no backend uses etcd) and marks the snapshot ready once every prefix was listed once.
pub fn spawn(
    config: &Config,
    publisher: Arc<Publisher>,
    cancel: CancellationToken,
) -> Option<Arc<Status>> {
    let etcd = config.etcd.clone()?;
    let watched: Vec<(String, String)> = config
        .backends
        .iter()
        .filter_map(|b| Some((b.name.clone(), b.etcd_prefix.clone()?)))
        .collect();
    if watched.is_empty() {
        return None;
    }
    let status = Arc::new(Status::new(etcd.api.as_str(), watched.len()));
    let mut saved = match &etcd.snapshot_file {
        Some(path) => match load_snapshot_file(path) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "snapshot file not usable; ignoring it");
                HashMap::new()
            }
        },
        None => HashMap::new(),
    };
    let pending = Arc::new(AtomicUsize::new(watched.len()));
    let client = match http_client(&etcd) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "etcd client cannot be built; discovery is off, static servers only");
            return None;
        }
    };
    for (slot, (backend, prefix)) in watched.into_iter().enumerate() {
        let fallback = saved
            .remove(&backend)
            .filter(|s| s.prefix == prefix)
            .map(|s| s.servers);
        let w = Watcher {
            fallback,
            etcd: etcd.clone(),
            client: client.clone(),
            endpoints: Endpoints::new(etcd.endpoints.clone()),
            backoff: Backoff::new(etcd.backoff_min, etcd.backoff_max),
            mirror: Mirror::new(&backend, &prefix),
            backend,
            prefix,
            slot,
            status: Arc::clone(&status),
            publisher: Arc::clone(&publisher),
            pending: Arc::clone(&pending),
            listed_once: false,
            counted_ready: false,
        };
        tokio::spawn(w.run(cancel.clone()));
    }
    Some(status)
}

struct Watcher {
    /// Servers from the snapshot file, published if etcd does not answer the first listing.
    fallback: Option<Vec<ServerSpec>>,
    etcd: EtcdConfig,
    client: reqwest::Client,
    endpoints: Endpoints,
    backoff: Backoff,
    mirror: Mirror,
    backend: String,
    prefix: String,
    slot: usize,
    status: Arc<Status>,
    publisher: Arc<Publisher>,
    pending: Arc<AtomicUsize>,
    listed_once: bool,
    counted_ready: bool,
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
    async fn run(self, cancel: CancellationToken) {
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

// ---------------------------------------------------------------------------------------------
// The snapshot file (last known good, on disk).

#[derive(Debug, serde::Serialize, Deserialize)]
struct SavedServer {
    name: String,
    addr: String,
    weight: u32,
    drain: bool,
}

#[derive(Debug, serde::Serialize, Deserialize)]
struct SavedBackend {
    prefix: String,
    servers: Vec<SavedServer>,
}

#[derive(Debug, serde::Serialize, Deserialize)]
struct SavedFile {
    written_at_unix: f64,
    backends: BTreeMap<String, SavedBackend>,
}

/// What the snapshot file holds for one backend.
#[derive(Debug, PartialEq)]
pub struct Saved {
    pub prefix: String,
    pub servers: Vec<ServerSpec>,
}

/// Reads the snapshot file. Addresses are validated again: a hand-edited file cannot inject
/// garbage.
pub fn load_snapshot_file(path: &std::path::Path) -> Result<HashMap<String, Saved>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let file: SavedFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, b) in file.backends {
        let servers = b
            .servers
            .into_iter()
            .filter(|s| parse_addr(&s.addr).is_ok() && s.weight <= MAX_WEIGHT)
            .map(|s| ServerSpec {
                name: s.name,
                addr: s.addr,
                weight: s.weight,
                drain: s.drain,
                source: Source::Etcd,
            })
            .collect();
        out.insert(
            name,
            Saved {
                prefix: b.prefix,
                servers,
            },
        );
    }
    Ok(out)
}

fn render_snapshot_file(snap: &crate::snapshot::Snapshot) -> String {
    let mut backends = BTreeMap::new();
    for b in &snap.backends {
        let Some(prefix) = &b.config.etcd_prefix else {
            continue;
        };
        let servers = b
            .servers
            .iter()
            .filter(|s| s.source == Source::Etcd)
            .map(|s| SavedServer {
                name: s.name.clone(),
                addr: s.addr.clone(),
                weight: s.weight,
                drain: s.drain,
            })
            .collect();
        backends.insert(
            b.name().to_string(),
            SavedBackend {
                prefix: prefix.clone(),
                servers,
            },
        );
    }
    let file = SavedFile {
        written_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        backends,
    };
    serde_json::to_string_pretty(&file).expect("plain data serializes")
}

/// Writes `text` to `path` atomically: a temp file in the same directory, fsync, rename.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Keeps the snapshot file up to date: every 200 ms, if a new snapshot was published (and only
/// once discovery is ready, so a half-loaded start never overwrites a good file), writes it.
/// Off the discovery path, so a slow disk never delays routing.
pub async fn run_snapshot_writer(
    path: std::path::PathBuf,
    shared: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    cancel: CancellationToken,
) {
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = shared.load_full();
        if !snap.ready {
            continue;
        }
        let text = render_snapshot_file(&snap);
        // Compare without the timestamp line: only a change of servers is worth a write.
        let body = text
            .lines()
            .filter(|l| !l.contains("written_at_unix"))
            .collect::<String>();
        if last.as_deref() == Some(body.as_str()) {
            continue;
        }
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&p, &text)).await {
            Ok(Ok(())) => {
                debug!(path = %path.display(), "snapshot file written");
                last = Some(body);
            }
            Ok(Err(e)) => {
                warn!(path = %path.display(), error = %e, "cannot write the snapshot file")
            }
            Err(e) => warn!(error = %e, "snapshot file writer failed"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, key: &str, value: Option<&str>, idx: u64) -> v2::Response {
        v2::Response {
            action: action.into(),
            node: v2::Node {
                key: key.into(),
                value: value.map(String::from),
                dir: false,
                nodes: vec![],
                modified_index: idx,
            },
            prev_node: None,
        }
    }

    fn addrs(m: &Mirror) -> Vec<String> {
        m.specs()
            .map(|s| format!("{}={}", s.name, s.addr))
            .collect()
    }

    #[test]
    fn every_action_is_applied() {
        let mut m = Mirror::new("b", "/svc");
        let p = "/svc/";
        assert_eq!(
            m.apply(&ev("create", &format!("{p}1"), Some("h:1"), 5)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("set", &format!("{p}2"), Some("h:2"), 6)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("update", &format!("{p}2"), Some("h:22"), 7)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("compareAndSwap", &format!("{p}1"), Some("h:11"), 8)),
            Applied::Changed
        );
        assert_eq!(addrs(&m), ["1=h:11", "2=h:22"]);
        // The same value again (a plain re-set) changes nothing.
        assert_eq!(
            m.apply(&ev("set", &format!("{p}1"), Some("h:11"), 9)),
            Applied::Unchanged
        );
        assert_eq!(
            m.apply(&ev("compareAndDelete", &format!("{p}1"), None, 10)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("expire", &format!("{p}2"), None, 11)),
            Applied::Changed
        );
        assert!(m.is_empty());
        assert_eq!(
            m.apply(&ev("delete", &format!("{p}9"), None, 12)),
            Applied::Unchanged
        );
    }

    #[test]
    fn invalid_value_is_skipped_and_keeps_the_last_good_one() {
        let mut m = Mirror::new("b", "/svc");
        m.apply(&ev("set", "/svc/1", Some("h:1"), 5));
        // The old-style heartbeat that blanks the value must not drop a live server.
        assert_eq!(
            m.apply(&ev("update", "/svc/1", Some(""), 6)),
            Applied::Unchanged
        );
        assert_eq!(
            m.apply(&ev("set", "/svc/2", Some("garbage"), 7)),
            Applied::Unchanged
        );
        assert_eq!(addrs(&m), ["1=h:1"]);
        // A listing keeps the last good value of a key that now holds garbage.
        let listing = vec![
            ("/svc/1".to_string(), "".to_string()),
            ("/svc/3".to_string(), "h:3".to_string()),
        ];
        assert_eq!(m.replace(&listing), Applied::Changed);
        assert_eq!(addrs(&m), ["1=h:1", "3=h:3"]);
        assert_eq!(m.replace(&listing), Applied::Unchanged);
    }

    #[test]
    fn recursive_dir_delete_drops_everything_below() {
        let mut m = Mirror::new("b", "/svc");
        m.replace(&[
            ("/svc/1".into(), "h:1".into()),
            ("/svc/sub/2".into(), "h:2".into()),
            ("/svc/sub/3".into(), "h:3".into()),
            ("/svc/subway".into(), "h:4".into()),
        ]);
        let mut dir = ev("delete", "/svc/sub", None, 20);
        dir.node.dir = true;
        assert_eq!(m.apply(&dir), Applied::Changed);
        assert_eq!(addrs(&m), ["1=h:1", "subway=h:4"]);
        // Deleting the prefix directory itself empties the set.
        let mut root = ev("delete", "/svc", None, 21);
        root.node.dir = true;
        assert_eq!(m.apply(&root), Applied::Changed);
        assert!(m.is_empty());
    }

    #[test]
    fn nested_names_are_the_last_segment() {
        let mut m = Mirror::new("b", "/svc");
        m.replace(&[("/svc/sub/3".into(), "h:3".into())]);
        let names: Vec<&str> = m.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["3"]);
    }

    #[test]
    fn status_aggregates_prefixes() {
        let s = Status::new("v2", 2);
        s.update(0, |p| {
            p.connected = true;
            p.index = 10;
        });
        assert!(!s.view().connected, "one prefix is not connected yet");
        s.update(1, |p| {
            p.connected = true;
            p.index = 12;
            p.last_sync = Some(SystemTime::now());
        });
        let v = s.view();
        assert!(v.connected);
        assert_eq!(v.index, 12);
        assert!(v.last_sync_age_seconds.is_none(), "prefix 0 never synced");
    }
}
