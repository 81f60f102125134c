//! Translation between client dialects and provider dialects. Each direction is a pure function
//! over JSON (requests, responses) or a small state machine over SSE events (streams), so it can
//! be tested table by table without a network.

pub mod anthropic;
pub mod chat;
pub mod gemini;

/// Which way a request is translated, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    None,
    /// An OpenAI chat request served by an Anthropic provider.
    OpenAiToAnthropic,
    /// An Anthropic Messages request served by an OpenAI-compatible provider.
    AnthropicToOpenAi,
    /// An OpenAI chat request served by Gemini.
    OpenAiToGemini,
}

/// A stream translator of either direction.
pub enum StreamTranslator {
    ToOpenAi(anthropic::StreamTranslator),
    ToAnthropic(chat::StreamTranslator),
    ToOpenAiFromGemini(gemini::StreamTranslator),
}

impl StreamTranslator {
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        match self {
            StreamTranslator::ToOpenAi(t) => t.feed(bytes),
            StreamTranslator::ToAnthropic(t) => t.feed(bytes),
            StreamTranslator::ToOpenAiFromGemini(t) => t.feed(bytes),
        }
    }

    /// Called when the upstream body ends: the closing events still owed to the client, or
    /// `None` when the provider's stream stopped before it finished.
    pub fn end(&mut self) -> Option<String> {
        match self {
            StreamTranslator::ToOpenAiFromGemini(t) => t.end(),
            other => other.finished().then(String::new),
        }
    }

    pub fn finished(&self) -> bool {
        match self {
            StreamTranslator::ToOpenAi(t) => t.finished(),
            StreamTranslator::ToAnthropic(t) => t.finished(),
            StreamTranslator::ToOpenAiFromGemini(_) => false,
        }
    }
}
