//! The raw client side: exact bytes out, responses read by the framing rules a client uses
//! (RFC 9112 section 6.3), every wait bounded. `Client` reads one response at a time on a
//! connection it keeps (keep-alive, pipelining, interim answers, closes); `exchange` writes
//! bytes and reads until enough responses, a close or a deadline (hostile-input tables).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Head, More, Wire, clip, find, shown};

/// Bound on any single wait of a `Client` for bytes from its peer (or for its close).
pub const STEP: Duration = Duration::from_secs(5);
/// How long a `Client` watches for "nothing more comes".
pub const QUIET: Duration = Duration::from_millis(300);

/// A bodiless `GET path` on HTTP/1.1, `Host: x`.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// How a response's body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule: an answer to HEAD, a 1xx, 204 or 304 (or, read by `parse_responses`,
    /// neither a length nor chunked).
    Bodiless,
    Length,
    Chunked,
    /// Neither length nor chunked: the body runs to the close.
    UntilClose,
}

/// One response as a client read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// `HTTP/1.1`, `HTTP/1.0`, ...
    pub version: String,
    pub status: u16,
    /// The head as received, without the blank line (for failure messages).
    pub head: String,
    /// Names lowercased, values trimmed, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl RawResponse {
    fn from_head(head: Head) -> RawResponse {
        let [version, status, _] = head.start;
        RawResponse {
            version,
            status: status.parse().unwrap_or(0),
            head: head.text,
            headers: head.headers,
            body: Vec::new(),
            framing: Framing::Bodiless,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (case-insensitive), as in `Connection: close`.
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == name && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad content-length in {}", self.head))
        })
    }

    /// A `date` header in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub fn assert_date(&self) {
        let date = self
            .header("date")
            .unwrap_or_else(|| panic!("no date header in {:?}", self.head));
        let b = date.as_bytes();
        assert!(
            b.len() == 29 && &b[3..5] == b", " && date.ends_with(" GMT"),
            "date {date:?} is not an IMF-fixdate"
        );
    }

    /// Status 200, the `x-path` the recording upstream names the request by, the body, a date.
    pub fn assert_ok(&self, path: &str, body: &[u8]) {
        assert_eq!(self.status, 200, "{}", self.head);
        assert_eq!(self.header("x-path"), Some(path), "{}", self.head);
        assert_eq!(self.body, body, "body of {path}: {}", self.head);
        self.assert_date();
    }
}

// ---------------------------------------------------------------------------------------------
// One response at a time.

/// One client connection: exact bytes out, responses read one by one, every wait bounded by
/// `STEP` (a longer silence panics).
pub struct Client {
    wire: Wire,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect frontend");
        Client {
            wire: Wire::new(stream, Some(STEP)),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        assert!(
            self.wire.send(bytes.as_ref()).await,
            "write to the frontend"
        );
    }

    /// Sends our FIN (the write side's shutdown); reading goes on.
    pub async fn shutdown_write(&mut self) {
        self.wire
            .stream()
            .shutdown()
            .await
            .expect("shutdown(Write)");
    }

    /// Reads more; false once the peer has closed. Panics after `STEP` of silence.
    async fn fill(&mut self) -> bool {
        match self.wire.read_more(None).await {
            More::Bytes => true,
            More::Closed => false,
            More::Silent => panic!(
                "nothing from the proxy for {STEP:?}; unread: {}",
                shown(&self.wire.buf)
            ),
        }
    }

    /// The next response; `head_request`: it answers a HEAD (so it has no body).
    pub async fn response(&mut self, head_request: bool) -> RawResponse {
        let end = loop {
            if let Some(i) = find(&self.wire.buf, b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "closed before a whole response head: {}",
                shown(&self.wire.buf)
            );
        };
        let head: Vec<u8> = self.wire.buf.drain(..end + 4).collect();
        let mut resp = RawResponse::from_head(Head::parse(&head[..end]));
        assert!(resp.status != 0, "bad status line in {:?}", resp.head);
        let status = resp.status;
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return resp;
        }
        if resp.lists("transfer-encoding", "chunked") {
            resp.framing = Framing::Chunked;
            let mut trailers = Vec::new();
            if let Err(e) = self.wire.chunked(&mut resp.body, &mut trailers).await {
                panic!("{e}: {}", resp.head);
            }
        } else if let Some(n) = resp.content_length() {
            resp.framing = Framing::Length;
            while self.wire.buf.len() < n {
                assert!(
                    self.fill().await,
                    "closed after {} of {n} body bytes: {}",
                    self.wire.buf.len(),
                    resp.head
                );
            }
            resp.body = self.wire.buf.drain(..n).collect();
        } else {
            resp.framing = Framing::UntilClose;
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.wire.buf);
        }
        resp
    }

    /// Sends `GET path` and reads its answer.
    pub async fn get(&mut self, path: &str) -> RawResponse {
        self.send(get(path)).await;
        self.response(false).await
    }

    /// Waits up to `within` for the peer to close, with no further byte; how long it took,
    /// or what came instead.
    pub async fn closed_within(&mut self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        if !self.wire.buf.is_empty() {
            return Err(format!("unexpected bytes: {}", shown(&self.wire.buf)));
        }
        match self.wire.read_more(Some(within)).await {
            More::Closed => Ok(start.elapsed()),
            More::Silent => Err(format!("still open after {within:?}")),
            More::Bytes => Err(format!("unexpected bytes: {}", shown(&self.wire.buf))),
        }
    }

    /// Panics unless the peer closes within `STEP` with nothing more sent.
    pub async fn assert_closed(&mut self) {
        if let Err(e) = self.closed_within(STEP).await {
            panic!("wanted a close: {e}");
        }
    }

    /// Panics if anything (a byte or a close) comes within `QUIET`.
    pub async fn assert_quiet(&mut self) {
        assert!(
            self.wire.buf.is_empty(),
            "unexpected bytes: {}",
            shown(&self.wire.buf)
        );
        match self.wire.read_more(Some(QUIET)).await {
            More::Silent => {}
            More::Closed => panic!("wanted silence, the proxy closed"),
            More::Bytes => panic!("wanted silence, got {}", shown(&self.wire.buf)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write, then read until a deadline.

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

impl Drive {
    /// Read `n` responses, whatever their statuses, for up to `deadline`.
    pub fn responses(n: usize, deadline: Duration) -> Drive {
        Drive {
            responses: Some(n),
            unexpected_stops: Vec::new(),
            half_close: false,
            deadline,
        }
    }
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

/// Every complete response at the start of `bytes` (a truncated last one is left out). A
/// response with neither a length nor chunked coding is taken to have no body.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let mut resp = RawResponse::from_head(Head::parse(&bytes[..end]));
        let rest = &bytes[end + 4..];
        let used = if resp.lists("transfer-encoding", "chunked") {
            match dechunk(rest) {
                Some((body, used)) => {
                    resp.body = body;
                    resp.framing = Framing::Chunked;
                    used
                }
                None => break,
            }
        } else {
            let n: usize = resp
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() < n {
                break;
            }
            if resp.header("content-length").is_some() {
                resp.framing = Framing::Length;
            }
            resp.body = rest[..n].to_vec();
            n
        };
        out.push(resp);
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
