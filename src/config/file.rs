//! The file format: exactly what `switchyard.toml` may contain (README, "Configuration
//! reference"), as serde reads it. Every struct carries `deny_unknown_fields`, so a misspelt key
//! is an error naming that key; every setting is optional here and gets its default in
//! [`super::validate`]. Durations go through [`bounded`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::policy::{FileHeaderRules, FileRateLimit, FileRedirect};
use super::size::FileSize;
use super::{Balance, CheckType, EtcdApi, LogConfig, Mode, Protocol, ProxyVersion};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) global: FileGlobal,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) log: LogConfig,
    pub(super) etcd: Option<FileEtcd>,
    #[serde(default)]
    pub(super) frontend: Vec<FileFrontend>,
    #[serde(default)]
    pub(super) backend: Vec<FileBackend>,
    #[serde(default)]
    pub(super) service_tree: Vec<FileServiceTree>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGlobal {
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) shutdown_grace: Option<Duration>,
    pub(super) threads: Option<usize>,
    pub(super) work_stealing: Option<bool>,
    pub(super) upgrade_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    /// The name of an environment variable holding the token (containers, secrets managers).
    pub(super) token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEtcd {
    /// `None`: left out (a local member); `Some([])`: written as `endpoints = []`.
    pub(super) endpoints: Option<Vec<String>>,
    pub(super) api: Option<EtcdApi>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) poll_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) request_timeout: Option<Duration>,
    pub(super) snapshot_file: Option<std::path::PathBuf>,
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) backoff_min: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) backoff_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFrontend {
    pub(super) name: String,
    pub(super) bind: String,
    pub(super) mode: Option<Mode>,
    pub(super) backend: Option<String>,
    pub(super) backends: Option<Vec<FileWeighted>>,
    #[serde(default)]
    pub(super) route: Vec<FileRoute>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) idle_timeout: Option<Duration>,
    pub(super) max_header_size: Option<usize>,
    pub(super) maxconn: Option<usize>,
    pub(super) accept_proxy: Option<bool>,
    pub(super) allow_connect: Option<bool>,
    pub(super) tls: Option<FileFrontendTls>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) rate_limit: Option<FileRateLimit>,
    pub(super) redirect: Option<FileRedirect>,
    pub(super) request_headers: Option<FileHeaderRules>,
    pub(super) response_headers: Option<FileHeaderRules>,
    pub(super) max_body_size: Option<FileSize>,
}

/// `[[frontend.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) strip_prefix: Option<bool>,
    pub(super) sni: Option<String>,
    pub(super) backend: Option<String>,
    pub(super) backends: Option<Vec<FileWeighted>>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) rate_limit: Option<FileRateLimit>,
    pub(super) redirect: Option<FileRedirect>,
    pub(super) request_headers: Option<FileHeaderRules>,
    pub(super) response_headers: Option<FileHeaderRules>,
    pub(super) max_body_size: Option<FileSize>,
}

/// One of a route's `backends = [{ name = "...", weight = 90 }]`. The weight is read wide so
/// that a negative or overlong one is refused with a message naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWeighted {
    pub(super) name: String,
    pub(super) weight: i64,
}

/// `[[service_tree]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServiceTree {
    pub(super) etcd_prefix: String,
    pub(super) servers_dir: Option<String>,
    #[serde(default)]
    pub(super) frontends: Vec<String>,
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) strip_prefix: Option<bool>,
    pub(super) template: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) service_linger: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFrontendTls {
    #[serde(default)]
    pub(super) certs: Vec<FileCertPair>,
    pub(super) alpn: Option<Vec<String>>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) handshake_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCertPair {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackendTls {
    pub(super) ca: Option<PathBuf>,
    pub(super) sni: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackend {
    pub(super) name: String,
    pub(super) etcd_prefix: Option<String>,
    #[serde(default)]
    pub(super) servers: Vec<String>,
    pub(super) balance: Option<Balance>,
    pub(super) hash_key: Option<String>,
    pub(super) check: Option<FileCheck>,
    pub(super) passive: Option<FilePassive>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) slowstart: Option<Duration>,
    pub(super) panic_threshold: Option<u32>,
    pub(super) retry_budget_percent: Option<u32>,
    pub(super) retry_budget_min: Option<u32>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) response_timeout: Option<Duration>,
    pub(super) retries: Option<u32>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) pool_idle_timeout: Option<Duration>,
    pub(super) protocol: Option<Protocol>,
    pub(super) send_proxy: Option<ProxyVersion>,
    pub(super) tls: Option<FileBackendTls>,
    pub(super) sticky: Option<super::sticky::FileSticky>,
    pub(super) max_conns_per_server: Option<u32>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) queue_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCheck {
    #[serde(rename = "type")]
    pub(super) kind: Option<CheckType>,
    pub(super) path: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) inter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) fastinter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) downinter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) timeout: Option<Duration>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) expect_status: Option<Vec<u16>>,
    pub(super) host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePassive {
    pub(super) error_limit: Option<u32>,
    pub(super) consecutive_5xx: Option<u32>,
    pub(super) max_ejected_percent: Option<u32>,
}

/// Durations in the file: humantime strings, at most [`bounded::MAX`]. Every duration ends up
/// added to an `Instant` (a deadline, a timer), and one of centuries would overflow it there.
pub(super) mod bounded {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<humantime_serde::Serde<Duration>> = Option::deserialize(d)?;
        match v.map(|s| s.into_inner()) {
            Some(x) if x > MAX => Err(D::Error::custom(format!(
                "{} is longer than the limit of 365 days",
                humantime::format_duration(x)
            ))),
            v => Ok(v),
        }
    }
}
