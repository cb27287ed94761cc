//! etcd v2 keys API wire types and calls (README, "etcd versions and API modes"). Reads, for
//! discovery: the recursive GET of a directory and the `wait=true` long-poll, with the index rules
//! (after a GET, `X-Etcd-Index + 1`; after an event, `node.modifiedIndex + 1`; never the
//! `X-Etcd-Index` of a wait response). Writes, for the register sidekick: a key with a TTL, its
//! refresh (`refresh=true&prevExist=true`: no value sent, no watcher woken) and its removal.
//!
//! This module decodes and classifies; it keeps no state. `discovery` owns the cursor and the
//! mirror of keys, `register` the heartbeat.

use std::time::Duration;

use serde::Deserialize;

use super::{EtcdError, send, snippet};

/// A node of the v2 tree. Absent fields are common (`value` on deletes, `nodes` on an empty
/// directory), so everything has a default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub dir: bool,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub modified_index: u64,
}

/// A successful answer: a GET listing or one watch event.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub action: String,
    pub node: Node,
    #[serde(default)]
    pub prev_node: Option<Node>,
}

/// etcd's JSON error body: `{"errorCode":401,"message":"...","cause":"...","index":1031}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub index: u64,
}

/// "Key not found": the directory does not exist (yet), or the key expired or was deleted.
pub const KEY_NOT_FOUND: u32 = 100;
/// "Compare failed": a `prevValue` did not match (arrives as HTTP 412).
pub const COMPARE_FAILED: u32 = 101;
/// "The event in requested index is outdated and cleared" (arrives as HTTP 400).
pub const EVENT_INDEX_CLEARED: u32 = 401;

/// Everything below a prefix at one store index.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// `X-Etcd-Index` of the GET; the watch resumes at `index + 1`.
    pub index: u64,
    /// Every leaf key (recursively) with its value.
    pub leaves: Vec<(String, String)>,
}

/// The outcome of one long-poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    Event(Response),
    /// errorCode 401: the cursor fell out of etcd's 1000-event window; re-list.
    Cleared {
        current: u64,
    },
    /// Our client-side deadline passed with no event; re-arm with the same cursor.
    Idle,
}

/// Deepest directory nesting followed below a prefix; deeper levels are ignored. A bound keeps a
/// hostile tree from recursing without end.
const MAX_DEPTH: usize = 32;

fn keys_url(endpoint: &str, prefix: &str) -> String {
    format!("{endpoint}/v2/keys{prefix}")
}

fn index_header(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("x-etcd-index")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Flattens a listing into leaf (key, value) pairs. Directories are not servers.
pub fn leaves(node: &Node) -> Vec<(String, String)> {
    fn walk(node: &Node, depth: usize, out: &mut Vec<(String, String)>) {
        if node.dir {
            if depth < MAX_DEPTH {
                for child in &node.nodes {
                    walk(child, depth + 1, out);
                }
            }
        } else if let Some(v) = &node.value {
            out.push((node.key.clone(), v.clone()));
        }
    }
    let mut out = Vec::new();
    walk(node, 0, &mut out);
    out
}

/// Decodes a GET answer (status, `X-Etcd-Index`, body) into a listing. A missing directory is
/// an authoritative empty listing.
pub fn decode_listing(
    endpoint: &str,
    status: u16,
    header_index: Option<u64>,
    body: &[u8],
) -> Result<Listing, EtcdError> {
    let decode_err = |detail: String| EtcdError::Decode {
        endpoint: endpoint.to_string(),
        detail,
    };
    match status {
        200 => {
            let index = header_index.ok_or_else(|| decode_err("no X-Etcd-Index header".into()))?;
            let r: Response =
                serde_json::from_slice(body).map_err(|e| decode_err(e.to_string()))?;
            Ok(Listing {
                index,
                leaves: leaves(&r.node),
            })
        }
        404 => {
            let e: ErrorBody = serde_json::from_slice(body).map_err(|_| EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                body: snippet(body),
            })?;
            if e.error_code != KEY_NOT_FOUND {
                return Err(decode_err(format!(
                    "errorCode {}: {}",
                    e.error_code, e.message
                )));
            }
            Ok(Listing {
                index: header_index.unwrap_or(e.index),
                leaves: Vec::new(),
            })
        }
        _ => Err(EtcdError::Status {
            endpoint: endpoint.to_string(),
            status,
            body: snippet(body),
        }),
    }
}

/// Decodes a wait answer: an event, or errorCode 401.
pub fn decode_wait(endpoint: &str, status: u16, body: &[u8]) -> Result<Wait, EtcdError> {
    match status {
        200 => serde_json::from_slice(body)
            .map(Wait::Event)
            .map_err(|e| EtcdError::Decode {
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            }),
        _ => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) if e.error_code == EVENT_INDEX_CLEARED => Ok(Wait::Cleared { current: e.index }),
            _ => Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                body: snippet(body),
            }),
        },
    }
}

fn transport(endpoint: &str, source: reqwest::Error) -> EtcdError {
    EtcdError::Transport {
        endpoint: endpoint.to_string(),
        source,
    }
}

/// `GET /v2/keys{prefix}?recursive=true&sorted=true`, bounded by `timeout` (headers and body).
pub async fn list(
    client: &reqwest::Client,
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Listing, EtcdError> {
    let url = keys_url(endpoint, prefix);
    let fut = async {
        let resp = client
            .get(&url)
            .query(&[("recursive", "true"), ("sorted", "true")])
            .send()
            .await
            .map_err(|e| transport(endpoint, e))?;
        let status = resp.status().as_u16();
        let index = index_header(&resp);
        let body = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
        decode_listing(endpoint, status, index, &body)
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

/// `GET /v2/keys{prefix}?wait=true&recursive=true&waitIndex=N`. etcd sends the headers at once
/// and the body only when an event fires, and never closes an idle poll, so the deadline covers
/// the body read; when it passes the answer is [`Wait::Idle`] and the caller re-arms.
pub async fn wait(
    client: &reqwest::Client,
    endpoint: &str,
    prefix: &str,
    wait_index: u64,
    deadline: Duration,
) -> Result<Wait, EtcdError> {
    let url = keys_url(endpoint, prefix);
    let idx = wait_index.to_string();
    let fut = async {
        let resp = client
            .get(&url)
            .query(&[
                ("wait", "true"),
                ("recursive", "true"),
                ("waitIndex", idx.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport(endpoint, e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| transport(endpoint, e))?;
        decode_wait(endpoint, status, &body)
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Ok(Wait::Idle),
    }
}

// ---------------------------------------------------------------------------------------------
// Writes (the register sidekick). Each call is bounded by `timeout`, headers and body.

/// The outcome of a [`refresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Alive,
    /// 404 errorCode 100: the key expired or was deleted.
    Gone,
}

/// The outcome of a [`delete_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// 404 errorCode 100: nothing to delete.
    AlreadyGone,
    /// 412 errorCode 101: the key holds another value (another instance's); left alone.
    OtherValue,
}

/// The `errorCode` of an error body.
pub fn error_code(body: &[u8]) -> Option<u32> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|e| e.error_code)
}

fn status_error(endpoint: &str, status: u16, body: &[u8]) -> EtcdError {
    EtcdError::Status {
        endpoint: endpoint.to_string(),
        status,
        body: snippet(body),
    }
}

/// `PUT /v2/keys{key}` with `value` and `ttl`: creates or overwrites (a `set`).
pub async fn put_with_ttl(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    value: &str,
    ttl_secs: u64,
    timeout: Duration,
) -> Result<(), EtcdError> {
    let ttl = ttl_secs.to_string();
    let req = client
        .put(keys_url(endpoint, key))
        .form(&[("value", value), ("ttl", ttl.as_str())]);
    match send(req, endpoint, timeout).await? {
        (200..=299, _) => Ok(()),
        (status, body) => Err(status_error(endpoint, status, &body)),
    }
}

/// `PUT /v2/keys{key}` with `ttl`, `refresh=true`, `prevExist=true`: resets the TTL, keeps
/// the value, wakes no watcher. Sending a value too would be refused (errorCode 211).
pub async fn refresh(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    ttl_secs: u64,
    timeout: Duration,
) -> Result<Refresh, EtcdError> {
    let ttl = ttl_secs.to_string();
    let req = client.put(keys_url(endpoint, key)).form(&[
        ("ttl", ttl.as_str()),
        ("refresh", "true"),
        ("prevExist", "true"),
    ]);
    match send(req, endpoint, timeout).await? {
        (200..=299, _) => Ok(Refresh::Alive),
        (404, body) if error_code(&body) == Some(KEY_NOT_FOUND) => Ok(Refresh::Gone),
        (status, body) => Err(status_error(endpoint, status, &body)),
    }
}

/// `DELETE /v2/keys{key}?prevValue=VALUE`: a newer value from another instance is kept.
pub async fn delete_if(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<Deleted, EtcdError> {
    let req = client
        .delete(keys_url(endpoint, key))
        .query(&[("prevValue", value)]);
    match send(req, endpoint, timeout).await? {
        (200..=299, _) => Ok(Deleted::Deleted),
        (404, body) if error_code(&body) == Some(KEY_NOT_FOUND) => Ok(Deleted::AlreadyGone),
        (412, body) if error_code(&body) == Some(COMPARE_FAILED) => Ok(Deleted::OtherValue),
        (status, body) => Err(status_error(endpoint, status, &body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literal bodies observed on etcd 3.4.23.
    const LISTING: &str = r#"{"action":"get","node":{"key":"/testservice/backend","dir":true,"nodes":[
 {"key":"/testservice/backend/1","value":"127.0.0.1:8081","expiration":"2026-11-23T21:05:20.218810547Z","ttl":60,"modifiedIndex":5,"createdIndex":5},
 {"key":"/testservice/backend/2","value":"127.0.0.1:8082","modifiedIndex":6,"createdIndex":6},
 {"key":"/testservice/backend/sub","dir":true,"nodes":[
   {"key":"/testservice/backend/sub/3","value":"127.0.0.1:8083","modifiedIndex":7,"createdIndex":7}],
  "modifiedIndex":7,"createdIndex":7}],
 "modifiedIndex":4,"createdIndex":4}}"#;

    #[test]
    fn listing_flattens_nested_leaves_and_uses_header_index() {
        let l = decode_listing("e", 200, Some(7), LISTING.as_bytes()).unwrap();
        assert_eq!(l.index, 7);
        let keys: Vec<_> = l.leaves.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            keys,
            [
                "/testservice/backend/1=127.0.0.1:8081",
                "/testservice/backend/2=127.0.0.1:8082",
                "/testservice/backend/sub/3=127.0.0.1:8083"
            ]
        );
    }

    #[test]
    fn empty_dir_has_no_nodes_field() {
        let body = r#"{"action":"get","node":{"key":"/testservice/backend","dir":true,"modifiedIndex":4,"createdIndex":4}}"#;
        let l = decode_listing("e", 200, Some(9), body.as_bytes()).unwrap();
        assert_eq!(
            l,
            Listing {
                index: 9,
                leaves: vec![]
            }
        );
    }

    #[test]
    fn missing_dir_is_an_empty_listing_at_the_current_index() {
        let body =
            r#"{"errorCode":100,"message":"Key not found","cause":"/testservice","index":3}"#;
        let l = decode_listing("e", 404, Some(3), body.as_bytes()).unwrap();
        assert_eq!(
            l,
            Listing {
                index: 3,
                leaves: vec![]
            }
        );
        // Without the header, the body's index is the same number.
        assert_eq!(
            decode_listing("e", 404, None, body.as_bytes())
                .unwrap()
                .index,
            3
        );
    }

    #[test]
    fn listing_errors_are_errors_not_empty_sets() {
        assert!(decode_listing("e", 500, Some(3), b"boom").is_err());
        assert!(decode_listing("e", 200, Some(3), b"{not json").is_err());
        assert!(decode_listing("e", 200, None, LISTING.as_bytes()).is_err());
        assert!(decode_listing("e", 404, None, b"404 page not found").is_err());
    }

    #[test]
    fn index_cleared_arrives_as_http_400() {
        let body = r#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"the requested history has been cleared [32/31]","index":1031}"#;
        assert_eq!(
            decode_wait("e", 400, body.as_bytes()).unwrap(),
            Wait::Cleared { current: 1031 }
        );
        assert!(
            decode_wait(
                "e",
                500,
                br#"{"errorCode":300,"message":"Raft Internal Error"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn expire_event_has_value_only_in_prev_node() {
        let body = r#"{"action":"expire","node":{"key":"/testservice/backend/6","modifiedIndex":21,"createdIndex":19},"prevNode":{"key":"/testservice/backend/6","value":"127.0.0.1:8086","expiration":"2026-11-23T21:04:39.901240555Z","modifiedIndex":20,"createdIndex":19}}"#;
        let Wait::Event(r) = decode_wait("e", 200, body.as_bytes()).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(r.action, "expire");
        assert_eq!(r.node.value, None);
        assert_eq!(r.node.modified_index, 21);
        assert_eq!(
            r.prev_node.unwrap().value.as_deref(),
            Some("127.0.0.1:8086")
        );
    }

    #[test]
    fn recursive_dir_delete_is_one_dir_event() {
        let body = r#"{"action":"delete","node":{"key":"/testservice/backend/sub","dir":true,"modifiedIndex":18,"createdIndex":7},"prevNode":{"key":"/testservice/backend/sub","dir":true,"modifiedIndex":7,"createdIndex":7}}"#;
        let Wait::Event(r) = decode_wait("e", 200, body.as_bytes()).unwrap() else {
            panic!("not an event")
        };
        assert!(r.node.dir);
        assert_eq!(r.node.key, "/testservice/backend/sub");
    }

    #[test]
    fn error_codes_of_write_answers() {
        let gone =
            br#"{"errorCode":100,"message":"Key not found","cause":"/svc/backend/1","index":9}"#;
        assert_eq!(error_code(gone), Some(KEY_NOT_FOUND));
        assert_eq!(error_code(b"404 page not found"), None);
    }
}
