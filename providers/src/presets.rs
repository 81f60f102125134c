//! Presets an admin can create a provider from: a name, its kind and the provider's own base URL.

use crate::kind::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub kind: Kind,
    pub base_url: &'static str,
}

const fn preset(name: &'static str, kind: Kind, base_url: &'static str) -> Preset {
    Preset {
        name,
        kind,
        base_url,
    }
}

/// OpenAI-compatible presets use bearer authentication.
pub const PRESETS: &[Preset] = &[
    preset("openai", Kind::OpenAi, "https://api.openai.com/v1"),
    preset("anthropic", Kind::Anthropic, "https://api.anthropic.com/v1"),
    preset(
        "gemini",
        Kind::Gemini,
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    preset(
        "mistral",
        Kind::OpenAiCompatible,
        "https://api.mistral.ai/v1",
    ),
    preset(
        "groq",
        Kind::OpenAiCompatible,
        "https://api.groq.com/openai/v1",
    ),
    preset(
        "deepseek",
        Kind::OpenAiCompatible,
        "https://api.deepseek.com/v1",
    ),
    preset(
        "openrouter",
        Kind::OpenAiCompatible,
        "https://openrouter.ai/api/v1",
    ),
    preset(
        "together",
        Kind::OpenAiCompatible,
        "https://api.together.xyz/v1",
    ),
    preset("xai", Kind::OpenAiCompatible, "https://api.x.ai/v1"),
    preset(
        "ollama",
        Kind::OpenAiCompatible,
        "http://localhost:11434/v1",
    ),
    preset("vllm", Kind::OpenAiCompatible, "http://localhost:8000/v1"),
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_providers_own_base_urls_and_kinds() {
        let find = |name| find(name).copied().unwrap();
        assert_eq!(find("groq").kind, Kind::OpenAiCompatible);
        assert_eq!(find("groq").base_url, "https://api.groq.com/openai/v1");
        assert_eq!(find("mistral").base_url, "https://api.mistral.ai/v1");
        assert_eq!(find("deepseek").base_url, "https://api.deepseek.com/v1");
        assert_eq!(find("openrouter").base_url, "https://openrouter.ai/api/v1");
        assert_eq!(find("together").base_url, "https://api.together.xyz/v1");
        assert_eq!(find("xai").base_url, "https://api.x.ai/v1");
        assert_eq!(find("ollama").base_url, "http://localhost:11434/v1");
        assert_eq!(find("vllm").base_url, "http://localhost:8000/v1");
        assert_eq!(find("anthropic").kind, Kind::Anthropic);
        assert_eq!(find("gemini").kind, Kind::Gemini);
        assert!(super::find("nope").is_none());
    }
}
