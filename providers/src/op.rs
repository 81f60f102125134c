//! What a client can ask for, in which API dialect, and which way a request is translated when
//! the provider speaks another dialect. The one table of public paths lives here.

/// An LLM API operation, as the client names it by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's Responses API, passed through to providers that have it.
    Responses,
}

/// Every operation with its public path: the one path ↔ operation table of both planes.
pub const OPS: [(Op, &str); 5] = [
    (Op::ChatCompletions, "/v1/chat/completions"),
    (Op::Completions, "/v1/completions"),
    (Op::Embeddings, "/v1/embeddings"),
    (Op::Messages, "/v1/messages"),
    (Op::Responses, "/v1/responses"),
];

impl Op {
    /// The public path (`/v1/...`).
    pub fn path(self) -> &'static str {
        OPS.iter()
            .find(|(op, _)| *op == self)
            .map_or("", |(_, path)| path)
    }

    /// The path relative to a provider's versioned base URL (`chat/completions`).
    pub fn tail(self) -> &'static str {
        self.path().trim_start_matches("/v1/")
    }

    pub fn from_path(path: &str) -> Option<Op> {
        OPS.iter().find(|(_, p)| *p == path).map(|(op, _)| *op)
    }

    /// The dialect of the operation's request and response bodies.
    pub fn dialect(self) -> Dialect {
        match self {
            Op::Messages => Dialect::Anthropic,
            Op::ChatCompletions | Op::Completions | Op::Embeddings | Op::Responses => {
                Dialect::OpenAi
            }
        }
    }
}

/// The API dialect a client speaks; its errors are rendered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// The client's dialect, decided once per request: the operation's own dialect, or for
    /// paths that both SDKs call (`/v1/models`) the `anthropic-version` header Anthropic's SDKs
    /// always send.
    pub fn of_request(op: Option<Op>, sends_anthropic_version: bool) -> Dialect {
        match op {
            Some(op) => op.dialect(),
            None if sends_anthropic_version => Dialect::Anthropic,
            None => Dialect::OpenAi,
        }
    }
}

/// How a client request reaches a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// The operation the provider receives.
    pub wire: Op,
    pub translation: Translation,
}

impl Serving {
    pub const fn native(op: Op) -> Serving {
        Serving {
            wire: op,
            translation: Translation::None,
        }
    }
}

/// Which way a request and its answer are translated, if at all. Each direction is one
/// translator in the proxy, chosen by an exhaustive match on this enum.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_both_ways() {
        for (op, path) in OPS {
            assert_eq!(op.path(), path);
            assert_eq!(Op::from_path(path), Some(op));
            assert_eq!(format!("/v1/{}", op.tail()), path);
        }
        assert_eq!(Op::from_path("/v1/models"), None);
        assert_eq!(Op::from_path("/v1/chat/completions/"), None);
    }

    #[test]
    fn dialect_is_decided_by_the_operation_then_the_header() {
        assert_eq!(
            Dialect::of_request(Some(Op::Messages), false),
            Dialect::Anthropic
        );
        assert_eq!(
            Dialect::of_request(Some(Op::ChatCompletions), true),
            Dialect::OpenAi
        );
        assert_eq!(Dialect::of_request(None, true), Dialect::Anthropic);
        assert_eq!(Dialect::of_request(None, false), Dialect::OpenAi);
    }
}
