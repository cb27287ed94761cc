//! The acme module's etcd: reads, writes, the order lock and the watch on `/switchyard/acme/`,
//! through the v3 JSON gateway (`crate::etcd::v3`), on the same endpoints as discovery (etcd
//! 3.4 serves v2 and v3 on one port, so a `api = "v2"` config works too). With `[etcd]
//! username`, each call carries a token from `/v3/auth/authenticate`, fetched again once when
//! etcd refuses it (tokens expire). A transport error or timeout moves to the next member.

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

use crate::config::EtcdConfig;
use crate::etcd::v3::{self, Listing, Watch};
use crate::etcd::{Endpoints, EtcdError};

/// etcd's answer to a missing or expired token: HTTP 401 from the gateway, or gRPC
/// "UNAUTHENTICATED" (16) / "invalid auth token" in the body.
fn auth_refused(status: u16, body: &[u8]) -> bool {
    status == 401
        || v3::error_code(body) == Some(16)
        || String::from_utf8_lossy(body).contains("invalid auth token")
}

pub(super) struct Store {
    client: reqwest::Client,
    endpoints: Mutex<Endpoints>,
    token: tokio::sync::Mutex<Option<String>>,
    cfg: EtcdConfig,
}

impl Store {
    pub(super) fn new(cfg: &EtcdConfig) -> Result<Store, crate::tls::TlsError> {
        Ok(Store {
            client: crate::etcd::http_client(cfg)?,
            endpoints: Mutex::new(Endpoints::new(cfg.endpoints.clone())),
            token: tokio::sync::Mutex::new(None),
            cfg: cfg.clone(),
        })
    }

    fn endpoint(&self) -> String {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current()
            .to_string()
    }

    fn rotate(&self) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rotate();
    }

    /// The token for the next call (`None` without `username`), authenticating when there is
    /// none yet or `fresh` asks for a new one.
    async fn token(&self, endpoint: &str, fresh: bool) -> Result<Option<String>, EtcdError> {
        let (Some(user), Some(pass)) = (&self.cfg.username, &self.cfg.password) else {
            return Ok(None);
        };
        let mut held = self.token.lock().await;
        if fresh || held.is_none() {
            let t = v3::authenticate(&self.client, endpoint, user, pass, self.cfg.request_timeout)
                .await?;
            *held = Some(t);
        }
        Ok(held.clone())
    }

    /// `POST /v3/{path}` with `body`: the answer body of a 200, else an error.
    async fn call(&self, path: &str, body: serde_json::Value) -> Result<Bytes, EtcdError> {
        let endpoint = self.endpoint();
        let result = self.call_at(&endpoint, path, body).await;
        if matches!(
            result,
            Err(EtcdError::Transport { .. } | EtcdError::Timeout { .. })
        ) {
            self.rotate();
        }
        result
    }

    async fn call_at(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Bytes, EtcdError> {
        let mut fresh = false;
        loop {
            let token = self.token(endpoint, fresh).await?;
            let mut req = self
                .client
                .post(format!("{endpoint}/v3/{path}"))
                .json(&body);
            if let Some(t) = &token {
                req = req.header(reqwest::header::AUTHORIZATION, t);
            }
            let (status, answer) =
                crate::etcd::send(req, endpoint, self.cfg.request_timeout).await?;
            if status == 200 {
                return Ok(answer);
            }
            if token.is_some() && !fresh && auth_refused(status, &answer) {
                fresh = true;
                continue;
            }
            return Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                body: crate::etcd::snippet(&answer),
            });
        }
    }

    /// Every key below `prefix` with its value, and the revision read at.
    pub(super) async fn list(&self, prefix: &str) -> Result<Listing, EtcdError> {
        let (key, range_end) = v3::prefix_range(prefix);
        let body = self
            .call(
                "kv/range",
                serde_json::json!({"key": key, "range_end": range_end}),
            )
            .await?;
        v3::decode_range(&self.endpoint(), 200, &body)
    }

    /// The value of one key.
    pub(super) async fn get(&self, key: &str) -> Result<Option<String>, EtcdError> {
        let body = self
            .call("kv/range", serde_json::json!({"key": B64.encode(key)}))
            .await?;
        let l = v3::decode_range(&self.endpoint(), 200, &body)?;
        Ok(l.leaves.into_iter().next().map(|(_, v)| v))
    }

    /// `key = value`, bound to `lease` when given (it goes when the lease does).
    pub(super) async fn put(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<(), EtcdError> {
        let mut body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
        if let Some(l) = lease {
            body["lease"] = l.to_string().into();
        }
        self.call("kv/put", body).await.map(|_| ())
    }

    /// Puts `key = value` with `lease` only if `key` does not exist (a transaction comparing
    /// its create revision with 0): `true` when this call created it.
    pub(super) async fn create(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let k = B64.encode(key);
        let body = serde_json::json!({
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": B64.encode(value), "lease": lease.to_string()}}],
        });
        let answer = self.call("kv/txn", body).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| EtcdError::Decode {
                endpoint: self.endpoint(),
                detail: e.to_string(),
            })?;
        Ok(v.get("succeeded").and_then(|s| s.as_bool()) == Some(true))
    }

    /// A lease of `ttl_secs`: its id.
    pub(super) async fn grant(&self, ttl_secs: u64) -> Result<i64, EtcdError> {
        let body = self
            .call(
                "lease/grant",
                serde_json::json!({"TTL": ttl_secs.to_string()}),
            )
            .await?;
        v3::decode_grant(&body)
            .map(|l| l.id)
            .map_err(|detail| EtcdError::Decode {
                endpoint: self.endpoint(),
                detail,
            })
    }

    /// Keeps lease `id` alive: `false` once it is gone.
    pub(super) async fn keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let body = self
            .call("lease/keepalive", serde_json::json!({"ID": id.to_string()}))
            .await?;
        v3::decode_keepalive(&body)
            .map(|ttl| ttl.is_some())
            .map_err(|detail| EtcdError::Decode {
                endpoint: self.endpoint(),
                detail,
            })
    }

    /// Ends lease `id` and deletes its keys.
    pub(super) async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("lease/revoke", serde_json::json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// A watch on `prefix` from `start_revision`.
    pub(super) async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let endpoint = self.endpoint();
        let token = self.token(&endpoint, false).await?;
        let w = v3::watch(
            &self.client,
            &endpoint,
            prefix,
            start_revision,
            token.as_deref(),
            self.cfg.request_timeout,
        )
        .await;
        if w.is_err() {
            self.rotate();
            // The token may be the reason: the next attempt fetches a new one.
            *self.token.lock().await = None;
        }
        w
    }
}
