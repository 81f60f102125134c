//! Anthropic's Messages API: served natively, and for OpenAI chat clients by translation. The
//! key travels in `x-api-key` with an `anthropic-version`.

use http::{HeaderName, HeaderValue};

use crate::classify::{self, Answer, FailureClass, Verdict};
use crate::kind::Kind;
use crate::op::{Op, Serving, Translation};
use crate::spec::{KeyFormat, Spec, sensitive};

/// The default `anthropic-version` when the client sends none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct Anthropic;

impl Spec for Anthropic {
    fn kind(&self) -> Kind {
        Kind::Anthropic
    }

    fn serving(&self, op: Op) -> Option<Serving> {
        match op {
            Op::Messages => Some(Serving::native(op)),
            Op::ChatCompletions => Some(Serving {
                wire: Op::Messages,
                translation: Translation::OpenAiToAnthropic,
            }),
            Op::Completions | Op::Embeddings | Op::Responses => None,
        }
    }

    fn credentials(
        &self,
        secret: &str,
        anthropic_version: Option<&HeaderValue>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        Some(vec![
            (HeaderName::from_static("x-api-key"), sensitive(secret)?),
            (
                HeaderName::from_static("anthropic-version"),
                anthropic_version
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION)),
            ),
        ])
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(KeyFormat {
            matches: |k| k.starts_with("sk-ant-") && k.len() >= 20,
            expected: "an Anthropic key starts with sk-ant-",
        })
    }

    fn classify(&self, a: &Answer<'_>) -> Verdict {
        // An exhausted credit balance comes as 400/402/403 with a billing message.
        if matches!(a.status, 400 | 402 | 403)
            && (a.message.contains("credit balance") || a.err_type == "billing_error")
        {
            return Verdict::new(FailureClass::QuotaExhausted, None);
        }
        classify::common(a)
    }
}
