//! Challenge answers as stored in etcd (`/switchyard/acme/challenges/<token or domain>`), and
//! the tls-alpn-01 certificate built from one: self-signed for the name, with the
//! acmeIdentifier extension holding the SHA-256 of the key authorization (RFC 8737). Every
//! instance builds its own from the stored digest; the validator checks only the name and the
//! extension.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// One pending challenge's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(super) enum Answer {
    /// `GET /.well-known/acme-challenge/<token>` answers `key_authorization`.
    #[serde(rename = "http-01")]
    Http01 {
        token: String,
        key_authorization: String,
    },
    /// A handshake for `domain` on ALPN `acme-tls/1` gets a certificate carrying `digest`
    /// (base64 of the SHA-256 of the key authorization).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01 { domain: String, digest: String },
}

impl Answer {
    /// The last segment of its etcd key: the token (http-01) or the domain (tls-alpn-01).
    pub(super) fn id(&self) -> &str {
        match self {
            Answer::Http01 { token, .. } => token,
            Answer::TlsAlpn01 { domain, .. } => domain,
        }
    }
}

/// The tls-alpn-01 certificate for `domain` with the acmeIdentifier `digest` (base64).
pub(super) fn alpn_cert(domain: &str, digest: &str) -> Result<Arc<CertifiedKey>, String> {
    let digest = B64
        .decode(digest)
        .map_err(|e| format!("digest is not base64: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension the validator needs.
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_json() {
        let a = Answer::Http01 {
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains(r#""type":"http-01""#), "{text}");
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), a);
        assert_eq!(a.id(), "tok");
    }

    #[test]
    fn the_alpn_certificate_names_the_domain_and_carries_the_digest() {
        let digest = B64.encode([7u8; 32]);
        let ck = alpn_cert("shop.example.com", &digest).unwrap();
        let der = ck.cert[0].as_ref();
        assert!(der.windows(16).any(|w| w == b"shop.example.com"));
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, then the 32 bytes as an OCTET STRING.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(oid.len()).any(|w| w == oid));
        let mut value = vec![0x04, 0x20];
        value.extend_from_slice(&[7u8; 32]);
        assert!(der.windows(value.len()).any(|w| w == value.as_slice()));
        assert!(alpn_cert("shop.example.com", "not base64!").is_err());
    }
}
