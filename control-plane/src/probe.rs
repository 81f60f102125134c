//! One provider-key probe: the provider's models request (where each kind takes its key and
//! what its answers mean come from `llmhub-providers`, as in the proxy), sent only where the
//! egress policy permits. Used by the key test an owner runs and by the hub, which verifies a
//! key before an ambiguous refusal may disable it or cool it for long.

use std::time::{Duration, Instant};

use llmhub_providers::{EgressPolicy, Endpoint, FailureClass, Kind};

use crate::keyring::Plaintext;
use crate::keyring::provider_key_aad;
use crate::store::entities::{provider_keys, providers};
use crate::vault::Vault;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The provider accepted the key.
    Works { status: u16, latency_ms: u64 },
    /// The provider refused it; the class says why.
    Refused {
        status: u16,
        class: FailureClass,
        latency_ms: u64,
    },
    /// No answer (connect error, timeout).
    Unreachable { latency_ms: u64 },
    /// The provider's address is not allowed by the egress policy; nothing was sent.
    EgressDenied,
    /// The key cannot be used at all (cannot be decrypted, or is not header text).
    Unusable(&'static str),
}

/// Sends probes.
#[derive(Clone)]
pub struct Prober {
    pub http: reqwest::Client,
    pub egress: EgressPolicy,
}

impl Prober {
    /// Opens the stored key and probes it at its provider.
    pub async fn probe_stored(
        &self,
        vault: &Vault,
        provider: &providers::Model,
        key: &provider_keys::Model,
    ) -> Probe {
        let aad = provider_key_aad(&key.id, key.owner_user_id.as_deref(), &key.provider_id);
        let plain: Plaintext = match vault.keyring().open(&key.sealed, &aad) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(key_id = %key.id, error = %e, "cannot open provider key for a probe");
                return Probe::Unusable("this key cannot be decrypted; replace it");
            }
        };
        match plain.expose_str() {
            Some(secret) => self.probe(provider, secret).await,
            None => Probe::Unusable("this key is not valid text; replace it"),
        }
    }

    pub async fn probe(&self, provider: &providers::Model, secret: &str) -> Probe {
        // An IP literal or metadata name is checked here, any other name by the client's
        // resolver at connect time.
        let host = url::Url::parse(&provider.base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        if host.is_none_or(|h| !self.egress.permits_url_host(&h)) {
            return Probe::EgressDenied;
        }
        let kind = Kind::from_slug(&provider.kind).unwrap_or(Kind::OpenAiCompatible);
        let endpoint = Endpoint {
            base_url: &provider.base_url,
            api_version: provider.api_version.as_deref().unwrap_or_default(),
        };
        let Some(probe) = llmhub_providers::models_request(kind, &endpoint, secret) else {
            return Probe::Unusable("this key cannot be sent as a header; replace it");
        };
        let mut req = self.http.get(probe.url).timeout(Duration::from_secs(10));
        for (name, value) in probe.headers {
            req = req.header(name, value);
        }
        let started = Instant::now();
        let sent = req.send().await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match sent {
            Err(e) if crate::egress::denied_in(&e).is_some() => Probe::EgressDenied,
            Err(_) => Probe::Unreachable { latency_ms },
            Ok(r) if r.status().is_success() => Probe::Works {
                status: r.status().as_u16(),
                latency_ms,
            },
            Ok(r) => {
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                // A bounded prefix only: the body is classified, never relayed or logged.
                let body = read_prefix(r, 64 * 1024).await;
                let class = kind
                    .classify(status, &headers, &body, std::time::SystemTime::now())
                    .class;
                Probe::Refused {
                    status,
                    class,
                    latency_ms,
                }
            }
        }
    }
}

/// At most `limit` bytes of a response body.
async fn read_prefix(mut r: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())]);
        if out.len() >= limit {
            break;
        }
    }
    out
}
