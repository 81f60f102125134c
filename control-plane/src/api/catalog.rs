//! Providers, provider keys, client keys, routes and the fleet view.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use llmhub_providers::{Kind, presets};
use serde::{Deserialize, Serialize};

use super::limits::{BudgetInput, LimitFields, LimitsView};
use super::{
    AdminUser, ApiError, ApiJson, ApiQuery, AppState, AuthUser, List, present, valid_name,
};
use crate::auth::Role;
use crate::hub::{ConnectedProxy, RoutingStrategy, RpcCounters};
use crate::store::entities::{client_keys, providers};
use crate::store::{
    AuditEvent, ClientKeyChange, NewClientKey, NewProvider, NewRouteTarget, ProviderChange,
    Rotation, RouteChange, RouteWithTargets, StoreError, parse_list,
};
use crate::vault::generate_client_key;

#[derive(Serialize)]
pub(super) struct ProviderView {
    id: String,
    name: String,
    kind: String,
    base_url: String,
    enabled: bool,
    request_timeout_ms: i32,
    preset: Option<String>,
    api_version: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<providers::Model> for ProviderView {
    fn from(p: providers::Model) -> Self {
        ProviderView {
            id: p.id,
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            enabled: p.enabled,
            request_timeout_ms: p.request_timeout_ms,
            preset: p.preset,
            api_version: p.api_version,
            created_at: p.created_at,
        }
    }
}

pub(super) async fn list_providers(
    State(s): State<AppState>,
    _u: AuthUser,
) -> Result<Json<List<ProviderView>>, ApiError> {
    Ok(Json(List::of(s.store.providers().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateProvider {
    name: String,
    /// `openai`, `openai-compatible`, `anthropic`, `gemini` or `azure-openai`; implied by `preset`.
    kind: Option<String>,
    /// A known provider (`openai`, `anthropic`, `gemini`, `mistral`, `groq`, `deepseek`,
    /// `openrouter`, `together`, `xai`, `ollama`, `vllm`): sets the kind and default base URL.
    preset: Option<String>,
    /// Required unless the preset has a default.
    base_url: Option<String>,
    /// Azure OpenAI's `api-version` (required for `azure-openai`).
    api_version: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    request_timeout_ms: Option<u32>,
}

pub(super) fn yes() -> bool {
    true
}

/// Accepts only absolute http(s) URLs without credentials, query or fragment: the base URL is
/// where provider keys are sent, so it must be exactly what the admin meant. A host the egress
/// policy refuses outright (an internal IP literal, a cloud metadata name) is refused here; a
/// name that merely resolves to an internal address is refused when a key test or the proxy
/// connects.
fn validate_base_url(
    raw: &str,
    egress: &llmhub_providers::EgressPolicy,
) -> Result<String, ApiError> {
    let url = url::Url::parse(raw)
        .map_err(|_| ApiError::BadRequest("base_url: not a valid URL".into()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::BadRequest(
            "base_url: scheme must be http or https".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::BadRequest(
            "base_url: must not contain credentials".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
        return Err(ApiError::BadRequest(
            "base_url: must be scheme://host[:port]/path without query or fragment".into(),
        ));
    }
    if let Some(host) = url.host_str()
        && !egress.permits_url_host(host)
    {
        return Err(ApiError::BadRequest(format!(
            "base_url: {host} is an internal or metadata address, refused by the egress policy; \
             allow its network with the `egress_allow` setting (control plane and proxies) for a \
             self-hosted provider"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

pub(super) async fn create_provider(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateProvider>,
) -> Result<(http::StatusCode, Json<ProviderView>), ApiError> {
    if !valid_name(&body.name, 64) {
        return Err(ApiError::BadRequest(
            "name: 1-64 characters of letters, digits, '-', '_', '.'".into(),
        ));
    }
    let preset = match &body.preset {
        None => None,
        Some(name) => Some(presets::find(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "preset: unknown {name:?}; known: {}",
                presets::PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    let kind: &'static str = match (&body.kind, preset) {
        (Some(k), Some(p)) if k != p.kind.slug() => {
            return Err(ApiError::BadRequest(format!(
                "kind: the preset implies {}",
                p.kind.slug()
            )));
        }
        (_, Some(p)) => p.kind.slug(),
        (Some(k), None) => Kind::from_slug(k).map(Kind::slug).ok_or_else(|| {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.slug()).collect();
            ApiError::BadRequest(format!("kind: must be one of {}", all.join(", ")))
        })?,
        (None, None) => return Err(ApiError::BadRequest("kind or preset is required".into())),
    };
    let base_url = match (&body.base_url, preset) {
        (Some(u), _) => validate_base_url(u, &s.policy.egress)?,
        (None, Some(p)) => p.base_url.to_owned(),
        (None, None) => return Err(ApiError::BadRequest("base_url: is required".into())),
    };
    let api_version = body.api_version.filter(|v| !v.is_empty());
    if kind == Kind::AzureOpenAi.slug() {
        match &api_version {
            Some(v) if valid_api_version(v) => {}
            _ => {
                return Err(ApiError::BadRequest(
                    "api_version: required for azure-openai, e.g. 2024-10-21".into(),
                ));
            }
        }
    } else if api_version.is_some() {
        return Err(ApiError::BadRequest(
            "api_version: only for azure-openai".into(),
        ));
    }
    let timeout = check_timeout(body.request_timeout_ms.unwrap_or(120_000))?;
    let p = s
        .store
        .create_provider(
            NewProvider {
                name: body.name,
                kind,
                base_url,
                enabled: body.enabled,
                request_timeout_ms: timeout,
                preset: body.preset,
                api_version,
            },
            AuditEvent::new(&admin.actor(), "provider_created", "provider"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok((http::StatusCode::CREATED, Json(p.into())))
}

/// Checks an Azure `api-version` (`2024-10-21`, `2024-10-01-preview`).
fn valid_api_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn check_timeout(ms: u32) -> Result<u32, ApiError> {
    if !(1_000..=600_000).contains(&ms) {
        return Err(ApiError::BadRequest(
            "request_timeout_ms: must be between 1000 and 600000".into(),
        ));
    }
    Ok(ms)
}

/// A provider's settings to change; absent fields stay. The kind and preset are fixed at
/// creation: stored keys were checked against the kind's key format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateProvider {
    name: Option<String>,
    /// Where the provider's keys are sent from now on; checked like at creation, including the
    /// egress policy.
    base_url: Option<String>,
    enabled: Option<bool>,
    request_timeout_ms: Option<u32>,
    /// Azure OpenAI only.
    api_version: Option<String>,
}

pub(super) async fn update_provider(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    let current = s.store.provider(&id).await?;
    if let Some(n) = &body.name
        && !valid_name(n, 64)
    {
        return Err(ApiError::BadRequest(
            "name: 1-64 characters of letters, digits, '-', '_', '.'".into(),
        ));
    }
    let base_url = match &body.base_url {
        None => None,
        Some(u) => Some(validate_base_url(u, &s.policy.egress)?),
    };
    let api_version = match body.api_version {
        None => None,
        Some(_) if current.kind != Kind::AzureOpenAi.slug() => {
            return Err(ApiError::BadRequest(
                "api_version: only for azure-openai".into(),
            ));
        }
        Some(v) if valid_api_version(&v) => Some(Some(v)),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "api_version: required for azure-openai, e.g. 2024-10-21".into(),
            ));
        }
    };
    let request_timeout_ms = body.request_timeout_ms.map(check_timeout).transpose()?;
    let change = ProviderChange {
        name: body.name,
        base_url,
        enabled: body.enabled,
        request_timeout_ms,
        api_version,
    };
    // Turning a provider on or off keeps its own audit actions; anything else is an update.
    let only_enabled = change.name.is_none()
        && change.base_url.is_none()
        && change.request_timeout_ms.is_none()
        && change.api_version.is_none();
    let action = match (only_enabled, change.enabled) {
        (true, None) => {
            return Err(ApiError::BadRequest(
                "nothing to change: give name, base_url, enabled, request_timeout_ms or api_version"
                    .into(),
            ));
        }
        (true, Some(true)) => "provider_enabled",
        (true, Some(false)) => "provider_disabled",
        (false, _) => "provider_updated",
    };
    let p = s
        .store
        .update_provider(
            &id,
            change,
            AuditEvent::new(&admin.actor(), action, "provider"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(p.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteProviderQuery {
    /// Also delete the provider's keys (every pool's). Without it a provider that still has
    /// keys is not deleted.
    #[serde(default)]
    delete_keys: bool,
}

/// Deletes a provider: refused (409) while routes target it, and while it has keys unless
/// `?delete_keys=true`. Keys deleted with it are audited one by one.
pub(super) async fn delete_provider(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteProviderQuery>,
) -> Result<http::StatusCode, ApiError> {
    match s
        .store
        .delete_provider(
            &id,
            q.delete_keys,
            AuditEvent::new(&admin.actor(), "provider_deleted", "provider"),
        )
        .await
    {
        Ok(_) => {}
        Err(StoreError::InUse {
            what: "routes",
            names,
        }) => {
            return Err(ApiError::Conflict(format!(
                "provider is the target of routes {}: change or delete them first",
                names.join(", ")
            )));
        }
        Err(StoreError::InUse { names, .. }) => {
            return Err(ApiError::Conflict(format!(
                "provider has {} keys: delete them first, or pass ?delete_keys=true to delete \
                 them with the provider",
                names.len()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    s.hub.rebuild().await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// A client key as its owner sees it: the display prefix, never the key or its hash.
#[derive(Serialize)]
pub(super) struct ClientKeyView {
    id: String,
    user_id: String,
    name: String,
    prefix: String,
    allowed_models: Vec<String>,
    enabled: bool,
    use_shared_pool: bool,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    /// The owner's limits and budget for this key (the user's own, set by admins, apply too).
    #[serde(flatten)]
    limits: LimitsView,
    rotated_at: Option<DateTime<Utc>>,
    /// Until when the secret replaced by the last rotation still works (`null` once it does
    /// not).
    previous_valid_until: Option<DateTime<Utc>>,
}

impl From<client_keys::Model> for ClientKeyView {
    fn from(k: client_keys::Model) -> Self {
        let now = Utc::now();
        ClientKeyView {
            limits: LimitsView::of(k.limits(), k.budget()),
            allowed_models: parse_list(&k.allowed_models),
            previous_valid_until: k
                .previous_valid_until
                .filter(|t| *t > now && k.previous_key_hash.is_some()),
            id: k.id,
            user_id: k.user_id,
            name: k.name,
            prefix: k.prefix,
            enabled: k.enabled,
            use_shared_pool: k.use_shared_pool,
            expires_at: k.expires_at,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            rotated_at: k.rotated_at,
        }
    }
}

/// A client key with its full secret: returned once, at creation or rotation.
#[derive(Serialize)]
pub(super) struct CreatedClientKeyView {
    #[serde(flatten)]
    view: ClientKeyView,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientKeyQuery {
    /// Admins: whose keys to list (default: the caller's own).
    user_id: Option<String>,
}

pub(super) async fn list_client_keys(
    State(s): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ClientKeyQuery>,
) -> Result<Json<List<ClientKeyView>>, ApiError> {
    let whose = match q.user_id {
        Some(other) if other != user.id => {
            if user.role != Role::Admin {
                return Err(ApiError::ForbiddenWith(
                    "user_id: only admins list another user's keys".into(),
                ));
            }
            other
        }
        _ => user.id,
    };
    Ok(Json(List::of(s.store.client_keys_of(&whose).await?)))
}

fn check_key_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::BadRequest("name: 1-128 characters".into()));
    }
    Ok(())
}

fn check_allowed_models(models: &[String]) -> Result<(), ApiError> {
    if models.len() > 256 || !models.iter().all(|m| valid_name(m, 128)) {
        return Err(ApiError::BadRequest(
            "allowed_models: up to 256 model names".into(),
        ));
    }
    Ok(())
}

fn check_expiry(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), ApiError> {
    if t.is_some_and(|t| t <= now) {
        return Err(ApiError::BadRequest(
            "expires_at: must be in the future".into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateClientKey {
    name: String,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default = "yes")]
    use_shared_pool: bool,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Limits the owner puts on this key (absent or `null`: none).
    rpm_limit: Option<u32>,
    tpm_limit: Option<u32>,
    max_concurrent: Option<u32>,
    budget: Option<BudgetInput>,
}

pub(super) async fn create_client_key(
    State(s): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<CreateClientKey>,
) -> Result<(http::StatusCode, Json<CreatedClientKeyView>), ApiError> {
    let now = Utc::now();
    check_key_name(&body.name)?;
    check_allowed_models(&body.allowed_models)?;
    check_expiry(body.expires_at, now)?;
    let limits = LimitFields {
        rpm_limit: body.rpm_limit.map(Some),
        tpm_limit: body.tpm_limit.map(Some),
        max_concurrent: body.max_concurrent.map(Some),
        budget: body.budget.map(Some),
    }
    .check(now)?;
    let (key, prefix) = generate_client_key();
    let actor = user.actor();
    let row = s
        .store
        .insert_client_key(
            NewClientKey {
                id: uuid::Uuid::new_v4().to_string(),
                user_id: user.id,
                name: body.name,
                key_hash: s.hash_secret.client_key_hash(&key),
                prefix,
                allowed_models: body.allowed_models,
                use_shared_pool: body.use_shared_pool,
                expires_at: body.expires_at,
                limits,
            },
            AuditEvent::new(&actor, "client_key_created", "client_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    // The only time the full key is ever returned; only its keyed hash is stored.
    let view = CreatedClientKeyView {
        view: row.into(),
        key: key.as_str().to_owned(),
    };
    Ok((http::StatusCode::CREATED, Json(view)))
}

/// A client-key edit: absent fields stay, `null` removes a limit, the budget or the expiry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateClientKey {
    name: Option<String>,
    /// Replaces the list; `[]` allows every routed model.
    allowed_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    rpm_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    tpm_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    max_concurrent: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<BudgetInput>>,
}

/// The key `id` if `user` may see it: its owner's, or any key for an admin. Others' keys are
/// not found.
async fn visible_client_key(
    s: &AppState,
    user: &AuthUser,
    id: &str,
) -> Result<client_keys::Model, ApiError> {
    let key = s.store.client_key(id).await?;
    if key.user_id != user.id && user.role != Role::Admin {
        return Err(ApiError::NotFound);
    }
    Ok(key)
}

/// Edits a client key: its owner, or an admin for any key. A key's limits and budget are its
/// owner's to set (self-restriction); what an admin imposes belongs on the user
/// (`PATCH /api/v1/users/{id}/limits`), which covers all of the user's keys.
pub(super) async fn update_client_key(
    State(s): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateClientKey>,
) -> Result<Json<ClientKeyView>, ApiError> {
    let now = Utc::now();
    let key = visible_client_key(&s, &user, &id).await?;
    if let Some(n) = &body.name {
        check_key_name(n)?;
    }
    if let Some(m) = &body.allowed_models {
        check_allowed_models(m)?;
    }
    check_expiry(body.expires_at.flatten(), now)?;
    let limits = LimitFields {
        rpm_limit: body.rpm_limit,
        tpm_limit: body.tpm_limit,
        max_concurrent: body.max_concurrent,
        budget: body.budget,
    }
    .check(now)?;
    let change = ClientKeyChange {
        name: body.name,
        allowed_models: body.allowed_models,
        expires_at: body.expires_at,
        limits,
    };
    if change.name.is_none()
        && change.allowed_models.is_none()
        && change.expires_at.is_none()
        && change.limits.is_empty()
    {
        return Err(ApiError::BadRequest(
            "nothing to change: give name, allowed_models, expires_at, rpm_limit, tpm_limit, \
             max_concurrent or budget"
                .into(),
        ));
    }
    // The owner's id pins the change to the key seen above, also for an admin.
    let row = s
        .store
        .update_client_key(
            &id,
            &key.user_id,
            change,
            AuditEvent::new(&user.actor(), "client_key_updated", "client_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(row.into()))
}

/// Longest grace a rotated-out secret may keep working: long enough to redeploy, short enough
/// that a leaked secret does not stay useful.
pub const MAX_ROTATION_GRACE_SECONDS: u32 = 7 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateClientKey {
    /// How long the replaced secret keeps working (default 0: not at all).
    #[serde(default)]
    grace_seconds: u32,
}

/// Gives a client key a new secret, returned once. The old secret keeps working for the grace
/// period, then only the new one does. Only the owner rotates: the response carries a working
/// secret, which must never reach anyone else, admins included.
pub(super) async fn rotate_client_key(
    State(s): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateClientKey>,
) -> Result<Json<CreatedClientKeyView>, ApiError> {
    if body.grace_seconds > MAX_ROTATION_GRACE_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "grace_seconds: must be between 0 and {MAX_ROTATION_GRACE_SECONDS} (7 days)"
        )));
    }
    let (key, prefix) = generate_client_key();
    let row = s
        .store
        .rotate_client_key(
            &id,
            &user.id,
            Rotation {
                key_hash: s.hash_secret.client_key_hash(&key),
                prefix,
                grace: chrono::Duration::seconds(i64::from(body.grace_seconds)),
            },
            AuditEvent::new(&user.actor(), "client_key_rotated", "client_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(CreatedClientKeyView {
        view: row.into(),
        key: key.as_str().to_owned(),
    }))
}

pub(super) async fn revoke_client_key(
    State(s): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<http::StatusCode, ApiError> {
    s.store
        .revoke_client_key(
            &user.id,
            &id,
            AuditEvent::new(&user.actor(), "client_key_revoked", "client_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(http::StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(super) struct RouteView {
    id: String,
    public_model: String,
    strategy: String,
    aliases: Vec<String>,
    targets: Vec<RouteTargetView>,
}

#[derive(Serialize)]
pub(super) struct RouteTargetView {
    provider_id: String,
    upstream_model: String,
    weight: i32,
    priority: i32,
}

impl From<RouteWithTargets> for RouteView {
    fn from(r: RouteWithTargets) -> Self {
        RouteView {
            aliases: parse_list(&r.route.aliases),
            id: r.route.id,
            public_model: r.route.public_model,
            strategy: r.route.strategy,
            targets: r
                .targets
                .into_iter()
                .map(|t| RouteTargetView {
                    provider_id: t.provider_id,
                    upstream_model: t.upstream_model,
                    weight: t.weight,
                    priority: t.priority,
                })
                .collect(),
        }
    }
}

pub(super) async fn list_routes(
    State(s): State<AppState>,
    _u: AuthUser,
) -> Result<Json<List<RouteView>>, ApiError> {
    Ok(Json(List::of(s.store.routes().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRoute {
    public_model: String,
    /// `weighted` (default), `least_inflight` or `latency`.
    strategy: Option<String>,
    /// Other public names for the same route.
    #[serde(default)]
    aliases: Vec<String>,
    targets: Vec<CreateTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTarget {
    provider_id: String,
    upstream_model: String,
    weight: Option<u32>,
    priority: Option<u32>,
}

fn check_strategy(strategy: Option<&str>) -> Result<Option<RoutingStrategy>, ApiError> {
    strategy
        .map(|s| {
            RoutingStrategy::parse(s).ok_or_else(|| {
                ApiError::BadRequest("strategy: must be weighted, least_inflight or latency".into())
            })
        })
        .transpose()
}

fn check_aliases(aliases: &[String]) -> Result<(), ApiError> {
    if aliases.len() > 16 || !aliases.iter().all(|a| valid_name(a, 128)) {
        return Err(ApiError::BadRequest("aliases: up to 16 model names".into()));
    }
    Ok(())
}

/// A public name (or alias) may belong to one route only; `except` is the route being changed.
async fn check_names_free<'a>(
    s: &AppState,
    names: impl IntoIterator<Item = &'a String>,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let taken: std::collections::HashSet<String> = s
        .store
        .routes()
        .await?
        .into_iter()
        .filter(|r| Some(r.route.public_model.as_str()) != except)
        .flat_map(|r| {
            let mut names = parse_list(&r.route.aliases);
            names.push(r.route.public_model);
            names
        })
        .collect();
    if let Some(dup) = names.into_iter().find(|n| taken.contains(*n)) {
        return Err(ApiError::Conflict(format!(
            "model name {dup:?} is already routed"
        )));
    }
    Ok(())
}

async fn check_targets(
    s: &AppState,
    targets: Vec<CreateTarget>,
) -> Result<Vec<NewRouteTarget>, ApiError> {
    if targets.is_empty() || targets.len() > 16 {
        return Err(ApiError::BadRequest(
            "targets: between 1 and 16 targets".into(),
        ));
    }
    let mut checked = Vec::with_capacity(targets.len());
    for (i, t) in targets.into_iter().enumerate() {
        if s.store.provider(&t.provider_id).await.is_err() {
            return Err(ApiError::BadRequest(format!(
                "targets[{i}].provider_id: no such provider"
            )));
        }
        if !valid_name(&t.upstream_model, 128) {
            return Err(ApiError::BadRequest(format!(
                "targets[{i}].upstream_model: 1-128 characters without spaces"
            )));
        }
        let weight = t.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return Err(ApiError::BadRequest(format!(
                "targets[{i}].weight: must be between 1 and 1000"
            )));
        }
        checked.push(NewRouteTarget {
            provider_id: t.provider_id,
            upstream_model: t.upstream_model,
            weight,
            priority: t.priority.unwrap_or(u32::try_from(i).unwrap_or(0)),
        });
    }
    Ok(checked)
}

pub(super) async fn create_route(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateRoute>,
) -> Result<(http::StatusCode, Json<RouteView>), ApiError> {
    if !valid_name(&body.public_model, 128) {
        return Err(ApiError::BadRequest(
            "public_model: 1-128 characters without spaces".into(),
        ));
    }
    let strategy = check_strategy(body.strategy.as_deref())?.unwrap_or_default();
    check_aliases(&body.aliases)?;
    check_names_free(
        &s,
        std::iter::once(&body.public_model).chain(&body.aliases),
        None,
    )
    .await?;
    let targets = check_targets(&s, body.targets).await?;
    let r = s
        .store
        .create_route(
            &body.public_model,
            strategy.as_str(),
            &body.aliases,
            targets,
            AuditEvent::new(&admin.actor(), "route_created", "route"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok((http::StatusCode::CREATED, Json(r.into())))
}

/// A route change: absent fields stay; `targets` replaces the whole list. The public name is the
/// route's identity and does not change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateRoute {
    strategy: Option<String>,
    aliases: Option<Vec<String>>,
    targets: Option<Vec<CreateTarget>>,
}

/// Changes the route whose public name is `model` (percent-encode a `/` in it). Proxies route by
/// the new targets from the next snapshot on.
pub(super) async fn update_route(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(model): Path<String>,
    ApiJson(body): ApiJson<UpdateRoute>,
) -> Result<Json<RouteView>, ApiError> {
    if !s
        .store
        .routes()
        .await?
        .iter()
        .any(|r| r.route.public_model == model)
    {
        return Err(ApiError::NotFound);
    }
    if body.strategy.is_none() && body.aliases.is_none() && body.targets.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give strategy, aliases or targets".into(),
        ));
    }
    let strategy = check_strategy(body.strategy.as_deref())?;
    if let Some(aliases) = &body.aliases {
        check_aliases(aliases)?;
        check_names_free(&s, aliases, Some(&model)).await?;
    }
    let targets = match body.targets {
        None => None,
        Some(t) => Some(check_targets(&s, t).await?),
    };
    let r = s
        .store
        .update_route(
            &model,
            RouteChange {
                strategy: strategy.map(|st| st.as_str().to_owned()),
                aliases: body.aliases,
                targets,
            },
            AuditEvent::new(&admin.actor(), "route_updated", "route"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(r.into()))
}

/// Deletes the route whose public name is `model`. Client keys that list the name keep it: the
/// name answers `model_not_found` until a route of that name exists again. Routing records keep
/// the name they were written with.
pub(super) async fn delete_route(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(model): Path<String>,
) -> Result<http::StatusCode, ApiError> {
    s.store
        .delete_route(
            &model,
            AuditEvent::new(&admin.actor(), "route_deleted", "route"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(http::StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(super) struct FleetView {
    snapshot_version: u64,
    proxies: Vec<ConnectedProxy>,
    rpc: RpcCounters,
}

/// Connected proxies and gRPC call counters, for operators and the mTLS tests.
pub(super) async fn fleet(State(s): State<AppState>, _admin: AdminUser) -> Json<FleetView> {
    Json(FleetView {
        snapshot_version: s.hub.current_version(),
        proxies: s.hub.connected(),
        rpc: s.hub.counters(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmhub_providers::EgressPolicy;

    #[test]
    fn every_preset_base_url_is_accepted() {
        for p in presets::PRESETS {
            assert!(
                validate_base_url(p.base_url, &EgressPolicy::default()).is_ok(),
                "{}",
                p.base_url
            );
        }
    }

    #[test]
    fn base_urls_must_be_plain() {
        for bad in [
            "ftp://x",
            "https://u:p@h/v1",
            "https://h/v1?x=1",
            "https://h/v1#f",
            "not a url",
        ] {
            assert!(
                validate_base_url(bad, &EgressPolicy::default()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            validate_base_url("https://h/v1/", &EgressPolicy::default()).unwrap(),
            "https://h/v1"
        );
    }

    #[test]
    fn base_urls_the_egress_policy_refuses_are_rejected() {
        let deny = EgressPolicy::default();
        for bad in [
            "http://169.254.169.254/v1",
            "http://metadata.google.internal/",
            "http://127.0.0.1:11434/v1",
            "http://[::1]:8000/v1",
            "http://10.0.0.5/v1",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let e = validate_base_url(bad, &deny).unwrap_err().to_string();
            assert!(e.contains("base_url") && e.contains("egress_allow"), "{e}");
        }
        let allow = EgressPolicy::parse(&["10.0.0.0/8", "127.0.0.0/8"]).unwrap();
        assert!(validate_base_url("http://10.0.0.5/v1", &allow).is_ok());
        assert!(validate_base_url("http://127.0.0.1:11434/v1", &allow).is_ok());
        assert!(validate_base_url("http://169.254.169.254/v1", &allow).is_err());
        assert!(validate_base_url("http://metadata.google.internal/", &allow).is_err());
    }
}
