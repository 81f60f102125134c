//! What proxies report, in the control plane's own terms: key outcomes (which become fleet-wide
//! key health) and routing records. The gRPC edge (`grpc`) builds these from proto messages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What an upstream answer meant for the key that sent it. Stored as its `as_str` form (key
/// cooldowns and history, a key's last error, routing-record attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Ok,
    RateLimited,
    QuotaExhausted,
    InvalidKey,
    ProviderUnavailable,
    ClientError,
    /// The proxy stopped waiting for the provider (attempts only; the proto has no enum value
    /// for it, so it arrives as the string `timeout`).
    Timeout,
}

impl FailureClass {
    pub const ALL: [FailureClass; 7] = [
        FailureClass::Ok,
        FailureClass::RateLimited,
        FailureClass::QuotaExhausted,
        FailureClass::InvalidKey,
        FailureClass::ProviderUnavailable,
        FailureClass::ClientError,
        FailureClass::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Ok => "ok",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::InvalidKey => "invalid_key",
            FailureClass::ProviderUnavailable => "provider_unavailable",
            FailureClass::ClientError => "client_error",
            FailureClass::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        FailureClass::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One batch from one proxy's Report stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub proxy_id: String,
    pub records: Vec<RoutingRecord>,
    pub outcomes: Vec<KeyOutcome>,
}

/// What a proxy observed about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOutcome {
    pub key_id: String,
    pub upstream_model: String,
    /// `None`: a class this control plane does not know (the outcome changes no health).
    pub class: Option<FailureClass>,
    pub status: u32,
    pub observed_at: Option<DateTime<Utc>>,
    /// When the key may be used again, as the proxy applied it.
    pub retry_at: Option<DateTime<Utc>>,
    /// The recovery time came from the provider rather than the proxy's own backoff.
    pub provider_stated: bool,
}

/// One proxied request. Delivered at least once; `request_id` makes storing it idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRecord {
    pub request_id: String,
    pub started_at: Option<DateTime<Utc>>,
    pub user_id: String,
    pub client_key_prefix: String,
    pub public_model: String,
    pub attempts: Vec<Attempt>,
    pub status: u32,
    pub latency_ms: u32,
    pub stream: bool,
    /// Why a candidate was skipped, one line each.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider_id: String,
    pub key_fingerprint: String,
    pub upstream_model: String,
    pub status: u32,
    pub latency_ms: u32,
    /// `None`: a class this control plane does not know (stored as an empty string).
    pub class: Option<FailureClass>,
}

impl RoutingRecord {
    /// The stored `detail` column: attempts and skipped candidates.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "attempts": self.attempts.iter().map(|a| serde_json::json!({
                "provider_id": a.provider_id,
                "key_fingerprint": a.key_fingerprint,
                "upstream_model": a.upstream_model,
                "status": a.status,
                "latency_ms": a.latency_ms,
                "class": a.class.map_or("", FailureClass::as_str),
            })).collect::<Vec<_>>(),
            "skipped": self.skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_class_round_trips_as_the_stored_strings() {
        for c in FailureClass::ALL {
            assert_eq!(FailureClass::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for (c, s) in [
            (FailureClass::Ok, "ok"),
            (FailureClass::RateLimited, "rate_limited"),
            (FailureClass::QuotaExhausted, "quota_exhausted"),
            (FailureClass::InvalidKey, "invalid_key"),
            (FailureClass::ProviderUnavailable, "provider_unavailable"),
            (FailureClass::ClientError, "client_error"),
        ] {
            assert_eq!(c.as_str(), s);
        }
        assert_eq!(FailureClass::parse("forced"), None);
        assert_eq!(FailureClass::parse(""), None);
    }
}
