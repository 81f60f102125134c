//! Where and how a request reaches a provider: the upstream URL for an operation and the headers
//! that carry the key (keys only ever travel in headers, never in a URL that could be logged);
//! the models probe that tests a key; the key-format check.

use http::{HeaderName, HeaderValue};

use crate::kind::Kind;
use crate::op::Op;
use crate::spec::Endpoint;

pub struct Upstream {
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// URL and authentication headers for the client operation `op` on a provider of `kind`. `None`
/// when the provider cannot serve the operation or the key cannot be a header value.
pub fn upstream(
    kind: Kind,
    endpoint: &Endpoint<'_>,
    op: Op,
    upstream_model: &str,
    secret: &str,
    anthropic_version: Option<&HeaderValue>,
    stream: bool,
) -> Option<Upstream> {
    let spec = kind.spec();
    let serving = spec.serving(op)?;
    Some(Upstream {
        url: spec.url(endpoint, serving.wire, upstream_model, stream),
        headers: spec.credentials(secret, anthropic_version)?,
    })
}

/// The cheapest authenticated call to a provider (list models), for testing a key.
pub fn models_request(kind: Kind, endpoint: &Endpoint<'_>, secret: &str) -> Option<Upstream> {
    let spec = kind.spec();
    Some(Upstream {
        url: spec.models_url(endpoint),
        headers: spec.credentials(secret, None)?,
    })
}

/// Checks a key's shape for its provider. Messages describe the expected form, never the key.
pub fn validate_key(kind: Kind, key: &str) -> Result<(), String> {
    if key.len() < 8 || key.len() > 512 {
        return Err("key: must be 8-512 characters".into());
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err("key: must be printable ASCII without spaces".into());
    }
    match kind.spec().key_format() {
        Some(f) if !(f.matches)(key) => Err(format!(
            "key: not in this provider's format ({})",
            f.expected
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P(Kind, &'static str);

    fn provider(kind: Kind, base: &'static str) -> P {
        P(kind, base)
    }

    fn upstream(
        p: &P,
        op: Op,
        model: &str,
        secret: &str,
        anthropic_version: Option<&HeaderValue>,
        stream: bool,
    ) -> Option<Upstream> {
        let e = Endpoint {
            base_url: p.1,
            api_version: "2024-10-21",
        };
        super::upstream(p.0, &e, op, model, secret, anthropic_version, stream)
    }

    #[test]
    fn urls_and_auth_per_kind() {
        let u = upstream(
            &provider(Kind::OpenAiCompatible, "https://api.groq.com/openai/v1/"),
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
            &provider(Kind::AzureOpenAi, "https://r.openai.azure.com"),
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
            &provider(Kind::Anthropic, "https://api.anthropic.com/v1"),
            Op::Messages,
            "claude",
            "sk-ant-x",
            None,
            false,
        )
        .unwrap();
        assert_eq!(u.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(u.headers[0].0.as_str(), "x-api-key");
        assert_eq!(u.headers[1].1, crate::ANTHROPIC_VERSION);

        let u = upstream(
            &provider(Kind::Anthropic, "https://a/v1"),
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
                &provider(Kind::Anthropic, "https://a"),
                Op::Embeddings,
                "m",
                "k",
                None,
                false
            )
            .is_none()
        );
        let u = upstream(
            &provider(Kind::OpenAi, "https://a/v1"),
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
                &provider(Kind::Gemini, "https://a"),
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
                &provider(Kind::OpenAi, "https://a"),
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
    fn gemini_urls_name_the_model_and_stream_mode() {
        let p = provider(Kind::Gemini, "https://g/v1beta/");
        let u = upstream(&p, Op::ChatCompletions, "gemini 2", "k", None, false).unwrap();
        assert_eq!(u.url, "https://g/v1beta/models/gemini+2:generateContent");
        assert_eq!(u.headers[0].0.as_str(), "x-goog-api-key");
        let u = upstream(&p, Op::ChatCompletions, "m", "k", None, true).unwrap();
        assert_eq!(
            u.url,
            "https://g/v1beta/models/m:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn models_probe_per_kind() {
        let e = Endpoint {
            base_url: "https://r/v1/",
            api_version: "2024-10-21",
        };
        let u = models_request(Kind::AzureOpenAi, &e, "k").unwrap();
        assert_eq!(u.url, "https://r/v1/openai/models?api-version=2024-10-21");
        assert_eq!(u.headers[0].0.as_str(), "api-key");
        let u = models_request(Kind::Anthropic, &e, "k").unwrap();
        assert_eq!(u.url, "https://r/v1/models");
        assert_eq!(u.headers[0].0.as_str(), "x-api-key");
        let u = models_request(Kind::OpenAiCompatible, &e, "gsk_x").unwrap();
        assert_eq!(u.headers[0].1, "Bearer gsk_x");
        assert!(models_request(Kind::Gemini, &e, "bad\nkey").is_none());
    }

    #[test]
    fn formats_per_provider() {
        assert!(validate_key(Kind::OpenAi, "sk-proj-0123456789abcdef").is_ok());
        assert!(validate_key(Kind::OpenAi, "pk-0123456789abcdefghij").is_err());
        assert!(validate_key(Kind::Anthropic, "sk-ant-api03-0123456789").is_ok());
        assert!(validate_key(Kind::Gemini, &format!("AIza{}", "x".repeat(35))).is_ok());
        assert!(validate_key(Kind::Gemini, "AIzashort").is_err());
        assert!(validate_key(Kind::AzureOpenAi, &"a1".repeat(16)).is_ok());
        assert!(validate_key(Kind::OpenAiCompatible, "anything-goes").is_ok());
        assert!(validate_key(Kind::OpenAiCompatible, "has space inside").is_err());
        assert!(validate_key(Kind::OpenAiCompatible, "short").is_err());
        let secret = "pk-this-is-a-secret-value";
        let msg = validate_key(Kind::OpenAi, secret).unwrap_err();
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn keys_never_go_in_urls() {
        for kind in [
            Kind::OpenAi,
            Kind::OpenAiCompatible,
            Kind::AzureOpenAi,
            Kind::Anthropic,
            Kind::Gemini,
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
