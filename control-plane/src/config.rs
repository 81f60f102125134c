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
    "registration",
    "argon2_m_kib",
    "argon2_t",
    "argon2_p",
    "hash_concurrency",
    "refresh_token_ttl_secs",
    "redis_url",
    "redis_prefix",
    "dashboard_origins",
    "admin_tls_cert",
    "admin_tls_key",
    "admin_rate_limit_ip",
    "admin_rate_limit_user",
    "login_max_failures",
    "login_lock_base_secs",
    "login_lock_max_secs",
    "login_ip_max_failures",
    "login_account_max_failures",
    "registration_rate_limit",
    "trust_forwarded_for",
    "egress_allow",
    "record_retention_days",
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
    /// Self-service registration: `closed` (default), `open`, or `approval` (an admin activates).
    pub registration: Option<String>,
    /// argon2id memory cost in KiB (at least 19456).
    pub argon2_m_kib: Option<u32>,
    /// argon2id iterations (at least 2).
    pub argon2_t: Option<u32>,
    /// argon2id parallelism (at least 1).
    pub argon2_p: Option<u32>,
    /// Password hashes computed at once; more wait briefly, then get 503.
    pub hash_concurrency: Option<usize>,
    /// Lifetime of a sign-in session (refresh tokens), in seconds.
    pub refresh_token_ttl_secs: Option<u64>,
    /// Redis for login counters and admin rate limits shared by all replicas. Without it the
    /// counters are in-process (fine for one replica only).
    pub redis_url: Option<String>,
    /// Prefix for every Redis key.
    pub redis_prefix: Option<String>,
    /// Exact origins allowed to call the admin API from a browser (CORS), e.g.
    /// `https://hub.example.com`. A list, or one comma-separated string.
    pub dashboard_origins: Option<StringList>,
    /// Serve the admin API over TLS with this certificate chain (PEM)...
    pub admin_tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    pub admin_tls_key: Option<PathBuf>,
    /// Admin API requests per minute from one address.
    pub admin_rate_limit_ip: Option<u64>,
    /// Admin API requests per minute for one signed-in user.
    pub admin_rate_limit_user: Option<u64>,
    /// Failed logins for one account from one address before a lockout.
    pub login_max_failures: Option<u64>,
    /// First lockout in seconds; doubles with each repeat, up to `login_lock_max_secs`.
    pub login_lock_base_secs: Option<u64>,
    pub login_lock_max_secs: Option<u64>,
    /// Failed logins from one address across accounts before the address is throttled.
    pub login_ip_max_failures: Option<u64>,
    /// Failed logins for one account from all addresses together (15 min) before the account is
    /// throttled from everywhere (429, growing like a lockout, ending by itself).
    pub login_account_max_failures: Option<u64>,
    /// Registration attempts per hour from one address (`open` and `approval` modes).
    pub registration_rate_limit: Option<u64>,
    /// Take the client address from `X-Forwarded-For` (only behind your own reverse proxy).
    pub trust_forwarded_for: Option<bool>,
    /// Networks key tests may reach besides public addresses (CIDRs or single addresses).
    /// Default: none — loopback, private, link-local (cloud metadata) and other internal
    /// addresses are refused, and so are provider base URLs naming them.
    pub egress_allow: Option<StringList>,
    /// Days routing records are kept (whole UTC days before today's), 1 to 3650; default 30.
    /// On Postgres a day's partition is dropped whole once it is older. The daily usage rollups
    /// are kept regardless.
    pub record_retention_days: Option<u32>,
}

/// A list given either as an array or as one comma-separated string (handy in environment
/// variables).
#[derive(Debug, Clone, Default)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        Ok(StringList(match Either::deserialize(d)? {
            Either::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Either::Many(v) => v,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Closed,
    Open,
    Approval,
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
    /// Insecure but accepted settings found while validating, logged once tracing is set up.
    pub warnings: Vec<String>,
    pub database_url: String,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub tls: TlsFiles,
    pub keyring: Keyring,
    /// Where the keys came from, when a file: `reload` re-reads it.
    pub master_key_file: Option<PathBuf>,
    pub jwt_secret: SecretBox<Vec<u8>>,
    pub access_token_ttl: Duration,
    pub log_format: LogFormat,
    pub bootstrap_admin: bool,
    pub registration: Registration,
    pub hash_cost: crate::auth::HashCost,
    pub hash_concurrency: usize,
    pub refresh_ttl: Duration,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub dashboard_origins: Vec<http::HeaderValue>,
    /// (certificate chain PEM, private key PEM) for the admin listener.
    pub admin_tls: Option<(Vec<u8>, Vec<u8>)>,
    pub admin_rate_limit_ip: u64,
    pub admin_rate_limit_user: u64,
    pub registration_rate_limit: u64,
    pub login_policy: crate::limits::LoginPolicy,
    pub trust_forwarded_for: bool,
    /// Where key tests may connect (and which provider base URLs are accepted).
    pub egress: llmhub_providers::EgressPolicy,
    /// Days routing records are kept before today's (`record_retention_days`).
    pub record_retention_days: u32,
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

        let mut warnings = Vec::new();
        let master_key_file = self.master_key_file.clone();
        let keyring_src = match (self.master_keys, self.master_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::field(
                    "master_keys",
                    "set either master_keys or master_key_file, not both",
                ));
            }
            (Some(s), None) => s,
            (None, Some(path)) => {
                String::from_utf8(read_secret_file("master_key_file", &path, &mut warnings)?)
                    .map_err(|_| ConfigError::field("master_key_file", "is not UTF-8"))?
            }
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
                let mut bytes = read_secret_file("jwt_secret_file", &path, &mut warnings)?;
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
        let registration = match self.registration.as_deref().unwrap_or("closed") {
            "closed" => Registration::Closed,
            "open" => Registration::Open,
            "approval" => Registration::Approval,
            other => {
                return Err(ConfigError::field(
                    "registration",
                    format!("must be closed, open or approval, not {other:?}"),
                ));
            }
        };
        let min = crate::auth::HashCost::default();
        let hash_cost = crate::auth::HashCost {
            m_kib: self.argon2_m_kib.unwrap_or(min.m_kib),
            t: self.argon2_t.unwrap_or(min.t),
            p: self.argon2_p.unwrap_or(min.p),
        };
        if hash_cost.m_kib < min.m_kib || hash_cost.m_kib > 4 * 1024 * 1024 {
            return Err(ConfigError::field(
                "argon2_m_kib",
                "must be between 19456 and 4194304",
            ));
        }
        if hash_cost.t < min.t || hash_cost.t > 100 {
            return Err(ConfigError::field("argon2_t", "must be between 2 and 100"));
        }
        if hash_cost.p < 1 || hash_cost.p > 64 {
            return Err(ConfigError::field("argon2_p", "must be between 1 and 64"));
        }
        let hash_concurrency = self.hash_concurrency.unwrap_or(4);
        if !(1..=256).contains(&hash_concurrency) {
            return Err(ConfigError::field(
                "hash_concurrency",
                "must be between 1 and 256",
            ));
        }
        let refresh = self.refresh_token_ttl_secs.unwrap_or(7 * 24 * 3600);
        if !(300..=90 * 24 * 3600).contains(&refresh) {
            return Err(ConfigError::field(
                "refresh_token_ttl_secs",
                "must be between 300 and 7776000 (90 days)",
            ));
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::field(
                "redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        let egress =
            llmhub_providers::EgressPolicy::parse(&self.egress_allow.unwrap_or_default().0)
                .map_err(|e| ConfigError::field("egress_allow", e.to_string()))?;
        let record_retention_days = self.record_retention_days.unwrap_or(30);
        if !(1..=3650).contains(&record_retention_days) {
            return Err(ConfigError::field(
                "record_retention_days",
                "must be between 1 and 3650",
            ));
        }
        let mut dashboard_origins = Vec::new();
        for o in self.dashboard_origins.unwrap_or_default().0 {
            dashboard_origins.push(validate_origin(&o)?);
        }
        let admin_tls = match (self.admin_tls_cert, self.admin_tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                read_file("admin_tls_cert", &c)?,
                read_file("admin_tls_key", &k)?,
            )),
            (Some(_), None) => {
                return Err(ConfigError::field(
                    "admin_tls_key",
                    "is required with admin_tls_cert",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::field(
                    "admin_tls_cert",
                    "is required with admin_tls_key",
                ));
            }
        };
        let positive = |field: &'static str, v: Option<u64>, d: u64| -> Result<u64, ConfigError> {
            match v.unwrap_or(d) {
                0 => Err(ConfigError::field(field, "must be at least 1")),
                n => Ok(n),
            }
        };
        let lock_base = positive("login_lock_base_secs", self.login_lock_base_secs, 60)?;
        let lock_max = positive("login_lock_max_secs", self.login_lock_max_secs, 900)?;
        if lock_max < lock_base {
            return Err(ConfigError::field(
                "login_lock_max_secs",
                "must be at least login_lock_base_secs",
            ));
        }
        let login_policy = crate::limits::LoginPolicy {
            max_failures: positive("login_max_failures", self.login_max_failures, 5)?,
            lock_base: Duration::from_secs(lock_base),
            lock_max: Duration::from_secs(lock_max),
            ip_max_failures: positive("login_ip_max_failures", self.login_ip_max_failures, 30)?,
            account_max_failures: positive(
                "login_account_max_failures",
                self.login_account_max_failures,
                20,
            )?,
            ..Default::default()
        };
        Ok(Config {
            warnings,
            registration,
            hash_cost,
            hash_concurrency,
            refresh_ttl: Duration::from_secs(refresh),
            redis_url: self.redis_url,
            redis_prefix: self.redis_prefix.unwrap_or_else(|| "llmhub:".into()),
            dashboard_origins,
            admin_tls,
            admin_rate_limit_ip: positive("admin_rate_limit_ip", self.admin_rate_limit_ip, 600)?,
            admin_rate_limit_user: positive(
                "admin_rate_limit_user",
                self.admin_rate_limit_user,
                1200,
            )?,
            registration_rate_limit: positive(
                "registration_rate_limit",
                self.registration_rate_limit,
                10,
            )?,
            login_policy,
            trust_forwarded_for: self.trust_forwarded_for.unwrap_or(false),
            egress,
            record_retention_days,
            database_url,
            admin_listen,
            grpc_listen,
            tls,
            keyring,
            master_key_file,
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

/// An exact browser origin: `scheme://host[:port]`, nothing else (no `null`, no wildcard, no path).
fn validate_origin(o: &str) -> Result<http::HeaderValue, ConfigError> {
    let bad = || {
        ConfigError::field(
            "dashboard_origins",
            format!("{o:?} is not an exact origin like https://hub.example.com"),
        )
    };
    let url = url::Url::parse(o).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || !url.username().is_empty()
        || o.ends_with('/')
        || o.contains('*')
    {
        return Err(bad());
    }
    http::HeaderValue::from_str(o).map_err(|_| bad())
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

impl Config {
    /// Logs the warnings validation collected (call once tracing is initialized).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(event = "insecure_configuration", "{w}");
        }
    }
}

/// Reads a file holding a secret. Refused when others may write it (they could replace the
/// key); a warning (returned for the log, which does not exist yet) when others may read it —
/// container secret mounts are often world-readable, so that alone does not stop the process.
fn read_secret_file(
    field: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<u8>, ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| ConfigError::field(field, format!("cannot read {}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(ConfigError::field(
                field,
                format!(
                    "{} is writable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
        if mode & 0o044 != 0 {
            warnings.push(format!(
                "{field}: {} is readable by group or others (mode {:o}); restrict it to the service user (chmod 600)",
                path.display(),
                mode & 0o777
            ));
        }
    }
    read_file(field, path)
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
    fn egress_allow_is_parsed_and_a_bad_entry_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).validate().unwrap();
        assert!(
            c.egress.allow.is_empty(),
            "default: nothing internal allowed"
        );
        let mut raw = base(dir.path());
        raw.egress_allow = Some(StringList(vec!["10.0.0.0/8".into(), "::1".into()]));
        let c = raw.validate().unwrap();
        assert!(c.egress.permits("10.1.2.3".parse().unwrap()));
        assert!(!c.egress.permits("169.254.169.254".parse().unwrap()));
        for bad in ["10.0.0.0/40", "example.com", "10.0.0.0/8/1"] {
            let mut raw = base(dir.path());
            raw.egress_allow = Some(StringList(vec!["127.0.0.1".into(), bad.into()]));
            let r = raw.validate();
            let msg = r
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert_eq!(field_of(r), "egress_allow", "{bad}");
            assert!(msg.contains(bad), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_others_can_write_are_refused_and_readable_ones_warned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("master.key");
        let jwt = dir.path().join("jwt.secret");
        std::fs::write(
            &keys,
            format!("1:{}\n", crate::keyring::encode_key(&[7u8; 32])),
        )
        .unwrap();
        std::fs::write(&jwt, "0123456789abcdef0123456789abcdef\n").unwrap();
        let with_files = || {
            let mut raw = base(dir.path());
            raw.master_keys = None;
            raw.jwt_secret = None;
            raw.master_key_file = Some(keys.clone());
            raw.jwt_secret_file = Some(jwt.clone());
            raw
        };
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        chmod(&keys, 0o600);
        chmod(&jwt, 0o600);
        assert!(with_files().validate().unwrap().warnings.is_empty());
        chmod(&keys, 0o644);
        let c = with_files().validate().unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("master_key_file"),
            "{:?}",
            c.warnings
        );
        chmod(&keys, 0o666);
        assert_eq!(field_of(with_files().validate()), "master_key_file");
        chmod(&keys, 0o600);
        chmod(&jwt, 0o620);
        assert_eq!(field_of(with_files().validate()), "jwt_secret_file");
    }

    #[test]
    fn valid_config_passes() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).validate().unwrap();
        assert_eq!(c.admin_listen.port(), 8080);
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.record_retention_days, 30);
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
            (
                Box::new(|c| c.record_retention_days = Some(0)),
                "record_retention_days",
            ),
            (
                Box::new(|c| c.record_retention_days = Some(3651)),
                "record_retention_days",
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
