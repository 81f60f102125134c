//! Translation between client dialects and provider dialects. Each direction is a pure function
//! over JSON (requests, responses) or a small state machine over SSE events (streams), so it can
//! be tested table by table without a network.

pub mod anthropic;
pub mod chat;

/// Which way a request is translated, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    None,
    /// An OpenAI chat request served by an Anthropic provider.
    OpenAiToAnthropic,
    /// An Anthropic Messages request served by an OpenAI-compatible provider.
    AnthropicToOpenAi,
}

/// A stream translator of either direction.
pub enum StreamTranslator {
    ToOpenAi(anthropic::StreamTranslator),
    ToAnthropic(chat::StreamTranslator),
}

impl StreamTranslator {
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        match self {
            StreamTranslator::ToOpenAi(t) => t.feed(bytes),
            StreamTranslator::ToAnthropic(t) => t.feed(bytes),
        }
    }

    pub fn finished(&self) -> bool {
        match self {
            StreamTranslator::ToOpenAi(t) => t.finished(),
            StreamTranslator::ToAnthropic(t) => t.finished(),
        }
    }
}
