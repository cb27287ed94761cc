//! The HTTP side's connections to servers: `Dial` (where and how, owned so that a shared
//! HTTP/2 connect can outlive the request that started it), a connection for our own
//! HTTP/1.1 client, and hyper's HTTP/1.1 (upgrades) and HTTP/2 connections, each on
//! `upstream::connect` and cut by the server's drain timeout.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::either::Either;
use tracing::debug;

use crate::config::{Backend, ProxyVersion};
use crate::http::h1::client as h1_client;
use crate::proxy_protocol;
use crate::signal::Signal;
use crate::snapshot::Server;

use super::*;
use crate::upstream::{Io, Killable, UpIo, connect};

/// Where and how to open one upstream connection. It owns its inputs, so a shared HTTP/2
/// connect can outlive the request that started it.
pub(crate) struct Dial {
    addr: String,
    backend: Arc<Backend>,
    kill: Signal,
    /// The PROXY header to send first, if the backend sends one.
    proxy_header: Option<Bytes>,
}

impl Dial {
    pub(crate) fn new(server: &Server, backend: &Arc<Backend>, conn: &Conn) -> Dial {
        let proxy_header = match backend.send_proxy {
            ProxyVersion::None => None,
            ProxyVersion::V1 => Some(proxy_protocol::encode_v1(conn.client, conn.local).into()),
            ProxyVersion::V2 => Some(proxy_protocol::encode_v2(conn.client, conn.local).into()),
        };
        Dial {
            addr: server.addr.clone(),
            backend: Arc::clone(backend),
            kill: server.kill_token(),
            proxy_header,
        }
    }

    /// `connect`, offering `alpn` over TLS, as a socket the server's drain timeout cuts.
    async fn io(&self, alpn: &[&[u8]]) -> io::Result<UpIo> {
        let io: Box<dyn Io> = match connect(
            &self.backend,
            &self.addr,
            self.proxy_header.as_deref(),
            alpn,
        )
        .await?
        {
            Either::Left(tcp) => Box::new(tcp),
            Either::Right(tls) => Box::new(tls),
        };
        Ok(Killable::new(io, self.kill.watch()))
    }
}

/// A new HTTP/1.1 connection for our own client. It closes when the server's drain times out.
pub(crate) async fn connect_raw(dial: &Dial) -> io::Result<h1_client::Conn> {
    let io = dial.io(&[b"http/1.1"]).await?;
    Ok(h1_client::Conn::new(io))
}

/// A new HTTP/1.1 connection driven by hyper, for an upgrade. It closes when the server's
/// drain times out; after a `101` its socket belongs to the upgrade.
pub(crate) async fn connect_h1(dial: &Dial) -> io::Result<H1Sender> {
    // `io` connects within `connect_timeout`; hyper's handshake only queues its preface.
    let io = dial.io(&[b"http/1.1"]).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    // The socket is `Killable`: a drain timeout fails its reads and writes, which ends this.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

/// A new HTTP/2 connection (h2c by prior knowledge, or h2 over TLS with ALPN). The drain
/// timeout closes its socket, which ends every stream on it.
pub(crate) async fn connect_h2(dial: &Dial) -> io::Result<H2Sender> {
    // `io` connects within `connect_timeout`; hyper's handshake only queues its preface.
    let io = dial.io(&[b"h2"]).await?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    let addr = dial.addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(server = %addr, error = %e, "upstream HTTP/2 connection closed with an error");
        }
    });
    Ok(sender)
}
