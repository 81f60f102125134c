//! Providers, provider keys, client keys, routes, routing records (with usage and cost) and the
//! fleet view.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use llmhub_providers::{Kind, presets};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AdminUser, ApiError, ApiJson, AppState, AuthUser, List, valid_name};
use crate::auth::Role;
use crate::hub::{ConnectedProxy, RoutingStrategy, RpcCounters};
use crate::store::entities::{client_keys, providers, routing_records};
use crate::store::{
    AuditEvent, NewClientKey, NewProvider, NewRouteTarget, RouteWithTargets, parse_list,
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
            Some(v)
                if v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {}
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
    let timeout = body.request_timeout_ms.unwrap_or(120_000);
    if !(1_000..=600_000).contains(&timeout) {
        return Err(ApiError::BadRequest(
            "request_timeout_ms: must be between 1000 and 600000".into(),
        ));
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateProvider {
    enabled: bool,
}

pub(super) async fn update_provider(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    let action = if body.enabled {
        "provider_enabled"
    } else {
        "provider_disabled"
    };
    let p = s
        .store
        .set_provider_enabled(
            &id,
            body.enabled,
            AuditEvent::new(&admin.actor(), action, "provider"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(p.into()))
}

/// A client key as its owner sees it: the display prefix, never the key or its hash.
#[derive(Serialize)]
pub(super) struct ClientKeyView {
    id: String,
    name: String,
    prefix: String,
    allowed_models: Vec<String>,
    enabled: bool,
    use_shared_pool: bool,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<client_keys::Model> for ClientKeyView {
    fn from(k: client_keys::Model) -> Self {
        ClientKeyView {
            allowed_models: parse_list(&k.allowed_models),
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            enabled: k.enabled,
            use_shared_pool: k.use_shared_pool,
            expires_at: k.expires_at,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A client key just created: the one response that carries the full key.
#[derive(Serialize)]
pub(super) struct CreatedClientKeyView {
    #[serde(flatten)]
    view: ClientKeyView,
    key: String,
}

pub(super) async fn list_client_keys(
    State(s): State<AppState>,
    user: AuthUser,
) -> Result<Json<List<ClientKeyView>>, ApiError> {
    Ok(Json(List::of(s.store.client_keys_of(&user.id).await?)))
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
}

pub(super) async fn create_client_key(
    State(s): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<CreateClientKey>,
) -> Result<(http::StatusCode, Json<CreatedClientKeyView>), ApiError> {
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err(ApiError::BadRequest("name: 1-128 characters".into()));
    }
    if body.allowed_models.len() > 256 || !body.allowed_models.iter().all(|m| valid_name(m, 128)) {
        return Err(ApiError::BadRequest(
            "allowed_models: up to 256 model names".into(),
        ));
    }
    if body.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        return Err(ApiError::BadRequest(
            "expires_at: must be in the future".into(),
        ));
    }
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
    if body.targets.is_empty() || body.targets.len() > 16 {
        return Err(ApiError::BadRequest(
            "targets: between 1 and 16 targets".into(),
        ));
    }
    let strategy = match body.strategy.as_deref() {
        None => RoutingStrategy::Weighted,
        Some(s) => RoutingStrategy::parse(s).ok_or_else(|| {
            ApiError::BadRequest("strategy: must be weighted, least_inflight or latency".into())
        })?,
    };
    if body.aliases.len() > 16 || !body.aliases.iter().all(|a| valid_name(a, 128)) {
        return Err(ApiError::BadRequest("aliases: up to 16 model names".into()));
    }
    // A public name (or alias) may belong to one route only.
    let taken: std::collections::HashSet<String> = s
        .store
        .routes()
        .await?
        .into_iter()
        .flat_map(|r| {
            let mut names = parse_list(&r.route.aliases);
            names.push(r.route.public_model);
            names
        })
        .collect();
    if let Some(dup) = std::iter::once(&body.public_model)
        .chain(&body.aliases)
        .find(|n| taken.contains(*n))
    {
        return Err(ApiError::Conflict(format!(
            "model name {dup:?} is already routed"
        )));
    }
    let mut targets = Vec::with_capacity(body.targets.len());
    for (i, t) in body.targets.into_iter().enumerate() {
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
        targets.push(NewRouteTarget {
            provider_id: t.provider_id,
            upstream_model: t.upstream_model,
            weight,
            priority: t.priority.unwrap_or(u32::try_from(i).unwrap_or(0)),
        });
    }
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

#[derive(Deserialize)]
pub(super) struct RecordQuery {
    limit: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct RoutingRecordView {
    request_id: String,
    proxy_id: String,
    started_at: DateTime<Utc>,
    user_id: String,
    client_key_prefix: String,
    public_model: String,
    status: i32,
    latency_ms: i32,
    stream: bool,
    /// Attempts and skipped candidates (`null` if the stored JSON is unreadable).
    detail: Value,
    /// Usage as the provider reported it; `prompt_tokens` includes `cached_tokens`. For a
    /// `partial` record (the client went away mid-answer) it covers what was delivered, the
    /// completion estimated from the text when the provider had not reported it yet.
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    partial: bool,
    /// Nano-US-dollars; `null` when no price was known for a request that used tokens.
    cost_nanos: Option<i64>,
    /// Empty for records from before it was reported.
    client_key_id: String,
}

impl From<routing_records::Model> for RoutingRecordView {
    fn from(r: routing_records::Model) -> Self {
        RoutingRecordView {
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
            request_id: r.request_id,
            proxy_id: r.proxy_id,
            started_at: r.started_at,
            user_id: r.user_id,
            client_key_prefix: r.client_key_prefix,
            public_model: r.public_model,
            status: r.status,
            latency_ms: r.latency_ms,
            stream: r.stream,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            partial: r.partial,
            cost_nanos: r.cost_nanos,
            client_key_id: r.client_key_id,
        }
    }
}

pub(super) async fn list_routing_records(
    State(s): State<AppState>,
    user: AuthUser,
    Query(q): Query<RecordQuery>,
) -> Result<Json<List<RoutingRecordView>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let only = (user.role != Role::Admin).then_some(user.id.as_str());
    Ok(Json(List::of(s.store.routing_records(only, limit).await?)))
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
