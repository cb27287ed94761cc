//! Automatic certificates against a real ACME server: Debian's `pebble` (with
//! `pebble-challtestsrv` as its DNS, every name resolving to 127.0.0.1), a real etcd, and two
//! Switchyard instances sharing it. Pebble validates for real (no PEBBLE_VA_ALWAYS_VALID): its
//! tls-alpn-01 or http-01 check reaches the first instance's frontend port, whichever
//! instance ordered. Everything listens on loopback ports picked at run time.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use support::pki::Pki;
use support::{Etcd, Lb, free_port, metric, wait_until};
use tokio::net::TcpStream;

const DOMAIN: &str = "shop.acme.test";

/// Switchyard's logs in the test output (`RUST_LOG=switchyard=debug`), for a failure's story.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// pebble and pebble-challtestsrv, killed by PID on drop.
struct Pebble {
    pebble: Child,
    chall: Child,
    dir: PathBuf,
    dns: u16,
    port: u16,
    mgmt: u16,
    pki: Pki,
}

/// pebble with the config in `dir`, resolving names through the stub DNS on `dns`.
fn spawn_pebble(dir: &std::path::Path, dns: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pebble.log"))
        .unwrap();
    Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pebble")
}

fn require(bin: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    assert!(
        found,
        "{bin} not found: install the Debian package `pebble`"
    );
}

impl Pebble {
    /// Starts the DNS stub and pebble: validation connects to `http_port` (http-01) and
    /// `tls_port` (tls-alpn-01); certificates last `validity`.
    async fn start(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let pki = Pki::new("pebble");
        let leaf = pki.leaf("pebble", &["127.0.0.1", "localhost"]);
        let dir = pki.dir().to_path_buf();
        let (port, mgmt, dns, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let chall = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("challtestsrv.log")).unwrap())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": leaf.cert,
            "privateKey": leaf.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let pebble = spawn_pebble(&dir, dns);
        let p = Pebble {
            pebble,
            chall,
            dir,
            dns,
            port,
            mgmt,
            pki,
        };
        p.wait_up().await;
        p
    }

    /// Waits until the directory answers.
    async fn wait_up(&self) {
        let client = self.client();
        let url = self.directory();
        wait_until(
            "pebble's directory answers",
            Duration::from_secs(20),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            },
        )
        .await;
    }

    /// A new pebble on the same ports: no accounts, a new root.
    async fn restart(&mut self) {
        self.stop();
        self.pebble = spawn_pebble(&self.dir, self.dns);
        self.wait_up().await;
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.pki.client(&[])).clone())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// The root pebble issues under (its management interface's `/roots/0`).
    async fn root(&self) -> CertificateDer<'static> {
        let pem = self
            .client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .await
            .expect("pebble /roots/0")
            .text()
            .await
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root")
    }

    fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.chall.kill();
        let _ = self.chall.wait();
    }
}

/// One instance's config: an https frontend on `tls_bind` ordering `DOMAIN` from pebble with
/// `challenge`, a tcp-mode TLS frontend serving the same certificate (no ALPN of its own), and
/// a plain http frontend on `http_bind`.
fn config(
    etcd: &Etcd,
    pebble: &Pebble,
    tls_bind: u16,
    http_bind: u16,
    challenge: &str,
    renew_before: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[etcd]
endpoints = ["{etcd}"]
api = "v3"

[[frontend]]
name = "web"
bind = "127.0.0.1:{tls_bind}"
backend = "app"
[frontend.tls]
[frontend.tls.acme]
directory = "{dir}"
email = "ops@acme.test"
domains = ["{DOMAIN}"]
challenge = "{challenge}"
ca = "{ca}"
renew_before = "{renew_before}"
insecure_shared_keys = true

[[frontend]]
name = "tcpweb"
bind = "127.0.0.1:0"
mode = "tcp"
backend = "app"
[frontend.tls]
[frontend.tls.acme]
directory = "{dir}"
email = "ops@acme.test"
domains = ["{DOMAIN}"]
challenge = "{challenge}"
ca = "{ca}"
renew_before = "{renew_before}"
insecure_shared_keys = true

[[frontend]]
name = "plain"
bind = "127.0.0.1:{http_bind}"
backend = "app"

[[backend]]
name = "app"
servers = ["127.0.0.1:{dead}"]
"#,
        etcd = etcd.url(),
        dir = pebble.directory(),
        ca = pebble.pki.ca_pem().display(),
        dead = support::dead_port(),
    )
}

/// The leaf certificate `addr` serves for `DOMAIN`, verified against `root` (`None`: the
/// handshake failed or the chain does not verify).
async fn served(addr: SocketAddr, root: &CertificateDer<'static>) -> Option<Vec<u8>> {
    served_alpn(addr, root, &[]).await
}

/// `served`, with the client offering `alpn`.
async fn served_alpn(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).ok()?;
    let mut cc = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from(DOMAIN).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(3), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()?.first().map(|c| c.to_vec())
}

/// Waits until both addresses serve the same verified leaf other than `not`; returns it.
async fn both_serve(
    a: SocketAddr,
    b: SocketAddr,
    root: &CertificateDer<'static>,
    not: Option<&[u8]>,
    pebble: &Pebble,
) -> Vec<u8> {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (x, y) = (served(a, root).await, served(b, root).await);
        if let (Some(x), Some(y)) = (&x, &y)
            && x == y
            && Some(x.as_slice()) != not
        {
            return x.clone();
        }
        assert!(
            tokio::time::Instant::now() < end,
            "both instances serving one new certificate from pebble: a {}, b {}\npebble log:\n{}",
            x.is_some(),
            y.is_some(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(value, version)` of a key through etcd's v3 gateway (version: how many times it was put).
async fn etcd_key(etcd: &Etcd, key: &str) -> Option<(String, u64)> {
    etcd_key_as(etcd, key, None).await
}

/// `etcd_key` with an auth token.
async fn etcd_key_as(etcd: &Etcd, key: &str, token: Option<&str>) -> Option<(String, u64)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let v = v3(
        etcd,
        "kv/range",
        token,
        serde_json::json!({"key": b64.encode(key)}),
    )
    .await
    .ok()?;
    let kv = v["kvs"].get(0)?;
    let value = String::from_utf8(b64.decode(kv["value"].as_str()?).ok()?).ok()?;
    let version = kv["version"].as_str()?.parse().ok()?;
    Some((value, version))
}

/// `POST /v3/{path}` on etcd's gateway: the JSON answer of a 200, else the status and body.
async fn v3(
    etcd: &Etcd,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v3/{path}", etcd.url()))
        .json(&body);
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if !status.is_success() {
        return Err(format!("{path}: {status} {text}"));
    }
    Ok(serde_json::from_str(&text).unwrap())
}

async fn certificates(lb: &Lb) -> serde_json::Value {
    let (status, body) = support::client::get(lb.admin_addr(), "/api/v1/certificates").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn acme_entry(doc: &serde_json::Value) -> serde_json::Value {
    doc["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "acme")
        .cloned()
        .unwrap_or_else(|| panic!("no acme certificate in {doc}"))
}

/// Two instances, one etcd: exactly one order, and both serve its certificate, which chains
/// to pebble's root; the API shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_two_instances_one_order_same_certificate() {
    logs();
    let etcd = Etcd::start().await;
    let tls_a = free_port();
    let pebble = Pebble::start(free_port(), tls_a, Duration::from_secs(90 * 24 * 3600)).await;
    let a = Lb::start(&config(&etcd, &pebble, tls_a, 0, "tls-alpn-01", "30d")).await;
    let b = Lb::start(&config(&etcd, &pebble, 0, 0, "tls-alpn-01", "30d")).await;
    let root = pebble.root().await;
    let leaf = both_serve(a.http_addr("web"), b.http_addr("web"), &root, None, &pebble).await;
    let stored = format!("/switchyard/acme/certs/{DOMAIN}");
    let (pem, version) = etcd_key(&etcd, &stored)
        .await
        .expect("certificate stored in etcd");
    assert_eq!(version, 1, "one order stored one certificate, once");
    assert!(pem.contains("PRIVATE KEY"), "chain and key stored together");
    assert!(etcd_key(&etcd, "/switchyard/acme/account").await.is_some());
    // A while later still one: neither instance ordered again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(etcd_key(&etcd, &stored).await.unwrap().1, 1);
    for lb in [&a, &b] {
        let c = acme_entry(&certificates(lb).await);
        assert_eq!(c["name"], DOMAIN);
        assert_eq!(c["names"], serde_json::json!([DOMAIN]));
        assert!(c["issuer"].as_str().unwrap().contains("Pebble"), "{c}");
        assert!(c["not_after"].is_string(), "{c}");
        assert!(c["last_error"].is_null(), "{c}");
        let text = lb.metrics().await;
        assert!(
            text.contains("switchyard_acme_orders_total{result=\"failed\"}"),
            "registered at 0"
        );
        let expiry = metric(
            &text,
            &format!(
                "switchyard_tls_certificate_expiry_timestamp_seconds{{frontend=\"web\",name=\"{DOMAIN}\"}}"
            ),
        );
        assert!(
            expiry > 1e9,
            "the expiry gauge covers the ACME certificate: {text}"
        );
    }
    // The tcp-mode frontend serves it too, to a client offering ALPN protocols it has none of
    // (answering tls-alpn-01 must not give it an ALPN list that refuses such clients).
    for lb in [&a, &b] {
        let got = served_alpn(lb.http_addr("tcpweb"), &root, &[b"h2", b"http/1.1"]).await;
        assert_eq!(got.as_deref(), Some(leaf.as_slice()));
    }
    // The lock went with its lease once the order was done.
    assert!(etcd_key(&etcd, "/switchyard/acme/lock").await.is_none());
    assert!(!leaf.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// Short-lived certificates are renewed (a third into their life, since renew_before is longer)
/// and both instances switch to the new one; with pebble gone, the renewal fails, the error is
/// reported (API, metric) and the current certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_reaches_both_and_an_unreachable_server_keeps_the_certificate() {
    logs();
    let etcd = Etcd::start().await;
    let tls_a = free_port();
    let mut pebble = Pebble::start(free_port(), tls_a, Duration::from_secs(45)).await;
    let a = Lb::start(&config(&etcd, &pebble, tls_a, 0, "tls-alpn-01", "30d")).await;
    let b = Lb::start(&config(&etcd, &pebble, 0, 0, "tls-alpn-01", "30d")).await;
    let root = pebble.root().await;
    let (fa, fb) = (a.http_addr("web"), b.http_addr("web"));
    let first = both_serve(fa, fb, &root, None, &pebble).await;
    let second = both_serve(fa, fb, &root, Some(&first), &pebble).await;
    assert_ne!(first, second);
    pebble.stop();
    wait_until(
        "an instance reports the failed renewal",
        Duration::from_secs(40),
        || {
            let (a, b) = (&a, &b);
            async move {
                for lb in [a, b] {
                    if !acme_entry(&certificates(lb).await)["last_error"].is_null() {
                        return true;
                    }
                }
                false
            }
        },
    )
    .await;
    let text = a.metrics().await;
    assert!(
        metric(&text, "switchyard_acme_orders_total{result=\"failed\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "switchyard_acme_orders_total{result=\"valid\"}") >= 2.0,
        "{text}"
    );
    let reported = [
        acme_entry(&certificates(&a).await),
        acme_entry(&certificates(&b).await),
    ];
    let failed = reported
        .iter()
        .find(|c| !c["last_error"].is_null())
        .unwrap();
    assert!(failed["next_attempt"].is_string(), "{failed}");
    // Still served, by both: the last certificate issued (the one in etcd; `second`, unless a
    // slow machine let one more renewal through before pebble stopped).
    let (pem, _) = etcd_key(&etcd, &format!("/switchyard/acme/certs/{DOMAIN}"))
        .await
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let last = CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_ne!(last, first);
    assert_eq!(served(fa, &root).await, Some(last.clone()));
    assert_eq!(served(fb, &root).await, Some(last));
    a.shutdown().await;
    b.shutdown().await;
}

/// The ACME server forgot the stored account (pebble keeps its state in memory): the renewal
/// creates a new account instead of failing for ever, and both instances serve the new
/// certificate, which chains to the new server's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_account_is_created_again() {
    logs();
    let etcd = Etcd::start().await;
    let tls_a = free_port();
    let mut pebble = Pebble::start(free_port(), tls_a, Duration::from_secs(30)).await;
    let a = Lb::start(&config(&etcd, &pebble, tls_a, 0, "tls-alpn-01", "30d")).await;
    let b = Lb::start(&config(&etcd, &pebble, 0, 0, "tls-alpn-01", "30d")).await;
    let (fa, fb) = (a.http_addr("web"), b.http_addr("web"));
    let first = both_serve(fa, fb, &pebble.root().await, None, &pebble).await;
    let account = etcd_key(&etcd, "/switchyard/acme/account").await.unwrap().0;
    pebble.restart().await;
    let root = pebble.root().await;
    let renewed = both_serve(fa, fb, &root, Some(&first), &pebble).await;
    assert_ne!(renewed, first);
    let now = etcd_key(&etcd, "/switchyard/acme/account").await.unwrap().0;
    assert_ne!(now, account, "a new account was stored");
    a.shutdown().await;
    b.shutdown().await;
}

/// http-01: pebble asks the first instance's plain http frontend for the token, which whoever
/// ordered stored in etcd; the instances' `[etcd]` says `api = "v2"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_is_answered_from_etcd_on_the_plain_frontend() {
    logs();
    let etcd = Etcd::start().await;
    let http_a = free_port();
    let pebble = Pebble::start(http_a, free_port(), Duration::from_secs(90 * 24 * 3600)).await;
    // `api = "v2"` for discovery: ACME uses the v3 API of the same endpoints all the same.
    let v2 = |toml: String| toml.replace("api = \"v3\"", "api = \"v2\"");
    let a = Lb::start(&v2(config(&etcd, &pebble, 0, http_a, "http-01", "30d"))).await;
    let b = Lb::start(&v2(config(&etcd, &pebble, 0, 0, "http-01", "30d"))).await;
    let root = pebble.root().await;
    both_serve(a.http_addr("web"), b.http_addr("web"), &root, None, &pebble).await;
    assert_eq!(
        etcd_key(&etcd, &format!("/switchyard/acme/certs/{DOMAIN}"))
            .await
            .unwrap()
            .1,
        1
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// With etcd auth on and a user whose role reaches only `/switchyard/acme/`, an instance orders
/// and serves the certificate (no insecure_shared_keys), and an unauthenticated read of the
/// stored key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_with_a_role_limited_to_the_acme_prefix() {
    use base64::Engine;
    logs();
    let b64 = base64::engine::general_purpose::STANDARD;
    let etcd = Etcd::start().await;
    let setup = |path: &'static str, body: serde_json::Value| {
        let etcd = &etcd;
        async move { v3(etcd, path, None, body).await.unwrap() }
    };
    setup(
        "auth/user/add",
        serde_json::json!({"name": "root", "password": "rootpw"}),
    )
    .await;
    setup("auth/role/add", serde_json::json!({"name": "root"})).await;
    setup(
        "auth/user/grant",
        serde_json::json!({"user": "root", "role": "root"}),
    )
    .await;
    setup(
        "auth/user/add",
        serde_json::json!({"name": "sy", "password": "sypw"}),
    )
    .await;
    setup("auth/role/add", serde_json::json!({"name": "acme"})).await;
    setup(
        "auth/role/grant",
        serde_json::json!({"name": "acme", "perm": {"permType": "READWRITE",
            "key": b64.encode("/switchyard/acme/"), "range_end": b64.encode("/switchyard/acme0")}}),
    )
    .await;
    setup(
        "auth/user/grant",
        serde_json::json!({"user": "sy", "role": "acme"}),
    )
    .await;
    setup("auth/enable", serde_json::json!({})).await;
    let tls_a = free_port();
    let pebble = Pebble::start(free_port(), tls_a, Duration::from_secs(90 * 24 * 3600)).await;
    let toml = config(&etcd, &pebble, tls_a, 0, "tls-alpn-01", "30d")
        .replace("insecure_shared_keys = true\n", "")
        .replace(
            "api = \"v3\"",
            "api = \"v3\"\nusername = \"sy\"\npassword = \"sypw\"",
        );
    assert!(!toml.contains("insecure_shared_keys"));
    let a = Lb::start(&toml).await;
    let root = pebble.root().await;
    let leaf = both_serve(a.http_addr("web"), a.http_addr("web"), &root, None, &pebble).await;
    let key = format!("/switchyard/acme/certs/{DOMAIN}");
    assert!(
        etcd_key(&etcd, &key).await.is_none(),
        "an unauthenticated client must not read the stored key"
    );
    let token = v3(
        &etcd,
        "auth/authenticate",
        None,
        serde_json::json!({"name": "root", "password": "rootpw"}),
    )
    .await
    .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (pem, _) = etcd_key_as(&etcd, &key, Some(&token))
        .await
        .expect("stored");
    assert!(pem.contains("PRIVATE KEY"));
    assert!(!leaf.is_empty());
    a.shutdown().await;
}

/// An ACME config whose etcd has no authentication is refused by `check`, naming the key,
/// unless insecure_shared_keys says so on purpose.
#[test]
fn check_refuses_acme_without_etcd_auth() {
    let dir = std::env::temp_dir().join(format!("switchyard-acme-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = r#"
[etcd]
endpoints = ["http://127.0.0.1:2379"]

[[frontend]]
name = "web"
bind = "127.0.0.1:8443"
backend = "app"
[frontend.tls]
[frontend.tls.acme]
domains = ["shop.example.com"]
"#;
    let tail = "\n[[backend]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n";
    let run = |text: &str| {
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run(&format!("{base}{tail}"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("frontend \"web\".tls.acme.insecure_shared_keys")
            && text.contains("etcd.username"),
        "{text}"
    );
    let (code, text) = run(&format!("{base}insecure_shared_keys = true\n{tail}"));
    assert_eq!(code, Some(0), "{text}");
    let with_auth = base.replace(
        "endpoints = [\"http://127.0.0.1:2379\"]",
        "endpoints = [\"http://127.0.0.1:2379\"]\nusername = \"sy\"\npassword = \"secret\"",
    );
    let (code, text) = run(&format!("{with_auth}{tail}"));
    assert_eq!(code, Some(0), "{text}");
    // The shipped example passes.
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c", "config/acme.toml"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}
