//! Raw-byte tools for hostile-input tests of the HTTP frontend (`tests/raw_http.rs`): a
//! recording upstream that keeps every byte it receives and parses only the minimal HTTP/1.1
//! framing it needs to answer (so it sees exactly what Switchyard sent, ambiguities included),
//! and a raw client exchange whose every read is bounded by a deadline.
//!
//! Owns sockets and byte parsing for those tests; the expectations live in `tests/raw_http.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// One request as the upstream saw it on the wire.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
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
    /// Every value of header `name` (lowercase).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
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
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let conn = RecConn {
                    stream,
                    buf: Vec::new(),
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
    stream: TcpStream,
    buf: Vec<u8>,
    state: Arc<Mutex<RecState>>,
    big_written: Arc<AtomicU64>,
    big_ended: Arc<AtomicBool>,
}

enum Body {
    None,
    Length(usize),
    Chunked,
    /// Cannot be delimited: record and close.
    Refuse(String),
}

impl RecConn {
    /// Reads more bytes into `buf`; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.state
                    .lock()
                    .unwrap()
                    .raw
                    .extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The bytes up to and including the first `pat`, removed from `buf`.
    async fn until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, pat) {
                let rest = self.buf.split_off(i + pat.len());
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Exactly `n` bytes, removed from `buf`.
    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        let rest = self.buf.split_off(n);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    fn record(&self, r: Recorded) {
        self.state.lock().unwrap().requests.push(r);
    }

    async fn run(mut self) {
        loop {
            let Some(head) = self.until(b"\r\n\r\n").await else {
                if !self.buf.is_empty() {
                    let left = std::mem::take(&mut self.buf);
                    self.state.lock().unwrap().partial.push(left);
                }
                return;
            };
            let mut req = parse_head(&head);
            let body = framing(&req);
            match body {
                Body::None => req.complete = true,
                Body::Length(n) => match self.exact(n).await {
                    Some(b) => {
                        req.body = b;
                        req.complete = true;
                    }
                    None => {
                        req.body = std::mem::take(&mut self.buf);
                        req.note = format!("connection ended inside a {n}-byte body");
                        self.record(req);
                        return;
                    }
                },
                Body::Chunked => match self.chunked(&mut req).await {
                    Ok(()) => req.complete = true,
                    Err(why) => {
                        req.note = why;
                        self.record(req);
                        return;
                    }
                },
                Body::Refuse(why) => {
                    req.note = why;
                    self.record(req);
                    return;
                }
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
            if self.stream.write_all(&answer).await.is_err() || close {
                return;
            }
        }
    }

    /// Reads a chunked body into `req.body`; `Err` names what was wrong or missing.
    async fn chunked(&mut self, req: &mut Recorded) -> Result<(), String> {
        loop {
            let line = self
                .until(b"\r\n")
                .await
                .ok_or("connection ended before a chunk-size line")?;
            let line = &line[..line.len() - 2];
            let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
            if size == 0 {
                // Trailer section, up to its blank line.
                loop {
                    let l = self
                        .until(b"\r\n")
                        .await
                        .ok_or("connection ended inside the trailer section")?;
                    if l == b"\r\n" {
                        return Ok(());
                    }
                    let l = String::from_utf8_lossy(&l[..l.len() - 2]).into_owned();
                    let (name, value) = l.split_once(':').unwrap_or((&l, ""));
                    req.trailers
                        .push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let data = self
                .exact(size + 2)
                .await
                .ok_or_else(|| format!("connection ended inside a {size}-byte chunk"))?;
            if &data[size..] != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
            req.body.extend_from_slice(&data[..size]);
        }
    }

    /// Answers `BIG_LEN` bytes as fast as the connection takes them.
    async fn big(&mut self) {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG_LEN}\r\n\r\n");
        if self.stream.write_all(head.as_bytes()).await.is_err() {
            self.big_ended.store(true, Ordering::SeqCst);
            return;
        }
        let chunk = vec![b'z'; 64 * 1024];
        let mut left = BIG_LEN;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            match self.stream.write(&chunk[..n]).await {
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

fn parse_head(head: &[u8]) -> Recorded {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut req = Recorded::default();
    let mut start = lines.next().unwrap_or("").splitn(3, ' ');
    req.method = start.next().unwrap_or("").to_string();
    req.target = start.next().unwrap_or("").to_string();
    req.version = start.next().unwrap_or("").to_string();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        req.headers
            .push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    req
}

fn framing(req: &Recorded) -> Body {
    if let Some(why) = req.ambiguity() {
        return Body::Refuse(format!("ambiguous: {why}"));
    }
    if req.one("transfer-encoding").is_some() {
        return Body::Chunked;
    }
    match req.one("content-length") {
        Some(v) => match v.parse() {
            Ok(n) => Body::Length(n),
            Err(_) => Body::Refuse(format!("Content-Length {v:?}")),
        },
        None => Body::None,
    }
}

/// `s` cut to `n` characters, saying how long it was if cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n).collect();
        format!("{head}...({} chars)", s.chars().count())
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Client side.

/// How a raw exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// We stopped reading once the responses we wanted were in; the connection may be open.
    Enough,
    /// The peer closed (FIN) before the deadline.
    Eof,
    /// The peer reset the connection before the deadline.
    Reset,
    /// Neither: the deadline passed with the connection still open.
    Deadline,
}

impl End {
    pub fn closed(self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

/// One response parsed from the raw bytes a client received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a raw exchange got back.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub responses: Vec<RawResponse>,
    pub end: End,
    /// From the first byte written to the end of reading.
    pub elapsed: Duration,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    /// A one-line description for failure messages.
    pub fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        format!(
            "statuses {:?}, end {:?} after {:?}, {} bytes: {:?}",
            self.statuses(),
            self.end,
            self.elapsed,
            self.bytes.len(),
            clip(&text, 160)
        )
    }
}

/// How to drive one raw exchange.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Stop reading after this many complete responses (`None`: read until close).
    pub responses: Option<usize>,
    /// If not empty: stop reading at the first response whose status is not in it (the
    /// exchange has already gone wrong; waiting for a close would only add time).
    pub unexpected_stops: Vec<u16>,
    /// Shut our write side down after sending.
    pub half_close: bool,
    /// Give up reading after this long.
    pub deadline: Duration,
}

/// Connects, writes `bytes` (concurrently with reading, so a peer that answers and closes
/// early is seen), and reads until `drive` says stop, the peer closes, or the deadline passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], drive: &Drive) -> Exchange {
    let stream = TcpStream::connect(addr).await.expect("connect frontend");
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let data = bytes.to_vec();
    let half_close = drive.half_close;
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&data).await;
        if half_close {
            let _ = wr.shutdown().await;
        }
        // Hold the write half open until the reader is done (dropping it would send a FIN).
        wr
    });
    let (bytes, end) = read_until(
        &mut rd,
        start + drive.deadline,
        drive.responses,
        &drive.unexpected_stops,
    )
    .await;
    let elapsed = start.elapsed();
    writer.abort();
    let responses = parse_responses(&bytes);
    Exchange {
        bytes,
        responses,
        end,
        elapsed,
    }
}

/// Reads until `want` complete responses are in (if set), a response with a status outside
/// `expected` (if not empty), EOF, an error, or `deadline`.
pub async fn read_until<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    deadline: Instant,
    want: Option<usize>,
    expected: &[u16],
) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let got = parse_responses(&out);
        if want.is_some_and(|n| got.len() >= n)
            || (!expected.is_empty() && got.iter().any(|r| !expected.contains(&r.status)))
        {
            return (out, End::Enough);
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => return (out, End::Deadline),
            Ok(Ok(0)) => return (out, End::Eof),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, End::Reset),
        }
    }
}

/// Every complete response at the start of `bytes` (a truncated last one is left out).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let rest = &bytes[end + 4..];
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let (body, used) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            match dechunk(rest) {
                Some(x) => x,
                None => break,
            }
        } else {
            let n: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() < n {
                break;
            }
            (rest[..n].to_vec(), n)
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        bytes = &rest[used..];
    }
    out
}

/// A whole chunked body at the start of `b`: (data, bytes used), or `None` if incomplete.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0;
    let mut data = Vec::new();
    loop {
        let eol = find(&b[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&b[pos..pos + eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos += eol + 2;
        if size == 0 {
            let end = find(&b[pos..], b"\r\n")?;
            // Trailers are not expected here; take the blank line.
            return Some((data, pos + end + 2));
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        data.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
}
