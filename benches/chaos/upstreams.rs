//! The upstreams: in-process ones by name, and `RawUpstream`, a raw TCP HTTP/1.1 server whose
//! answers a scenario switches to a fault (hang, reset before the head or mid-body, garbage).

use super::*;

pub(crate) async fn named_upstream(name: &'static str) -> Upstream {
    Upstream::start(name).await
}

/// A raw TCP HTTP/1.1 server (keep-alive, bodiless requests) whose answers follow `mode`:
/// normal, never, RST before the head, RST mid-body, or non-HTTP bytes.
pub(crate) struct RawUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl RawUpstream {
    pub(crate) async fn start_at(
        name: &'static str,
        addr: SocketAddr,
        mode: Arc<AtomicU8>,
        hits: Arc<AtomicUsize>,
    ) -> anyhow::Result<RawUpstream> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (c, mode, hits) = (c.clone(), mode.clone(), hits.clone());
                t.spawn(async move {
                    tokio::select! {
                        _ = raw_conn(stream, name, &mode, &hits, &c) => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
        });
        tracker.close();
        Ok(RawUpstream {
            addr,
            cancel,
            tracker,
        })
    }

    /// Closes the listener and every connection (as if the process died).
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(crate) async fn raw_conn(
    mut s: TcpStream,
    name: &str,
    mode: &AtomicU8,
    hits: &AtomicUsize,
    cancel: &CancellationToken,
) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..end);
        hits.fetch_add(1, Ordering::SeqCst);
        match Mode::from_u8(mode.load(Ordering::SeqCst)) {
            Mode::Normal => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
                    name.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Mode::Hang => {
                cancel.cancelled().await;
                return;
            }
            Mode::ResetHead => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                let _ = s.set_zero_linger();
                return; // dropped with SO_LINGER 0: RST
            }
            Mode::ResetBody => {
                let mut resp =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4096\r\n\r\n"
                        .to_vec();
                resp.extend_from_slice(&[b'x'; 512]);
                let _ = s.write_all(&resp).await;
                // Let the head reach the proxy (it forwards it), then reset mid-body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s.set_zero_linger();
                return;
            }
            Mode::Garbage => {
                let _ = s
                    .write_all(
                        b"SSH-2.0-OpenSSH_9.2p1\r\n\x00\x01\x02 not http at all \xff\xfe\r\n\r\n",
                    )
                    .await;
                let _ = s.shutdown().await;
                return;
            }
        }
    }
}
