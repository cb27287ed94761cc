//! The byte tunnel after a `101` (WebSocket and other upgrades) or a `2xx` to CONNECT: relayed
//! both ways until either side closes or the server's drain times out.

use std::io;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::http::h1::server as h1_server;
use crate::metrics::{self as m};
use crate::snapshot::{ActiveGuard, Server};

use super::*;

/// Relays the bytes of an upgraded connection (WebSocket, ...) both ways until either side
/// closes or the server's drain times out. It counts as in flight on the server, and as an
/// open connection of the frontend, for its whole life; it runs on the connection tracker,
/// so shutdown waits for it up to the grace period.
pub(crate) fn tunnel(
    conn: &Conn,
    server: &Arc<Server>,
    active: ActiveGuard,
    client_side: h1_server::ClientUpgrade,
    server_side: OnUpgrade,
) {
    let mut kill = server.kill_token().watch();
    let addr = server.addr.clone();
    let client = conn.client;
    let gauge = metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => conn.fe.frontend.name.clone());
    conn.tracker.spawn(async move {
        let _active = active;
        gauge.increment(1.0);
        let relay = async {
            let (mut c, s) = tokio::try_join!(
                client_side.io(),
                async { server_side.await.map_err(io::Error::other) },
            )?;
            let mut s = TokioIo::new(s);
            tokio::io::copy_bidirectional(&mut c, &mut s).await
        };
        tokio::select! {
            r = relay => match r {
                Ok((up, down)) => debug!(client = %client, server = %addr, up, down, "tunnel closed"),
                Err(e) => debug!(client = %client, server = %addr, error = %e, "tunnel ended with an error"),
            },
            _ = &mut kill => debug!(client = %client, server = %addr, "tunnel closed: drain timeout"),
        }
        gauge.decrement(1.0);
    });
}
