//! etcd v3 through its JSON gRPC gateway (`POST /v3/...`, so no protoc and no gRPC stack): the
//! prefix range, the watch stream decoder, and the shapes of etcd-facts.md section 3 (keys and
//! values in base64, int64 fields as JSON strings, zero fields omitted, PUT events without a
//! `type`, compaction as `canceled` + `compact_revision`, stream errors as `{"error":...}`
//! without a trailing newline).
//!
//! Keeps no state: `discovery` owns the cursor (`revision + 1`) and the mirror.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer};

use super::EtcdError;

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

    // Literal shapes observed on etcd 3.4.23 (etcd-facts.md 3.2-3.5).
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
}
