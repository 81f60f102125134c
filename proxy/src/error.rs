//! The proxy's error type and its one mapping to the client's API dialect (OpenAI or Anthropic
//! error JSON).
//!
//! Every error says where it came from (the client, the upstream, or the proxy itself), whether
//! another key or provider could do better, and when to come back. Messages never name a
//! provider key, its fingerprint or the upstream's own error text for credential failures; 5xx
//! bodies are generic and the detail is logged once.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use llmhub_providers::Dialect;
use serde_json::json;

use crate::body::{Body, json};
use crate::limits::{Dim, Refusal, Scope};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request is wrong or not allowed: 4xx, never retried.
    Client,
    /// A provider failed or refused: 502/504, or 429 while keys cool down.
    Upstream,
    /// The proxy cannot serve right now (no snapshot, nothing usable).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing or invalid API key")]
    InvalidApiKey,
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("unknown route {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    #[error("no provider key is available for this model right now")]
    NoKeyAvailable,
    #[error("the gateway is starting and has no configuration yet")]
    NotReady,
    #[error(
        "every key for this model is cooling down after rate limits or quota; retry in {} s",
        retry_after_secs(*.0)
    )]
    AllCooling(Duration),
    #[error("the provider rejected the gateway's credentials")]
    UpstreamAuth,
    #[error("the provider is unavailable")]
    UpstreamUnavailable(String),
    #[error("the provider did not answer in time")]
    UpstreamTimeout,
    /// A fleet-wide limit of the client key, its user, or every usable provider key is reached.
    #[error("{}", limit_message(.0))]
    RateLimited(Refusal),
}

/// Which limit, in words, and when to come back.
fn limit_message(r: &Refusal) -> String {
    let whose = match r.scope {
        Scope::ClientKey => "this API key",
        Scope::User => "your account",
        Scope::ProviderKey => "every provider key serving this model",
    };
    if r.dim == Dim::Budget {
        let usd = r.limit as f64 / 1e9;
        return if r.retry_after.is_zero() {
            format!(
                "the budget of {whose} (${usd:.2}) is exhausted, or this request could cost more than what is left (a lower max_tokens may fit)"
            )
        } else {
            format!(
                "the budget of {whose} (${usd:.2} per period) is exhausted, or this request could cost more than what is left (a lower max_tokens may fit); the period ends in {} s",
                retry_after_secs(r.retry_after)
            )
        };
    }
    let what = match r.dim {
        Dim::Requests => format!("{} requests per minute", r.limit),
        Dim::Tokens => format!("{} tokens per minute", r.limit),
        Dim::Concurrent => format!("{} concurrent requests", r.limit),
        Dim::Budget => String::new(),
    };
    format!(
        "rate limit reached for {whose}: {what}; retry in {} s",
        retry_after_secs(r.retry_after)
    )
}

/// Whole seconds for `Retry-After`: rounded up, and at least one.
fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

impl ProxyError {
    pub fn source(&self) -> Source {
        match self {
            ProxyError::InvalidApiKey
            | ProxyError::BadRequest(_)
            | ProxyError::PayloadTooLarge(_)
            | ProxyError::NotFound(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::ModelNotFound(_) => Source::Client,
            ProxyError::RateLimited(r) if r.scope != Scope::ProviderKey => Source::Client,
            ProxyError::RateLimited(_) => Source::Upstream,
            ProxyError::AllCooling(_)
            | ProxyError::UpstreamAuth
            | ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTimeout => Source::Upstream,
            ProxyError::NoKeyAvailable | ProxyError::NotReady => Source::Internal,
        }
    }

    /// Whether trying another key or provider may succeed where this failed.
    pub fn retryable(&self) -> bool {
        self.source() == Source::Upstream
    }

    /// When the client should come back, if the error says.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::AllCooling(d) => Some(retry_after_secs(*d)),
            // A budget that never resets: waiting will not help.
            ProxyError::RateLimited(r) if r.retry_after.is_zero() => None,
            ProxyError::RateLimited(r) => Some(retry_after_secs(r.retry_after)),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotFound(_) | ProxyError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoKeyAvailable | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AllCooling(_) | ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamAuth | ProxyError::UpstreamUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// `(type, code)` as OpenAI uses them.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::InvalidApiKey => ("invalid_request_error", "invalid_api_key"),
            ProxyError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            ProxyError::PayloadTooLarge(_) => ("invalid_request_error", "request_too_large"),
            ProxyError::NotFound(_) => ("invalid_request_error", "unknown_url"),
            ProxyError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ProxyError::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            ProxyError::NoKeyAvailable => ("server_error", "no_key_available"),
            ProxyError::NotReady => ("server_error", "not_ready"),
            ProxyError::RateLimited(r) if r.dim == Dim::Budget => {
                ("insufficient_quota", "budget_exceeded")
            }
            ProxyError::AllCooling(_) | ProxyError::RateLimited(_) => {
                ("rate_limit_error", "rate_limit_exceeded")
            }
            ProxyError::UpstreamAuth => ("server_error", "upstream_auth_failed"),
            ProxyError::UpstreamUnavailable(_) => ("server_error", "upstream_unavailable"),
            ProxyError::UpstreamTimeout => ("server_error", "upstream_timeout"),
        }
    }

    /// What the client may read; the detail of an upstream failure is for the log only.
    fn public_message(&self) -> String {
        match self {
            ProxyError::UpstreamUnavailable(_) => "the provider is unavailable".to_owned(),
            other => other.to_string(),
        }
    }

    /// The error as an OpenAI-style JSON body.
    pub fn openai_json(&self) -> Bytes {
        let (ty, code) = self.kind();
        Bytes::from(
            json!({"error": {"message": self.public_message(), "type": ty, "param": null, "code": code}})
                .to_string(),
        )
    }

    /// The error as Anthropic's `{"type":"error","error":{…}}`.
    pub fn anthropic_json(&self) -> Bytes {
        let ty = match self.status().as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        Bytes::from(
            json!({"type": "error", "error": {"type": ty, "message": self.public_message()}})
                .to_string(),
        )
    }

    /// The response in the client's dialect, with `Retry-After` and `WWW-Authenticate` where
    /// they apply.
    pub fn into_response(self, dialect: Dialect, request_id: &HeaderValue) -> Response<Body> {
        let body = match dialect {
            Dialect::OpenAi => self.openai_json(),
            Dialect::Anthropic => self.anthropic_json(),
        };
        let mut resp = json(self.status(), body);
        let h = resp.headers_mut();
        h.insert("x-request-id", request_id.clone());
        if let Some(secs) = self.retry_after() {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ProxyError::RateLimited(r) = &self
            && r.dim == Dim::Budget
        {
            if let Ok(v) = HeaderValue::try_from(r.scope.as_str()) {
                h.insert("x-ratelimit-scope", v);
            }
        } else if let ProxyError::RateLimited(r) = &self {
            // OpenAI's names, saying which limit: `x-ratelimit-{limit,remaining,reset}-{requests,
            // tokens,concurrent}` and the scope it belongs to.
            let dim = r.dim.as_str();
            let secs = retry_after_secs(r.retry_after);
            for (name, value) in [
                (format!("x-ratelimit-limit-{dim}"), r.limit.to_string()),
                (format!("x-ratelimit-remaining-{dim}"), "0".to_owned()),
                (format!("x-ratelimit-reset-{dim}"), format!("{secs}s")),
                ("x-ratelimit-scope".to_owned(), r.scope.as_str().to_owned()),
            ] {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::try_from(name),
                    HeaderValue::try_from(value),
                ) {
                    h.insert(n, v);
                }
            }
        }
        if matches!(self, ProxyError::InvalidApiKey) {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = ProxyError::ModelNotFound("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.openai_json()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert!(v["error"]["param"].is_null());
        let v: serde_json::Value =
            serde_json::from_slice(&ProxyError::InvalidApiKey.anthropic_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let v: serde_json::Value = serde_json::from_slice(
            &ProxyError::AllCooling(Duration::from_secs(3)).anthropic_json(),
        )
        .unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let e = ProxyError::UpstreamUnavailable("connect refused to 10.0.0.1 key=x".into());
        let body = String::from_utf8(e.openai_json().to_vec()).unwrap();
        assert!(!body.contains("10.0.0.1"), "{body}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn source_retryability_and_retry_after() {
        let cooling = ProxyError::AllCooling(Duration::from_millis(1200));
        assert_eq!(cooling.source(), Source::Upstream);
        assert!(cooling.retryable());
        assert_eq!(cooling.retry_after(), Some(2), "rounded up");
        assert_eq!(
            ProxyError::AllCooling(Duration::ZERO).retry_after(),
            Some(1)
        );
        assert!(cooling.to_string().ends_with("retry in 2 s"), "{cooling}");
        assert!(!ProxyError::BadRequest("x".into()).retryable());
        assert_eq!(ProxyError::NotReady.source(), Source::Internal);
        let r = cooling.into_response(Dialect::Anthropic, &HeaderValue::from_static("req_1"));
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["x-request-id"], "req_1");
    }

    #[test]
    fn rate_limited_says_which_limit() {
        let e = ProxyError::RateLimited(Refusal {
            scope: Scope::User,
            dim: Dim::Tokens,
            limit: 1000,
            retry_after: Duration::from_millis(4500),
        });
        assert_eq!(e.source(), Source::Client);
        assert!(
            e.to_string()
                .contains("your account: 1000 tokens per minute; retry in 5 s"),
            "{e}"
        );
        let r = e.into_response(Dialect::Anthropic, &HeaderValue::from_static("req_2"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h["retry-after"], "5");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(h["x-ratelimit-reset-tokens"], "5s");
        assert_eq!(h["x-ratelimit-scope"], "user");
    }

    #[test]
    fn an_exhausted_budget_says_so() {
        let periodic = ProxyError::RateLimited(Refusal {
            scope: Scope::ClientKey,
            dim: Dim::Budget,
            limit: 25_500_000_000,
            retry_after: Duration::from_secs(3600),
        });
        let v: serde_json::Value = serde_json::from_slice(&periodic.openai_json()).unwrap();
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("this API key ($25.50 per period)"), "{msg}");
        assert_eq!(periodic.retry_after(), Some(3600));
        let once = ProxyError::RateLimited(Refusal {
            scope: Scope::User,
            dim: Dim::Budget,
            limit: 1_000_000_000,
            retry_after: Duration::ZERO,
        });
        assert_eq!(once.retry_after(), None, "waiting will not help");
        let r = once.into_response(Dialect::OpenAi, &HeaderValue::from_static("req_3"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(r.headers()["x-ratelimit-scope"], "user");
    }
}
