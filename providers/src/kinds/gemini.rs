//! Google's Gemini API (`generateContent`): OpenAI chat clients are served by translation; the
//! key travels in `x-goog-api-key`; quota errors carry `RetryInfo` and `QuotaFailure` details.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::classify::{self, Answer, FailureClass, Verdict, parse_go_duration};
use crate::kind::Kind;
use crate::op::{Op, Serving, Translation};
use crate::spec::{Endpoint, KeyFormat, Spec, sensitive, url_segment};

pub struct Gemini;

impl Spec for Gemini {
    fn kind(&self) -> Kind {
        Kind::Gemini
    }

    fn serving(&self, op: Op) -> Option<Serving> {
        match op {
            Op::ChatCompletions => Some(Serving {
                wire: Op::ChatCompletions,
                translation: Translation::OpenAiToGemini,
            }),
            Op::Completions | Op::Embeddings | Op::Messages | Op::Responses => None,
        }
    }

    fn url(
        &self,
        endpoint: &Endpoint<'_>,
        _wire: Op,
        upstream_model: &str,
        stream: bool,
    ) -> String {
        let model = url_segment(upstream_model);
        if stream {
            format!(
                "{}/models/{model}:streamGenerateContent?alt=sse",
                endpoint.base()
            )
        } else {
            format!("{}/models/{model}:generateContent", endpoint.base())
        }
    }

    fn credentials(
        &self,
        secret: &str,
        _anthropic_version: Option<&HeaderValue>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        Some(vec![(
            HeaderName::from_static("x-goog-api-key"),
            sensitive(secret)?,
        )])
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(KeyFormat {
            matches: |k| k.starts_with("AIza") && k.len() == 39,
            expected: "a Gemini key starts with AIza and has 39 characters",
        })
    }

    fn classify(&self, a: &Answer<'_>) -> Verdict {
        let verdict = Verdict::new;
        match a.status {
            429 => {
                let (delay, per_day) = details(a.json);
                let class = if per_day {
                    FailureClass::QuotaExhausted
                } else {
                    FailureClass::RateLimited
                };
                verdict(class, a.wait.or(delay))
            }
            400 | 403
                if a.message.contains("api key not valid")
                    || a.json["error"]["details"]
                        .to_string()
                        .contains("API_KEY_INVALID") =>
            {
                verdict(FailureClass::InvalidKey, None)
            }
            // Permission denied names no culprit: the key may lack access to this model or
            // project feature and still serve others.
            403 if a.json["error"]["status"] == "PERMISSION_DENIED" => {
                verdict(FailureClass::InvalidKey, None).unsure()
            }
            _ => classify::common(a),
        }
    }
}

/// `RetryInfo.retryDelay` and whether a quota violation is per day.
fn details(body: &Value) -> (Option<Duration>, bool) {
    let mut delay = None;
    let mut per_day = false;
    if let Some(details) = body["error"]["details"].as_array() {
        for d in details {
            let ty = d["@type"].as_str().unwrap_or("");
            if ty.ends_with("google.rpc.RetryInfo") {
                delay = d["retryDelay"].as_str().and_then(parse_go_duration);
            }
            if ty.ends_with("google.rpc.QuotaFailure")
                && let Some(v) = d["violations"].as_array()
            {
                per_day |= v.iter().any(|x| {
                    let id = x["quotaId"].as_str().unwrap_or("");
                    let metric = x["quotaMetric"].as_str().unwrap_or("");
                    id.contains("PerDay") || metric.contains("per_day")
                });
            }
        }
    }
    (delay, per_day)
}
