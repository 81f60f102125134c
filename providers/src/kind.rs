//! Provider kinds: the names both planes, the database and the wire use. What a kind means —
//! which operations it serves and how, its URLs, how it takes its key, what its keys look like
//! and what its errors mean — is answered by its module under `kinds`, behind `spec::Spec`.

/// A kind of provider API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    OpenAi,
    /// Any provider that speaks OpenAI's API with bearer keys (Groq, Mistral, vLLM, …).
    OpenAiCompatible,
    Anthropic,
    Gemini,
    AzureOpenAi,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::OpenAi,
        Kind::OpenAiCompatible,
        Kind::Anthropic,
        Kind::Gemini,
        Kind::AzureOpenAi,
    ];

    /// The name used in configuration, the database and the admin API.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::OpenAiCompatible => "openai-compatible",
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "gemini",
            Kind::AzureOpenAi => "azure-openai",
        }
    }

    pub fn from_slug(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.slug() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_round_trip_and_every_kind_has_its_module() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_slug(k.slug()), Some(k));
            assert_eq!(k.spec().kind(), k);
        }
        assert_eq!(Kind::from_slug("nope"), None);
    }
}
