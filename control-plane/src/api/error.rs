//! The admin API's error type and its one mapping to HTTP.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    /// Login failure; one message for unknown user, wrong password and disabled account.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("forbidden")]
    Forbidden,
    #[error("{0}")]
    ForbiddenWith(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("server busy, retry shortly")]
    Busy,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("too many requests; retry later")]
    TooManyRequests(std::time::Duration),
    #[error("service temporarily unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

/// `Json` with rejections in the API's own error shape.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` with rejections in the API's own error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(r.body_text())
        }
    }
}

impl From<crate::limits::LimitError> for ApiError {
    fn from(_: crate::limits::LimitError) -> Self {
        // Fail closed: without the shared counters nothing is let through.
        ApiError::Unavailable
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Busy => ApiError::Busy,
            AuthError::WeakPassword(m) => ApiError::BadRequest(m),
            AuthError::InvalidCredentials => ApiError::InvalidCredentials,
            AuthError::InvalidToken => ApiError::Unauthorized,
            AuthError::Hashing => ApiError::Internal("password hashing failed".into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            e @ StoreError::InUse { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Revoked => {
                ApiError::Conflict("revoked: a revoked key can no longer change".into())
            }
            StoreError::Db(e) => ApiError::Internal(format!("database: {e}")),
            StoreError::Io(e) => ApiError::Internal(format!("database file: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::Forbidden | ApiError::ForbiddenWith(_) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(detail) => {
                // The detail goes to the log once; the client gets a generic message.
                tracing::error!(error = %detail, "admin api internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let mut resp = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        if let ApiError::TooManyRequests(d) = &self {
            let secs = d.as_secs().max(1).to_string();
            if let Ok(v) = http::HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
