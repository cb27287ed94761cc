//! etcd through its HTTP APIs (v2 keys, v3 JSON gateway) for the scenarios' own writes and
//! quorum reads, rotating over the members and retrying through elections and lost quorum.

use super::*;

#[derive(Clone)]
pub(crate) struct Kv {
    pub(crate) api: Api,
    pub(crate) urls: Vec<String>,
    pub(crate) http: reqwest::Client,
}

pub(crate) enum Op<'a> {
    Put(&'a str, &'a str),
    Delete(&'a str),
}

pub(crate) fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub(crate) fn unb64(s: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&b).into_owned()
}

/// An int64 of a gateway answer: a JSON string or number; absent is 0.
pub(crate) fn json_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Kv {
    pub(crate) fn new(api: Api, urls: Vec<String>) -> Kv {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(WRITE_ATTEMPT)
            .connect_timeout(WRITE_ATTEMPT)
            .pool_max_idle_per_host(4)
            .build()
            .expect("reqwest client");
        Kv { api, urls, http }
    }

    /// One attempt on member `i`. `Err((retryable, why))`.
    pub(crate) async fn attempt(&self, i: usize, op: &Op<'_>) -> Result<(), (bool, String)> {
        let base = &self.urls[i];
        let req = match (self.api, op) {
            (Api::V2, Op::Put(k, v)) => self
                .http
                .put(format!("{base}/v2/keys{k}"))
                .form(&[("value", *v)]),
            (Api::V2, Op::Delete(k)) => self.http.delete(format!("{base}/v2/keys{k}")),
            (Api::V3, Op::Put(k, v)) => self
                .http
                .post(format!("{base}/v3/kv/put"))
                .json(&serde_json::json!({"key": b64(k.as_bytes()), "value": b64(v.as_bytes())})),
            (Api::V3, Op::Delete(k)) => self
                .http
                .post(format!("{base}/v3/kv/deleterange"))
                .json(&serde_json::json!({"key": b64(k.as_bytes())})),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| (true, common::error_chain(&e)))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() || (status == 404 && matches!(op, Op::Delete(_))) {
            return Ok(());
        }
        Err((status.is_server_error(), format!("{status}: {body}")))
    }

    /// The write through `members` (rotating on each failure) until it succeeds, a 4xx, or
    /// `WRITE_DEADLINE`. Returns how many attempts failed.
    pub(crate) async fn write_via(&self, members: &[usize], op: Op<'_>) -> anyhow::Result<u32> {
        let end = Instant::now() + WRITE_DEADLINE;
        let mut failed = 0;
        let mut n = 0;
        loop {
            let i = members[n % members.len()];
            n += 1;
            match self.attempt(i, &op).await {
                Ok(()) => return Ok(failed),
                Err((true, why)) if Instant::now() < end => {
                    failed += 1;
                    if failed == 1 || failed % 10 == 0 {
                        common::progress(format!(
                            "etcd write via member {i} failed ({why}); retrying"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, why)) => bail!("etcd write via member {i}: {why}"),
            }
        }
    }

    pub(crate) async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.urls.len()).collect();
        self.write_via(&all, Op::Put(key, value)).await.map(|_| ())
    }

    pub(crate) async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.urls.len()).collect();
        self.write_via(&all, Op::Delete(key)).await.map(|_| ())
    }

    /// Server name (last key segment) -> value under `prefix`, by a quorum read, rotating members.
    pub(crate) async fn list(&self, prefix: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
        let mut last = String::new();
        let end = Instant::now() + WRITE_DEADLINE;
        let mut n = 0;
        while Instant::now() < end {
            let base = &self.urls[n % self.urls.len()];
            n += 1;
            match self.list_on(base, prefix).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd listing of {prefix}: {last}")
    }

    pub(crate) async fn list_on(
        &self,
        base: &str,
        prefix: &str,
    ) -> anyhow::Result<BTreeSet<(String, String)>> {
        let mut out = BTreeSet::new();
        match self.api {
            Api::V2 => {
                let resp = self
                    .http
                    .get(format!("{base}/v2/keys{prefix}?recursive=true&quorum=true"))
                    .send()
                    .await?;
                if resp.status() == 404 {
                    return Ok(out);
                }
                if !resp.status().is_success() {
                    bail!("{}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                fn walk(n: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
                    if n["dir"].as_bool() == Some(true) {
                        for c in n["nodes"].as_array().into_iter().flatten() {
                            walk(c, out);
                        }
                    } else if let (Some(k), Some(v)) = (n["key"].as_str(), n["value"].as_str()) {
                        let name = k.rsplit('/').next().unwrap_or(k).to_string();
                        out.insert((name, v.to_string()));
                    }
                }
                walk(&v["node"], &mut out);
            }
            Api::V3 => {
                let start = format!("{prefix}/");
                let end = format!("{prefix}0");
                let resp = self
                    .http
                    .post(format!("{base}/v3/kv/range"))
                    .json(&serde_json::json!({"key": b64(start.as_bytes()), "range_end": b64(end.as_bytes())}))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                for kv in v["kvs"].as_array().into_iter().flatten() {
                    let k = unb64(kv["key"].as_str().unwrap_or_default());
                    let val = unb64(kv["value"].as_str().unwrap_or_default());
                    let name = k.rsplit('/').next().unwrap_or(&k).to_string();
                    out.insert((name, val));
                }
            }
        }
        Ok(out)
    }

    /// v3: the current revision (member 0).
    pub(crate) async fn revision(&self) -> anyhow::Result<i64> {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/v3/maintenance/status", self.urls[0]))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .json()
            .await?;
        Ok(json_i64(&v["header"]["revision"]))
    }

    /// v3: compact the history up to `rev`.
    pub(crate) async fn compact(&self, rev: i64) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/v3/kv/compaction", self.urls[0]))
            .json(&serde_json::json!({"revision": rev.to_string(), "physical": true}))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("compact {rev}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Removes every key under `prefix`.
    pub(crate) async fn clear(&self, prefix: &str) -> anyhow::Result<()> {
        for (name, _) in self.list(prefix).await? {
            self.delete(&format!("{prefix}/{name}")).await?;
        }
        Ok(())
    }
}
