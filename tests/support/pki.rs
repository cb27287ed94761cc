//! `Pki`: certificates made with rcgen while a test runs, as PEM files in a private temp dir
//! (removed on drop unless the test is panicking): a CA and the leaf certificates it signs, or
//! lone self-signed certificates; and what a test needs to use them (the config lines that name
//! them, a rustls client trusting the CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard::config::CertPair;

use super::config;
use super::unique_temp_dir;

/// A private CA (`ca.pem`, its key in `ca.key`) and the directory its leaves are written to.
pub struct Pki {
    dir: PathBuf,
    ca_pem: PathBuf,
    ca_key: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key: the PEM files, and the DER a rustls server or client takes.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Pki {
    /// A new CA (named after `tag`) in a new temp dir.
    pub fn new(tag: &str) -> Pki {
        switchyard::tls::install_provider();
        let dir = unique_temp_dir(&format!("switchyard-pki-{tag}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("switchyard test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca_key = dir.join("ca.key");
        std::fs::write(&ca_key, key.serialize_pem()).unwrap();
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, issuer.pem()).unwrap();
        Pki {
            ca_der: issuer.der().clone(),
            dir,
            ca_pem,
            ca_key,
            issuer,
        }
    }

    /// A certificate for `names` signed by the CA, as `{tag}.pem` and `{tag}.key`.
    pub fn leaf(&self, tag: &str, names: &[&str]) -> Leaf {
        self.leaf_for(tag, names, &[])
    }

    /// `leaf` with these extended key usages (`ServerAuth`, `ClientAuth`).
    pub fn leaf_for(&self, tag: &str, names: &[&str], usages: &[ExtendedKeyUsagePurpose]) -> Leaf {
        let mut params = CertificateParams::new(strings(names)).unwrap();
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.write(tag, cert.pem(), cert.der().clone(), &key)
    }

    /// A self-signed certificate for `names` (no CA), as `{tag}.pem` and `{tag}.key`; written
    /// again under the same tag, it replaces the files.
    pub fn self_signed(&self, tag: &str, names: &[&str]) -> Leaf {
        let ck = rcgen::generate_simple_self_signed(strings(names)).unwrap();
        self.write(tag, ck.cert.pem(), ck.cert.der().clone(), &ck.signing_key)
    }

    fn write(&self, tag: &str, pem: String, der: CertificateDer<'static>, key: &KeyPair) -> Leaf {
        let leaf = Leaf {
            cert: self.dir.join(format!("{tag}.pem")),
            key: self.dir.join(format!("{tag}.key")),
            der,
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        };
        std::fs::write(&leaf.cert, pem).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate's PEM file.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The CA key's PEM file (for tools that sign as the CA, such as `openssl ocsp`).
    pub fn ca_key(&self) -> &Path {
        &self.ca_key
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        roots
    }

    /// A rustls client trusting only this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut cc = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cc)
    }

    /// The backend lines that trust this CA for TLS to servers.
    pub fn backend_tls(&self) -> String {
        format!("[backend.tls]\nca = {}", config::path(&self.ca_pem))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

impl Leaf {
    /// The chain a rustls server presents: this certificate alone.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key_der.clone_key()
    }

    /// The certificate and key files as Switchyard's config names them.
    pub fn pair(&self) -> CertPair {
        CertPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The backend lines that trust this (self-signed) certificate as the servers' CA.
    pub fn backend_tls(&self) -> String {
        format!("[backend.tls]\nca = {}", config::path(&self.cert))
    }

    /// The frontend lines that serve this certificate (`[frontend.tls]`, keys may follow).
    pub fn frontend_tls(&self) -> String {
        format!(
            "[frontend.tls]\ncerts = [{{ cert = {}, key = {} }}]",
            config::path(&self.cert),
            config::path(&self.key)
        )
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}
