//! The admin REST API (axum) on the private admin listener.
//!
//! Every endpoint is declared once in [`endpoints`] with its access level; the router is built
//! from that table and the tests walk the same table. Access is enforced by the handler's
//! extractor types: [`AuthUser`] for any signed-in user, [`AdminUser`] for admins. Another user's
//! resource is reported as not found.

mod audit;
mod catalog;
mod error;
mod keys;
mod limits;
mod prices;
mod records;
pub mod serve;
mod session;
mod users;
mod vault;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use http::{HeaderValue, Method, header};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::{ApiError, ApiJson, ApiQuery};

use crate::auth::{PasswordHasherPool, Role, TokenIssuer};
use crate::config::Registration;
use crate::hub::SnapshotHub;
use crate::limits::{LoginGuard, RateLimiter};
use crate::store::{Actor, Store};
use crate::vault::HashSecret;

/// Largest admin API request body; beyond it requests get 413 before any parsing or hashing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Arc<SnapshotHub>,
    pub tokens: Arc<TokenIssuer>,
    pub hasher: PasswordHasherPool,
    pub vault: Arc<crate::vault::Vault>,
    /// Outbound client for key tests.
    pub http: reqwest::Client,
    pub hash_secret: Arc<HashSecret>,
    pub login_guard: Arc<LoginGuard>,
    pub limiter: Arc<RateLimiter>,
    /// Registration attempts per address (one-hour window).
    pub registration_limiter: Arc<RateLimiter>,
    pub policy: Arc<Policy>,
    /// The shared counters, for bounding how often a refusal is audited.
    pub counters: Arc<crate::limits::Counters>,
}

/// Request-independent settings the handlers need.
pub struct Policy {
    pub registration: Registration,
    pub refresh_ttl: Duration,
    pub rate_limit_ip: u64,
    pub rate_limit_user: u64,
    pub registration_limit: u64,
    pub trust_forwarded_for: bool,
    pub tls: bool,
    pub dashboard_origins: Vec<HeaderValue>,
    pub counters_shared: bool,
    /// Which provider addresses key tests may reach (`egress_allow`).
    pub egress: llmhub_providers::EgressPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Public,
    User,
    Admin,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

fn ep(method: &'static str, path: &'static str, access: Access) -> Endpoint {
    Endpoint {
        method,
        path,
        access,
    }
}

/// The whole API surface. The access column documents what the handler's extractor enforces;
/// the end-to-end tests check every row against the running server.
fn endpoints() -> Vec<(Endpoint, MethodRouter<AppState>)> {
    use Access::*;
    vec![
        (ep("GET", "/healthz", Public), get(|| async { "ok" })),
        (ep("GET", "/readyz", Public), get(readyz)),
        (
            ep("POST", "/api/v1/auth/login", Public),
            post(session::login),
        ),
        (
            ep("POST", "/api/v1/auth/refresh", Public),
            post(session::refresh),
        ),
        (
            ep("POST", "/api/v1/auth/register", Public),
            post(session::register),
        ),
        (
            ep("POST", "/api/v1/auth/logout", User),
            post(session::logout),
        ),
        (ep("GET", "/api/v1/me", User), get(session::me)),
        (
            ep("POST", "/api/v1/me/password", User),
            post(session::change_password),
        ),
        (
            ep("GET", "/api/v1/providers", User),
            get(catalog::list_providers),
        ),
        (
            ep("POST", "/api/v1/providers", Admin),
            post(catalog::create_provider),
        ),
        (
            ep("PATCH", "/api/v1/providers/{id}", Admin),
            patch(catalog::update_provider),
        ),
        (
            ep("DELETE", "/api/v1/providers/{id}", Admin),
            delete(catalog::delete_provider),
        ),
        (
            ep("GET", "/api/v1/providers/{id}/keys", User),
            get(keys::list),
        ),
        (
            ep("POST", "/api/v1/providers/{id}/keys", User),
            post(keys::add),
        ),
        (
            ep("POST", "/api/v1/providers/{id}/keys/import", User),
            post(keys::import),
        ),
        (
            ep("PATCH", "/api/v1/providers/{id}/keys/{key_id}", User),
            patch(keys::update),
        ),
        (
            ep("DELETE", "/api/v1/providers/{id}/keys/{key_id}", User),
            delete(keys::delete),
        ),
        (
            ep("POST", "/api/v1/providers/{id}/keys/{key_id}/test", User),
            post(keys::test),
        ),
        (
            ep("GET", "/api/v1/providers/{id}/keys/{key_id}/history", User),
            get(keys::history),
        ),
        (
            ep(
                "POST",
                "/api/v1/providers/{id}/keys/{key_id}/cooldown",
                Admin,
            ),
            post(keys::force_cooldown),
        ),
        (
            ep("POST", "/api/v1/providers/{id}/keys/{key_id}/clear", Admin),
            post(keys::clear_health),
        ),
        (ep("GET", "/api/v1/vault", Admin), get(vault::status)),
        (
            ep("POST", "/api/v1/vault/current", Admin),
            post(vault::set_current),
        ),
        (
            ep("POST", "/api/v1/vault/reload", Admin),
            post(vault::reload),
        ),
        (
            ep("POST", "/api/v1/vault/rewrap", Admin),
            post(vault::rewrap),
        ),
        (
            ep("POST", "/api/v1/vault/retire", Admin),
            post(vault::retire),
        ),
        (
            ep("GET", "/api/v1/client-keys", User),
            get(catalog::list_client_keys),
        ),
        (
            ep("POST", "/api/v1/client-keys", User),
            post(catalog::create_client_key),
        ),
        (
            ep("PATCH", "/api/v1/client-keys/{id}", User),
            patch(catalog::update_client_key),
        ),
        (
            ep("DELETE", "/api/v1/client-keys/{id}", User),
            delete(catalog::revoke_client_key),
        ),
        (
            ep("POST", "/api/v1/client-keys/{id}/rotate", User),
            post(catalog::rotate_client_key),
        ),
        (ep("GET", "/api/v1/routes", User), get(catalog::list_routes)),
        (
            ep("POST", "/api/v1/routes", Admin),
            post(catalog::create_route),
        ),
        (
            ep("PATCH", "/api/v1/routes/{model}", Admin),
            patch(catalog::update_route),
        ),
        (
            ep("DELETE", "/api/v1/routes/{model}", Admin),
            delete(catalog::delete_route),
        ),
        (
            ep("GET", "/api/v1/records", User),
            get(records::list_records),
        ),
        (
            ep("GET", "/api/v1/routing-records", User),
            get(records::list_routing_records),
        ),
        (ep("GET", "/api/v1/usage", User), get(records::usage)),
        (ep("GET", "/api/v1/prices", User), get(prices::list)),
        (ep("PUT", "/api/v1/prices/{model}", Admin), put(prices::set)),
        (
            ep("DELETE", "/api/v1/prices/{model}", Admin),
            delete(prices::remove),
        ),
        (ep("GET", "/api/v1/fleet", Admin), get(catalog::fleet)),
        (ep("GET", "/api/v1/users", Admin), get(users::list)),
        (ep("POST", "/api/v1/users", Admin), post(users::create)),
        (
            ep("PATCH", "/api/v1/users/{id}", Admin),
            patch(users::update),
        ),
        (
            ep("DELETE", "/api/v1/users/{id}", Admin),
            delete(users::remove),
        ),
        (
            ep("PATCH", "/api/v1/users/{id}/limits", Admin),
            patch(users::set_limits),
        ),
        (
            ep("GET", "/api/v1/users/{id}/lockouts", Admin),
            get(users::lockouts),
        ),
        (
            ep("DELETE", "/api/v1/users/{id}/lockouts", Admin),
            delete(users::clear_lockouts),
        ),
        (ep("GET", "/api/v1/audit", Admin), get(audit::list)),
        (ep("GET", "/api/v1/audit/verify", Admin), get(audit::verify)),
        (ep("GET", "/api/v1/system/stats", Admin), get(audit::stats)),
    ]
}

/// The endpoint table (for `llmhub-control routes` and the tests).
pub fn endpoint_list() -> Vec<Endpoint> {
    endpoints().into_iter().map(|(e, _)| e).collect()
}

pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for (e, handler) in endpoints() {
        r = r.route(e.path, handler);
    }
    let policy = state.policy.clone();
    // Outermost last: headers, CORS, per-address limit, then the body-size guards.
    let r = r
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit_ip,
        ));
    // No configured origin, no CORS layer: it would otherwise still send its origin-independent
    // headers (allow-credentials, allow-methods, ...) to every caller.
    let r = if policy.dashboard_origins.is_empty() {
        r
    } else {
        r.layer(cors(&policy))
            .layer(axum::middleware::from_fn_with_state(
                policy.clone(),
                cors_only_for_listed_origins,
            ))
    };
    r.layer(axum::middleware::from_fn_with_state(
        policy,
        security_headers,
    ))
    .with_state(state)
}

/// Exact-origin CORS, only with configured origins; a listed origin is echoed only when it
/// matches exactly.
fn cors(policy: &Policy) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(policy.dashboard_origins.clone()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            http::HeaderName::from_static("x-csrf-token"),
        ])
        .allow_credentials(true)
        .max_age(Duration::from_secs(600))
}

/// Largest oversized body that is read and discarded so the client reliably receives its 413
/// (closing on a client that is still sending makes it see a reset instead of the answer).
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

/// Answers 413 to a declared body over [`MAX_BODY_BYTES`] before any handler, parsing or hashing.
async fn refuse_oversized(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            if n <= DRAIN_LIMIT {
                let body = req.into_body();
                let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                    body,
                    DRAIN_LIMIT as usize,
                ))
                .await;
            }
            ApiError::PayloadTooLarge.into_response()
        }
        _ => next.run(req).await,
    }
}

/// The CORS layer answers every origin with its allow-credentials, methods, headers and max-age
/// (only the allow-origin header depends on the list): an origin that is not listed gets no
/// `access-control-*` header at all.
async fn cors_only_for_listed_origins(
    State(policy): State<Arc<Policy>>,
    req: Request,
    next: Next,
) -> Response {
    let listed = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| policy.dashboard_origins.contains(o));
    let mut resp = next.run(req).await;
    if !listed {
        let h = resp.headers_mut();
        let cors: Vec<http::HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for k in cors {
            h.remove(k);
        }
    }
    resp
}

async fn security_headers(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if policy.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    resp
}

/// The caller's address: the TCP peer, or with `trust_forwarded_for` the last `X-Forwarded-For`
/// hop (the address our own reverse proxy saw).
fn client_ip(parts_headers: &http::HeaderMap, peer: Option<SocketAddr>, trust_xff: bool) -> String {
    if trust_xff
        && let Some(last) = parts_headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
    {
        return last.to_owned();
    }
    peer.map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string())
}

async fn rate_limit_ip(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(req.headers(), peer, s.policy.trust_forwarded_for);
    match s
        .limiter
        .hit("ip", &crate::limits::addr_key(&ip), s.policy.rate_limit_ip)
        .await
    {
        Ok(None) => next.run(req).await,
        Ok(Some(retry)) => ApiError::TooManyRequests(retry).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Who is calling from where: address and user agent, for audit rows and login counters.
pub struct ClientMeta {
    pub ip: String,
    pub user_agent: String,
}

impl ClientMeta {
    pub fn actor(&self, user_id: Option<&str>) -> Actor {
        Actor {
            user_id: user_id.map(str::to_owned),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(ClientMeta {
            ip: client_ip(&parts.headers, peer, state.policy.trust_forwarded_for),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(256)
                .collect(),
        })
    }
}

/// A signed-in, active user with a live session, from `Authorization: Bearer <access token>`.
pub struct AuthUser {
    pub id: String,
    pub role: Role,
    pub session_id: String,
    pub meta: ClientMeta,
}

impl AuthUser {
    pub fn actor(&self) -> Actor {
        self.meta.actor(Some(&self.id))
    }
}

/// A signed-in admin; any other user gets 403.
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let meta = ClientMeta::from_request_parts(parts, state).await?;
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, token) = header.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        let claims = state
            .tokens
            .verify(token.trim())
            .map_err(|_| ApiError::Unauthorized)?;
        // Tokens are short-lived, but a disabled user, a changed role or password, or a logout
        // ends access at once: the user's token version and the session are checked every time.
        let user = state
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if !user.is_active() || i64::from(user.token_version) != claims.ver {
            return Err(ApiError::Unauthorized);
        }
        let session = state
            .store
            .session(&claims.sid)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if session.revoked_at.is_some() || session.user_id != user.id {
            return Err(ApiError::Unauthorized);
        }
        let role = Role::parse(&user.role).ok_or(ApiError::Unauthorized)?;
        if let Some(retry) = state
            .limiter
            .hit("user", &user.id, state.policy.rate_limit_user)
            .await?
        {
            return Err(ApiError::TooManyRequests(retry));
        }
        Ok(AuthUser {
            id: user.id,
            role,
            session_id: session.id,
            meta,
        })
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            // The route template, not the concrete path: bounded, and free of ids.
            let method = parts.method.as_str();
            let route = route_template(method, parts.uri.path()).unwrap_or("(unmatched)");
            record_access_denied(state, &user, method, route).await?;
            return Err(ApiError::Forbidden);
        }
        Ok(AdminUser(user))
    }
}

/// The endpoint-table path (`/api/v1/users/{id}`) a request path matches.
fn route_template(method: &str, path: &str) -> Option<&'static str> {
    endpoint_list()
        .into_iter()
        .find(|e| {
            e.method == method && {
                let mut want = e.path.split('/');
                let mut got = path.split('/');
                loop {
                    match (want.next(), got.next()) {
                        (None, None) => break true,
                        (Some(w), Some(g)) if w == g || (w.starts_with('{') && !g.is_empty()) => {}
                        _ => break false,
                    }
                }
            }
        })
        .map(|e| e.path)
}

/// How often one user × route refusal is audited and logged at most.
const DENIED_AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// Audits and logs a non-admin's call to an admin route, at most once per user × route per
/// [`DENIED_AUDIT_WINDOW`] so a flood of refused calls cannot fill the audit table or the log.
async fn record_access_denied(
    state: &AppState,
    user: &AuthUser,
    method: &str,
    route: &str,
) -> Result<(), ApiError> {
    let n = state
        .counters
        .incr(
            &format!("denied:{}:{method}:{route}", user.id),
            DENIED_AUDIT_WINDOW,
        )
        .await?;
    if n != 1 {
        return Ok(());
    }
    tracing::warn!(
        event = "access_denied",
        user_id = %user.id,
        ip = %user.meta.ip,
        method,
        route,
        "non-admin called an admin endpoint"
    );
    state
        .store
        .audit(
            crate::store::AuditEvent::new(&user.actor(), "access_denied", "route")
                .failure()
                .target(format!("{method} {route}"))
                .detail(serde_json::json!({"method": method, "path": route})),
        )
        .await?;
    Ok(())
}

async fn readyz(State(s): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    s.store.ping().await.map_err(|_| ApiError::Unavailable)?;
    Ok(axum::Json(
        serde_json::json!({"ready": true, "snapshot_version": s.hub.current_version()}),
    ))
}

/// A list response, `{"data": [...]}`.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

impl<T> List<T> {
    /// The list of views of `items`.
    pub fn of<M: Into<T>>(items: impl IntoIterator<Item = M>) -> Self {
        List {
            data: items.into_iter().map(Into::into).collect(),
        }
    }
}

/// Tells an absent field (`None`, with `#[serde(default)]`) from an explicit `null`
/// (`Some(None)`) in a PATCH body: absent leaves a value alone, `null` removes it.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Checks a name made of letters, digits and `-_.:/`.
pub(crate) fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_table_has_no_duplicates_and_admin_api_is_prefixed() {
        let list = endpoint_list();
        let mut seen = std::collections::HashSet::new();
        for e in &list {
            assert!(
                seen.insert((e.method, e.path)),
                "duplicate {} {}",
                e.method,
                e.path
            );
            assert!(
                e.path.starts_with("/api/v1/") || e.access == Access::Public,
                "{}",
                e.path
            );
        }
    }

    #[test]
    fn route_templates() {
        assert_eq!(
            route_template("GET", "/api/v1/users"),
            Some("/api/v1/users")
        );
        assert_eq!(
            route_template("DELETE", "/api/v1/users/abc/lockouts"),
            Some("/api/v1/users/{id}/lockouts")
        );
        assert_eq!(route_template("GET", "/api/v1/users/"), None);
        assert_eq!(route_template("PUT", "/api/v1/users"), None);
    }

    #[test]
    fn forwarded_for_is_only_used_when_trusted() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 10.0.0.9"),
        );
        let peer = Some(SocketAddr::from(([127, 0, 0, 1], 5)));
        assert_eq!(client_ip(&h, peer, false), "127.0.0.1");
        assert_eq!(client_ip(&h, peer, true), "10.0.0.9");
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(&h, peer, true), "127.0.0.1");
    }
}
