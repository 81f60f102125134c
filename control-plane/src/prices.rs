//! Model prices: the built-in list prices of common models, and the effective table proxies
//! price each request with — the built-in prices, overridden and extended by an admin's
//! (`store::prices`).
//!
//! Prices are nano-US-dollars per token, which is US dollars per billion tokens: $2.50 per
//! million tokens is 2500. A proxy looks a request's price up by its public model, then by its
//! upstream model qualified by the provider kind (`anthropic/claude-sonnet-4-20250514`), then
//! by the upstream model alone.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::entities::model_prices;

/// The largest price the API accepts, per token: $1,000 per million tokens (the dearest list
/// price today is far below it). A larger figure is almost certainly a unit mistake, such as a
/// price per million tokens entered in nano-dollars.
pub const MAX_NANOS_PER_TOKEN: u64 = 1_000_000;

/// A price in nano-US-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Price {
    pub input_nanos_per_token: u64,
    pub output_nanos_per_token: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_input_nanos_per_token: u64,
}

/// One model's price as proxies receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    pub model: String,
    pub price: Price,
}

/// Where an effective price comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The built-in list price.
    Default,
    /// Set by an admin.
    Custom,
}

/// A model's effective price, with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub model: String,
    pub price: Price,
    pub source: Source,
    /// The built-in price an admin's overrides (or the effective one, when it is the default).
    pub default: Option<Price>,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// A price from nano-dollars per token (= thousandths of a dollar per million tokens).
const fn nanos(input: u64, output: u64, cached_input: u64) -> Price {
    Price {
        input_nanos_per_token: input,
        output_nanos_per_token: output,
        cached_input_nanos_per_token: cached_input,
    }
}

/// Published list prices (standard tier, no batch discount), as of 2025-08-01, in thousandths
/// of a US dollar per million tokens — that is, nano-dollars per token: (input, output, cached
/// input). Gemini 2.5 Pro's and 1.5's are the prices for prompts up to 200k / 128k tokens.
/// Anthropic bills cache writes at 1.25x the input price; they are counted at the input price.
/// Embeddings have no output and no cache: their cached price is their input price.
const DEFAULTS: &[(&str, Price)] = &[
    // OpenAI
    ("gpt-4o", nanos(2_500, 10_000, 1_250)),
    ("gpt-4o-mini", nanos(150, 600, 75)),
    ("gpt-4.1", nanos(2_000, 8_000, 500)),
    ("gpt-4.1-mini", nanos(400, 1_600, 100)),
    ("gpt-4.1-nano", nanos(100, 400, 25)),
    ("o3", nanos(2_000, 8_000, 500)),
    ("o4-mini", nanos(1_100, 4_400, 275)),
    ("text-embedding-3-small", nanos(20, 0, 20)),
    ("text-embedding-3-large", nanos(130, 0, 130)),
    // Anthropic: model ids and their aliases.
    ("claude-sonnet-4-20250514", nanos(3_000, 15_000, 300)),
    ("claude-sonnet-4-0", nanos(3_000, 15_000, 300)),
    ("claude-opus-4-20250514", nanos(15_000, 75_000, 1_500)),
    ("claude-opus-4-0", nanos(15_000, 75_000, 1_500)),
    ("claude-3-5-haiku-20241022", nanos(800, 4_000, 80)),
    ("claude-3-5-haiku-latest", nanos(800, 4_000, 80)),
    ("claude-3-5-sonnet-20241022", nanos(3_000, 15_000, 300)),
    ("claude-3-5-sonnet-20240620", nanos(3_000, 15_000, 300)),
    ("claude-3-5-sonnet-latest", nanos(3_000, 15_000, 300)),
    // Google Gemini (cached prices rounded to whole nano-dollars: $0.3125 → 313, $0.01875 → 19).
    ("gemini-2.5-pro", nanos(1_250, 10_000, 125)),
    ("gemini-2.5-flash", nanos(300, 2_500, 30)),
    ("gemini-2.0-flash", nanos(100, 400, 25)),
    ("gemini-2.0-flash-001", nanos(100, 400, 25)),
    ("gemini-1.5-pro", nanos(1_250, 5_000, 313)),
    ("gemini-1.5-pro-002", nanos(1_250, 5_000, 313)),
    ("gemini-1.5-flash", nanos(75, 300, 19)),
    ("gemini-1.5-flash-002", nanos(75, 300, 19)),
];

/// The built-in price of a model.
pub fn default_price(model: &str) -> Option<Price> {
    DEFAULTS.iter().find(|(m, _)| *m == model).map(|(_, p)| *p)
}

fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The effective table, by model: every built-in price unless an admin's row overrides it, and
/// every admin row.
pub fn effective(custom: Vec<model_prices::Model>) -> Vec<Effective> {
    let mut by_model: HashMap<String, Effective> = DEFAULTS
        .iter()
        .map(|(m, p)| {
            (
                (*m).to_owned(),
                Effective {
                    model: (*m).to_owned(),
                    price: *p,
                    source: Source::Default,
                    default: Some(*p),
                    updated_at: None,
                    updated_by: None,
                },
            )
        })
        .collect();
    for row in custom {
        let default = default_price(&row.model);
        by_model.insert(
            row.model.clone(),
            Effective {
                price: Price {
                    input_nanos_per_token: clamp(row.input_nanos_per_token),
                    output_nanos_per_token: clamp(row.output_nanos_per_token),
                    cached_input_nanos_per_token: clamp(row.cached_input_nanos_per_token),
                },
                model: row.model,
                source: Source::Custom,
                default,
                updated_at: Some(row.updated_at),
                updated_by: Some(row.updated_by),
            },
        );
    }
    let mut all: Vec<Effective> = by_model.into_values().collect();
    all.sort_by(|a, b| a.model.cmp(&b.model));
    all
}

/// Which models have a price, answering the proxies' question "could this request be priced"
/// the way they look prices up.
pub struct Priced<'a> {
    names: HashSet<&'a str>,
}

impl<'a> Priced<'a> {
    pub fn new(prices: &'a [ModelPrice]) -> Self {
        Priced {
            names: prices.iter().map(|p| p.model.as_str()).collect(),
        }
    }

    /// Whether a request for `public`, served by `upstream` at a provider of kind `kind` (its
    /// slug, when known), has a price.
    pub fn covers(&self, public: &str, kind: Option<&str>, upstream: &str) -> bool {
        self.names.contains(public)
            || self.names.contains(upstream)
            || kind.is_some_and(|k| self.names.contains(format!("{k}/{upstream}").as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, input: i64) -> model_prices::Model {
        model_prices::Model {
            model: model.into(),
            input_nanos_per_token: input,
            output_nanos_per_token: 2 * input,
            cached_input_nanos_per_token: input / 2,
            updated_at: Utc::now(),
            updated_by: "admin".into(),
        }
    }

    #[test]
    fn defaults_are_sane_and_unique() {
        let mut seen = HashSet::new();
        for (model, p) in DEFAULTS {
            assert!(seen.insert(*model), "{model} listed twice");
            assert!(p.input_nanos_per_token > 0, "{model}");
            assert!(
                p.cached_input_nanos_per_token <= p.input_nanos_per_token,
                "{model}: a cache read costs no more than input"
            );
            for v in [
                p.input_nanos_per_token,
                p.output_nanos_per_token,
                p.cached_input_nanos_per_token,
            ] {
                assert!(v <= MAX_NANOS_PER_TOKEN, "{model}");
            }
        }
        // $2.50 / $10.00 per million tokens.
        assert_eq!(
            default_price("gpt-4o"),
            Some(Price {
                input_nanos_per_token: 2_500,
                output_nanos_per_token: 10_000,
                cached_input_nanos_per_token: 1_250
            })
        );
    }

    #[test]
    fn admin_prices_override_and_extend_the_defaults() {
        let all = effective(vec![row("gpt-4o", 1000), row("my-local-llm", 7)]);
        assert_eq!(all.len(), DEFAULTS.len() + 1);
        let find = |m: &str| all.iter().find(|e| e.model == m).unwrap();
        let gpt = find("gpt-4o");
        assert_eq!(
            (gpt.source, gpt.price.input_nanos_per_token),
            (Source::Custom, 1000)
        );
        assert_eq!(gpt.default, default_price("gpt-4o"));
        let local = find("my-local-llm");
        assert_eq!((local.source, local.default), (Source::Custom, None));
        let mini = find("gpt-4o-mini");
        assert_eq!(
            (mini.source, mini.updated_by.as_deref()),
            (Source::Default, None)
        );
        let names: Vec<&str> = all.iter().map(|e| e.model.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn covers_as_a_proxy_looks_up() {
        let price = Price {
            input_nanos_per_token: 1,
            output_nanos_per_token: 1,
            cached_input_nanos_per_token: 1,
        };
        let prices: Vec<ModelPrice> = ["product", "gpt-4o", "anthropic/claude-x"]
            .into_iter()
            .map(|m| ModelPrice {
                model: m.into(),
                price,
            })
            .collect();
        let priced = Priced::new(&prices);
        assert!(priced.covers("product", None, "x"));
        assert!(priced.covers("p", Some("openai"), "gpt-4o"));
        assert!(priced.covers("p", Some("anthropic"), "claude-x"));
        assert!(!priced.covers("p", Some("openai"), "claude-x"));
        assert!(!priced.covers("p", None, "unknown"));
    }
}
