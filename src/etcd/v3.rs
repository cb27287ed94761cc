//! etcd v3 through its JSON gRPC gateway (`POST /v3/...`, so no protoc and no gRPC stack; README,
//! "etcd versions and API modes"). Reads, for discovery: the prefix range and the watch stream
//! decoder. Writes, for the register sidekick: lease grant, put with a lease, keepalive and
//! revoke. The gateway's shapes, as observed on etcd 3.4: keys and values in base64, int64 fields
//! as JSON strings, zero fields omitted, PUT events without a `type`, compaction as `canceled` +
//! `compact_revision`, stream errors as `{"error":...}` without a trailing newline, unary errors
//! as `{"error":"...","code":N}` with the gRPC status code.
//!
//! Keeps no state: `discovery` owns the cursor (`revision + 1`) and the mirror, `register` the
//! lease.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer};

use super::{EtcdError, send, snippet};

/// int64 fields arrive as strings (`"revision":"4"`), but numbers are accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Kv {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawEvent {
    /// Absent for PUT (the enum's zero value is omitted); "DELETE" otherwise.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    kv: Kv,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Debug, Clone, Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

/// Everything below a prefix at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// `header.revision` of the range; the watch starts at `revision + 1`.
    pub revision: i64,
    pub leaves: Vec<(String, String)>,
}

/// One decoded watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Put {
        key: String,
        value: String,
        revision: i64,
    },
    Delete {
        key: String,
        revision: i64,
    },
}

/// One message of the watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The watch is registered (`created: true`).
    Created {
        revision: i64,
    },
    Events(Vec<Event>),
    /// A progress notification: nothing for us up to `revision`.
    Progress {
        revision: i64,
    },
    /// The start revision was compacted away: re-read the prefix.
    Compacted {
        compact_revision: i64,
    },
    /// Canceled for another reason, or an `{"error":...}` object: reconnect.
    Failed(String),
}

/// The key range of a prefix: `/svc/backend` covers `/svc/backend/` up to `/svc/backend0`
/// (the trailing slash keeps `/svc/backend2/...` out).
pub fn prefix_range(prefix: &str) -> (String, String) {
    let key = format!("{}/", prefix.trim_end_matches('/'));
    let mut end = key.clone().into_bytes();
    let last = end.last_mut().expect("not empty");
    *last += 1; // '/' + 1 = '0'
    (B64.encode(key.as_bytes()), B64.encode(&end))
}

fn text(b64: &str) -> Result<String, String> {
    let bytes = B64.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

fn decode_err(endpoint: &str, detail: impl Into<String>) -> EtcdError {
    EtcdError::Decode {
        endpoint: endpoint.to_string(),
        detail: detail.into(),
    }
}

/// Decodes a range answer into a listing.
pub fn decode_range(endpoint: &str, status: u16, body: &[u8]) -> Result<Listing, EtcdError> {
    if status != 200 {
        return Err(EtcdError::Status {
            endpoint: endpoint.to_string(),
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        });
    }
    let r: RangeResponse =
        serde_json::from_slice(body).map_err(|e| decode_err(endpoint, e.to_string()))?;
    let mut leaves = Vec::with_capacity(r.kvs.len());
    for kv in r.kvs {
        let key = text(&kv.key).map_err(|e| decode_err(endpoint, format!("key: {e}")))?;
        // A value that is not UTF-8 is kept as garbage for discovery to skip and count.
        let value = text(&kv.value).unwrap_or_else(|e| format!("<{e}>"));
        leaves.push((key, value));
    }
    Ok(Listing {
        revision: r.header.revision,
        leaves,
    })
}

/// Decodes one line of the watch stream.
pub fn decode_message(line: &[u8]) -> Result<Message, String> {
    let l: WatchLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if let Some(err) = l.error {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(String::from)
            .unwrap_or_else(|| err.to_string());
        return Ok(Message::Failed(msg));
    }
    let r = l.result.ok_or("neither result nor error")?;
    if r.canceled {
        if r.compact_revision > 0 {
            return Ok(Message::Compacted {
                compact_revision: r.compact_revision,
            });
        }
        return Ok(Message::Failed(format!(
            "watch canceled: {}",
            r.cancel_reason
        )));
    }
    if r.created {
        return Ok(Message::Created {
            revision: r.header.revision,
        });
    }
    if r.events.is_empty() {
        return Ok(Message::Progress {
            revision: r.header.revision,
        });
    }
    let mut events = Vec::with_capacity(r.events.len());
    for e in r.events {
        let key = text(&e.kv.key)?;
        let revision = e.kv.mod_revision;
        events.push(match e.kind.as_deref() {
            None | Some("PUT") => Event::Put {
                key,
                value: text(&e.kv.value).unwrap_or_else(|e| format!("<{e}>")),
                revision,
            },
            Some("DELETE") => Event::Delete { key, revision },
            Some(other) => return Err(format!("unknown event type {other:?}")),
        });
    }
    Ok(Message::Events(events))
}

/// `POST /v3/auth/authenticate`: a token for the `Authorization` header of later calls.
pub async fn authenticate(
    client: &reqwest::Client,
    endpoint: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<String, EtcdError> {
    let fut = async {
        let resp = client
            .post(format!("{endpoint}/v3/auth/authenticate"))
            .json(&serde_json::json!({"name": user, "password": password}))
            .send()
            .await
            .map_err(|e| transport(endpoint, e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
        if status != 200 {
            return Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| decode_err(endpoint, e.to_string()))?;
        v.get("token")
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| decode_err(endpoint, "no token in the answer"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(EtcdError::Timeout {
                endpoint: endpoint.to_string(),
                after: timeout,
            })
        })
}

fn with_token(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.header(reqwest::header::AUTHORIZATION, t),
        None => req,
    }
}

/// `POST /v3/kv/range` for the whole prefix, bounded by `timeout`.
pub async fn list(
    client: &reqwest::Client,
    endpoint: &str,
    prefix: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Listing, EtcdError> {
    let (key, range_end) = prefix_range(prefix);
    let fut = async {
        let resp = with_token(client.post(format!("{endpoint}/v3/kv/range")), token)
            .json(&serde_json::json!({"key": key, "range_end": range_end}))
            .send()
            .await
            .map_err(|e| transport(endpoint, e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
        decode_range(endpoint, status, &body)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(EtcdError::Timeout {
                endpoint: endpoint.to_string(),
                after: timeout,
            })
        })
}

fn transport(endpoint: &str, source: reqwest::Error) -> EtcdError {
    EtcdError::Transport {
        endpoint: endpoint.to_string(),
        source,
    }
}

/// Largest watch message we buffer; a bigger one is a broken or hostile stream.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// An open `/v3/watch` stream, decoded into messages.
pub struct Watch {
    endpoint: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
    ended: bool,
}

/// Opens a watch on the prefix from `start_revision`, with progress notifications, and with
/// `Grpc-Metadata-Hasleader: true` so a member that lost its leader fails the watch instead of
/// stalling it silently.
pub async fn watch(
    client: &reqwest::Client,
    endpoint: &str,
    prefix: &str,
    start_revision: i64,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Watch, EtcdError> {
    let (key, range_end) = prefix_range(prefix);
    let body = serde_json::json!({"create_request": {
        "key": key,
        "range_end": range_end,
        "start_revision": start_revision.to_string(),
        "progress_notify": true,
    }});
    let resp = tokio::time::timeout(
        timeout,
        with_token(client.post(format!("{endpoint}/v3/watch")), token)
            .header("Grpc-Metadata-Hasleader", "true")
            .json(&body)
            .send(),
    )
    .await
    .map_err(|_| EtcdError::Timeout {
        endpoint: endpoint.to_string(),
        after: timeout,
    })?
    .map_err(|e| transport(endpoint, e))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(EtcdError::Status {
            endpoint: endpoint.to_string(),
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        });
    }
    Ok(Watch {
        endpoint: endpoint.to_string(),
        resp,
        buf: Vec::new(),
        ended: false,
    })
}

impl Watch {
    /// The next message; `Ok(None)` when nothing arrived within `idle` (the caller re-opens
    /// the watch from its cursor). The end of the stream is an error: a watch never ends
    /// on its own.
    pub async fn next(&mut self, idle: Duration) -> Result<Option<Message>, EtcdError> {
        loop {
            // One JSON object per line; the last object of a failing stream has no newline.
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return decode_message(&line)
                    .map(Some)
                    .map_err(|e| decode_err(&self.endpoint, e));
            }
            if self.ended {
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(decode_err(&self.endpoint, "watch stream ended"));
                }
                let line = std::mem::take(&mut self.buf);
                return match decode_message(&line) {
                    Ok(m) => Ok(Some(m)),
                    Err(e) => Err(decode_err(&self.endpoint, e)),
                };
            }
            match tokio::time::timeout(idle, self.resp.chunk()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(transport(&self.endpoint, e)),
                Ok(Ok(None)) => self.ended = true,
                Ok(Ok(Some(bytes))) => {
                    if self.buf.len() + bytes.len() > MAX_LINE {
                        return Err(decode_err(&self.endpoint, "watch message too large"));
                    }
                    self.buf.extend_from_slice(&bytes);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writes (the register sidekick). Each call is bounded by `timeout`, headers and body.

/// gRPC status "NOT_FOUND" in a unary error: the lease is gone.
pub const GRPC_NOT_FOUND: i64 = 5;

/// A lease as granted or last kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Lease IDs exceed 2^53: kept as i64, sent as a string.
    pub id: i64,
    pub ttl: u64,
}

/// The outcome of a [`revoke`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Revoked,
    /// NOT_FOUND: the lease had expired or was revoked already.
    AlreadyGone,
}

/// The body of a grant answer and of a keepalive's `result`.
#[derive(Debug, Deserialize)]
struct LeaseAnswer {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

/// A keepalive answer: one `{"result":{...}}`, or a stream error `{"error":{...}}`.
#[derive(Debug, Deserialize)]
struct KeepaliveAnswer {
    #[serde(default)]
    result: Option<LeaseAnswer>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A unary error: `{"error":"...","message":"...","code":5}`.
#[derive(Debug, Deserialize)]
struct UnaryError {
    #[serde(default)]
    code: i64,
}

/// Decodes `{"header":{...},"ID":"2228897030388046703","TTL":"4"}`.
pub fn decode_grant(body: &[u8]) -> Result<Lease, String> {
    let a: LeaseAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if a.id == 0 || a.ttl <= 0 {
        return Err(format!("grant without ID or TTL: {}", snippet(body)));
    }
    Ok(Lease {
        id: a.id,
        ttl: a.ttl as u64,
    })
}

/// Decodes a keepalive answer: `Some(ttl)` while the lease lives, `None` when the answer has no
/// (or a zero) `TTL`, which is how etcd says the lease is gone. The first JSON object counts
/// (one POST answers one object, then the stream ends).
pub fn decode_keepalive(body: &[u8]) -> Result<Option<u64>, String> {
    let first = body
        .split(|b| *b == b'\n')
        .find(|line| !line.iter().all(u8::is_ascii_whitespace))
        .ok_or_else(|| "empty keepalive answer".to_string())?;
    let a: KeepaliveAnswer = serde_json::from_slice(first).map_err(|e| e.to_string())?;
    if let Some(e) = a.error {
        return Err(format!("keepalive stream error: {e}"));
    }
    let r = a
        .result
        .ok_or_else(|| format!("keepalive answer without result: {}", snippet(body)))?;
    Ok((r.ttl > 0).then_some(r.ttl as u64))
}

/// The gRPC status code of a unary error body.
pub fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<UnaryError>(body)
        .ok()
        .map(|e| e.code)
}

fn status_error(endpoint: &str, status: u16, body: &[u8]) -> EtcdError {
    EtcdError::Status {
        endpoint: endpoint.to_string(),
        status,
        body: snippet(body),
    }
}

async fn post(
    client: &reqwest::Client,
    endpoint: &str,
    path: &str,
    body: serde_json::Value,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), EtcdError> {
    let url = format!("{endpoint}/v3/{path}");
    send(client.post(url).json(&body), endpoint, timeout).await
}

/// `POST /v3/lease/grant {"TTL":"N"}`. etcd may grant another TTL than asked (at least 2 s).
pub async fn grant(
    client: &reqwest::Client,
    endpoint: &str,
    ttl_secs: u64,
    timeout: Duration,
) -> Result<Lease, EtcdError> {
    let ttl = ttl_secs.to_string();
    let (status, body) = post(
        client,
        endpoint,
        "lease/grant",
        serde_json::json!({ "TTL": ttl }),
        timeout,
    )
    .await?;
    if status != 200 {
        return Err(status_error(endpoint, status, &body));
    }
    decode_grant(&body).map_err(|detail| decode_err(endpoint, detail))
}

/// `POST /v3/kv/put` of `key = value` with the lease. `Ok(false)`: the lease is gone.
pub async fn put_with_lease(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    value: &str,
    lease: i64,
    timeout: Duration,
) -> Result<bool, EtcdError> {
    let body = serde_json::json!({
        "key": B64.encode(key),
        "value": B64.encode(value),
        "lease": lease.to_string(),
    });
    match post(client, endpoint, "kv/put", body, timeout).await? {
        (200, _) => Ok(true),
        (404, body) if error_code(&body) == Some(GRPC_NOT_FOUND) => Ok(false),
        (status, body) => Err(status_error(endpoint, status, &body)),
    }
}

/// `POST /v3/lease/keepalive`: the lease's TTL, or `None` when it is gone.
pub async fn keepalive(
    client: &reqwest::Client,
    endpoint: &str,
    id: i64,
    timeout: Duration,
) -> Result<Option<u64>, EtcdError> {
    let (status, body) = post(
        client,
        endpoint,
        "lease/keepalive",
        serde_json::json!({ "ID": id.to_string() }),
        timeout,
    )
    .await?;
    if status != 200 {
        return Err(status_error(endpoint, status, &body));
    }
    decode_keepalive(&body).map_err(|detail| decode_err(endpoint, detail))
}

/// `POST /v3/lease/revoke`: deletes every key put with the lease.
pub async fn revoke(
    client: &reqwest::Client,
    endpoint: &str,
    id: i64,
    timeout: Duration,
) -> Result<Revoked, EtcdError> {
    match post(
        client,
        endpoint,
        "lease/revoke",
        serde_json::json!({ "ID": id.to_string() }),
        timeout,
    )
    .await?
    {
        (200, _) => Ok(Revoked::Revoked),
        (404, body) if error_code(&body) == Some(GRPC_NOT_FOUND) => Ok(Revoked::AlreadyGone),
        (status, body) => Err(status_error(endpoint, status, &body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_uses_a_trailing_slash() {
        let (k, e) = prefix_range("/v3svc/backend");
        assert_eq!(k, "L3Yzc3ZjL2JhY2tlbmQv"); // "/v3svc/backend/"
        assert_eq!(e, "L3Yzc3ZjL2JhY2tlbmQw"); // "/v3svc/backend0"
        assert_eq!(prefix_range("/v3svc/backend/"), (k, e));
    }

    // Literal shapes observed on etcd 3.4.23.
    #[test]
    fn range_with_strings_for_numbers() {
        let body = r#"{"header":{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"4","raft_term":"2"},
 "kvs":[{"key":"L3Yzc3ZjL2JhY2tlbmQvMQ==","create_revision":"2","mod_revision":"2","version":"1","value":"MTI3LjAuMC4xOjkwMDE="}],
 "count":"1"}"#;
        let l = decode_range("e", 200, body.as_bytes()).unwrap();
        assert_eq!(l.revision, 4);
        assert_eq!(
            l.leaves,
            [("/v3svc/backend/1".to_string(), "127.0.0.1:9001".to_string())]
        );
        // An empty range has no kvs and no count.
        let l = decode_range("e", 200, br#"{"header":{"revision":"9"}}"#).unwrap();
        assert_eq!((l.revision, l.leaves.len()), (9, 0));
        assert!(decode_range("e", 400, br#"{"error":"x","code":3}"#).is_err());
    }

    #[test]
    fn watch_messages() {
        let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"},"created":true}}"#;
        assert_eq!(
            decode_message(created).unwrap(),
            Message::Created { revision: 4 }
        );
        let put = br#"{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"L3Yzc3ZjL2JhY2tlbmQvNA==","create_revision":"5","mod_revision":"5","version":"1","value":"MTI3LjAuMC4xOjkwMDQ="}}]}}"#;
        assert_eq!(
            decode_message(put).unwrap(),
            Message::Events(vec![Event::Put {
                key: "/v3svc/backend/4".into(),
                value: "127.0.0.1:9004".into(),
                revision: 5
            }])
        );
        let del = br#"{"result":{"header":{"revision":"8"},"events":[{"type":"DELETE","kv":{"key":"L3Yzc3ZjL2JhY2tlbmQvNA==","mod_revision":"8"}},{"type":"DELETE","kv":{"key":"L3Yzc3ZjL2JhY2tlbmQvNQ==","mod_revision":"8"}}]}}"#;
        let Message::Events(evs) = decode_message(del).unwrap() else {
            panic!()
        };
        assert_eq!(evs.len(), 2);
        assert_eq!(
            evs[1],
            Event::Delete {
                key: "/v3svc/backend/5".into(),
                revision: 8
            }
        );
        let compacted = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"14"}}"#;
        assert_eq!(
            decode_message(compacted).unwrap(),
            Message::Compacted {
                compact_revision: 14
            }
        );
        let progress = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"1","raft_term":"2"}}}"#;
        assert_eq!(
            decode_message(progress).unwrap(),
            Message::Progress { revision: 1 }
        );
        let err = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert_eq!(
            decode_message(err).unwrap(),
            Message::Failed("etcdserver: no leader".into())
        );
        assert!(decode_message(b"{garbage").is_err());
    }

    // Literal lease answers observed on etcd 3.4.23.
    const HEADER: &str = r#"{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"4","raft_term":"2"}"#;

    #[test]
    fn grant_keeps_lease_ids_above_2_pow_53_exact() {
        let body = format!(r#"{{"header":{HEADER},"ID":"2228897030388046703","TTL":"4"}}"#);
        let l = decode_grant(body.as_bytes()).unwrap();
        assert_eq!(
            l,
            Lease {
                id: 2228897030388046703,
                ttl: 4
            }
        );
        assert!(l.id > 1 << 53);
        // Sent back as a string, digit for digit.
        assert_eq!(
            serde_json::json!({ "ID": l.id.to_string() }).to_string(),
            r#"{"ID":"2228897030388046703"}"#
        );
        // Numbers are accepted too.
        let l = decode_grant(br#"{"ID":2228897030388046703,"TTL":2}"#).unwrap();
        assert_eq!(l.id, 2228897030388046703);
        assert!(decode_grant(br#"{"error":"context deadline exceeded","code":2}"#).is_err());
        assert!(decode_grant(b"not json").is_err());
    }

    #[test]
    fn keepalive_alive_dead_and_stream_error() {
        let alive = format!(
            "{{\"result\":{{\"header\":{HEADER},\"ID\":\"2228897030388046703\",\"TTL\":\"4\"}}}}\n"
        );
        assert_eq!(decode_keepalive(alive.as_bytes()), Ok(Some(4)));
        // A dead or unknown lease: 200, no TTL, no error.
        let dead = format!(r#"{{"result":{{"header":{HEADER},"ID":"2228897030388046709"}}}}"#);
        assert_eq!(decode_keepalive(dead.as_bytes()), Ok(None));
        let zero = r#"{"result":{"ID":"2228897030388046709","TTL":"0"}}"#;
        assert_eq!(decode_keepalive(zero.as_bytes()), Ok(None));
        let err = r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
        assert!(decode_keepalive(err.as_bytes()).is_err());
        assert!(decode_keepalive(b"").is_err());
    }

    #[test]
    fn unary_errors_carry_the_grpc_code() {
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(error_code(body), Some(GRPC_NOT_FOUND));
    }
}
