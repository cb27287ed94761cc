//! Holds idle keep-alive connections for `benches/load/idle.sh`: opens N connections to one
//! address (plain or TLS), sends one `GET /` on each and reads its whole answer, then keeps
//! them all open and idle until told to close them.
//!
//!   idle_client ADDR N [--tls CA_PEM] [--sources K] [--parallel P]
//!
//! Connections are spread over K source addresses (127.0.0.2 .. 127.0.0.K+1), so that N may
//! exceed one address's ephemeral ports. Prints `ready OK FAILED SECONDS` once every
//! connection has its answer (or failed), then reads stdin: a line `close` closes them all and
//! prints `closed`; the end of stdin exits.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// One connection's whole exchange (connect, handshake, request, answer) must end within this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle_client\r\n\r\n";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Args {
    addr: SocketAddr,
    n: usize,
    tls: Option<tokio_rustls::TlsConnector>,
    sources: u8,
    parallel: usize,
}

fn usage() -> ! {
    eprintln!("usage: idle_client ADDR N [--tls CA_PEM] [--sources K] [--parallel P]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let addr = it
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage());
    let n = it
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage());
    let mut a = Args {
        addr,
        n,
        tls: None,
        sources: 8,
        parallel: 256,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--tls" => a.tls = Some(connector(&value)),
            "--sources" => a.sources = value.parse().unwrap_or_else(|_| usage()),
            "--parallel" => a.parallel = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

/// A TLS client that trusts the one CA (or self-signed) certificate in `ca_pem`.
fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("{ca_pem}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn dial(i: usize, a: &Args) -> std::io::Result<Box<dyn Io>> {
    let socket = TcpSocket::new_v4()?;
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(a.sources)) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let tcp: TcpStream = socket.connect(a.addr).await?;
    let mut io: Box<dyn Io> = match &a.tls {
        None => Box::new(tcp),
        Some(c) => {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
            Box::new(c.connect(name, tcp).await?)
        }
    };
    io.write_all(REQUEST).await?;
    io.flush().await?;
    read_answer(&mut io).await?;
    Ok(io)
}

/// Reads one answer with a `Content-Length` body (what the proxies send for `GET /` here).
async fn read_answer(io: &mut Box<dyn Io>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(std::io::Error::other(
                head.lines().next().unwrap_or("").to_string(),
            ));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

fn main() {
    let a = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let held: Vec<Box<dyn Io>> = rt.block_on(async {
        let gate = Arc::new(Semaphore::new(a.parallel));
        let mut tasks = Vec::with_capacity(a.n);
        for i in 0..a.n {
            let permit = Arc::clone(&gate).acquire_owned().await.expect("open");
            let a = Arc::clone(&a);
            tasks.push(tokio::spawn(async move {
                let r = tokio::time::timeout(EXCHANGE_TIMEOUT, dial(i, &a)).await;
                drop(permit);
                match r {
                    Ok(Ok(io)) => Some(io),
                    Ok(Err(e)) => {
                        eprintln!("connection {i}: {e}");
                        None
                    }
                    Err(_) => {
                        eprintln!("connection {i}: timed out");
                        None
                    }
                }
            }));
        }
        let mut held = Vec::with_capacity(a.n);
        for t in tasks {
            if let Ok(Some(io)) = t.await {
                held.push(io);
            }
        }
        held
    });
    println!(
        "ready {} {} {:.1}",
        held.len(),
        a.n - held.len(),
        started.elapsed().as_secs_f64()
    );
    let mut held = Some(held);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "close" {
            // Dropped inside the runtime: deregistering a socket needs its reactor.
            rt.block_on(async { drop(held.take()) });
            println!("closed");
        }
    }
}
