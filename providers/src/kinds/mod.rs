//! One module per provider kind, each implementing [`crate::Spec`].

pub mod anthropic;
pub mod azure;
pub mod compatible;
pub mod gemini;
pub mod openai;

use crate::op::{Op, Serving, Translation};

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
