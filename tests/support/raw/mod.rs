//! HTTP/1 as bytes on a socket, for the tests that must send or see exact bytes (hostile input,
//! framing, connection reuse):
//!
//! - `Wire` (here): a socket and the bytes read from it and not used yet; reads up to a
//!   pattern, a count, a head, a chunked body. Every raw peer below reads with it.
//! - `recorder.rs`: `Recorder`, an upstream that keeps every byte it receives and answers
//!   `200 ok` to each request it can delimit.
//! - `script.rs`: `Script`, an upstream whose every connection runs the test's own behaviour
//!   (`Peer`), counting accepts.
//! - `client.rs`: a raw client: `Client` reads one response at a time; `exchange` writes bytes
//!   and reads until a deadline.
//!
//! Owns sockets and byte parsing; the expectations live in the tests that use them
//! (`raw_http.rs`, `client_conns.rs`, `upstream_conns.rs`, `traffic_safety.rs`, `h2_abuse.rs`).

mod client;
mod recorder;
mod script;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use client::*;
pub use recorder::*;
pub use script::*;

/// How a read for more bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum More {
    Bytes,
    /// The peer closed (FIN or reset), now or before.
    Closed,
    /// Nothing came within the wait.
    Silent,
}

/// Sees every byte a `Wire` reads.
type Tap = Box<dyn FnMut(&[u8]) + Send>;

/// A socket and the bytes read from it and not used yet.
pub struct Wire {
    stream: TcpStream,
    /// Read and not yet taken.
    pub buf: Vec<u8>,
    /// How long one read may wait (`None`: as long as it takes).
    patience: Option<Duration>,
    /// Sees every byte read (the recorder keeps them all).
    tap: Option<Tap>,
    closed: bool,
}

impl Wire {
    pub fn new(stream: TcpStream, patience: Option<Duration>) -> Wire {
        let _ = stream.set_nodelay(true);
        Wire {
            stream,
            buf: Vec::new(),
            patience,
            tap: None,
            closed: false,
        }
    }

    /// `f` sees every byte read from now on.
    pub fn tap(mut self, f: impl FnMut(&[u8]) + Send + 'static) -> Wire {
        self.tap = Some(Box::new(f));
        self
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The peer has closed (a read saw EOF or an error).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// One read into `buf`, waiting up to `wait` (or the patience given at `new`).
    pub async fn read_more(&mut self, wait: Option<Duration>) -> More {
        if self.closed {
            return More::Closed;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let read = self.stream.read(&mut chunk);
        let got = match wait.or(self.patience) {
            Some(d) => match tokio::time::timeout(d, read).await {
                Err(_) => return More::Silent,
                Ok(r) => r,
            },
            None => read.await,
        };
        match got {
            Ok(n) if n > 0 => {
                if let Some(tap) = self.tap.as_mut() {
                    tap(&chunk[..n]);
                }
                self.buf.extend_from_slice(&chunk[..n]);
                More::Bytes
            }
            _ => {
                self.closed = true;
                More::Closed
            }
        }
    }

    /// Reads more into `buf`; false at EOF, on an error, or after the patience.
    pub async fn fill(&mut self) -> bool {
        self.read_more(None).await == More::Bytes
    }

    /// Whether bytes are waiting or come within `d` (false: silence, or the peer closed).
    pub async fn more_within(&mut self, d: Duration) -> bool {
        !self.buf.is_empty() || self.read_more(Some(d)).await == More::Bytes
    }

    /// The bytes up to and including the first `pat`, taken off `buf`.
    pub async fn until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
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

    /// Exactly `n` bytes, taken off `buf`.
    pub async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        let rest = self.buf.split_off(n);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    /// The next head, up to its blank line; `None` if the connection ends (or goes quiet) first.
    pub async fn head(&mut self) -> Option<Head> {
        let raw = self.until(b"\r\n\r\n").await?;
        Some(Head::parse(&raw[..raw.len() - 4]))
    }

    /// A chunked body (chunk extensions allowed) into `body`, its trailer fields into
    /// `trailers`; `Err` names what was wrong or missing.
    pub async fn chunked(
        &mut self,
        body: &mut Vec<u8>,
        trailers: &mut Vec<(String, String)>,
    ) -> Result<(), String> {
        loop {
            let line = self
                .until(b"\r\n")
                .await
                .ok_or("connection ended before a chunk-size line")?;
            let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk-size line {line:?}"))?;
            if size == 0 {
                // The trailer section, up to its blank line.
                loop {
                    let l = self
                        .until(b"\r\n")
                        .await
                        .ok_or("connection ended inside the trailer section")?;
                    if l == b"\r\n" {
                        return Ok(());
                    }
                    let l = String::from_utf8_lossy(&l[..l.len() - 2]).into_owned();
                    trailers.push(field(&l));
                }
            }
            let data = self
                .exact(size + 2)
                .await
                .ok_or_else(|| format!("connection ended inside a {size}-byte chunk"))?;
            if &data[size..] != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
            body.extend_from_slice(&data[..size]);
        }
    }

    /// Writes `bytes`; false if the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }
}

/// A request or response head: the start line's words and the fields.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// As received, without the blank line (for failure messages).
    pub text: String,
    /// The start line's three parts (`GET`, `/`, `HTTP/1.1`; or `HTTP/1.1`, `200`, `OK`),
    /// empty where missing.
    pub start: [String; 3],
    /// Names lowercased, values trimmed, in wire order (duplicates kept).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// `bytes`: the head without its blank line.
    pub fn parse(bytes: &[u8]) -> Head {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let mut lines = text.split("\r\n");
        let mut words = lines.next().unwrap_or_default().splitn(3, ' ');
        let start = [(); 3].map(|_| words.next().unwrap_or_default().to_string());
        let headers = lines.filter(|l| !l.is_empty()).map(field).collect();
        Head {
            text,
            start,
            headers,
        }
    }
}

/// `name: value` as (lowercase name, trimmed value).
fn field(line: &str) -> (String, String) {
    let (n, v) = line.split_once(':').unwrap_or((line, ""));
    (n.trim().to_ascii_lowercase(), v.trim().to_string())
}

/// Every value of field `name` (lowercase).
pub fn all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
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

/// Bytes as text for failure messages, clipped.
pub fn shown(b: &[u8]) -> String {
    format!("{:?}", clip(&String::from_utf8_lossy(b), 300))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
