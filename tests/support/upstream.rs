//! `Upstream`: an in-process hyper HTTP/1.1 server on a loopback port that counts hits and
//! remembers the last request's head, answering with its name or with a handler the test gives.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an `Upstream` saw in its last request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An in-process HTTP/1.1 server on `127.0.0.1:0` that counts hits and remembers the last request.
/// Default answer: `200` with the upstream's name as the body.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Seen>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Upstream {
    /// Answer every request `200` with body = `name`.
    pub async fn start(name: &str) -> Upstream {
        let body = Bytes::from(name.to_string());
        Self::start_with(name, move |_req| {
            let body = body.clone();
            async move { Response::new(Full::new(body)) }
        })
        .await
    }

    /// Like `start`, but `handler` builds each response (slow answers, status codes, ...). Hits and
    /// the last request's head are recorded before `handler` runs.
    pub async fn start_with<F, Fut>(name: &str, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// Like `start_with` on a chosen address (e.g. to bring a stopped upstream back on its port).
    pub async fn start_at<F, Fut>(name: &str, addr: SocketAddr, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream {name}: bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();

        let (h, l, c, t) = (hits.clone(), last.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (h, l, c, handler) = (h.clone(), l.clone(), c.clone(), handler.clone());
                t.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = Some(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    // On stop the connection is dropped mid-flight: the socket closes, as if the
                    // process had died.
                    tokio::select! {
                        _ = conn => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
            // `listener` drops here: new connections are refused.
        });
        tracker.close();
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            last,
            cancel,
            tracker,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn reset_hits(&self) {
        self.hits.store(0, Ordering::SeqCst);
    }

    /// Method, URI and headers of the last request (to check X-Forwarded-For and friends).
    pub fn last_request(&self) -> Option<Seen> {
        self.last.lock().unwrap().clone()
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.last_request().map(|s| s.headers)
    }

    /// Stop accepting, close every open connection, and return once the listener is closed
    /// (connecting to `addr()` is then refused).
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
