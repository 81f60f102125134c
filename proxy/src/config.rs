//! Static configuration of the proxy: a TOML file, then `LLMHUB_…` environment variables.
//!
//! Dynamic configuration (providers, keys, routes, client keys) never comes from here: it arrives
//! from the control plane as snapshots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// Environment keys the proxy reads, without the `LLMHUB_` prefix. The control plane shares the
/// prefix, so other `LLMHUB_…` variables are ignored rather than refused.
const ENV_KEYS: &[&str] = &[
    "listen",
    "internal_listen",
    "control_plane_url",
    "control_plane_server_name",
    "tls_ca_cert",
    "tls_cert",
    "tls_key",
    "proxy_id",
    "max_body_bytes",
    "log_format",
    "report_queue",
    "breaker_failures",
    "breaker_open_ms",
    "egress_allow",
    "redis_url",
    "redis_prefix",
    "redis_timeout_ms",
    "spool_dir",
    "spool_max_bytes",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.into(),
    }
}

/// Serializable too, so a launcher (`llmhub up`) can write a typed configuration for a child.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Public LLM API listener.
    pub listen: Option<String>,
    /// `/healthz` and `/readyz`; keep it off the public network.
    pub internal_listen: Option<String>,
    /// `https://host:port` of the control plane's gRPC listener.
    pub control_plane_url: Option<String>,
    /// Name expected on the control plane's certificate (default `llmhub-control`).
    pub control_plane_server_name: Option<String>,
    /// CA that signed the control plane's certificate.
    pub tls_ca_cert: Option<PathBuf>,
    /// This proxy's client certificate, signed by the same private CA.
    pub tls_cert: Option<PathBuf>,
    /// This proxy's client private key.
    pub tls_key: Option<PathBuf>,
    /// Identity reported to the control plane (default: a random `proxy-…`).
    pub proxy_id: Option<String>,
    /// Largest accepted request body (default 8 MiB).
    pub max_body_bytes: Option<u64>,
    /// `json` (default) or `text`.
    pub log_format: Option<String>,
    /// Routing records buffered while the control plane is unreachable (default 10000).
    pub report_queue: Option<usize>,
    /// Consecutive failures (5xx, connect errors, timeouts) that open a provider's circuit.
    pub breaker_failures: Option<u32>,
    /// How long an opened circuit stays open at first, in ms (doubles on repeat, up to 8x).
    pub breaker_open_ms: Option<u64>,
    /// Networks provider traffic may reach besides public addresses (CIDRs or single
    /// addresses; a list, or one comma-separated string in `LLMHUB_EGRESS_ALLOW`). Default:
    /// none — loopback, private, link-local (cloud metadata) and other internal addresses are
    /// refused.
    #[serde(
        default,
        deserialize_with = "comma_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_allow: Option<Vec<String>>,
    /// `redis://[user:password@]host:port[/db]` where every proxy shares its limit counters.
    /// Without it each proxy counts in process and enforces its share of every limit (the limit
    /// divided by the live proxies), which is exact for one proxy and conservative for several.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (default `llmhub:`), to share one Redis between deployments.
    pub redis_prefix: Option<String>,
    /// Time budget of one limit check in Redis, in ms (default 50): past it the proxy decides on
    /// its local share instead, and counts the decision as degraded.
    pub redis_timeout_ms: Option<u64>,
    /// Directory where routing records wait until the control plane has stored them (created
    /// 0700). Without it they wait in memory: they survive a control-plane outage but not a
    /// restart of this proxy.
    pub spool_dir: Option<PathBuf>,
    /// Most bytes of records spooled (default 256 MiB); past it new records are dropped and
    /// counted.
    pub spool_max_bytes: Option<u64>,
}

/// A list given as an array or as one comma-separated string (environment variables).
fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Either::Many(v) => v,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub internal_listen: SocketAddr,
    pub control_plane_url: String,
    pub control_plane_server_name: String,
    pub ca_cert_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub proxy_id: String,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub report_queue: usize,
    pub header_read_timeout: Duration,
    pub breaker: crate::health::BreakerPolicy,
    pub egress: llmhub_providers::EgressPolicy,
    pub redis: Option<RedisConfig>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
}

/// Where limit counters are shared. The URL may hold a password: it is never printed.
#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("internal_listen", &self.internal_listen)
            .field("control_plane_url", &self.control_plane_url)
            .field("proxy_id", &self.proxy_id)
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl RawConfig {
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
        fig.extract().map_err(|e| ConfigError::Parse(e.to_string()))
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let addr =
            |name: &'static str, v: Option<String>, d: &str| -> Result<SocketAddr, ConfigError> {
                v.as_deref()
                    .unwrap_or(d)
                    .parse()
                    .map_err(|_| field(name, "must be an address like 127.0.0.1:8000"))
            };
        let listen = addr("listen", self.listen, "127.0.0.1:8000")?;
        let internal_listen = addr("internal_listen", self.internal_listen, "127.0.0.1:8001")?;
        let control_plane_url = self
            .control_plane_url
            .unwrap_or_else(|| "https://127.0.0.1:8443".into());
        if !control_plane_url.starts_with("https://") {
            return Err(field(
                "control_plane_url",
                "must start with https:// (the control plane is reached only over mutual TLS)",
            ));
        }
        let read = |name: &'static str, p: Option<PathBuf>| -> Result<Vec<u8>, ConfigError> {
            let p = p.ok_or_else(|| field(name, "is required"))?;
            std::fs::read(&p).map_err(|e| field(name, format!("cannot read {}: {e}", p.display())))
        };
        let ca_cert_pem = read("tls_ca_cert", self.tls_ca_cert)?;
        let cert_pem = read("tls_cert", self.tls_cert)?;
        let key_pem = read("tls_key", self.tls_key)?;
        let proxy_id = match self.proxy_id {
            Some(id) if !id.is_empty() && id.len() <= 64 => id,
            Some(_) => return Err(field("proxy_id", "must be 1-64 characters")),
            None => format!("proxy-{:08x}", rand::random::<u32>()),
        };
        let max_body = self.max_body_bytes.unwrap_or(8 * 1024 * 1024);
        if !(1024..=256 * 1024 * 1024).contains(&max_body) {
            return Err(field("max_body_bytes", "must be between 1 KiB and 256 MiB"));
        }
        let log_format = match self.log_format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(field(
                    "log_format",
                    format!("must be json or text, not {other:?}"),
                ));
            }
        };
        let report_queue = self.report_queue.unwrap_or(10_000);
        if report_queue == 0 {
            return Err(field("report_queue", "must be at least 1"));
        }
        let breaker_failures = self.breaker_failures.unwrap_or(5);
        if breaker_failures == 0 {
            return Err(field("breaker_failures", "must be at least 1"));
        }
        let breaker_open_ms = self.breaker_open_ms.unwrap_or(10_000);
        if !(100..=600_000).contains(&breaker_open_ms) {
            return Err(field("breaker_open_ms", "must be between 100 and 600000"));
        }
        let egress = llmhub_providers::EgressPolicy::parse(&self.egress_allow.unwrap_or_default())
            .map_err(|e| field("egress_allow", e.to_string()))?;
        let redis_timeout_ms = self.redis_timeout_ms.unwrap_or(50);
        if !(1..=10_000).contains(&redis_timeout_ms) {
            return Err(field("redis_timeout_ms", "must be between 1 and 10000"));
        }
        let redis_prefix = self.redis_prefix.unwrap_or_else(|| "llmhub:".into());
        if redis_prefix.len() > 64 || redis_prefix.chars().any(char::is_whitespace) {
            return Err(field(
                "redis_prefix",
                "must be at most 64 characters without spaces",
            ));
        }
        let redis = match self.redis_url {
            None => None,
            Some(url) => {
                if !url.starts_with("redis://") {
                    // The message must not echo the URL: it may carry a password.
                    return Err(field(
                        "redis_url",
                        "must start with redis:// (a Redis reachable on a private network)",
                    ));
                }
                if redis::Client::open(url.as_str()).is_err() {
                    return Err(field("redis_url", "is not a valid Redis URL"));
                }
                Some(RedisConfig {
                    url,
                    prefix: redis_prefix,
                    timeout: Duration::from_millis(redis_timeout_ms),
                })
            }
        };
        let spool_max_bytes = self.spool_max_bytes.unwrap_or(256 * 1024 * 1024);
        if !(1024 * 1024..=1024 * 1024 * 1024 * 1024).contains(&spool_max_bytes) {
            return Err(field("spool_max_bytes", "must be between 1 MiB and 1 TiB"));
        }
        if self
            .spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(field("spool_dir", "must not be empty"));
        }
        Ok(Config {
            spool_dir: self.spool_dir,
            spool_max_bytes,
            redis,
            egress,
            breaker: crate::health::BreakerPolicy {
                failures: breaker_failures,
                open: Duration::from_millis(breaker_open_ms),
            },
            listen,
            internal_listen,
            control_plane_url,
            control_plane_server_name: self
                .control_plane_server_name
                .unwrap_or_else(|| "llmhub-control".into()),
            ca_cert_pem,
            cert_pem,
            key_pem,
            proxy_id,
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
            log_format,
            report_queue,
            header_read_timeout: Duration::from_secs(30),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Mutation = Box<dyn Fn(&mut RawConfig)>;

    fn base(dir: &Path) -> RawConfig {
        for f in ["ca.pem", "c.pem", "k.pem"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        RawConfig {
            tls_ca_cert: Some(dir.join("ca.pem")),
            tls_cert: Some(dir.join("c.pem")),
            tls_key: Some(dir.join("k.pem")),
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        assert!(base(dir.path()).validate().is_ok());
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.listen = Some("x".into())), "listen"),
            (
                Box::new(|c| c.control_plane_url = Some("http://h:1".into())),
                "control_plane_url",
            ),
            (Box::new(|c| c.tls_cert = None), "tls_cert"),
            (Box::new(|c| c.tls_key = Some("/nope".into())), "tls_key"),
            (Box::new(|c| c.max_body_bytes = Some(1)), "max_body_bytes"),
            (
                Box::new(|c| c.log_format = Some("yaml".into())),
                "log_format",
            ),
            (
                Box::new(|c| {
                    c.egress_allow = Some(vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()])
                }),
                "egress_allow",
            ),
            (
                Box::new(|c| c.redis_url = Some("http://secret@h:1".into())),
                "redis_url",
            ),
            (
                Box::new(|c| c.redis_timeout_ms = Some(0)),
                "redis_timeout_ms",
            ),
            (
                Box::new(|c| c.spool_max_bytes = Some(10)),
                "spool_max_bytes",
            ),
            (
                Box::new(|c| c.redis_prefix = Some("a b".into())),
                "redis_prefix",
            ),
        ];
        for (m, name) in cases {
            let mut raw = base(dir.path());
            m(&mut raw);
            match raw.validate() {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn a_bad_redis_url_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            "http://user:hunter2@redis:6379",
            "redis://user:hunter2@[::1",
        ] {
            let mut raw = base(dir.path());
            raw.redis_url = Some(url.into());
            let e = raw.validate().err().unwrap().to_string();
            assert!(e.contains("redis_url") && !e.contains("hunter2"), "{e}");
        }
        let mut raw = base(dir.path());
        raw.redis_url = Some("redis://:hunter2@127.0.0.1:6379/2".into());
        let c = raw.validate().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redis.unwrap().timeout, Duration::from_millis(50));
    }

    #[test]
    fn egress_allow_defaults_to_nothing_and_reads_a_comma_list() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).validate().unwrap();
        assert!(c.egress.allow.is_empty());
        let read = |t: &str| -> RawConfig { Figment::from(Toml::string(t)).extract().unwrap() };
        let raw = read("egress_allow = \"127.0.0.0/8, ::1/128\"");
        assert_eq!(raw.egress_allow.unwrap(), ["127.0.0.0/8", "::1/128"]);
        let raw = read("egress_allow = [\"10.0.0.0/8\"]");
        assert_eq!(raw.egress_allow.unwrap(), ["10.0.0.0/8"]);
    }
}
