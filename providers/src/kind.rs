//! Provider kinds and the small trait each kind's module implements. Everything that depends on
//! the kind of provider — which operations it serves and how, its URLs, how it takes its key,
//! what its keys look like and what its errors mean — is answered by that kind's module.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::classify::{self, Answer, Verdict};
use crate::kinds;
use crate::op::{Op, Serving};

/// A kind of provider API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    OpenAi,
    /// Any provider that speaks OpenAI's API with bearer keys (Groq, Mistral, vLLM, …).
    OpenAiCompatible,
    Anthropic,
    Gemini,
    AzureOpenAi,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::OpenAi,
        Kind::OpenAiCompatible,
        Kind::Anthropic,
        Kind::Gemini,
        Kind::AzureOpenAi,
    ];

    /// The name used in configuration, the database and the admin API.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::OpenAiCompatible => "openai-compatible",
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "gemini",
            Kind::AzureOpenAi => "azure-openai",
        }
    }

    pub fn from_slug(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.slug() == s)
    }

    /// The module that knows this kind (the one exhaustive dispatch).
    pub fn spec(self) -> &'static dyn Spec {
        match self {
            Kind::OpenAi => &kinds::openai::OpenAi,
            Kind::OpenAiCompatible => &kinds::compatible::Compatible,
            Kind::Anthropic => &kinds::anthropic::Anthropic,
            Kind::Gemini => &kinds::gemini::Gemini,
            Kind::AzureOpenAi => &kinds::azure::Azure,
        }
    }

    /// How a provider of this kind serves `op` (natively or translated), or `None`.
    pub fn serving(self, op: Op) -> Option<Serving> {
        self.spec().serving(op)
    }

    /// Classifies a non-success answer from a provider of this kind.
    pub fn classify(
        self,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Verdict {
        let json = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        self.spec()
            .classify(&Answer::parse(status, headers, &json, now))
    }
}

/// Where a provider lives, as configured by an admin.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub base_url: &'a str,
    /// Azure OpenAI's `api-version`; empty for other kinds.
    pub api_version: &'a str,
}

impl Endpoint<'_> {
    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

/// What a key of a kind looks like, checked when an admin adds one. The message describes the
/// expected form, never the key.
#[derive(Debug, Clone, Copy)]
pub struct KeyFormat {
    pub matches: fn(&str) -> bool,
    pub expected: &'static str,
}

/// The questions each provider kind answers. Defaults are OpenAI's conventions.
pub trait Spec: Sync {
    fn kind(&self) -> Kind;

    /// How `op` is served: natively, translated, or not at all.
    fn serving(&self, op: Op) -> Option<Serving>;

    /// The upstream URL for the wire operation. Keys never go in a URL.
    fn url(&self, endpoint: &Endpoint<'_>, wire: Op, upstream_model: &str, stream: bool) -> String {
        let _ = (upstream_model, stream);
        format!("{}/{}", endpoint.base(), wire.tail())
    }

    /// The cheapest authenticated call (list models), used to test a key.
    fn models_url(&self, endpoint: &Endpoint<'_>) -> String {
        format!("{}/models", endpoint.base())
    }

    /// The headers that carry the key the way this provider expects it, marked sensitive.
    /// `None` when the key cannot be a header value.
    fn credentials(
        &self,
        secret: &str,
        anthropic_version: Option<&HeaderValue>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let _ = anthropic_version;
        Some(vec![(
            http::header::AUTHORIZATION,
            sensitive(&format!("Bearer {secret}"))?,
        )])
    }

    /// The key shape, when the kind has a documented one.
    fn key_format(&self) -> Option<KeyFormat> {
        None
    }

    /// What a non-success answer means for the key.
    fn classify(&self, answer: &Answer<'_>) -> Verdict {
        classify::common(answer)
    }
}

/// A header value marked sensitive (hyper and reqwest leave it out of their debug output).
pub(crate) fn sensitive(v: &str) -> Option<HeaderValue> {
    let mut h = HeaderValue::from_str(v).ok()?;
    h.set_sensitive(true);
    Some(h)
}

/// Percent-encodes a path segment (deployment or model names are admin input).
pub(crate) fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_round_trip_and_every_kind_has_its_module() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_slug(k.slug()), Some(k));
            assert_eq!(k.spec().kind(), k);
        }
        assert_eq!(Kind::from_slug("nope"), None);
    }
}
