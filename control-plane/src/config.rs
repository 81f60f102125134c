//! Static configuration of the control plane: a TOML file, then `LLMHUB_…` environment variables.
//!
//! Two phases: [`RawConfig`] is what serde reads (unknown file keys are refused); [`Config`] is the
//! validated form with typed fields and loaded secrets. Every error names the config key, and the
//! binary exits with status 64 on any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretBox;
use serde::Deserialize;

use crate::keyring::{Keyring, KeyringError};

/// Environment variables read by the control plane, without the `LLMHUB_` prefix. The proxy reads
/// the same prefix with its own keys, so unknown `LLMHUB_…` variables are ignored rather than
/// refused; the TOML file is strict.
const ENV_KEYS: &[&str] = &[
    "database_url",
    "admin_listen",
    "grpc_listen",
    "tls_ca_cert",
    "tls_cert",
    "tls_key",
    "master_keys",
    "master_key_current",
    "master_key_file",
    "jwt_secret",
    "jwt_secret_file",
    "access_token_ttl_secs",
    "log_format",
    "bootstrap_admin",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

impl ConfigError {
    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field,
            reason: reason.into(),
        }
    }
}

/// The control plane's configuration as written by an operator.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `postgres://user@host/db` or `sqlite://path/to/file.db?mode=rwc`.
    pub database_url: Option<String>,
    /// Admin REST API and dashboard listener; keep it on a private address.
    pub admin_listen: Option<String>,
    /// gRPC listener for proxies; mutual TLS is always required.
    pub grpc_listen: Option<String>,
    /// PEM file of the private CA that signs proxy client certificates.
    pub tls_ca_cert: Option<PathBuf>,
    /// PEM certificate chain of the control plane's gRPC server.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the control plane's gRPC server.
    pub tls_key: Option<PathBuf>,
    /// Master keys as `VERSION:BASE64` entries separated by commas, e.g. `1:…,2:…`.
    pub master_keys: Option<String>,
    /// Version that seals new writes; defaults to the highest version present.
    pub master_key_current: Option<u32>,
    /// File holding master keys in the same format as `master_keys` (one entry per line allowed).
    pub master_key_file: Option<PathBuf>,
    /// HMAC secret for access tokens; at least 32 bytes.
    pub jwt_secret: Option<String>,
    /// File holding the JWT secret.
    pub jwt_secret_file: Option<PathBuf>,
    /// Lifetime of access tokens in seconds (at most 900).
    pub access_token_ttl_secs: Option<u64>,
    /// `json` (default) or `text`.
    pub log_format: Option<String>,
    /// Create an `admin` account with a random one-time password printed once, when no user exists.
    pub bootstrap_admin: Option<bool>,
}

impl std::fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConfig")
            .field("admin_listen", &self.admin_listen)
            .field("grpc_listen", &self.grpc_listen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Validated configuration. Secrets are loaded and checked before anything binds a port.
pub struct Config {
    pub database_url: String,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub tls: TlsFiles,
    pub keyring: std::sync::Arc<Keyring>,
    pub jwt_secret: SecretBox<Vec<u8>>,
    pub access_token_ttl: Duration,
    pub log_format: LogFormat,
    pub bootstrap_admin: bool,
}

/// PEM contents, read at start so a missing file is a config error, not a runtime surprise.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_cert_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl RawConfig {
    /// Reads the optional TOML file, then the environment (which wins).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(
            Env::prefixed("LLMHUB_")
                .filter(|k| ENV_KEYS.contains(&k.as_str().to_ascii_lowercase().as_str())),
        );
        fig.extract::<RawConfig>()
            .map_err(|e| ConfigError::Parse(e.to_string()))
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let database_url = self
            .database_url
            .ok_or_else(|| ConfigError::field("database_url", "is required"))?;
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError::field(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        let admin_listen = parse_addr("admin_listen", self.admin_listen, "127.0.0.1:8080")?;
        let grpc_listen = parse_addr("grpc_listen", self.grpc_listen, "127.0.0.1:8443")?;
        let tls = TlsFiles {
            ca_cert_pem: read_required("tls_ca_cert", self.tls_ca_cert)?,
            cert_pem: read_required("tls_cert", self.tls_cert)?,
            key_pem: read_required("tls_key", self.tls_key)?,
        };

        let keyring_src = match (self.master_keys, self.master_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::field(
                    "master_keys",
                    "set either master_keys or master_key_file, not both",
                ));
            }
            (Some(s), None) => s,
            (None, Some(path)) => String::from_utf8(read_file("master_key_file", &path)?)
                .map_err(|_| ConfigError::field("master_key_file", "is not UTF-8"))?,
            (None, None) => {
                return Err(ConfigError::field(
                    "master_keys",
                    "is required (or master_key_file): provider keys are never stored unencrypted",
                ));
            }
        };
        let keyring = Keyring::parse(&keyring_src, self.master_key_current).map_err(|e| {
            let field = match e {
                KeyringError::UnknownCurrent(_) => "master_key_current",
                _ => "master_keys",
            };
            ConfigError::field(field, e.to_string())
        })?;

        let jwt_secret = match (self.jwt_secret, self.jwt_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::field(
                    "jwt_secret",
                    "set either jwt_secret or jwt_secret_file, not both",
                ));
            }
            (Some(s), None) => s.into_bytes(),
            (None, Some(path)) => {
                let mut bytes = read_file("jwt_secret_file", &path)?;
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                bytes
            }
            (None, None) => {
                return Err(ConfigError::field(
                    "jwt_secret",
                    "is required (or jwt_secret_file): at least 32 random bytes",
                ));
            }
        };
        if jwt_secret.len() < 32 {
            return Err(ConfigError::field(
                "jwt_secret",
                "must be at least 32 bytes (256 bits)",
            ));
        }
        if jwt_secret.iter().all(|b| *b == jwt_secret[0]) {
            return Err(ConfigError::field(
                "jwt_secret",
                "is a repeated single byte; use random bytes",
            ));
        }

        let ttl = self.access_token_ttl_secs.unwrap_or(900);
        if !(30..=900).contains(&ttl) {
            return Err(ConfigError::field(
                "access_token_ttl_secs",
                "must be between 30 and 900 seconds",
            ));
        }
        let log_format = match self.log_format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::field(
                    "log_format",
                    format!("must be json or text, not {other:?}"),
                ));
            }
        };
        Ok(Config {
            database_url,
            admin_listen,
            grpc_listen,
            tls,
            keyring: std::sync::Arc::new(keyring),
            jwt_secret: SecretBox::new(Box::new(jwt_secret)),
            access_token_ttl: Duration::from_secs(ttl),
            log_format,
            bootstrap_admin: self.bootstrap_admin.unwrap_or(true),
        })
    }
}

fn parse_addr(
    field: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    value
        .as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(|_| ConfigError::field(field, "must be an address like 127.0.0.1:8080"))
}

fn read_required(field: &'static str, path: Option<PathBuf>) -> Result<Vec<u8>, ConfigError> {
    let path = path.ok_or_else(|| {
        ConfigError::field(
            field,
            "is required (create files with `llmhub-control certs`)",
        )
    })?;
    read_file(field, &path)
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::field(field, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Mutation = Box<dyn Fn(&mut RawConfig)>;

    fn base(dir: &Path) -> RawConfig {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), b"pem").unwrap();
        }
        RawConfig {
            database_url: Some("sqlite://x.db".into()),
            tls_ca_cert: Some(dir.join("ca.pem")),
            tls_cert: Some(dir.join("cert.pem")),
            tls_key: Some(dir.join("key.pem")),
            master_keys: Some(format!("1:{}", crate::keyring::encode_key(&[7u8; 32]))),
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Default::default()
        }
    }

    fn field_of(r: Result<Config, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::Field { field, .. }) => field,
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn valid_config_passes() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).validate().unwrap();
        assert_eq!(c.admin_listen.port(), 8080);
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.database_url = None), "database_url"),
            (
                Box::new(|c| c.database_url = Some("mysql://x".into())),
                "database_url",
            ),
            (
                Box::new(|c| c.admin_listen = Some("nope".into())),
                "admin_listen",
            ),
            (
                Box::new(|c| c.tls_cert = Some("/nonexistent".into())),
                "tls_cert",
            ),
            (Box::new(|c| c.master_keys = None), "master_keys"),
            (
                Box::new(|c| c.master_keys = Some("1:short".into())),
                "master_keys",
            ),
            (
                Box::new(|c| c.master_key_current = Some(9)),
                "master_key_current",
            ),
            (Box::new(|c| c.jwt_secret = None), "jwt_secret"),
            (
                Box::new(|c| c.jwt_secret = Some("short".into())),
                "jwt_secret",
            ),
            (
                Box::new(|c| c.jwt_secret = Some("a".repeat(40))),
                "jwt_secret",
            ),
            (
                Box::new(|c| c.access_token_ttl_secs = Some(3600)),
                "access_token_ttl_secs",
            ),
            (
                Box::new(|c| c.log_format = Some("xml".into())),
                "log_format",
            ),
        ];
        for (mutate, field) in cases {
            let mut raw = base(dir.path());
            mutate(&mut raw);
            assert_eq!(field_of(raw.validate()), field);
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "databse_url = \"x\"\n").unwrap();
        let err = RawConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("databse_url"), "{err}");
    }
}
