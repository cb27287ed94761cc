//! `EtcdCluster`: a real etcd 3.4 cluster of n members on loopback (v2 enabled), for tests of
//! member failures and lost quorum. Writes retry through leader elections; v2 and v3 (JSON gateway)
//! calls go through a chosen member.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::etcd::{
    CallError, ETCD_START_ATTEMPTS, Member, call_json, healthy, json_i64, json_u64, modified_index,
    prefix_range_end, probe_client, require_etcd, v3_delete_range, v3_put, v3_status,
};
use super::{free_ports, unique_temp_dir};

/// Fresh 3-member cluster, all started together, was healthy in ~2.2 s here.
const CLUSTER_HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a cluster write keeps retrying a 5xx or timeout: a leader election takes ~2 s.
const CLUSTER_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// One write attempt: a PUT to a follower during an election hung > 2 s, then the retry worked.
const CLUSTER_WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Locating the leader right after a kill may need an election first.
const CLUSTER_LEADER_DEADLINE: Duration = Duration::from_secs(10);

/// A real etcd 3.4 cluster of `n` members on free loopback ports (each member's command line
/// names every peer in `--initial-cluster`; v2 enabled; a restart reuses that command line and
/// the data dir), data dirs and logs (`mN.log`) in one private temp dir. Members are indexed
/// from 0 (named `m1`, `m2`, ...). Killed by PID on drop; the temp dir is kept (and printed) when
/// the test is panicking.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
    /// Bounded per attempt; writes retry on top of it (see `CLUSTER_WRITE_DEADLINE`).
    http: reqwest::Client,
}

impl EtcdCluster {
    /// Start `n` members together, then wait until every one answers `{"health":"true"}`.
    pub async fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs at least one member");
        require_etcd();
        switchyard::tls::install_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(CLUSTER_WRITE_ATTEMPT_TIMEOUT)
            .connect_timeout(CLUSTER_WRITE_ATTEMPT_TIMEOUT)
            .pool_max_idle_per_host(0)
            .build()
            .expect("build reqwest client");
        let mut failures = Vec::new();
        for _attempt in 0..ETCD_START_ATTEMPTS {
            let ports = free_ports(2 * n);
            let cluster = EtcdCluster {
                members: (0..n)
                    .map(|i| Member::new(format!("m{}", i + 1), ports[2 * i], ports[2 * i + 1]))
                    .collect(),
                dir: unique_temp_dir("switchyard-etcd-cluster"),
                http: http.clone(),
            };
            let all: Vec<usize> = (0..n).collect();
            for &i in &all {
                cluster.spawn(i);
            }
            match cluster.wait_healthy(&all, CLUSTER_HEALTHY_DEADLINE).await {
                Ok(()) => return cluster,
                // `cluster` drops at the end of this arm: members killed, its dir removed.
                Err(why) => failures.push(format!("{why}\n{}", cluster.log_tails(30))),
            }
        }
        panic!(
            "etcd cluster of {n} did not become healthy in {ETCD_START_ATTEMPTS} attempts:\n{}",
            failures.join("\n=====\n")
        );
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs (`http://127.0.0.1:PORT`) in member order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.member(i).url()
    }

    /// The temp dir holding `mN.etcd/`, `mN.log` and `mN.stderr`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Member `i`'s running child PID, if any.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.member(i).pid()
    }

    fn member(&self, i: usize) -> &Member {
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("no member {i} (cluster of {})", self.members.len()))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(Member::peer_entry)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize) {
        let cluster = [
            "--initial-cluster".to_string(),
            self.initial_cluster(),
            "--initial-cluster-token=lb-test-cluster".to_string(),
            "--initial-cluster-state=new".to_string(),
        ];
        self.member(i).spawn(&self.dir, &cluster);
    }

    /// Poll `/health` of each member in `which` (short per-probe timeout) until all are healthy.
    async fn wait_healthy(&self, which: &[usize], deadline: Duration) -> Result<(), String> {
        let probe = probe_client();
        let end = Instant::now() + deadline;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            for &i in &pending {
                if let Some(status) = self.member(i).exited() {
                    return Err(format!(
                        "etcd member {i} ({}) exited early ({status})",
                        self.member(i).name
                    ));
                }
            }
            let mut still = Vec::new();
            for &i in &pending {
                if !healthy(&probe, &self.url(i)).await {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "members {pending:?} gave no {{\"health\":\"true\"}} within {deadline:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `n` lines of every member's log and stderr (for failure messages).
    pub fn log_tails(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| m.log_tail(&self.dir, n))
            .collect()
    }

    /// SIGKILL member `i` by PID and reap it. A no-op when it is not running.
    pub fn kill(&self, i: usize) {
        self.member(i).kill();
    }

    /// Start member `i` again (killing it first if running) with the same command line and data
    /// dir, then wait until it is healthy. It can only become healthy while a quorum is up: to
    /// bring back several members of a cluster without quorum, use `restart_many`.
    pub async fn restart(&self, i: usize) {
        self.restart_many(&[i]).await;
    }

    /// Start all of `which` again (same command lines and data dirs), then wait until each is healthy.
    pub async fn restart_many(&self, which: &[usize]) {
        for &i in which {
            self.kill(i);
            self.spawn(i);
        }
        if let Err(why) = self.wait_healthy(which, CLUSTER_HEALTHY_DEADLINE).await {
            panic!(
                "etcd cluster restart of {which:?}: {why}\n(dir {})\n{}",
                self.dir.display(),
                self.log_tails(30)
            );
        }
    }

    /// Run `attempt` until it succeeds, fails for good (4xx), or `CLUSTER_WRITE_DEADLINE` passes
    /// (5xx and timeouts are retried: a leader election takes ~2 s). Panics with etcd's answer.
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let end = Instant::now() + CLUSTER_WRITE_DEADLINE;
        let mut retried = false;
        loop {
            match attempt(retried).await {
                Ok(v) => return v,
                Err(e) if e.retryable && Instant::now() < end => {
                    retried = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "etcd cluster {what}: {e} (retried until {CLUSTER_WRITE_DEADLINE:?} on 5xx/timeouts)"
                ),
            }
        }
    }

    fn key_url(&self, i: usize, key: &str) -> String {
        assert!(
            key.starts_with('/'),
            "etcd key must start with '/': {key:?}"
        );
        format!("{}/v2/keys{}", self.url(i), key)
    }

    /// v2 `PUT /v2/keys{key} value=VALUE` via member `i`; returns `modifiedIndex`. Retries on a
    /// 5xx or timeout for up to 10 s (a leader election after a kill).
    pub async fn put(&self, i: usize, key: &str, value: &str) -> u64 {
        let url = self.key_url(i, key);
        let what = format!("put {key} via member {i}");
        let v = self
            .retry(&what, |_| {
                call_json(&what, self.http.put(&url).form(&[("value", value)]))
            })
            .await;
        modified_index(&v)
    }

    /// v2 `DELETE /v2/keys{key}` via member `i`; returns the delete's `modifiedIndex`. Retries like
    /// `put`; a `404` on a retry means an earlier attempt did delete it (returns etcd's index then).
    pub async fn delete(&self, i: usize, key: &str) -> u64 {
        let url = self.key_url(i, key);
        let what = format!("delete {key} via member {i}");
        self.retry(&what, |retried| {
            let req = self.http.delete(&url);
            let what = what.clone();
            async move {
                match call_json(&what, req).await {
                    Ok(v) => Ok(modified_index(&v)),
                    // v2 "Key not found" (errorCode 100) carries the current index.
                    Err(e) if retried && e.status == Some(404) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&e.body).unwrap_or_default();
                        Ok(v["index"].as_u64().unwrap_or(0))
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// v3 put via member `i`'s gateway; returns the revision. Retries like `put`.
    pub async fn put_v3(&self, i: usize, key: &str, value: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 put {key} via member {i}");
        self.retry(&what, |_| v3_put(&self.http, &base, key, value, None))
            .await
    }

    /// v3 delete of one key via member `i`'s gateway; returns the revision after it. Retries
    /// like `put` (deleting an absent key is not an error in v3).
    pub async fn delete_v3(&self, i: usize, key: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 delete {key} via member {i}");
        self.retry(&what, |_| v3_delete_range(&self.http, &base, key, None))
            .await
    }

    /// v3 delete of every key under `prefix` via member `i`; returns the revision after it.
    pub async fn delete_prefix_v3(&self, i: usize, prefix: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 delete prefix {prefix} via member {i}");
        self.retry(&what, |_| {
            v3_delete_range(&self.http, &base, prefix, Some(prefix_range_end(prefix)))
        })
        .await
    }

    /// The current v3 revision as member `i` sees it.
    pub async fn revision_v3(&self, i: usize) -> i64 {
        let base = self.url(i);
        let v = self
            .retry("v3 status", |_| v3_status(&self.http, &base))
            .await;
        json_i64(&v["header"]["revision"])
    }

    /// Which member is the leader (asks every running member's `/v3/maintenance/status` and
    /// compares `leader` with `header.member_id`). Waits up to 10 s for an election; panics if
    /// no running member reports itself as leader by then.
    pub async fn leader(&self) -> usize {
        let end = Instant::now() + CLUSTER_LEADER_DEADLINE;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            for i in 0..self.members.len() {
                if self.pid(i).is_none() {
                    continue;
                }
                match v3_status(&self.http, &self.url(i)).await {
                    Ok(v) => {
                        let me = json_u64(&v["header"]["member_id"]);
                        let leader = json_u64(&v["leader"]);
                        if me != 0 && me == leader {
                            return i;
                        }
                        seen.push(format!("member {i}: member_id {me}, leader {leader}"));
                    }
                    Err(e) => seen.push(format!("member {i}: {e}")),
                }
            }
            if Instant::now() >= end {
                panic!(
                    "no etcd member reported itself leader within {CLUSTER_LEADER_DEADLINE:?}: {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!(
                "etcd cluster temp dir kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
