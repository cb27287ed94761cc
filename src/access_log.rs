//! The access log: one structured line per HTTP request, or per connection in tcp mode, in
//! JSON or logfmt (`[log] access`), written to stdout or `[log] access_file`.
//!
//! Owns the record a request or connection fills in, the two line formats, and the writer.
//! The data plane never blocks on it: a record goes into a bounded queue with `try_send`, and a
//! dedicated OS thread formats and writes the lines (so a slow disk or a full stdout pipe stalls
//! only that thread). When the queue is full the record is dropped and counted in
//! `switchyard_access_log_dropped_total`. Formatting happens on the writer thread too, so the
//! per-request cost with the log on is the record's allocation, reference-counted copies of the
//! request's fields (a made-up request id's costs one allocation more), and a queue push.
//!
//! The counters of the admin API (`stats`) are not kept here: they count whether or not the
//! log is on.
//!
//! The termination reasons follow HAProxy's termination state, in words (see [`Termination`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use tracing::{error, warn};

use crate::config::{AccessFormat, Backend, LogConfig};
use crate::snapshot::Server;

/// Records queued for the writer thread; beyond this the data plane drops lines rather than wait.
const QUEUE: usize = 16 * 1024;

/// How a request or connection ended, like HAProxy's termination state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Termination {
    /// Completed normally.
    #[default]
    Ok,
    /// The client went away before the response (or relay) was complete.
    ClientAbort,
    /// The server failed in the middle of the response body.
    ServerAbort,
    /// The server accepted the request but failed before answering (502).
    ServerError,
    /// No response head within `response_timeout` (504).
    ServerTimeout,
    /// No server of the backend could be reached (502; tcp: connection closed).
    ConnectError,
    /// The backend had no server to offer (503; tcp: connection closed).
    NoServer,
    /// Every eligible server stayed at `max_conns_per_server` for `queue_timeout` (503; tcp:
    /// connection closed). HAProxy logs it as `sQ`.
    QueueTimeout,
    /// No route took the request and the frontend has no fallback backend (404); tcp: no SNI
    /// route took the connection and there is no fallback (closed).
    NoRoute,
    /// The request was refused as malformed (400, 414, 501), or its body broke off.
    BadRequest,
    /// The request body did not arrive within `response_timeout` (408).
    ClientTimeout,
    /// The server switched protocols (101); the line is written when the tunnel starts.
    Upgrade,
    /// tcp: no byte either way for `idle_timeout`.
    IdleTimeout,
    /// The server was removed and its drain ran past `drain_timeout`.
    DrainTimeout,
    /// tcp: the relay ended with an I/O error.
    IoError,
    /// The request body was over the route's `max_body_size` (413, or a close if the answer
    /// had started).
    BodyTooLarge,
    /// The client's address is refused by the route's `allow`/`deny` (403).
    Denied,
    /// The route's `rate_limit` refused the request (429).
    RateLimited,
}

impl Termination {
    /// The backend failure this ending is counted as in its stats (`None`: not one).
    pub fn failure(self) -> Option<crate::stats::Failure> {
        use crate::stats::Failure;
        match self {
            Termination::ConnectError => Some(Failure::ConnectError),
            Termination::ServerError => Some(Failure::ServerError),
            Termination::ServerTimeout => Some(Failure::ServerTimeout),
            Termination::NoServer => Some(Failure::NoServer),
            Termination::QueueTimeout => Some(Failure::QueueTimeout),
            Termination::ServerAbort => Some(Failure::ServerAbort),
            Termination::ClientAbort => Some(Failure::ClientAbort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Termination::Ok => "ok",
            Termination::ClientAbort => "client_abort",
            Termination::ServerAbort => "server_abort",
            Termination::ServerError => "server_error",
            Termination::ServerTimeout => "server_timeout",
            Termination::ConnectError => "connect_error",
            Termination::NoServer => "no_server",
            Termination::QueueTimeout => "queue_timeout",
            Termination::NoRoute => "no_route",
            Termination::BadRequest => "bad_request",
            Termination::ClientTimeout => "client_timeout",
            Termination::Upgrade => "upgrade",
            Termination::IdleTimeout => "idle_timeout",
            Termination::DrainTimeout => "drain_timeout",
            Termination::IoError => "io_error",
            Termination::BodyTooLarge => "body_too_large",
            Termination::Denied => "denied",
            Termination::RateLimited => "rate_limited",
        }
    }
}

/// The request line of an HTTP record, and the request's fields the log shows.
#[derive(Debug, Default)]
pub struct HttpRequest {
    /// `None` (with `uri` and `version`) for a request head refused before it could be read as
    /// a request.
    pub method: Option<Method>,
    pub uri: Option<Uri>,
    pub version: Option<Version>,
    /// The Host field, or HTTP/2's `:authority`.
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    /// The request's `X-Request-Id`, its own or the one we gave it.
    pub request_id: Option<HeaderValue>,
    pub status: u16,
}

/// The TLS session of a client connection to a frontend with `[frontend.tls]` (or of a tcp
/// frontend terminating TLS).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The cipher suite, in its IANA name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<Arc<str>>,
}

impl TlsInfo {
    /// The facts of an established server-side session.
    pub fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            Some(_) => "other",
            None => "-",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("-");
        TlsInfo {
            version,
            cipher,
            sni: conn.server_name().map(Arc::from),
        }
    }
}

/// One line's worth of facts. Built by the data plane, formatted by the writer thread.
#[derive(Debug)]
pub struct Record {
    /// When the request (or connection) started.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub frontend: Arc<str>,
    pub backend: Option<Arc<Backend>>,
    pub server: Option<Arc<Server>>,
    /// `None` in tcp mode.
    pub http: Option<HttpRequest>,
    /// Bytes from the client (tcp mode; `None` in http mode).
    pub bytes_in: Option<u64>,
    /// Bytes to the client: the response body in http mode, everything relayed in tcp mode.
    pub bytes_out: u64,
    /// Time spent getting a connection to the server (0 for a pooled one).
    pub connect: Option<Duration>,
    /// From the connection being ready to the response head (http mode).
    pub response: Option<Duration>,
    pub total: Duration,
    /// Further servers tried after the first.
    pub retries: u32,
    pub termination: Termination,
    /// The client connection's TLS session (`None`: plain TCP).
    pub tls: Option<TlsInfo>,
    /// Client connections open on the frontend when this one's request (tcp: the connection)
    /// began, itself included.
    pub connections: Option<u64>,
}

/// A handle to one writer; cheap to clone (one per frontend, shared by its connections).
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Box<Record>>,
    dropped: metrics::Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Starts the writer for `config`; `None` when the access log is off. The writer thread
    /// ends once every handle is gone, after writing what was queued.
    pub fn start(config: &LogConfig) -> io::Result<Option<AccessLog>> {
        let format = match config.access {
            AccessFormat::Off => return Ok(None),
            f => f,
        };
        let out: Box<dyn Write + Send> = match &config.access_file {
            Some(path) => Box::new(open(path)?),
            None => Box::new(io::stdout()),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let target = config
            .access_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("stdout"));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out, format, &target))?;
        Ok(Some(AccessLog {
            tx,
            dropped: metrics::counter!(crate::metrics::ACCESS_LOG_DROPPED),
        }))
    }

    /// Queues a record, or drops and counts it when the writer is behind. Never blocks.
    pub fn log(&self, record: Box<Record>) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.increment(1)
            }
        }
    }
}

fn open(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

/// The writer thread: writes every queued record, flushing whenever the queue runs empty.
fn write_loop(
    rx: Receiver<Box<Record>>,
    out: Box<dyn Write + Send>,
    format: AccessFormat,
    target: &Path,
) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            line.clear();
            format_record(&record, format, &mut line);
            if let Err(e) = out.write_all(&line) {
                report(&mut failing, target, &e);
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) => failing = false,
            Err(e) => report(&mut failing, target, &e),
        }
    }
}

/// One error line per run of write failures (the disk filling up), not one per record.
fn report(failing: &mut bool, target: &Path, e: &io::Error) {
    if !*failing {
        error!(target = %target.display(), error = %e, "cannot write the access log");
        *failing = true;
    } else {
        warn!(target = %target.display(), error = %e, "access log write failed");
    }
}

/// One field's value.
enum Value<'a> {
    Str(&'a str),
    Int(u64),
    /// Milliseconds, written with microsecond precision.
    Millis(Duration),
    Null,
}

/// The HTTP version as HAProxy's `%HV` writes it.
fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

/// The fields of a line, in order (`null` ones are left out, but for `server` in JSON).
fn fields<'a>(r: &'a Record, time: &'a str, client: &'a str) -> [(&'static str, Value<'a>); 23] {
    let path = r
        .http
        .as_ref()
        .and_then(|h| h.uri.as_ref())
        .map(|u| u.path_and_query().map_or("/", |p| p.as_str()));
    let opt_str = |v: Option<&'a str>| v.map_or(Value::Null, Value::Str);
    // A header value that is not visible ASCII is written as `null` rather than mangled.
    let header = |f: fn(&'a HttpRequest) -> Option<&'a HeaderValue>| {
        opt_str(r.http.as_ref().and_then(f).and_then(|v| v.to_str().ok()))
    };
    let tls = r.tls.as_ref();
    let opt_ms = |v: Option<Duration>| v.map_or(Value::Null, Value::Millis);
    [
        ("time", Value::Str(time)),
        ("client", Value::Str(client)),
        ("frontend", Value::Str(&r.frontend)),
        (
            "backend",
            opt_str(r.backend.as_ref().map(|b| b.name.as_str())),
        ),
        (
            "server",
            opt_str(r.server.as_ref().map(|s| s.addr.as_str())),
        ),
        (
            "method",
            opt_str(
                r.http
                    .as_ref()
                    .and_then(|h| h.method.as_ref())
                    .map(Method::as_str),
            ),
        ),
        ("path", opt_str(path)),
        (
            "http_version",
            opt_str(r.http.as_ref().and_then(|h| h.version).map(version_str)),
        ),
        ("host", header(|h| h.host.as_ref())),
        ("user_agent", header(|h| h.user_agent.as_ref())),
        (
            "status",
            // 0: no response was sent (the client left first).
            r.http
                .as_ref()
                .filter(|h| h.status != 0)
                .map_or(Value::Null, |h| Value::Int(h.status.into())),
        ),
        ("bytes_in", r.bytes_in.map_or(Value::Null, Value::Int)),
        ("bytes_out", Value::Int(r.bytes_out)),
        ("connect_ms", opt_ms(r.connect)),
        ("response_ms", opt_ms(r.response)),
        ("total_ms", Value::Millis(r.total)),
        ("retries", Value::Int(r.retries.into())),
        ("termination", Value::Str(r.termination.as_str())),
        ("request_id", header(|h| h.request_id.as_ref())),
        ("tls_version", opt_str(tls.map(|t| t.version))),
        ("tls_cipher", opt_str(tls.map(|t| t.cipher))),
        ("tls_sni", opt_str(tls.and_then(|t| t.sni.as_deref()))),
        (
            "frontend_connections",
            r.connections.map_or(Value::Null, Value::Int),
        ),
    ]
}

/// Appends one line (with its newline) in `format` to `out`.
pub fn format_record(r: &Record, format: AccessFormat, out: &mut Vec<u8>) {
    let time = humantime::format_rfc3339_millis(r.time).to_string();
    let client = r.client.to_string();
    let f = fields(r, &time, &client);
    match format {
        AccessFormat::Json => {
            out.push(b'{');
            let mut first = true;
            for (k, v) in &f {
                if matches!(v, Value::Null) && *k != "server" {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = write!(out, "\"{k}\":");
                match v {
                    // serde_json escapes quotes, backslashes and control characters.
                    Value::Str(s) => {
                        let _ = serde_json::to_writer(&mut *out, s);
                    }
                    Value::Int(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Value::Millis(d) => {
                        let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
                    }
                    Value::Null => out.extend_from_slice(b"null"),
                }
            }
            out.extend_from_slice(b"}\n");
        }
        // NOTE: logfmt by hand: the format is a dozen lines (key=value, quoted when needed), and
        // the crates for it are small, little-used and would still need the same field walk.
        AccessFormat::Logfmt | AccessFormat::Off => {
            let mut first = true;
            for (k, v) in &f {
                if matches!(v, Value::Null) {
                    continue;
                }
                if !first {
                    out.push(b' ');
                }
                first = false;
                let _ = write!(out, "{k}=");
                match v {
                    Value::Str(s) => logfmt_str(s, out),
                    Value::Int(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Value::Millis(d) => {
                        let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
                    }
                    Value::Null => {}
                }
            }
            out.push(b'\n');
        }
    }
}

/// A logfmt value: bare when it has no space, quote, `=` or control character, else quoted
/// with `"` and `\` escaped and control characters written as escapes.
fn logfmt_str(s: &str, out: &mut Vec<u8>) {
    let bare = !s.is_empty()
        && !s
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if bare {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "{}", c.escape_default());
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A record being filled in while a request (or connection) is served. It is written when
/// it is dropped, with the termination last set; one dropped before anyone set it was
/// abandoned by the client (hyper drops a request's future when its client goes away), so
/// the termination starts as `client_abort`.
pub struct Pending {
    log: AccessLog,
    record: Option<Box<Record>>,
    started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub fn new(log: &AccessLog, client: SocketAddr, frontend: Arc<str>) -> Pending {
        Pending {
            log: log.clone(),
            record: Some(Box::new(Record {
                time: SystemTime::now(),
                client,
                frontend,
                backend: None,
                server: None,
                http: None,
                bytes_in: None,
                bytes_out: 0,
                connect: None,
                response: None,
                total: Duration::ZERO,
                retries: 0,
                termination: Termination::ClientAbort,
                tls: None,
                connections: None,
            })),
            started: Instant::now(),
        }
    }

    /// The record to fill in.
    pub fn record(&mut self) -> &mut Record {
        // Taken only by `discard` and `drop`, which both consume the `Pending`.
        self.record
            .as_mut()
            .expect("the record is present until drop")
    }

    /// Drops the record unwritten (a connection refused before it became a request, which
    /// the metrics count).
    pub fn discard(mut self) {
        self.record = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.total = self.started.elapsed();
            self.log.log(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "10.0.0.1:5555".parse().unwrap(),
            frontend: Arc::from("web"),
            backend: None,
            server: None,
            http: Some(HttpRequest {
                method: Some(Method::GET),
                uri: Some(Uri::from_static("/a?q=x=y")),
                status: 503,
                ..Default::default()
            }),
            bytes_in: None,
            bytes_out: 42,
            connect: None,
            response: None,
            total: Duration::from_micros(1500),
            retries: 0,
            termination: Termination::NoServer,
            tls: None,
            connections: None,
        }
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let mut out = Vec::new();
        format_record(&record(), AccessFormat::Json, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "10.0.0.1:5555");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?q=x=y");
        assert_eq!(v["status"], 503);
        assert_eq!(v["server"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 42);
        assert_eq!(v["total_ms"], 1.5);
        assert_eq!(v["termination"], "no_server");
        assert!(v.get("connect_ms").is_none());
    }

    #[test]
    fn logfmt_quotes_what_needs_it() {
        let mut out = Vec::new();
        format_record(&record(), AccessFormat::Logfmt, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "time=2023-11-14T22:13:20.123Z client=10.0.0.1:5555 frontend=web method=GET \
             path=\"/a?q=x=y\" status=503 bytes_out=42 total_ms=1.500 retries=0 \
             termination=no_server\n"
        );
    }

    /// Every field filled in: JSON and logfmt carry the same names, in the same order.
    #[test]
    fn both_formats_carry_the_same_fields() {
        let mut r = record();
        r.http = Some(HttpRequest {
            method: Some(Method::POST),
            uri: Some(Uri::from_static("/up")),
            version: Some(Version::HTTP_2),
            host: Some(HeaderValue::from_static("shop.example")),
            user_agent: Some(HeaderValue::from_static("curl/8.5.0")),
            request_id: Some(HeaderValue::from_static("abc-1")),
            status: 200,
        });
        r.bytes_in = Some(11);
        r.tls = Some(TlsInfo {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            sni: Some(Arc::from("shop.example")),
        });
        r.connections = Some(3);
        let mut out = Vec::new();
        format_record(&r, AccessFormat::Json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["http_version"], "HTTP/2.0");
        assert_eq!(v["host"], "shop.example");
        assert_eq!(v["user_agent"], "curl/8.5.0");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["bytes_in"], 11);
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["tls_cipher"], "TLS13_AES_128_GCM_SHA256");
        assert_eq!(v["tls_sni"], "shop.example");
        assert_eq!(v["frontend_connections"], 3);
        let json_keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        let mut out = Vec::new();
        format_record(&r, AccessFormat::Logfmt, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(" user_agent=curl/8.5.0 "), "{line}");
        let logfmt_keys: Vec<&str> = line
            .split(' ')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        // `server` is the one `null` JSON keeps; logfmt leaves it out.
        let json_keys: Vec<&str> = json_keys
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "server")
            .collect();
        let mut sorted = logfmt_keys.clone();
        sorted.sort();
        let mut want = json_keys.clone();
        want.sort();
        assert_eq!(sorted, want, "{line}");
        assert!(
            logfmt_keys
                .iter()
                .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }

    #[test]
    fn logfmt_escapes_quotes_and_controls() {
        let mut out = Vec::new();
        logfmt_str("a \"b\"\\\n", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#""a \"b\"\\\n""#);
        let mut out = Vec::new();
        logfmt_str("plain", &mut out);
        assert_eq!(out, b"plain");
    }

    #[test]
    fn a_full_queue_drops_and_never_blocks() {
        let (tx, rx) = sync_channel(1);
        let log = AccessLog {
            tx,
            dropped: metrics::Counter::noop(),
        };
        log.log(Box::new(record()));
        // The queue holds one; the second is dropped at once instead of waiting.
        log.log(Box::new(record()));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
