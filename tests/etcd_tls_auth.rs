//! Reaching etcd over TLS with a client certificate (a CA made while the test runs), and with
//! v3 username/password authentication. Real etcd in both.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::ExtendedKeyUsagePurpose;
use support::config::{self, Cfg};
use support::pki::{Leaf, Pki};
use support::{Etcd, Lb, Upstream, free_port, get, http_client, wait_until};

/// A CA, etcd's server certificate for 127.0.0.1 and Switchyard's client certificate.
struct Certs {
    pki: Pki,
    server: Leaf,
    client: Leaf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let pki = Pki::new(tag);
        // NOTE: etcd 3.4's v3 gateway dials its own gRPC server with the *server* certificate,
        // so with --client-cert-auth that certificate needs clientAuth too, or every /v3 call
        // answers 503 "connection closed" (seen here).
        let server = pki.leaf_for(
            "server",
            &["127.0.0.1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let client = pki.leaf_for(
            "client",
            &["switchyard"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        Certs {
            pki,
            server,
            client,
        }
    }
}

struct TlsEtcd {
    child: Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that trusts the CA and presents the client certificate.
fn tls_client(certs: &Certs) -> reqwest::Client {
    let cc = rustls::ClientConfig::builder()
        .with_root_certificates(certs.pki.roots())
        .with_client_auth_cert(certs.client.chain(), certs.client.key_der())
        .unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .use_preconfigured_tls(cc)
        .build()
        .unwrap()
}

async fn start_tls_etcd(certs: &Certs) -> TlsEtcd {
    let dir = certs.pki.dir();
    let (cp, pp) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let child = Command::new("/usr/bin/etcd")
        .args(["--name", "tls1", "--enable-v2=true", "--logger=zap"])
        .arg("--log-outputs")
        .arg(dir.join("etcd.log"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls1={peer}")])
        .arg("--cert-file")
        .arg(&certs.server.cert)
        .arg("--key-file")
        .arg(&certs.server.key)
        .arg("--trusted-ca-file")
        .arg(certs.pki.ca_pem())
        .arg("--client-cert-auth")
        .env_remove("ETCD_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian package etcd-server)");
    let client = tls_client(certs);
    let health = format!("{url}/health");
    wait_until("TLS etcd healthy", Duration::from_secs(20), || {
        let (c, h) = (client.clone(), health.clone());
        async move {
            match c.get(&h).timeout(Duration::from_millis(500)).send().await {
                Ok(r) => r.text().await.unwrap_or_default().contains("true"),
                Err(_) => false,
            }
        }
    })
    .await;
    TlsEtcd { child, url }
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    let certs = Certs::new("etcd");
    let etcd = start_tls_etcd(&certs).await;
    let a = Upstream::start("A").await;
    let client = tls_client(&certs);
    let r = client
        .put(format!("{}/v2/keys/tlsbe/backend/1", etcd.url))
        .form(&[("value", a.addr().to_string())])
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "{status} {}",
        r.text().await.unwrap_or_default()
    );
    // Without a client certificate etcd refuses the connection.
    assert!(
        http_client()
            .get(format!("{}/version", etcd.url))
            .send()
            .await
            .is_err()
    );

    for api in ["v2", "v3"] {
        if api == "v3" {
            let key = B64.encode("/tlsbe/backend/1");
            let r = client
                .post(format!("{}/v3/kv/put", etcd.url))
                .json(&serde_json::json!({"key": key, "value": B64.encode(a.addr().to_string())}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(
                status.is_success(),
                "{status} {}",
                r.text().await.unwrap_or_default()
            );
        }
        let toml = Cfg::http("web")
            .etcd(&etcd.url)
            .etcd_lines(&format!(
                "api = \"{api}\"\nca = {}\ncert = {}\nkey = {}",
                config::path(certs.pki.ca_pem()),
                config::path(&certs.client.cert),
                config::path(&certs.client.key)
            ))
            .etcd_backend("tlsbe")
            .check_none()
            .toml();
        let lb = Lb::start_ready(&toml).await;
        assert_eq!(
            get(lb.http_addr("web"), "/").await,
            (200, "A".to_string()),
            "api {api}"
        );
        assert_eq!(lb.backends().await["discovery"]["connected"], true);
        lb.shutdown().await;
    }
}

async fn v3(
    etcd: &Etcd,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut req = http_client()
        .post(format!("{}/v3/{path}", etcd.url()))
        .json(&body);
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let j: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {j}");
    j
}

#[tokio::test]
async fn v3_username_and_password() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    v3(
        &etcd,
        "auth/user/add",
        None,
        serde_json::json!({"name": "root", "password": "rootpw"}),
    )
    .await;
    v3(
        &etcd,
        "auth/role/add",
        None,
        serde_json::json!({"name": "root"}),
    )
    .await;
    v3(
        &etcd,
        "auth/user/grant",
        None,
        serde_json::json!({"user": "root", "role": "root"}),
    )
    .await;
    v3(&etcd, "auth/enable", None, serde_json::json!({})).await;
    let tok = v3(
        &etcd,
        "auth/authenticate",
        None,
        serde_json::json!({"name": "root", "password": "rootpw"}),
    )
    .await;
    let tok = tok["token"].as_str().unwrap().to_string();
    v3(
        &etcd,
        "kv/put",
        Some(&tok),
        serde_json::json!({"key": B64.encode("/authbe/backend/1"), "value": B64.encode(a.addr().to_string())}),
    )
    .await;
    let conf = |pw: &str| {
        Cfg::http("web")
            .etcd(&etcd.url())
            .etcd_lines(&format!(
                "api = \"v3\"\nusername = \"root\"\npassword = \"{pw}\"\nbackoff_max = \"300ms\""
            ))
            .etcd_backend("authbe")
            .check_none()
            .toml()
    };
    let lb = Lb::start_ready(&conf("rootpw")).await;
    assert_eq!(get(lb.http_addr("web"), "/").await, (200, "A".to_string()));
    lb.shutdown().await;

    // A wrong password: never ready, never a silent empty pool.
    let lb = Lb::start(&conf("wrong")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _) = get(lb.admin_addr(), "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(lb.backends().await["discovery"]["connected"], false);
    lb.shutdown().await;
}
