//! The small trait each provider kind's module implements, and the values it works with.

use http::{HeaderName, HeaderValue};

use crate::classify::{self, Answer, Verdict};
use crate::kind::Kind;
use crate::op::{Op, Serving};

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
