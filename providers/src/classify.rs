//! What an upstream answer means for the key that sent it.
//!
//! Classification works per provider dialect from the status, the headers and the error body,
//! never from substring guesses on free text alone. Recovery times come from the provider
//! whenever it states one: `Retry-After` (seconds or HTTP date), `retry-after-ms`, OpenAI's
//! `x-ratelimit-reset-*` durations, Anthropic's `anthropic-ratelimit-*-reset` timestamps and
//! Gemini's `RetryInfo.retryDelay`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Too many requests or tokens for now: the key × model cools down until the reset.
    RateLimited,
    /// Out of credit or a daily quota: the whole key cools down for long.
    QuotaExhausted,
    /// The provider rejects the key itself: disabled until an admin acts.
    InvalidKey,
    /// The provider is failing (5xx, 529, connect errors, timeouts): not the key's fault.
    Overloaded,
    /// The request is wrong: passed to the client, no penalty.
    ClientError,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::InvalidKey => "invalid_key",
            FailureClass::Overloaded => "provider_unavailable",
            FailureClass::ClientError => "client_error",
        }
    }

    pub const ALL: [FailureClass; 5] = [
        FailureClass::RateLimited,
        FailureClass::QuotaExhausted,
        FailureClass::InvalidKey,
        FailureClass::Overloaded,
        FailureClass::ClientError,
    ];

    /// Whether another key (or provider) may do better: everything but a wrong request.
    pub fn retryable(self) -> bool {
        !matches!(self, FailureClass::ClientError)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rate_limited" => FailureClass::RateLimited,
            "quota_exhausted" => FailureClass::QuotaExhausted,
            "invalid_key" => FailureClass::InvalidKey,
            "provider_unavailable" => FailureClass::Overloaded,
            "client_error" => FailureClass::ClientError,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: FailureClass,
    /// How long the provider says to wait, when it says.
    pub retry_after: Option<Duration>,
    /// The answer does not say for certain that the key is at fault: a bare 403 (a model the
    /// key may not use, a region, a policy) or 402. Before such a signal disables a key or
    /// cools it for long, the control plane verifies the key with a probe; a key that still
    /// works stays in service.
    pub ambiguous: bool,
}

impl Verdict {
    pub fn new(class: FailureClass, retry_after: Option<Duration>) -> Verdict {
        Verdict {
            class,
            retry_after,
            ambiguous: false,
        }
    }

    /// The same verdict, marked as needing verification.
    pub fn unsure(self) -> Verdict {
        Verdict {
            ambiguous: true,
            ..self
        }
    }

    /// Whether acting on it fleet-wide waits for a verification probe: a long penalty (disable,
    /// quota cooldown) on an ambiguous signal.
    pub fn needs_verification(&self) -> bool {
        self.ambiguous
            && matches!(
                self.class,
                FailureClass::InvalidKey | FailureClass::QuotaExhausted
            )
    }
}

/// Parses Go-style durations as OpenAI sends them: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, `0.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Time until an absolute instant, or zero when it has passed.
fn until(t: SystemTime, now: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or_default()
}

fn parse_instant(s: &str) -> Option<SystemTime> {
    let dt = chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_rfc2822(s))
        .ok()?;
    let ms = u64::try_from(dt.timestamp_millis()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The longest wait any rate-limit header asks for (the most conservative reading).
pub fn retry_after(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut waits: Vec<Duration> = Vec::new();
    if let Some(v) = header(h, "retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && v.is_finite()
        && v >= 0.0
    {
        waits.push(Duration::from_secs_f64(v / 1000.0));
    }
    if let Some(v) = header(h, "retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                waits.push(Duration::from_secs_f64(secs));
            }
        } else if let Some(t) = parse_instant(v) {
            waits.push(until(t, now));
        }
    }
    // Explicit Retry-After wins; the reset headers describe the window, used when it is absent.
    if !waits.is_empty() {
        return waits.into_iter().max();
    }
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        if let Some(d) = header(h, name).and_then(parse_go_duration) {
            waits.push(d);
        }
    }
    for name in [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ] {
        if let Some(t) = header(h, name).and_then(parse_instant) {
            waits.push(until(t, now));
        }
    }
    waits.into_iter().max()
}

/// When a success says the key has nothing left (`remaining == 0`), how long until it refills.
pub fn exhausted_for(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut out: Option<Duration> = None;
    let mut note = |d: Duration| out = Some(out.map_or(d, |o| o.max(d)));
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        if header(h, remaining).and_then(|v| v.parse::<u64>().ok()) == Some(0) {
            note(
                header(h, reset)
                    .and_then(parse_go_duration)
                    .unwrap_or(Duration::from_secs(1)),
            );
        }
    }
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let remaining = format!("anthropic-ratelimit-{kind}-remaining");
        let reset = format!("anthropic-ratelimit-{kind}-reset");
        if header(h, &remaining).and_then(|v| v.parse::<u64>().ok()) == Some(0) {
            note(
                header(h, &reset)
                    .and_then(parse_instant)
                    .map_or(Duration::from_secs(1), |t| until(t, now)),
            );
        }
    }
    out
}

/// A refusal caused by what the request asked, which a smaller or different request on the same
/// key would not get: a request larger than the key's whole per-minute budget (429 "request too
/// large"), more tokens than the credit left covers (402 "… or fewer max_tokens"), or content a
/// provider's moderation refused (403 "flagged").
pub fn request_specific(a: &Answer<'_>) -> bool {
    let m = &a.message;
    match a.status {
        429 => m.contains("request too large") || m.contains("must be reduced"),
        402 => m.contains("max_tokens") || m.contains("fewer tokens"),
        403 => {
            m.contains("flagged")
                || m.contains("moderation")
                || m.contains("content policy")
                || m.contains("content management policy")
                || matches!(
                    a.err_code,
                    "content_filter" | "content_policy_violation" | "moderation_blocked"
                )
                || !a.json["error"]["metadata"]["flagged_input"].is_null()
        }
        _ => false,
    }
}

/// A non-success answer, parsed once for the kind's classifier.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: &'a Value,
    /// `error.type`, or the top-level `type`.
    pub err_type: &'a str,
    pub err_code: &'a str,
    /// `error.message`, lowercased.
    pub message: String,
    /// The wait the rate-limit headers ask for.
    pub wait: Option<Duration>,
}

impl<'a> Answer<'a> {
    pub fn parse(status: u16, headers: &'a HeaderMap, json: &'a Value, now: SystemTime) -> Self {
        let err = &json["error"];
        Answer {
            status,
            headers,
            json,
            err_type: err["type"].as_str().or(json["type"].as_str()).unwrap_or(""),
            err_code: err["code"].as_str().unwrap_or(""),
            message: err["message"].as_str().unwrap_or("").to_ascii_lowercase(),
            wait: retry_after(headers, now),
        }
    }
}

/// The classification every kind shares (OpenAI's conventions); kinds handle their own
/// special answers first and fall back to this.
pub fn common(a: &Answer<'_>) -> Verdict {
    let verdict = Verdict::new;
    // Some refusals are about this request, not the key: one user's request must not take a
    // shared key out of service for everyone. The type, code and message say which.
    if request_specific(a) {
        return verdict(FailureClass::ClientError, None);
    }
    match a.status {
        429 => {
            let quota = a.err_code == "insufficient_quota"
                || a.err_type == "insufficient_quota"
                || a.message.contains("exceeded your current quota");
            if quota {
                verdict(FailureClass::QuotaExhausted, a.wait)
            } else {
                verdict(FailureClass::RateLimited, a.wait)
            }
        }
        401 => verdict(FailureClass::InvalidKey, None),
        // A 403 names no culprit unless its code does: the key may be fine and only this model,
        // region or content refused.
        403 if matches!(
            a.err_code,
            "invalid_api_key" | "account_deactivated" | "invalid_organization"
        ) =>
        {
            verdict(FailureClass::InvalidKey, None)
        }
        403 => verdict(FailureClass::InvalidKey, None).unsure(),
        402 if a.err_code == "insufficient_quota" || a.err_type == "insufficient_quota" => {
            verdict(FailureClass::QuotaExhausted, None)
        }
        402 => verdict(FailureClass::QuotaExhausted, None).unsure(),
        408 | 500..=599 => verdict(FailureClass::Overloaded, a.wait),
        _ => verdict(FailureClass::ClientError, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn now() -> SystemTime {
        // 2026-11-29T12:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_953_600)
    }

    #[test]
    fn go_durations() {
        for (s, ms) in [
            ("6m0s", 360_000),
            ("1s", 1000),
            ("20ms", 20),
            ("1h2m3.5s", 3_723_500),
            ("0.5s", 500),
            ("59.022s", 59_022),
            ("2m", 120_000),
        ] {
            assert_eq!(parse_go_duration(s), Some(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "abc", "5", "5x", "-1s", "s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_forms() {
        type Case = (Vec<(&'static str, &'static str)>, Option<u64>);
        let cases: Vec<Case> = vec![
            (vec![("retry-after", "7")], Some(7000)),
            (vec![("retry-after", "1.5")], Some(1500)),
            (
                vec![("retry-after", "Sun, 29 Nov 2026 12:00:30 GMT")],
                Some(30_000),
            ),
            (
                vec![("retry-after", "Sun, 29 Nov 2026 11:59:00 GMT")],
                Some(0),
            ),
            (vec![("retry-after-ms", "250")], Some(250)),
            (
                vec![("retry-after-ms", "250"), ("retry-after", "1")],
                Some(1000),
            ),
            (vec![("x-ratelimit-reset-requests", "6m0s")], Some(360_000)),
            (
                vec![
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-reset-tokens", "20ms"),
                ],
                Some(1000),
            ),
            (
                vec![("anthropic-ratelimit-requests-reset", "2026-11-29T12:00:12Z")],
                Some(12_000),
            ),
            (
                vec![(
                    "anthropic-ratelimit-tokens-reset",
                    "2026-11-29T12:01:00+00:00",
                )],
                Some(60_000),
            ),
            (vec![("retry-after", "soon")], None),
            (vec![], None),
        ];
        for (h, want) in cases {
            assert_eq!(
                retry_after(&headers(&h), now()),
                want.map(Duration::from_millis),
                "{h:?}"
            );
        }
    }

    #[test]
    fn remaining_zero_means_exhausted() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "12s"),
        ]);
        assert_eq!(exhausted_for(&h, now()), Some(Duration::from_secs(12)));
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "12s"),
        ]);
        assert_eq!(exhausted_for(&h, now()), None);
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-11-29T12:00:05Z"),
        ]);
        assert_eq!(exhausted_for(&h, now()), Some(Duration::from_secs(5)));
        let h = headers(&[("x-ratelimit-remaining-tokens", "0")]);
        assert_eq!(
            exhausted_for(&h, now()),
            Some(Duration::from_secs(1)),
            "no reset: a short pause"
        );
    }

    #[test]
    fn provider_error_bodies() {
        use FailureClass::*;
        use Kind::*;
        let none = HeaderMap::new();
        let ra = headers(&[("retry-after", "20")]);
        let ra3 = headers(&[("retry-after", "3")]);
        type Case<'h> = (
            Kind,
            u16,
            &'h HeaderMap,
            &'static str,
            FailureClass,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            // OpenAI
            (
                OpenAi,
                429,
                &ra,
                r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","code":"rate_limit_exceeded"}}"#,
                RateLimited,
                Some(20),
            ),
            (
                OpenAi,
                429,
                &none,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                QuotaExhausted,
                None,
            ),
            (
                OpenAi,
                401,
                &none,
                r#"{"error":{"message":"Incorrect API key provided: sk-****abcd.","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                InvalidKey,
                None,
            ),
            (
                OpenAi,
                403,
                &none,
                r#"{"error":{"message":"You are not allowed to sample from this model","type":"invalid_request_error"}}"#,
                InvalidKey,
                None,
            ),
            (
                OpenAi,
                400,
                &none,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                ClientError,
                None,
            ),
            (
                OpenAi,
                404,
                &none,
                r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#,
                ClientError,
                None,
            ),
            (
                OpenAi,
                500,
                &none,
                r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
                Overloaded,
                None,
            ),
            (
                OpenAi,
                503,
                &ra,
                "upstream connect error",
                Overloaded,
                Some(20),
            ),
            (
                OpenAiCompatible,
                502,
                &none,
                "<html>bad gateway</html>",
                Overloaded,
                None,
            ),
            // Anthropic
            (
                Anthropic,
                429,
                &ra3,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
                RateLimited,
                Some(3),
            ),
            (
                Anthropic,
                529,
                &none,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                Overloaded,
                None,
            ),
            (
                Anthropic,
                401,
                &none,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                InvalidKey,
                None,
            ),
            (
                Anthropic,
                403,
                &none,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission"}}"#,
                InvalidKey,
                None,
            ),
            (
                Anthropic,
                400,
                &none,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
                QuotaExhausted,
                None,
            ),
            (
                Anthropic,
                400,
                &none,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#,
                ClientError,
                None,
            ),
            // Gemini
            (
                Gemini,
                429,
                &none,
                r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#,
                RateLimited,
                Some(37),
            ),
            (
                Gemini,
                429,
                &none,
                r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3600s"}]}}"#,
                QuotaExhausted,
                Some(3600),
            ),
            (
                Gemini,
                400,
                &none,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
                InvalidKey,
                None,
            ),
            (
                Gemini,
                400,
                &none,
                r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#,
                ClientError,
                None,
            ),
            (
                Gemini,
                503,
                &none,
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
                Overloaded,
                None,
            ),
            // Refusals about the request, not the key: no penalty for a shared key.
            (
                OpenAi,
                429,
                &ra3,
                r#"{"error":{"message":"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 450000. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
                ClientError,
                None,
            ),
            (
                OpenAiCompatible,
                402,
                &none,
                r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 900000 tokens, but can only afford 1234.","code":402}}"#,
                ClientError,
                None,
            ),
            (
                OpenAiCompatible,
                402,
                &none,
                r#"{"error":{"message":"Insufficient credits. Add more using https://example.com/credits","code":402}}"#,
                QuotaExhausted,
                None,
            ),
            (
                OpenAiCompatible,
                403,
                &none,
                r#"{"error":{"code":403,"message":"Your chosen model requires moderation and your input was flagged for \"violence\"","metadata":{"reasons":["violence"],"flagged_input":"..."}}}"#,
                ClientError,
                None,
            ),
            (
                OpenAi,
                403,
                &none,
                r#"{"error":{"message":"blocked","type":"invalid_request_error","code":"content_policy_violation"}}"#,
                ClientError,
                None,
            ),
        ];
        for (kind, status, h, body, class, secs) in cases {
            let v = kind.classify(status, h, body.as_bytes(), now());
            assert_eq!(v.class, class, "{kind:?} {status} {body}");
            assert_eq!(
                v.retry_after,
                secs.map(Duration::from_secs),
                "{kind:?} {status} {body}"
            );
        }
    }

    /// Which penalties wait for the control plane's probe: a refusal that names no culprit.
    #[test]
    fn ambiguous_refusals_need_verification_and_certain_ones_do_not() {
        use Kind::*;
        let none = HeaderMap::new();
        let cases: [(Kind, u16, &str, bool); 9] = [
            (
                OpenAi,
                403,
                r#"{"error":{"message":"You are not allowed to sample from this model","type":"invalid_request_error","code":null}}"#,
                true,
            ),
            (
                OpenAi,
                403,
                r#"{"error":{"message":"Your account is deactivated","type":"invalid_request_error","code":"account_deactivated"}}"#,
                false,
            ),
            (
                OpenAi,
                401,
                r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                false,
            ),
            (
                OpenAiCompatible,
                402,
                r#"{"error":{"message":"Insufficient credits. Add more using https://example.com/credits","code":402}}"#,
                true,
            ),
            (
                OpenAi,
                429,
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                false,
            ),
            (
                Anthropic,
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
                true,
            ),
            (
                Anthropic,
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
                false,
            ),
            (
                Gemini,
                403,
                r#"{"error":{"code":403,"message":"Permission denied on resource project x.","status":"PERMISSION_DENIED"}}"#,
                true,
            ),
            (
                Gemini,
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
                false,
            ),
        ];
        for (kind, status, body, unsure) in cases {
            let v = kind.classify(status, &none, body.as_bytes(), now());
            assert_eq!(
                v.needs_verification(),
                unsure,
                "{kind:?} {status} {body}: {v:?}"
            );
        }
        // Only long penalties wait: an unsure rate limit is just a rate limit.
        assert!(
            !Verdict::new(FailureClass::RateLimited, None)
                .unsure()
                .needs_verification()
        );
    }

    #[test]
    fn class_names_round_trip() {
        for c in [
            FailureClass::RateLimited,
            FailureClass::QuotaExhausted,
            FailureClass::InvalidKey,
            FailureClass::Overloaded,
            FailureClass::ClientError,
        ] {
            assert_eq!(FailureClass::parse(c.as_str()), Some(c));
        }
    }
}
