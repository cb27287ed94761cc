//! `Recorder`: a plain TCP upstream that keeps every byte it receives and parses only the
//! HTTP/1.1 framing it needs to answer (so it sees exactly what Switchyard sent, ambiguities
//! included), and `Recorded`, a request as an upstream read it off the wire (the `Script`
//! upstreams of `script.rs` record theirs the same way).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Head, Wire, all, clip};

/// What the recording upstream answers to every request it can delimit (plus an `x-path`
/// header naming the request-target, so pipelined answers can be matched to requests).
pub const FIXED_BODY: &[u8] = b"ok";
/// Requests whose target starts with this get an answer only after `SLOW_ANSWER`.
pub const SLOW_PATH: &str = "/slow";
pub const SLOW_ANSWER: Duration = Duration::from_millis(1600);
/// Requests whose target starts with this get `BIG_LEN` bytes of body, written as fast as the
/// connection takes them.
pub const BIG_PATH: &str = "/big";
pub const BIG_LEN: u64 = 1 << 30;

/// One request as an upstream saw it on the wire.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Which accepted connection it came on (0 is the first).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Names lowercased, values trimmed, in wire order (duplicates kept).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, names lowercased, values trimmed, in wire order.
    pub trailers: Vec<(String, String)>,
    /// The head and the whole body (by its framing) arrived.
    pub complete: bool,
    /// Why it is incomplete or was not answered, if so.
    pub note: String,
}

impl Recorded {
    /// The head as a request; `conn`: the connection's index.
    pub fn from_head(head: Head, conn: usize) -> Recorded {
        let [method, target, version] = head.start;
        Recorded {
            conn,
            method,
            target,
            version,
            headers: head.headers,
            ..Recorded::default()
        }
    }

    /// Every value of header `name` (lowercase).
    pub fn all(&self, name: &str) -> Vec<&str> {
        all(&self.headers, name)
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// The value of header `name` if it appears exactly once.
    pub fn one(&self, name: &str) -> Option<&str> {
        match self.all(name).as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }

    /// Why this request would be ambiguous to a server (two framings, two lengths, a length
    /// that is not digits, a transfer coding other than one `chunked`, two Hosts), or `None`.
    pub fn ambiguity(&self) -> Option<String> {
        let cl = self.all("content-length");
        let te = self.all("transfer-encoding");
        if !cl.is_empty() && !te.is_empty() {
            return Some(format!(
                "both Content-Length {cl:?} and Transfer-Encoding {te:?}"
            ));
        }
        if cl.len() > 1 {
            return Some(format!("{} Content-Length headers {cl:?}", cl.len()));
        }
        if let Some(v) = cl.first()
            && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()))
        {
            return Some(format!("Content-Length {v:?} is not digits"));
        }
        let one_chunked = matches!(te.as_slice(), [v] if v.eq_ignore_ascii_case("chunked"));
        if !te.is_empty() && !one_chunked {
            return Some(format!("Transfer-Encoding {te:?} is not one `chunked`"));
        }
        if self.all("host").len() > 1 {
            return Some(format!("Host headers {:?}", self.all("host")));
        }
        None
    }
}

#[derive(Default)]
struct RecState {
    requests: Vec<Recorded>,
    /// Bytes left over at a connection's end that did not make a whole request head.
    partial: Vec<Vec<u8>>,
    /// Every byte received, across connections, since the last `take`.
    raw: Vec<u8>,
}

/// What the recording upstream saw since the last `take`.
#[derive(Debug, Default)]
pub struct Taken {
    pub requests: Vec<Recorded>,
    pub partial: Vec<Vec<u8>>,
    pub raw: Vec<u8>,
}

impl Taken {
    pub fn complete(&self) -> Vec<&Recorded> {
        self.requests.iter().filter(|r| r.complete).collect()
    }

    /// Nothing at all: no request, no partial head, no byte.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.partial.is_empty() && self.raw.is_empty()
    }

    /// A one-line description for failure messages.
    pub fn describe(&self) -> String {
        let reqs: Vec<String> = self
            .requests
            .iter()
            .map(|r| {
                let headers: Vec<(&str, String)> = r
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), clip(v, 60)))
                    .collect();
                format!(
                    "{} {} complete={} headers={:?} body={:?}{}",
                    r.method,
                    clip(&r.target, 60),
                    r.complete,
                    headers,
                    clip(&String::from_utf8_lossy(&r.body), 60),
                    if r.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.note)
                    }
                )
            })
            .collect();
        format!(
            "{} request(s) [{}], {} partial head(s), {} raw bytes",
            self.requests.len(),
            reqs.join("; "),
            self.partial.len(),
            self.raw.len()
        )
    }
}

/// A plain TCP upstream that records its raw input and answers `200 ok` to every request it
/// can delimit by Content-Length or chunked framing. A request it cannot delimit (two
/// lengths, an unknown transfer coding, a bad chunk) is recorded as incomplete and its
/// connection closed. Stopped on drop.
pub struct Recorder {
    addr: SocketAddr,
    state: Arc<Mutex<RecState>>,
    big_written: Arc<AtomicU64>,
    big_ended: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RecState::default()));
        let big_written = Arc::new(AtomicU64::new(0));
        let big_ended = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let (st, bw, be, c) = (
            Arc::clone(&state),
            Arc::clone(&big_written),
            Arc::clone(&big_ended),
            cancel.clone(),
        );
        tokio::spawn(async move {
            for index in 0.. {
                let stream = tokio::select! {
                    _ = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let tap = Arc::clone(&st);
                let conn = RecConn {
                    // No patience: an idle pooled connection waits as long as the proxy keeps it.
                    wire: Wire::new(stream, None).tap(move |bytes| {
                        tap.lock().unwrap().raw.extend_from_slice(bytes);
                    }),
                    index,
                    state: Arc::clone(&st),
                    big_written: Arc::clone(&bw),
                    big_ended: Arc::clone(&be),
                };
                let c = c.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn.run() => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
        });
        Recorder {
            addr,
            state,
            big_written,
            big_ended,
            cancel,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything seen since the last call, and forget it.
    pub fn take(&self) -> Taken {
        let mut s = self.state.lock().unwrap();
        Taken {
            requests: std::mem::take(&mut s.requests),
            partial: std::mem::take(&mut s.partial),
            raw: std::mem::take(&mut s.raw),
        }
    }

    /// Body bytes of `BIG_PATH` answers written so far (accepted by the socket).
    pub fn big_written(&self) -> u64 {
        self.big_written.load(Ordering::SeqCst)
    }

    /// Whether a `BIG_PATH` answer stopped because its connection failed or closed.
    pub fn big_ended(&self) -> bool {
        self.big_ended.load(Ordering::SeqCst)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One upstream connection: read, delimit, record, answer; repeat.
struct RecConn {
    wire: Wire,
    index: usize,
    state: Arc<Mutex<RecState>>,
    big_written: Arc<AtomicU64>,
    big_ended: Arc<AtomicBool>,
}

impl RecConn {
    fn record(&self, r: Recorded) {
        self.state.lock().unwrap().requests.push(r);
    }

    async fn run(mut self) {
        loop {
            let Some(head) = self.wire.head().await else {
                if !self.wire.buf.is_empty() {
                    let left = std::mem::take(&mut self.wire.buf);
                    self.state.lock().unwrap().partial.push(left);
                }
                return;
            };
            let mut req = Recorded::from_head(head, self.index);
            if let Err(why) = read_body(&mut self.wire, &mut req).await {
                req.note = why;
                self.record(req);
                return;
            }
            let target = req.target.clone();
            let close = req
                .all("connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("close"));
            self.record(req);
            if target.starts_with(BIG_PATH) {
                self.big().await;
                return;
            }
            if target.starts_with(SLOW_PATH) {
                tokio::time::sleep(SLOW_ANSWER).await;
            }
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-path: {}\r\n",
                FIXED_BODY.len(),
                target.replace(['\r', '\n'], "")
            )
            .into_bytes();
            if close {
                answer.extend_from_slice(b"connection: close\r\n");
            }
            answer.extend_from_slice(b"\r\n");
            answer.extend_from_slice(FIXED_BODY);
            if !self.wire.send(&answer).await || close {
                return;
            }
        }
    }

    /// Answers `BIG_LEN` bytes as fast as the connection takes them.
    async fn big(&mut self) {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG_LEN}\r\n\r\n");
        let stream = self.wire.stream();
        if stream.write_all(head.as_bytes()).await.is_err() {
            self.big_ended.store(true, Ordering::SeqCst);
            return;
        }
        let chunk = vec![b'z'; 64 * 1024];
        let mut left = BIG_LEN;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            match stream.write(&chunk[..n]).await {
                Ok(0) | Err(_) => break,
                Ok(w) => {
                    self.big_written.fetch_add(w as u64, Ordering::SeqCst);
                    left -= w as u64;
                }
            }
        }
        self.big_ended.store(true, Ordering::SeqCst);
    }
}

/// Reads `req`'s body by its framing (a length, chunked with trailers, or none) and marks it
/// complete; `Err` says why it could not: a request that cannot be delimited (two lengths, a
/// length that is not digits, a transfer coding other than one `chunked`) or one cut short.
pub async fn read_body(wire: &mut Wire, req: &mut Recorded) -> Result<(), String> {
    if let Some(why) = req.ambiguity() {
        return Err(format!("ambiguous: {why}"));
    }
    if req.one("transfer-encoding").is_some() {
        wire.chunked(&mut req.body, &mut req.trailers).await?;
    } else if let Some(v) = req.one("content-length") {
        let n: usize = v.parse().map_err(|_| format!("Content-Length {v:?}"))?;
        match wire.exact(n).await {
            Some(b) => req.body = b,
            None => {
                req.body = std::mem::take(&mut wire.buf);
                return Err(format!("connection ended inside a {n}-byte body"));
            }
        }
    }
    req.complete = true;
    Ok(())
}
