//! What proxies report, in the control plane's own terms: key outcomes (which become fleet-wide
//! key health) and routing records. The gRPC edge (`grpc`) builds these from proto messages.

use chrono::{DateTime, Utc};

pub use llmhub_providers::FailureClass;

/// What an attempt or a key outcome came to. Stored as its `as_str` form (key cooldowns and
/// history, a key's last error, routing-record attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(FailureClass),
    /// The proxy stopped waiting for the provider (attempts only; on the wire the class string
    /// `timeout` refines the enum's `provider_unavailable`).
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(c) => c.as_str(),
            Outcome::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Outcome::Ok),
            "timeout" => Some(Outcome::Timeout),
            other => FailureClass::parse(other).map(Outcome::Failed),
        }
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
    pub class: Option<Outcome>,
    pub status: u32,
    pub observed_at: Option<DateTime<Utc>>,
    /// When the key may be used again, as the proxy applied it.
    pub retry_at: Option<DateTime<Utc>>,
    /// The recovery time came from the provider rather than the proxy's own backoff.
    pub provider_stated: bool,
    /// The client key whose request led to the outcome (empty when unknown).
    pub client_key_prefix: String,
    /// An ambiguous refusal: verify the key before disabling it or cooling it for long.
    pub needs_verification: bool,
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
    /// Usage as the provider reported it (`prompt_tokens` includes `cached_tokens`), or for a
    /// partial record as far as it was delivered.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// The client went away before the answer ended.
    pub partial: bool,
    /// Nano-US-dollars, at the price the proxy knew (0 when it knew none).
    pub cost_nanos: u64,
    pub client_key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider_id: String,
    pub key_fingerprint: String,
    pub upstream_model: String,
    pub status: u32,
    pub latency_ms: u32,
    /// `None`: a class this control plane does not know (stored as an empty string).
    pub class: Option<Outcome>,
}

impl RoutingRecord {
    /// The attempt that answered (the last one), whose upstream model priced the request.
    pub fn served_by(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    pub fn used_tokens(&self) -> bool {
        self.prompt_tokens > 0 || self.completion_tokens > 0
    }

    /// The stored `detail` column: attempts and skipped candidates.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "attempts": self.attempts.iter().map(|a| serde_json::json!({
                "provider_id": a.provider_id,
                "key_fingerprint": a.key_fingerprint,
                "upstream_model": a.upstream_model,
                "status": a.status,
                "latency_ms": a.latency_ms,
                "class": a.class.map_or("", Outcome::as_str),
            })).collect::<Vec<_>>(),
            "skipped": self.skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_as_the_stored_strings() {
        let all = FailureClass::ALL
            .into_iter()
            .map(Outcome::Failed)
            .chain([Outcome::Ok, Outcome::Timeout]);
        for o in all {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        for (o, s) in [
            (Outcome::Ok, "ok"),
            (Outcome::Failed(FailureClass::RateLimited), "rate_limited"),
            (
                Outcome::Failed(FailureClass::Overloaded),
                "provider_unavailable",
            ),
            (Outcome::Timeout, "timeout"),
        ] {
            assert_eq!(o.as_str(), s);
        }
        assert_eq!(Outcome::parse("forced"), None);
        assert_eq!(Outcome::parse(""), None);
    }
}
