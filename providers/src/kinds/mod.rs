//! One module per provider kind, each implementing [`crate::Spec`].

pub mod anthropic;
pub mod azure;
pub mod compatible;
pub mod gemini;
pub mod openai;

use std::time::SystemTime;

use http::HeaderMap;

use crate::classify::{Answer, Verdict};
use crate::kind::Kind;
use crate::op::{Op, Serving, Translation};
use crate::spec::Spec;

impl Kind {
    /// The module that knows this kind (the one exhaustive dispatch).
    pub fn spec(self) -> &'static dyn Spec {
        match self {
            Kind::OpenAi => &openai::OpenAi,
            Kind::OpenAiCompatible => &compatible::Compatible,
            Kind::Anthropic => &anthropic::Anthropic,
            Kind::Gemini => &gemini::Gemini,
            Kind::AzureOpenAi => &azure::Azure,
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

/// What a provider speaking OpenAI's API serves: everything OpenAI-shaped natively (the
/// Responses API only where `responses`), and Anthropic Messages translated to chat.
pub(crate) fn openai_family(op: Op, responses: bool) -> Option<Serving> {
    match op {
        Op::ChatCompletions | Op::Completions | Op::Embeddings => Some(Serving::native(op)),
        Op::Responses if responses => Some(Serving::native(op)),
        Op::Responses => None,
        Op::Messages => Some(Serving {
            wire: Op::ChatCompletions,
            translation: Translation::AnthropicToOpenAi,
        }),
    }
}
