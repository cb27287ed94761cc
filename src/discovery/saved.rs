//! The snapshot file (last known good, on disk): what it holds ([`Saved`]), reading it back at
//! start ([`load_snapshot_file`]), and the task that rewrites it, atomically, after each
//! published change ([`run_snapshot_writer`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::snapshot::{ServerSpec, Source};
use crate::value::{MAX_WEIGHT, parse_addr};

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
