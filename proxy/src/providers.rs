//! Where and how a request reaches each kind of provider: the upstream URL for an operation and
//! the way the provider expects its key. Keys only ever travel in headers (never in a URL that
//! could be logged).

use http::{HeaderName, HeaderValue};
use llmhub_proto::v1::ProviderKind;

use crate::snapshot::Provider;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's Responses API, passed through to providers that have it.
    Responses,
}

impl Op {
    pub fn path(self) -> &'static str {
        match self {
            Op::ChatCompletions => "/v1/chat/completions",
            Op::Completions => "/v1/completions",
            Op::Embeddings => "/v1/embeddings",
            Op::Messages => "/v1/messages",
            Op::Responses => "/v1/responses",
        }
    }
}

/// Whether a provider of `kind` serves `op` natively. Translation between dialects comes later;
/// until then a mismatch is skipped with a reason, and reported to the client as a clear 400 when
/// nothing else can serve the request.
pub fn supports(kind: ProviderKind, op: Op) -> bool {
    use ProviderKind::*;
    match op {
        Op::ChatCompletions => {
            matches!(
                kind,
                Openai | OpenaiCompatible | AzureOpenai | Anthropic | Gemini
            )
        }
        Op::Completions | Op::Embeddings => matches!(kind, Openai | OpenaiCompatible | AzureOpenai),
        // Native for Anthropic, translated to chat completions for the OpenAI family.
        Op::Messages => matches!(kind, Anthropic | Openai | OpenaiCompatible | AzureOpenai),
        Op::Responses => matches!(kind, Openai | AzureOpenai),
    }
}

/// The operation the provider receives for what the client asked (differs under translation).
pub fn wire_op(kind: ProviderKind, op: Op) -> Op {
    match (kind, op) {
        (ProviderKind::Anthropic, Op::ChatCompletions) => Op::Messages,
        (ProviderKind::Anthropic, other) => other,
        (_, Op::Messages) => Op::ChatCompletions,
        (_, other) => other,
    }
}

/// The default `anthropic-version` when the client sends none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct Upstream {
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

fn sensitive(v: &str) -> Option<HeaderValue> {
    let mut h = HeaderValue::from_str(v).ok()?;
    h.set_sensitive(true);
    Some(h)
}

/// URL and authentication headers for `op` on `provider` with `secret`. `None` when the provider
/// cannot serve the operation or the key cannot be a header value.
pub fn upstream(
    provider: &Provider,
    op: Op,
    upstream_model: &str,
    secret: &str,
    anthropic_version: Option<&HeaderValue>,
    stream: bool,
) -> Option<Upstream> {
    if !supports(provider.kind, op) {
        return None;
    }
    let base = provider.base_url.trim_end_matches('/');
    let tail = match wire_op(provider.kind, op) {
        Op::ChatCompletions => "chat/completions",
        Op::Completions => "completions",
        Op::Embeddings => "embeddings",
        Op::Messages => "messages",
        Op::Responses => "responses",
    };
    let url = match provider.kind {
        // The deployment is the upstream model.
        ProviderKind::AzureOpenai => format!(
            "{base}/openai/deployments/{}/{tail}?api-version={}",
            url_segment(upstream_model),
            url_segment(&provider.api_version)
        ),
        ProviderKind::Gemini if stream => format!(
            "{base}/models/{}:streamGenerateContent?alt=sse",
            url_segment(upstream_model)
        ),
        ProviderKind::Gemini => {
            format!(
                "{base}/models/{}:generateContent",
                url_segment(upstream_model)
            )
        }
        _ => format!("{base}/{tail}"),
    };
    Some(Upstream {
        url,
        headers: credentials(provider.kind, secret, anthropic_version)?,
    })
}

/// The headers that carry a key the way each provider expects it (never the URL), marked
/// sensitive. `None` when the key cannot be a header value.
pub fn credentials(
    kind: ProviderKind,
    secret: &str,
    anthropic_version: Option<&HeaderValue>,
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    Some(match kind {
        ProviderKind::AzureOpenai => vec![(HeaderName::from_static("api-key"), sensitive(secret)?)],
        ProviderKind::Anthropic => vec![
            (HeaderName::from_static("x-api-key"), sensitive(secret)?),
            (
                HeaderName::from_static("anthropic-version"),
                anthropic_version
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION)),
            ),
        ],
        ProviderKind::Gemini => vec![(
            HeaderName::from_static("x-goog-api-key"),
            sensitive(secret)?,
        )],
        _ => vec![(
            http::header::AUTHORIZATION,
            sensitive(&format!("Bearer {secret}"))?,
        )],
    })
}

/// The cheapest authenticated call to a provider (list models), for testing a key.
pub fn models_request(
    kind: ProviderKind,
    base_url: &str,
    api_version: &str,
    secret: &str,
) -> Option<Upstream> {
    let base = base_url.trim_end_matches('/');
    let url = match kind {
        ProviderKind::AzureOpenai => {
            format!(
                "{base}/openai/models?api-version={}",
                url_segment(api_version)
            )
        }
        _ => format!("{base}/models"),
    };
    Some(Upstream {
        url,
        headers: credentials(kind, secret, None)?,
    })
}

/// Percent-encodes a path segment (deployment or model names are admin input).
fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ProviderKind, base: &str) -> Provider {
        Provider {
            id: "p".into(),
            name: "p".into(),
            kind,
            base_url: base.into(),
            enabled: true,
            request_timeout: std::time::Duration::from_secs(5),
            api_version: "2024-10-21".into(),
        }
    }

    #[test]
    fn urls_and_auth_per_kind() {
        let u = upstream(
            &provider(
                ProviderKind::OpenaiCompatible,
                "https://api.groq.com/openai/v1/",
            ),
            Op::ChatCompletions,
            "llama",
            "gsk_x",
            None,
            false,
        )
        .unwrap();
        assert_eq!(u.url, "https://api.groq.com/openai/v1/chat/completions");
        assert_eq!(u.headers[0].0, http::header::AUTHORIZATION);
        assert_eq!(u.headers[0].1, "Bearer gsk_x");
        assert!(u.headers[0].1.is_sensitive());

        let u = upstream(
            &provider(ProviderKind::AzureOpenai, "https://r.openai.azure.com"),
            Op::Embeddings,
            "my deploy",
            "k",
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            u.url,
            "https://r.openai.azure.com/openai/deployments/my+deploy/embeddings?api-version=2024-10-21"
        );
        assert_eq!(u.headers[0].0.as_str(), "api-key");

        let u = upstream(
            &provider(ProviderKind::Anthropic, "https://api.anthropic.com/v1"),
            Op::Messages,
            "claude",
            "sk-ant-x",
            None,
            false,
        )
        .unwrap();
        assert_eq!(u.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(u.headers[0].0.as_str(), "x-api-key");
        assert_eq!(u.headers[1].1, ANTHROPIC_VERSION);

        let u = upstream(
            &provider(ProviderKind::Anthropic, "https://a/v1"),
            Op::ChatCompletions,
            "m",
            "k",
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            u.url, "https://a/v1/messages",
            "chat completions translate to messages"
        );
        assert!(
            upstream(
                &provider(ProviderKind::Anthropic, "https://a"),
                Op::Embeddings,
                "m",
                "k",
                None,
                false
            )
            .is_none()
        );
        let u = upstream(
            &provider(ProviderKind::Openai, "https://a/v1"),
            Op::Messages,
            "m",
            "k",
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            u.url, "https://a/v1/chat/completions",
            "messages translate to chat"
        );
        assert!(
            upstream(
                &provider(ProviderKind::Gemini, "https://a"),
                Op::Messages,
                "m",
                "k",
                None,
                false
            )
            .is_none()
        );
        assert!(
            upstream(
                &provider(ProviderKind::Openai, "https://a"),
                Op::ChatCompletions,
                "m",
                "bad\nkey",
                None,
                false
            )
            .is_none()
        );
    }

    #[test]
    fn keys_never_go_in_urls() {
        for kind in [
            ProviderKind::Openai,
            ProviderKind::OpenaiCompatible,
            ProviderKind::AzureOpenai,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            for op in [
                Op::ChatCompletions,
                Op::Completions,
                Op::Embeddings,
                Op::Messages,
            ] {
                if let Some(u) = upstream(
                    &provider(kind, "https://h/v1"),
                    op,
                    "m",
                    "SECRETKEY123",
                    None,
                    false,
                ) {
                    assert!(!u.url.contains("SECRETKEY123"), "{kind:?} {op:?}");
                }
            }
        }
    }
}
