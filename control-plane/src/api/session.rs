//! Sign-in, refresh, sign-out, registration and password change.
//!
//! API clients get both tokens in the JSON body. The dashboard asks for cookie mode: the refresh
//! token then lives only in an `HttpOnly; Secure; SameSite=Strict` cookie scoped to
//! `/api/v1/auth`, the access token stays in page memory, and refresh/logout by cookie must carry
//! the session's CSRF token in `X-CSRF-Token` (double submit: the same value is in a readable
//! cookie).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Duration as ChronoDuration;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiJson, AppState, AuthUser, ClientMeta};
use crate::auth::{self, MAX_PASSWORD_BYTES, Role, check_password_policy};
use crate::config::Registration;
use crate::limits::LoginGate;
use crate::store::entities::users;
use crate::store::sessions::RefreshOutcome;
use crate::store::{AuditEvent, NewUser, StoreError, UserStatus};
use crate::vault::generate_refresh_token;

const REFRESH_COOKIE: &str = "llmhub_refresh";
const CSRF_COOKIE: &str = "llmhub_csrf";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    /// Username or email.
    username: String,
    password: String,
    /// Dashboard mode: refresh token in an HttpOnly cookie instead of the body.
    #[serde(default)]
    cookie: bool,
}

fn chrono_ttl(s: &AppState) -> ChronoDuration {
    ChronoDuration::from_std(s.policy.refresh_ttl).unwrap_or(ChronoDuration::days(7))
}

/// Issues the token pair for a session, in the body or as cookies.
fn token_response(
    s: &AppState,
    user: &users::Model,
    session_id: &str,
    refresh: &str,
    cookie: bool,
) -> Result<Response, ApiError> {
    let role = Role::parse(&user.role).ok_or(ApiError::InvalidCredentials)?;
    let access = s
        .tokens
        .issue(&user.id, role, session_id, i64::from(user.token_version))
        .map_err(|_| ApiError::Internal("token issue failed".into()))?;
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": s.tokens.ttl().as_secs(),
    });
    let max_age = s.policy.refresh_ttl.as_secs();
    let mut headers = HeaderMap::new();
    if cookie {
        let csrf = s.hash_secret.csrf_token(session_id);
        body["csrf_token"] = json!(csrf);
        for c in [
            format!(
                "{REFRESH_COOKIE}={refresh}; Path=/api/v1/auth; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
            ),
            format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"),
        ] {
            headers.append(
                header::SET_COOKIE,
                HeaderValue::from_str(&c).map_err(|_| ApiError::Internal("cookie".into()))?,
            );
        }
    } else {
        body["refresh_token"] = json!(refresh);
        body["refresh_expires_in"] = json!(max_age);
    }
    Ok((StatusCode::OK, headers, Json(body)).into_response())
}

pub(super) async fn login(
    State(s): State<AppState>,
    meta: ClientMeta,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let login = body.username.trim();
    let user = if login.is_empty() || login.len() > 254 {
        None
    } else {
        s.store.user_by_login(login).await?
    };
    // Counters are keyed by the user id when the account exists, else by a keyed hash of the
    // name, so unknown names behave exactly like real ones.
    let account = user.as_ref().map_or_else(
        || {
            s.hash_secret
                .fingerprint(&format!("login|{}", login.to_lowercase()))
        },
        |u| u.id.clone(),
    );
    let actor = meta.actor(user.as_ref().map(|u| u.id.as_str()));
    let failure = |reason: &str| {
        AuditEvent::new(&actor, "login_failed", "user")
            .failure()
            .target(user.as_ref().map_or("", |u| u.id.as_str()))
            .detail(json!({"login": login.chars().take(64).collect::<String>(), "reason": reason}))
    };

    let gate = s.login_guard.check(&account, &meta.ip).await?;
    match gate {
        LoginGate::IpThrottled(retry) => {
            s.store.audit(failure("address_throttled")).await?;
            return Err(ApiError::TooManyRequests(retry));
        }
        // Unknown names are counted under a keyed hash the same way, so this answer says
        // nothing about whether the account exists.
        LoginGate::AccountThrottled(retry) => {
            s.store.audit(failure("account_throttled")).await?;
            return Err(ApiError::TooManyRequests(retry));
        }
        LoginGate::Open | LoginGate::AccountLocked(_) => {}
    }
    let locked = matches!(gate, LoginGate::AccountLocked(_));
    let usable = user.as_ref().filter(|u| u.is_active() && !locked);
    // Oversized passwords do no hashing work at all; every other path costs one verification
    // (against a dummy hash when the account is unknown, locked or disabled).
    let verified = if body.password.len() > MAX_PASSWORD_BYTES {
        auth::Verified {
            ok: false,
            needs_rehash: false,
        }
    } else {
        s.hasher
            .verify(&body.password, usable.map(|u| u.password_hash.as_str()))
            .await?
    };
    let Some(user) = usable.filter(|_| verified.ok).cloned() else {
        let reason = match &user {
            None => "unknown_user",
            Some(_) if locked => "locked",
            Some(u) if !u.is_active() => "not_active",
            Some(_) => "wrong_password",
        };
        if !locked {
            s.login_guard.record_failure(&account, &meta.ip).await?;
        }
        s.store.audit(failure(reason)).await?;
        return Err(ApiError::InvalidCredentials);
    };
    s.login_guard.record_success(&account, &meta.ip).await?;
    if verified.needs_rehash {
        // The configured cost rose since this hash was made; upgrade it transparently.
        let h = s.hasher.hash(&body.password).await?;
        s.store.set_password_hash(&user.id, &h, false, None).await?;
    }
    let refresh = generate_refresh_token();
    let session = s
        .store
        .create_session(
            &user.id,
            &meta.ip,
            &meta.user_agent,
            chrono_ttl(&s),
            s.hash_secret.refresh_token_hash(&refresh),
            AuditEvent::new(&actor, "login_succeeded", "user").target(&user.id),
        )
        .await?;
    token_response(&s, &user, &session.id, &refresh, body.cookie)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    refresh_token: Option<String>,
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Constant-time comparison for CSRF tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub(super) async fn refresh(
    State(s): State<AppState>,
    meta: ClientMeta,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: cookie-mode clients send none.
    let from_body = if raw.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RefreshBody>(&raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
            .refresh_token
    };
    let (token, cookie_mode) = match (&from_body, cookie_value(&headers, REFRESH_COOKIE)) {
        (Some(t), _) => (t.as_str(), false),
        (None, Some(c)) => (c, true),
        (None, None) => return Err(ApiError::Unauthorized),
    };
    let hash = s.hash_secret.refresh_token_hash(token);
    if cookie_mode {
        // Cookies ride along on cross-site requests; the CSRF header proves the caller could
        // read this origin's cookies.
        let session_id = s
            .store
            .session_for_refresh(&hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let expected = s.hash_secret.csrf_token(&session_id);
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(sent, &expected) {
            return Err(ApiError::Forbidden);
        }
    }
    let next = generate_refresh_token();
    let outcome = s
        .store
        .rotate_refresh(
            &hash,
            s.hash_secret.refresh_token_hash(&next),
            AuditEvent::new(&meta.actor(None), "refresh_token_reuse", "user").failure(),
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            let user = s
                .store
                .user_by_id(&session.user_id)
                .await?
                .filter(users::Model::is_active)
                .ok_or(ApiError::Unauthorized)?;
            token_response(&s, &user, &session.id, &next, cookie_mode)
        }
        RefreshOutcome::Reused(session) => {
            tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse: session revoked");
            Err(ApiError::Unauthorized)
        }
        RefreshOutcome::Invalid => Err(ApiError::Unauthorized),
    }
}

pub(super) async fn logout(
    State(s): State<AppState>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    s.store
        .revoke_session(
            &user.session_id,
            "logout",
            AuditEvent::new(&user.actor(), "logout", "user").target(&user.id),
        )
        .await?;
    let mut headers = HeaderMap::new();
    for c in [
        format!(
            "{REFRESH_COOKIE}=; Path=/api/v1/auth; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        ),
        format!("{CSRF_COOKIE}=; Path=/; Max-Age=0; Secure; SameSite=Strict"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// The signed-in user, with the session the access token belongs to.
#[derive(Serialize)]
pub(super) struct MeView {
    id: String,
    username: String,
    email: Option<String>,
    role: String,
    status: String,
    session_id: String,
    /// The limits and budget an admin set on the account (they cap all of its client keys).
    #[serde(flatten)]
    limits: super::limits::LimitsView,
}

pub(super) async fn me(
    State(s): State<AppState>,
    user: AuthUser,
) -> Result<Json<MeView>, ApiError> {
    let u = s
        .store
        .user_by_id(&user.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(MeView {
        limits: super::limits::LimitsView::of(u.limits(), u.budget()),
        id: u.id,
        username: u.username,
        email: u.email,
        role: u.role,
        status: u.status,
        session_id: user.session_id,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
    username: Option<String>,
    email: Option<String>,
    password: String,
}

/// Usernames: 3-64 of letters, digits, `.`, `_`, `-`.
pub(super) fn valid_username(u: &str) -> bool {
    (3..=64).contains(&u.len())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A deliberately plain email check: one `@`, a dot in the domain, no spaces, at most 254 bytes.
pub(super) fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && !e.chars().any(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
}

/// Validates a new account's names and password (before any hashing) and returns
/// (username, email).
pub(super) fn validate_new_account(
    username: Option<&str>,
    email: Option<&str>,
    password: &str,
) -> Result<(String, Option<String>), ApiError> {
    let email = email
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty());
    if let Some(e) = &email
        && !valid_email(e)
    {
        return Err(ApiError::BadRequest("email: not a valid address".into()));
    }
    let username = match (username.map(str::trim).filter(|u| !u.is_empty()), &email) {
        (Some(u), _) => {
            if !valid_username(u) {
                return Err(ApiError::BadRequest(
                    "username: 3-64 characters of letters, digits, '.', '_' and '-'".into(),
                ));
            }
            u.to_owned()
        }
        (None, Some(e)) => e.clone(),
        (None, None) => {
            return Err(ApiError::BadRequest("username or email is required".into()));
        }
    };
    let mut inputs = vec![username.as_str()];
    if let Some(e) = &email {
        inputs.push(e.as_str());
    }
    check_password_policy(password, &inputs)?;
    Ok((username, email))
}

/// A new account: `active`, or `pending` until an admin approves it.
#[derive(Serialize)]
pub(super) struct RegisteredView {
    id: String,
    username: String,
    status: String,
}

/// Self-service registration.
///
/// Every attempt from an address counts against `registration_rate_limit` per hour (429 beyond
/// it) and is logged with `event = "registration_attempt"`. In `approval` mode a taken username
/// or email is answered exactly like a new one (201, a pending view with a fresh id, after the
/// same hashing work) and nothing is created, so the endpoint cannot be used to find accounts;
/// in `open` mode the caller must learn that a name is taken, and the per-address limit bounds
/// how many names can be probed.
pub(super) async fn register(
    State(s): State<AppState>,
    meta: ClientMeta,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<RegisteredView>), ApiError> {
    let status = match s.policy.registration {
        Registration::Closed => {
            return Err(ApiError::ForbiddenWith("registration is closed".into()));
        }
        Registration::Open => UserStatus::Active,
        Registration::Approval => UserStatus::Pending,
    };
    let result = register_new(&s, &meta, body, status).await;
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(ApiError::TooManyRequests(_)) => "rate_limited",
        Err(ApiError::Conflict(_)) => "taken",
        Err(ApiError::BadRequest(_)) => "invalid",
        Err(_) => "error",
    };
    tracing::info!(event = "registration_attempt", ip = %meta.ip, outcome, "registration attempt");
    result.map(|(view, _)| (StatusCode::CREATED, Json(view)))
}

async fn register_new(
    s: &AppState,
    meta: &ClientMeta,
    body: RegisterBody,
    status: UserStatus,
) -> Result<(RegisteredView, &'static str), ApiError> {
    if let Some(retry) = s
        .registration_limiter
        .hit(
            "register",
            &crate::limits::addr_key(&meta.ip),
            s.policy.registration_limit,
        )
        .await?
    {
        return Err(ApiError::TooManyRequests(retry));
    }
    let (username, email) = validate_new_account(
        body.username.as_deref(),
        body.email.as_deref(),
        &body.password,
    )?;
    let hash = s.hasher.hash(&body.password).await?;
    let created = s
        .store
        .create_user(
            NewUser {
                username: username.clone(),
                email,
                password_hash: hash,
                role: Role::User.as_str(),
                status,
            },
            AuditEvent::new(&meta.actor(None), "user_registered", "user"),
        )
        .await;
    match created {
        Ok(user) => Ok((
            RegisteredView {
                id: user.id,
                username: user.username,
                status: user.status,
            },
            "registered",
        )),
        // Indistinguishable from a new pending account; there is nothing for an admin to approve.
        Err(StoreError::Conflict(_)) if status == UserStatus::Pending => Ok((
            RegisteredView {
                id: uuid::Uuid::new_v4().to_string(),
                username,
                status: status.as_str().to_owned(),
            },
            "taken",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// Changes the caller's password and ends all of their sessions (including this one).
///
/// A stolen access token must not become an unlimited password oracle: wrong current passwords
/// count as failed logins of this account from this address (the same [`LoginGuard`] counters,
/// lockouts and backoff), and while locked or throttled even the right one is refused with 429.
///
/// [`LoginGuard`]: crate::limits::LoginGuard
pub(super) async fn change_password(
    State(s): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let failed = |reason: &str| {
        AuditEvent::new(&user.actor(), "password_change_failed", "user")
            .failure()
            .target(&user.id)
            .detail(json!({"reason": reason}))
    };
    match s.login_guard.check(&user.id, &user.meta.ip).await? {
        LoginGate::Open => {}
        LoginGate::AccountLocked(retry)
        | LoginGate::AccountThrottled(retry)
        | LoginGate::IpThrottled(retry) => {
            s.store.audit(failed("locked")).await?;
            return Err(ApiError::TooManyRequests(retry));
        }
    }
    let u = s
        .store
        .user_by_id(&user.id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let mut inputs = vec![u.username.as_str()];
    if let Some(e) = &u.email {
        inputs.push(e.as_str());
    }
    check_password_policy(&body.new_password, &inputs)?;
    if body.current_password.len() > MAX_PASSWORD_BYTES
        || !s
            .hasher
            .verify(&body.current_password, Some(&u.password_hash))
            .await?
            .ok
    {
        s.login_guard
            .record_failure(&user.id, &user.meta.ip)
            .await?;
        s.store.audit(failed("wrong_password")).await?;
        return Err(ApiError::ForbiddenWith(
            "current password is incorrect".into(),
        ));
    }
    s.login_guard
        .record_success(&user.id, &user.meta.ip)
        .await?;
    let hash = s.hasher.hash(&body.new_password).await?;
    s.store
        .set_password_hash(
            &user.id,
            &hash,
            true,
            Some(AuditEvent::new(&user.actor(), "password_changed", "user")),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_username("alice") && valid_username("a.b-c_d"));
        assert!(!valid_username("al") && !valid_username("al ice") && !valid_username("ålice"));
        assert!(valid_email("a@b.co") && !valid_email("a@b") && !valid_email("a b@c.d"));
        assert!(!valid_email("@b.co") && !valid_email("a@.b"));
    }

    #[test]
    fn cookie_parsing_and_constant_time_compare() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; llmhub_refresh=tok; b=2"),
        );
        assert_eq!(cookie_value(&h, REFRESH_COOKIE), Some("tok"));
        assert_eq!(cookie_value(&h, "nope"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
