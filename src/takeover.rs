//! Zero-downtime binary upgrade: a new Switchyard takes the listening sockets of the running
//! one over a Unix socket (`[global] upgrade_socket`), or from systemd (`LISTEN_FDS`). This
//! module owns the takeover protocol (both ends), the upgrade socket's file, and the sockets
//! inherited either way; which listener serves what, and the drain, are `run`'s (`lib.rs`),
//! which answers the [`Request`]s made here.
//!
//! The protocol: one JSON object per line over a Unix stream socket, version [`VERSION`].
//!
//! 1. new -> old: `{"type":"hello","version":1}`
//! 2. old -> new: `{"type":"listeners","version":1,"listeners":[{"admin":true,"name":"admin",
//!    "bind":"127.0.0.1:8404"},{"admin":false,"name":"web","bind":"0.0.0.0:80"}]}`, sent in one
//!    `sendmsg` with the listening sockets attached as `SCM_RIGHTS`, in the order listed (they
//!    are duplicates: both processes now hold the same kernel sockets). Or, when the old refuses
//!    (another protocol version, another user): `{"type":"refused","message":"..."}` and a close.
//! 3. new: keeps the sockets whose frontend has the same name and bind address in its own
//!    configuration (and the admin one if `admin.listen` is the same), binds the rest, closes the
//!    ones it has no use for, starts serving, then -> `{"type":"serving"}`.
//! 4. old: stops accepting (the sockets stay open in the new process, so no client is refused:
//!    a connection not yet accepted waits in the shared backlog), stops listening on the upgrade
//!    socket and removes its file, -> `{"type":"stopped"}`, drains within `shutdown_grace`
//!    and exits 0.
//! 5. new: listens on the upgrade socket itself, for the next upgrade.
//!
//! Until the old process reads `serving` it has not stopped anything: any failure before that
//! (the new one's bind, a timeout, a closed connection) leaves it serving, and the new process
//! exits with status 2.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The protocol version this build speaks; a peer with another one is refused.
pub const VERSION: u32 = 1;

/// How long each step may take: a message to arrive, the new process to start serving.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The most descriptors one `SCM_RIGHTS` message carries (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// A protocol line longer than this is refused (a listener takes under 200 bytes).
const MAX_LINE: usize = 1024 * 1024;

/// The name of the admin listener, in the protocol and in systemd's `FileDescriptorName=`.
pub const ADMIN: &str = "admin";

/// One message of the protocol (see the module's doc).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Hello {
        version: u32,
    },
    Listeners {
        version: u32,
        listeners: Vec<Listed>,
    },
    Refused {
        message: String,
    },
    Serving,
    Stopped,
}

/// A listening socket as the protocol lists it.
#[derive(Debug, Serialize, Deserialize)]
struct Listed {
    /// The admin listener (its name is [`ADMIN`]), else a frontend's.
    admin: bool,
    name: String,
    /// The address its configuration binds.
    bind: SocketAddr,
}

/// Why a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the running process refused the takeover: {0}")]
    Refused(String),
    #[error(
        "protocol version mismatch: the running process speaks version {theirs}, this binary {VERSION}"
    )]
    Version { theirs: u32 },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the other process closed the connection")]
    Closed,
    #[error("unexpected message: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

// ---------------------------------------------------------------------------------------------
// The running (old) process's side.

/// What the upgrade socket asks of `run`.
#[derive(Debug)]
pub enum Request {
    /// Duplicates of the listening sockets in use now.
    Listeners(oneshot::Sender<io::Result<Vec<Handed>>>),
    /// Stop accepting and drain as a handoff; answered once the accept loops were told to stop.
    Stop(oneshot::Sender<()>),
}

/// A listening socket `run` hands over: a duplicate of its descriptor.
#[derive(Debug)]
pub struct Handed {
    /// The admin listener, else frontend `name`'s.
    pub admin: bool,
    pub name: String,
    /// The address its configuration binds.
    pub bind: SocketAddr,
    pub fd: OwnedFd,
}

/// The upgrade socket a running process listens on. Its file is removed when it is dropped
/// (if the path still names the socket bound here).
#[derive(Debug)]
pub struct UpgradeSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file bound here.
    file: (u64, u64),
}

impl UpgradeSocket {
    /// Listens on `path`, creating its directory if missing. A file left there by a process
    /// that is gone is replaced; `Ok(None)` when a live process still listens on it (that one
    /// keeps it: two processes cannot both be upgraded through one path).
    pub async fn bind(path: &Path) -> io::Result<Option<UpgradeSocket>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Whoever connects can take the listening sockets: the owner only. The peer's user is
        // checked too (`serve`), which also covers the moment before this.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let meta = std::fs::metadata(path)?;
        Ok(Some(UpgradeSocket {
            listener,
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers takeovers on `socket` until one succeeds (then the socket is closed and its file
/// removed before the new process is told `stopped`) or `cancel` fires. A failed takeover is
/// logged and the process keeps serving.
pub async fn serve(socket: UpgradeSocket, run: mpsc::Sender<Request>, cancel: CancellationToken) {
    info!(path = %socket.path.display(), "listening for takeovers");
    let mut socket = Some(socket);
    loop {
        let Some(s) = socket.as_ref() else { return };
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = s.listener.accept() => c,
        };
        let conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                warn!(error = %e, "upgrade socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match hand_over(conn, &run, &mut socket).await {
            Ok(()) => {
                info!("takeover done: the new process serves");
                return;
            }
            Err(e) => warn!(error = %e, "takeover failed; this process keeps serving"),
        }
    }
}

/// One takeover, from the old process's side; `socket` is dropped (closed, file removed) once
/// the accept loops were stopped.
async fn hand_over(
    conn: UnixStream,
    run: &mpsc::Sender<Request>,
    socket: &mut Option<UpgradeSocket>,
) -> Result<(), TakeoverError> {
    let mut link = Link::new(conn);
    let uid = link.stream.peer_cred()?.uid();
    let ours = rustix::process::geteuid().as_raw();
    if uid != ours && uid != 0 {
        return Err(link
            .refuse(format!(
                "user {uid} may not take over a process of user {ours}"
            ))
            .await);
    }
    match link.recv().await? {
        Message::Hello { version } if version == VERSION => {}
        Message::Hello { version } => {
            return Err(link
                .refuse(format!(
                    "protocol version mismatch: this process speaks version {VERSION}, the new one {version}"
                ))
                .await);
        }
        other => return Err(TakeoverError::Protocol(format!("{other:?}"))),
    }
    let (tx, rx) = oneshot::channel();
    run.send(Request::Listeners(tx))
        .await
        .map_err(|_| TakeoverError::Closed)?;
    let handed = rx.await.map_err(|_| TakeoverError::Closed)??;
    if handed.len() > MAX_FDS {
        return Err(link
            .refuse(format!(
                "{} listening sockets; one takeover hands over at most {MAX_FDS}",
                handed.len()
            ))
            .await);
    }
    let listeners = handed
        .iter()
        .map(|h| Listed {
            admin: h.admin,
            name: h.name.clone(),
            bind: h.bind,
        })
        .collect();
    let fds: Vec<BorrowedFd<'_>> = handed.iter().map(|h| h.fd.as_fd()).collect();
    link.send(
        &Message::Listeners {
            version: VERSION,
            listeners,
        },
        &fds,
    )
    .await?;
    drop(fds);
    drop(handed);
    info!("listening sockets sent; waiting for the new process to serve");
    match link.recv().await? {
        Message::Serving => {}
        other => return Err(TakeoverError::Protocol(format!("{other:?}"))),
    }
    let (tx, rx) = oneshot::channel();
    run.send(Request::Stop(tx))
        .await
        .map_err(|_| TakeoverError::Closed)?;
    let _ = rx.await;
    // The new process binds the path once it reads `stopped`. From here on this process has
    // stopped: a new process that went away meanwhile cannot undo that.
    *socket = None;
    if let Err(e) = link.send(&Message::Stopped, &[]).await {
        warn!(error = %e, "the new process did not hear that this one stopped");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The new process's side.

/// A listening socket this process starts with: from the process it takes over, or systemd.
#[derive(Debug)]
pub struct Inherited {
    pub admin: bool,
    pub name: String,
    /// The address it is bound for: the old process's configuration, or (systemd) the socket's.
    pub bind: SocketAddr,
    pub listener: std::net::TcpListener,
    /// From systemd: its name (`FileDescriptorName=`) or its address is enough to match.
    pub systemd: bool,
}

/// Takes the listener for the admin server (`admin`) or frontend `name` bound to `bind` out of
/// `inherited`: a takeover's by name and address; systemd's by name, else by address.
pub fn take(
    inherited: &mut Vec<Inherited>,
    admin: bool,
    name: &str,
    bind: SocketAddr,
) -> Option<std::net::TcpListener> {
    let named = |i: &Inherited| i.admin == admin && (admin || i.name == name);
    let at = inherited
        .iter()
        .position(|i| named(i) && (i.systemd || i.bind == bind))
        .or_else(|| {
            inherited
                .iter()
                .position(|i| i.systemd && i.bind == bind && !i.admin)
        })
        .or_else(|| {
            // systemd's socket for the admin address, without the name.
            admin
                .then(|| inherited.iter().position(|i| i.systemd && i.bind == bind))
                .flatten()
        })?;
    Some(inherited.remove(at).listener)
}

/// A takeover under way, from the new process's side: it holds the old process's listening
/// sockets; [`Takeover::serving`] tells the old process to stop.
#[derive(Debug)]
pub struct Takeover {
    link: Link,
}

/// Connects to the running process at `path` and receives its listening sockets.
pub async fn connect(path: &Path) -> Result<(Takeover, Vec<Inherited>), TakeoverError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut link = Link::new(stream);
    link.send(&Message::Hello { version: VERSION }, &[]).await?;
    let listeners = match link.recv().await? {
        Message::Listeners { version, .. } if version != VERSION => {
            return Err(TakeoverError::Version { theirs: version });
        }
        Message::Listeners { listeners, .. } => listeners,
        Message::Refused { message } => return Err(TakeoverError::Refused(message)),
        other => return Err(TakeoverError::Protocol(format!("{other:?}"))),
    };
    let fds = std::mem::take(&mut link.fds);
    if fds.len() != listeners.len() {
        return Err(TakeoverError::Protocol(format!(
            "{} listeners listed, {} sockets received",
            listeners.len(),
            fds.len()
        )));
    }
    let inherited = listeners
        .into_iter()
        .zip(fds)
        .map(|(l, fd)| Inherited {
            admin: l.admin,
            name: l.name,
            bind: l.bind,
            listener: std::net::TcpListener::from(fd),
            systemd: false,
        })
        .collect();
    Ok((Takeover { link }, inherited))
}

impl Takeover {
    /// Tells the old process that this one serves, and waits until it stopped accepting and
    /// let go of the upgrade socket.
    pub async fn serving(mut self) -> Result<(), TakeoverError> {
        self.link.send(&Message::Serving, &[]).await?;
        match self.link.recv().await? {
            Message::Stopped => Ok(()),
            other => Err(TakeoverError::Protocol(format!("{other:?}"))),
        }
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`), named by
/// `LISTEN_FDNAMES` (`FileDescriptorName=` in the socket unit: a frontend's name, or `admin`).
/// Called before any other thread exists: reading them unsets `LISTEN_FDS` and `LISTEN_PID`.
pub fn from_systemd() -> io::Result<Vec<Inherited>> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut inherited = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let name = names.get(i).cloned().unwrap_or_default();
        let what = || format!("LISTEN_FDS: socket {} ({name:?})", i + 3);
        let listener = fds
            .take_tcp_listener(i)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))?
            .ok_or_else(|| io::Error::other(format!("{}: already taken", what())))?;
        let bind = listener
            .local_addr()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))?;
        inherited.push(Inherited {
            admin: name == ADMIN,
            name,
            bind,
            listener,
            systemd: true,
        });
    }
    Ok(inherited)
}

// ---------------------------------------------------------------------------------------------
// Lines and descriptors on the Unix socket.

/// One end of a takeover connection: lines out, lines and descriptors in.
#[derive(Debug)]
struct Link {
    stream: UnixStream,
    /// Bytes read past the last line.
    pending: Vec<u8>,
    /// Descriptors received so far.
    fds: Vec<OwnedFd>,
}

impl Link {
    fn new(stream: UnixStream) -> Link {
        Link {
            stream,
            pending: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Tells the peer why the takeover is refused; the error to end it with (the send's own,
    /// if the message could not be sent).
    async fn refuse(&self, message: String) -> TakeoverError {
        let refused = Message::Refused {
            message: message.clone(),
        };
        match self.send(&refused, &[]).await {
            Ok(()) => TakeoverError::Refused(message),
            Err(e) => e,
        }
    }

    /// Sends `msg` as one line, with `fds` attached to its first byte.
    async fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), TakeoverError> {
        let mut line = serde_json::to_vec(msg).map_err(io::Error::from)?;
        line.push(b'\n');
        let mut sent = 0;
        let mut attach = fds;
        while sent < line.len() {
            let rest = &line[sent..];
            let write = self.stream.async_io(Interest::WRITABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(attach.len()))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !attach.is_empty() && !control.push(SendAncillaryMessage::ScmRights(attach)) {
                    return Err(io::Error::other(
                        "descriptors do not fit the control buffer",
                    ));
                }
                Ok(sendmsg(
                    &self.stream,
                    &[IoSlice::new(rest)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?)
            });
            sent += timed(write).await??;
            attach = &[];
        }
        Ok(())
    }

    /// The next line, parsed; descriptors that come with it are added to `fds`.
    async fn recv(&mut self) -> Result<Message, TakeoverError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line[..end]).map_err(|e| {
                    TakeoverError::Protocol(format!(
                        "{e}: {:?}",
                        String::from_utf8_lossy(&line[..end])
                    ))
                });
            }
            if self.pending.len() > MAX_LINE {
                return Err(TakeoverError::Protocol(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let (stream, fds) = (&self.stream, &mut self.fds);
            let read = stream.async_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
                }
                Ok(msg.bytes)
            });
            let n = timed(read).await??;
            if n == 0 {
                return Err(TakeoverError::Closed);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> Result<T, TakeoverError> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| TakeoverError::Timeout(STEP_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (std::net::TcpListener, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn sockets_cross_with_their_names_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (l1, addr1) = listener();
        let (l2, addr2) = listener();
        let sender = Link::new(a);
        let listed = vec![
            Listed {
                admin: true,
                name: ADMIN.into(),
                bind: addr1,
            },
            Listed {
                admin: false,
                name: "web".into(),
                bind: addr2,
            },
        ];
        sender
            .send(
                &Message::Listeners {
                    version: VERSION,
                    listeners: listed,
                },
                &[l1.as_fd(), l2.as_fd()],
            )
            .await
            .unwrap();
        sender.send(&Message::Serving, &[]).await.unwrap();
        let mut receiver = Link::new(b);
        let Message::Listeners { listeners, .. } = receiver.recv().await.unwrap() else {
            panic!("not listeners")
        };
        assert_eq!(listeners.len(), 2);
        assert_eq!(receiver.fds.len(), 2);
        // The second descriptor is the same socket as `l2`.
        let got = std::net::TcpListener::from(receiver.fds.pop().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr2);
        assert!(matches!(receiver.recv().await.unwrap(), Message::Serving));
        drop(sender);
        assert!(matches!(receiver.recv().await, Err(TakeoverError::Closed)));
    }

    #[tokio::test]
    async fn the_upgrade_socket_makes_its_directory_replaces_a_stale_file_and_leaves_a_live_one() {
        let dir = std::env::temp_dir().join(format!("switchyard-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run").join("upgrade.sock");
        // A socket file whose process is gone: bound, then closed.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = UpgradeSocket::bind(&path)
            .await
            .unwrap()
            .expect("stale file replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(
            UpgradeSocket::bind(&path).await.unwrap().is_none(),
            "a live one is left alone"
        );
        drop(live);
        assert!(!path.exists(), "removed when dropped");
        std::fs::remove_dir_all(&dir).unwrap();
        // Its directory is made when missing.
        let s = UpgradeSocket::bind(&path).await.unwrap().expect("bound");
        assert!(path.exists());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn take_matches_name_and_address_for_a_takeover_and_either_for_systemd() {
        let (l, addr) = listener();
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut v = vec![Inherited {
            admin: false,
            name: "web".into(),
            bind: addr,
            listener: l,
            systemd: false,
        }];
        assert!(take(&mut v, false, "web", other).is_none());
        assert!(take(&mut v, false, "api", addr).is_none());
        assert!(take(&mut v, true, ADMIN, addr).is_none());
        assert!(take(&mut v, false, "web", addr).is_some());
        assert!(v.is_empty());

        let (l, addr) = listener();
        let mut v = vec![Inherited {
            admin: false,
            name: "switchyard".into(),
            bind: addr,
            listener: l,
            systemd: true,
        }];
        assert!(take(&mut v, false, "api", other).is_none());
        assert!(take(&mut v, false, "api", addr).is_some(), "by address");
        let (l, addr) = listener();
        let mut v = vec![Inherited {
            admin: false,
            name: "web".into(),
            bind: addr,
            listener: l,
            systemd: true,
        }];
        assert!(take(&mut v, false, "web", other).is_some(), "by name");
    }
}
