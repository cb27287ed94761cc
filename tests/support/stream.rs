//! Bounded reads on a byte stream (TCP, or TLS over it) for the L4 tests: a line, an echo, the
//! rest up to the close. Every wait has a limit, so a hang fails the test instead of stalling it.
//! Also one keep-alive `GET /` on a raw connection (`get_a`), for tests that hold connections.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Bound on a line or an echo.
const WAIT: Duration = Duration::from_secs(5);
/// Bound on waiting for a close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Reads up to and including the first `\n`, one byte at a time (so nothing after it is
/// lost); the line without it. Panics at EOF, on an error, or after 5 s.
pub async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut b).await {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => out.push(b[0]),
                Ok(_) => panic!("EOF before a line; got {:?}", String::from_utf8_lossy(&out)),
                Err(e) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&out)),
            }
        }
    })
    .await
    .expect("no line within 5 s");
    String::from_utf8(out).unwrap()
}

/// Writes `msg` and expects it echoed within 5 s.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &str) {
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo within 5 s")
        .expect("echo");
    assert_eq!(got, msg.as_bytes());
}

/// Reads until the peer closes (within 10 s): what arrived, or the error (a reset counts as a
/// close too, reported here), and how long it took.
pub async fn until_closed<S: AsyncRead + Unpin>(s: &mut S) -> (std::io::Result<Vec<u8>>, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(CLOSE_WAIT, s.read_to_end(&mut out))
        .await
        .expect("the connection was not closed within 10 s");
    (r.map(|_| out), t.elapsed())
}

/// Sends one keep-alive `GET /` on `s` and reads until the upstream's body (`A`, as
/// `Upstream::start("A")` answers) has come; the whole answer. Not bounded in time: callers
/// that expect no answer put their own timeout around it.
pub async fn get_a<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nA") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
