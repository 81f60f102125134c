//! Providers that speak OpenAI's chat, completions and embeddings API with bearer keys (Groq,
//! Mistral, DeepSeek, OpenRouter, Together, xAI, Ollama, vLLM, …). Their keys have no common
//! shape, and they have no Responses API.

use crate::kind::Kind;
use crate::op::{Op, Serving};
use crate::spec::Spec;

pub struct Compatible;

impl Spec for Compatible {
    fn kind(&self) -> Kind {
        Kind::OpenAiCompatible
    }

    fn serving(&self, op: Op) -> Option<Serving> {
        super::openai_family(op, false)
    }
}
