//! HTTP clients for tests: reqwest clients that speak plain HTTP on loopback only, open a new
//! connection per request and are bounded in time, and `get`/`try_get` on top of them.

use std::net::SocketAddr;
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A reqwest client for tests: no proxy (loopback only), bounded, and no pooled connections, so
/// every request opens a new connection (matters for L4 round-robin, which balances per connection).
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (Switchyard installs ring).
    switchyard::tls::install_provider();
    reqwest::Client::builder()
        // A ready TLS config: otherwise every build loads the system roots (~50 ms), which
        // skews every timing a test makes. These clients only speak plain HTTP.
        .use_preconfigured_tls(plain_tls())
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("build reqwest client")
}

/// An empty-roots rustls config, built once, for clients that never speak TLS.
pub fn plain_tls() -> rustls::ClientConfig {
    static CFG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        switchyard::tls::install_provider();
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
    .clone()
}

thread_local! {
    static CACHED_HTTP_CLIENT: reqwest::Client = http_client();
}

/// `http_client()`, built once per thread and then cloned (a clone is an `Arc`), for polling
/// loops that want no per-request client build at all. (A build without `plain_tls()` cost
/// 45–85 ms here, rustls loading the system roots.) It still opens a new connection per request
/// (no idle pool). Each `#[tokio::test]` runs on its own thread, so a cached client is not
/// shared between tests' runtimes.
pub fn cached_http_client() -> reqwest::Client {
    CACHED_HTTP_CLIENT.with(|c| c.clone())
}

/// Like `try_get`, with `cached_http_client()` (for polling loops).
pub async fn try_get_cached(addr: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    get_with(&cached_http_client(), addr, path).await
}

/// `GET http://{addr}{path}` on a fresh connection; `Err` on a transport error or timeout.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    get_with(&http_client(), addr, path).await
}

async fn get_with(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), reqwest::Error> {
    let resp = client.get(format!("http://{addr}{path}")).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// `GET http://{addr}{path}`: status and body; panics on a transport error or timeout.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// An HTTP/2 client by prior knowledge (h2c) on a new connection to `addr`; the connection runs
/// in a task of its own until the sender is dropped.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for h2c");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// One GET of `path` on a new connection to `addr`, over HTTP/1.1 (`Host: host`) or HTTP/2 by
/// prior knowledge (`:authority` host), with `headers`; no redirect is followed. The status,
/// the response's fields and its body, within 5 s.
pub async fn send(
    addr: SocketAddr,
    h2: bool,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let fut = async {
        let mut b = if h2 {
            http::Request::get(format!("http://{host}{path}")).version(http::Version::HTTP_2)
        } else {
            http::Request::get(path).header("host", host)
        };
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = if h2 {
            let mut s = h2c(addr).await;
            s.send_request(req).await.expect("h2 request")
        } else {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            s.send_request(req).await.expect("h1 request")
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("answered within 5 s")
}
