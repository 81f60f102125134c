//! Provider keys: the user's own pool and the admin-managed shared pool. Add (one or many), list,
//! update, test and delete. No response, error message or audit row ever carries a key: only its
//! mask (at most the last four characters) and keyed fingerprint.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AdminUser, ApiError, ApiJson, AppState, AuthUser, List, present, valid_name};
use crate::auth::Role;
use crate::keyring::provider_key_aad;
use crate::probe::{Probe, Prober};
use crate::store::entities::{key_cooldowns, key_events, provider_keys, providers};
use crate::store::{AuditEvent, KeyChange, KeyState, NewProviderKey, parse_list};
use crate::vault::mask;
use llmhub_providers::{FailureClass, Kind};

/// Most keys accepted by one import.
const MAX_IMPORT: usize = 1000;

/// The only view of a provider key the API ever returns. It has no field for the key or its
/// ciphertext: only the mask (at most the last four characters) and the keyed fingerprint.
#[derive(Serialize)]
pub(super) struct KeyView {
    id: String,
    provider_id: String,
    /// `shared` (admin-managed pool) or `user`.
    pool: &'static str,
    owner_user_id: Option<String>,
    masked: String,
    fingerprint: String,
    label: String,
    weight: i32,
    allowed_models: Vec<String>,
    rpm_limit: Option<i32>,
    tpm_limit: Option<i32>,
    /// `active`, `cooling_down`, `disabled`, or `unreadable` (the vault cannot open it).
    state: String,
    state_reason: Option<String>,
    cooldowns: Vec<CooldownView>,
    key_version: i32,
    last_used_at: Option<DateTime<Utc>>,
    last_error_class: Option<String>,
    last_tested_at: Option<DateTime<Utc>>,
    last_test_result: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A live cooldown; `model` is `null` for the whole key.
#[derive(Serialize)]
pub(super) struct CooldownView {
    model: Option<String>,
    until: DateTime<Utc>,
    class: String,
    source: String,
    /// The prefix of the client key whose request led to it (`null` when forced or unknown).
    client_key: Option<String>,
}

impl From<&key_cooldowns::Model> for CooldownView {
    fn from(c: &key_cooldowns::Model) -> Self {
        CooldownView {
            model: (!c.model.is_empty()).then(|| c.model.clone()),
            until: c.until,
            class: c.class.clone(),
            source: c.source.clone(),
            client_key: c.client_key_prefix.clone(),
        }
    }
}

fn key_view(s: &AppState, k: &provider_keys::Model) -> KeyView {
    key_view_with(s, k, &[])
}

fn key_view_with(
    s: &AppState,
    k: &provider_keys::Model,
    cooldowns: &[key_cooldowns::Model],
) -> KeyView {
    KeyView::new(k, cooldowns, s.vault.is_unreadable(&k.id))
}

impl KeyView {
    /// The view of `k` with its live cooldowns among `cooldowns`.
    fn new(k: &provider_keys::Model, cooldowns: &[key_cooldowns::Model], unreadable: bool) -> Self {
        let mine: Vec<CooldownView> = cooldowns
            .iter()
            .filter(|c| c.key_id == k.id)
            .map(CooldownView::from)
            .collect();
        let state = if unreadable {
            "unreadable"
        } else if k.key_state() == Some(KeyState::Active) && !mine.is_empty() {
            KeyState::CoolingDown.as_str()
        } else {
            k.state.as_str()
        };
        KeyView {
            id: k.id.clone(),
            provider_id: k.provider_id.clone(),
            pool: k.owner_user_id.as_deref().map_or("shared", |_| "user"),
            owner_user_id: k.owner_user_id.clone(),
            masked: k.mask.clone(),
            fingerprint: k.fingerprint.clone(),
            label: k.label.clone(),
            weight: k.weight,
            allowed_models: parse_list(&k.allowed_models),
            rpm_limit: k.rpm_limit,
            tpm_limit: k.tpm_limit,
            state: state.to_owned(),
            state_reason: k.state_reason.clone(),
            cooldowns: mine,
            key_version: k.key_version,
            last_used_at: k.last_used_at,
            last_error_class: k.last_error_class.clone(),
            last_tested_at: k.last_tested_at,
            last_test_result: k.last_test_result.clone(),
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

/// One line of an import's result.
#[derive(Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(super) enum ImportLine {
    Skipped {
        line: usize,
    },
    Created {
        line: usize,
        id: String,
        masked: String,
        fingerprint: String,
    },
    Duplicate {
        line: usize,
        fingerprint: String,
    },
    Invalid {
        line: usize,
        error: String,
    },
}

#[derive(Serialize)]
pub(super) struct ImportView {
    created: u32,
    duplicates: u32,
    invalid: u32,
    results: Vec<ImportLine>,
}

#[derive(Serialize)]
pub(super) struct KeyTestView {
    result: &'static str,
    status: Option<u16>,
    latency_ms: u64,
    key: KeyView,
}

/// One change of a key's health; `model` is `null` for the whole key.
#[derive(Serialize)]
pub(super) struct KeyEventView {
    at: DateTime<Utc>,
    event: String,
    class: String,
    model: Option<String>,
    until: Option<DateTime<Utc>>,
    source: String,
    /// The prefix of the client key whose request led to it, when a proxy reported it.
    client_key: Option<String>,
}

impl From<key_events::Model> for KeyEventView {
    fn from(e: key_events::Model) -> Self {
        KeyEventView {
            at: e.at,
            event: e.event,
            class: e.class,
            model: (!e.model.is_empty()).then_some(e.model),
            until: e.until,
            source: e.source,
            client_key: e.client_key_prefix,
        }
    }
}

#[derive(Serialize)]
pub(super) struct KeyHistoryView {
    cooldowns: Vec<CooldownView>,
    events: Vec<KeyEventView>,
}

/// Users see their own keys; admins see every key (the shared pool is theirs to manage).
fn visible_to(user: &AuthUser, k: &provider_keys::Model) -> bool {
    user.role == Role::Admin || k.owner_user_id.as_deref() == Some(user.id.as_str())
}

/// The key, if the caller may see it and it belongs to `provider_id`; 404 otherwise.
async fn owned_key(
    s: &AppState,
    user: &AuthUser,
    provider_id: &str,
    key_id: &str,
) -> Result<provider_keys::Model, ApiError> {
    let key = s.store.provider_key(key_id).await?;
    if key.provider_id != provider_id || !visible_to(user, &key) {
        return Err(ApiError::NotFound);
    }
    Ok(key)
}

/// Checks a key's shape for its provider (the shared vocabulary's rule). Messages describe the
/// expected form, never the key.
pub(crate) fn validate_key_format(kind: &str, key: &str) -> Result<(), String> {
    // An unknown kind cannot be stored (create_provider checks it); it has no format of its own.
    llmhub_providers::validate_key(Kind::from_slug(kind).unwrap_or(Kind::OpenAiCompatible), key)
}

pub(super) async fn list(
    State(s): State<AppState>,
    user: AuthUser,
    Path(provider_id): Path<String>,
) -> Result<Json<List<KeyView>>, ApiError> {
    s.store.provider(&provider_id).await?;
    let cooldowns = s.store.live_cooldowns().await?;
    let data = s
        .store
        .provider_keys_of(&provider_id)
        .await?
        .iter()
        .filter(|k| visible_to(&user, k))
        .map(|k| key_view_with(&s, k, &cooldowns))
        .collect();
    Ok(Json(List { data }))
}

/// Settings shared by a single add and an import.
struct KeyOptions {
    label: String,
    weight: u32,
    allowed_models: Vec<String>,
    rpm_limit: Option<u32>,
    tpm_limit: Option<u32>,
    owner: Option<String>,
}

fn check_options(
    label: &str,
    weight: u32,
    allowed_models: &[String],
    rpm: Option<u32>,
    tpm: Option<u32>,
) -> Result<(), ApiError> {
    if label.chars().count() > 128 {
        return Err(ApiError::BadRequest("label: at most 128 characters".into()));
    }
    if !(1..=1000).contains(&weight) {
        return Err(ApiError::BadRequest(
            "weight: must be between 1 and 1000".into(),
        ));
    }
    if allowed_models.len() > 256 || !allowed_models.iter().all(|m| valid_name(m, 128)) {
        return Err(ApiError::BadRequest(
            "allowed_models: up to 256 model names".into(),
        ));
    }
    if rpm == Some(0) || tpm == Some(0) {
        return Err(ApiError::BadRequest(
            "rpm_limit/tpm_limit: must be at least 1 (omit for none)".into(),
        ));
    }
    Ok(())
}

enum Added {
    Created(Box<provider_keys::Model>),
    Duplicate(String),
    Invalid(String),
}

/// Validates, seals and stores one key. `seen` holds (owner, fingerprint) pairs already stored or
/// earlier in the same import, for duplicate detection.
async fn add_one(
    s: &AppState,
    user: &AuthUser,
    provider: &providers::Model,
    key: &str,
    opts: &KeyOptions,
    seen: &mut HashSet<(Option<String>, String)>,
) -> Result<Added, ApiError> {
    if let Err(msg) = validate_key_format(&provider.kind, key) {
        return Ok(Added::Invalid(msg));
    }
    let fingerprint = s.hash_secret.fingerprint(key);
    if !seen.insert((opts.owner.clone(), fingerprint.clone())) {
        return Ok(Added::Duplicate(fingerprint));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let ring = s.vault.keyring();
    let sealed = ring.seal(
        key.as_bytes(),
        &provider_key_aad(&id, opts.owner.as_deref(), &provider.id),
    );
    let row = s
        .store
        .insert_provider_key(
            NewProviderKey {
                id,
                provider_id: provider.id.clone(),
                owner_user_id: opts.owner.clone(),
                sealed,
                key_version: ring.current_version(),
                fingerprint,
                mask: mask(key),
                label: opts.label.clone(),
                weight: opts.weight,
                allowed_models: opts.allowed_models.clone(),
                rpm_limit: opts.rpm_limit,
                tpm_limit: opts.tpm_limit,
            },
            AuditEvent::new(&user.actor(), "provider_key_created", "provider_key"),
        )
        .await?;
    tracing::info!(key_id = %row.id, fingerprint = %row.fingerprint, "provider key stored");
    Ok(Added::Created(Box::new(row)))
}

async fn existing_fingerprints(
    s: &AppState,
    provider_id: &str,
) -> Result<HashSet<(Option<String>, String)>, ApiError> {
    Ok(s.store
        .provider_keys_of(provider_id)
        .await?
        .into_iter()
        .map(|k| (k.owner_user_id, k.fingerprint))
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddKey {
    key: SecretString,
    #[serde(default)]
    label: String,
    weight: Option<u32>,
    #[serde(default)]
    allowed_models: Vec<String>,
    rpm_limit: Option<u32>,
    tpm_limit: Option<u32>,
    /// Put the key into the shared pool (admins only) instead of the caller's own pool.
    #[serde(default)]
    shared: bool,
}

pub(super) async fn add(
    State(s): State<AppState>,
    user: AuthUser,
    Path(provider_id): Path<String>,
    ApiJson(body): ApiJson<AddKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let provider = s.store.provider(&provider_id).await?;
    if body.shared && user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let weight = body.weight.unwrap_or(1);
    check_options(
        &body.label,
        weight,
        &body.allowed_models,
        body.rpm_limit,
        body.tpm_limit,
    )?;
    let opts = KeyOptions {
        label: body.label,
        weight,
        allowed_models: body.allowed_models,
        rpm_limit: body.rpm_limit,
        tpm_limit: body.tpm_limit,
        owner: (!body.shared).then(|| user.id.clone()),
    };
    let mut seen = existing_fingerprints(&s, &provider.id).await?;
    let key = body.key.expose_secret().trim();
    match add_one(&s, &user, &provider, key, &opts, &mut seen).await? {
        Added::Created(row) => {
            s.hub.rebuild().await?;
            Ok((StatusCode::CREATED, Json(key_view(&s, &row))))
        }
        Added::Duplicate(fp) => Err(ApiError::Conflict(format!(
            "this key is already stored for this provider (fingerprint {fp})"
        ))),
        Added::Invalid(msg) => Err(ApiError::BadRequest(msg)),
    }
}

/// Keys as one newline-separated string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum KeyList {
    Text(SecretString),
    Many(Vec<SecretString>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportKeys {
    keys: KeyList,
    #[serde(default)]
    label: String,
    weight: Option<u32>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    shared: bool,
}

/// Adds many keys at once; each line gets its own result, duplicates (already stored, or
/// repeated in the import) are detected by fingerprint.
pub(super) async fn import(
    State(s): State<AppState>,
    user: AuthUser,
    Path(provider_id): Path<String>,
    ApiJson(body): ApiJson<ImportKeys>,
) -> Result<Json<ImportView>, ApiError> {
    let provider = s.store.provider(&provider_id).await?;
    if body.shared && user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let weight = body.weight.unwrap_or(1);
    check_options(&body.label, weight, &body.allowed_models, None, None)?;
    let lines: Vec<String> = match &body.keys {
        KeyList::Text(t) => t.expose_secret().lines().map(str::to_owned).collect(),
        KeyList::Many(v) => v.iter().map(|k| k.expose_secret().to_owned()).collect(),
    };
    let lines = zeroize::Zeroizing::new(lines);
    if lines.len() > MAX_IMPORT {
        return Err(ApiError::BadRequest(format!(
            "keys: at most {MAX_IMPORT} per import"
        )));
    }
    let opts = KeyOptions {
        label: body.label,
        weight,
        allowed_models: body.allowed_models,
        rpm_limit: None,
        tpm_limit: None,
        owner: (!body.shared).then(|| user.id.clone()),
    };
    let mut seen = existing_fingerprints(&s, &provider.id).await?;
    let mut results = Vec::with_capacity(lines.len());
    let (mut created, mut duplicates, mut invalid) = (0u32, 0u32, 0u32);
    for (i, raw) in lines.iter().enumerate() {
        let key = raw.trim();
        let line = i + 1;
        if key.is_empty() || key.starts_with('#') {
            results.push(ImportLine::Skipped { line });
            continue;
        }
        results.push(
            match add_one(&s, &user, &provider, key, &opts, &mut seen).await? {
                Added::Created(row) => {
                    created += 1;
                    ImportLine::Created {
                        line,
                        id: row.id,
                        masked: row.mask,
                        fingerprint: row.fingerprint,
                    }
                }
                Added::Duplicate(fingerprint) => {
                    duplicates += 1;
                    ImportLine::Duplicate { line, fingerprint }
                }
                Added::Invalid(error) => {
                    invalid += 1;
                    ImportLine::Invalid { line, error }
                }
            },
        );
    }
    s.store
        .audit(
            AuditEvent::new(&user.actor(), "provider_keys_imported", "provider")
                .target(&provider.id)
                .detail(json!({"created": created, "duplicates": duplicates, "invalid": invalid})),
        )
        .await?;
    if created > 0 {
        s.hub.rebuild().await?;
    }
    Ok(Json(ImportView {
        created,
        duplicates,
        invalid,
        results,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateKey {
    label: Option<String>,
    weight: Option<u32>,
    allowed_models: Option<Vec<String>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    rpm_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    tpm_limit: Option<Option<u32>>,
}

pub(super) async fn update(
    State(s): State<AppState>,
    user: AuthUser,
    Path((provider_id, key_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    owned_key(&s, &user, &provider_id, &key_id).await?;
    check_options(
        body.label.as_deref().unwrap_or(""),
        body.weight.unwrap_or(1),
        body.allowed_models.as_deref().unwrap_or(&[]),
        body.rpm_limit.flatten(),
        body.tpm_limit.flatten(),
    )?;
    let row = s
        .store
        .update_provider_key(
            &key_id,
            KeyChange {
                label: body.label,
                weight: body.weight,
                allowed_models: body.allowed_models,
                rpm_limit: body.rpm_limit,
                tpm_limit: body.tpm_limit,
            },
            AuditEvent::new(&user.actor(), "provider_key_updated", "provider_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(Json(key_view(&s, &row)))
}

pub(super) async fn delete(
    State(s): State<AppState>,
    user: AuthUser,
    Path((provider_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    owned_key(&s, &user, &provider_id, &key_id).await?;
    s.store
        .delete_provider_key(
            &key_id,
            AuditEvent::new(&user.actor(), "provider_key_deleted", "provider_key"),
        )
        .await?;
    s.hub.rebuild().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes one cheap authenticated call (list models) with the key and records the outcome. The
/// provider's response body is never relayed: it may quote the key.
pub(super) async fn test(
    State(s): State<AppState>,
    user: AuthUser,
    Path((provider_id, key_id)): Path<(String, String)>,
) -> Result<Json<KeyTestView>, ApiError> {
    let key = owned_key(&s, &user, &provider_id, &key_id).await?;
    let provider = s.store.provider(&provider_id).await?;
    // The same probe the hub verifies keys with; where each provider takes its key and what its
    // answers mean are the proxy's rules too, so the key test and the proxy cannot disagree.
    let prober = Prober {
        http: s.http.clone(),
        egress: s.policy.egress.clone(),
    };
    let (result, class, status, latency_ms) =
        match prober.probe_stored(&s.vault, &provider, &key).await {
            Probe::Works { status, latency_ms } => ("ok", None, Some(status), latency_ms),
            Probe::Refused {
                status,
                class,
                latency_ms,
            } => (
                class.as_str(),
                Some(class.as_str()),
                Some(status),
                latency_ms,
            ),
            Probe::Unreachable { latency_ms } => (
                "unreachable",
                Some(FailureClass::Overloaded.as_str()),
                None,
                latency_ms,
            ),
            Probe::EgressDenied => return Err(egress_refused()),
            Probe::Unusable(why) => return Err(ApiError::Conflict(why.into())),
        };
    let row = s
        .store
        .record_key_test(
            &key.id,
            result,
            class,
            AuditEvent::new(&user.actor(), "provider_key_tested", "provider_key"),
        )
        .await?;
    Ok(Json(KeyTestView {
        result,
        status,
        latency_ms,
        key: key_view(&s, &row),
    }))
}

/// The key test's refusal when the provider's address is not allowed; nothing was sent.
fn egress_refused() -> ApiError {
    ApiError::Conflict(
        "the provider's address is not allowed by the egress policy (egress_allow); the key was not sent"
            .into(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceCooldown {
    seconds: u64,
    /// Upstream model; omitted: the whole key.
    model: Option<String>,
}

/// Admin: cools a key down fleet-wide (all proxies skip it until then).
pub(super) async fn force_cooldown(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path((provider_id, key_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<ForceCooldown>,
) -> Result<Json<CooldownView>, ApiError> {
    owned_key(&s, &admin, &provider_id, &key_id).await?;
    if !(1..=30 * 24 * 3600).contains(&body.seconds) {
        return Err(ApiError::BadRequest(
            "seconds: between 1 and 2592000".into(),
        ));
    }
    let model = body.model.unwrap_or_default();
    if !model.is_empty() && !valid_name(&model, 128) {
        return Err(ApiError::BadRequest("model: not a model name".into()));
    }
    let until = chrono::Utc::now()
        + chrono::Duration::seconds(i64::try_from(body.seconds).unwrap_or(i64::MAX / 2));
    let c = s
        .hub
        .force_cooldown(
            &key_id,
            &model,
            until,
            &format!("admin:{}", admin.id),
            AuditEvent::new(&admin.actor(), "key_cooldown_forced", "provider_key")
                .detail(json!({"seconds": body.seconds, "model": model})),
        )
        .await?;
    Ok(Json(CooldownView::from(&c)))
}

/// Admin: ends every cooldown of a key and re-enables it, fleet-wide.
pub(super) async fn clear_health(
    State(s): State<AppState>,
    AdminUser(admin): AdminUser,
    Path((provider_id, key_id)): Path<(String, String)>,
) -> Result<Json<KeyView>, ApiError> {
    owned_key(&s, &admin, &provider_id, &key_id).await?;
    s.hub
        .clear_key(
            &key_id,
            &format!("admin:{}", admin.id),
            AuditEvent::new(&admin.actor(), "key_cooldown_cleared", "provider_key"),
        )
        .await?;
    let row = s.store.provider_key(&key_id).await?;
    Ok(Json(key_view(&s, &row)))
}

/// A key's health history: cooldowns, recoveries, disabling and clearing.
pub(super) async fn history(
    State(s): State<AppState>,
    user: AuthUser,
    Path((provider_id, key_id)): Path<(String, String)>,
) -> Result<Json<KeyHistoryView>, ApiError> {
    owned_key(&s, &user, &provider_id, &key_id).await?;
    let events = s
        .store
        .key_history(&key_id, 200)
        .await?
        .into_iter()
        .map(KeyEventView::from)
        .collect();
    let cooldowns = s
        .store
        .cooldowns_of(&key_id)
        .await?
        .iter()
        .map(CooldownView::from)
        .collect();
    Ok(Json(KeyHistoryView { cooldowns, events }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_use_the_shared_rules() {
        assert!(validate_key_format("openai", "sk-proj-0123456789abcdef").is_ok());
        assert!(validate_key_format("openai", "pk-0123456789abcdefghij").is_err());
        assert!(validate_key_format("no-such-kind", "anything-goes").is_ok());
        assert!(validate_key_format("no-such-kind", "short").is_err());
    }

    fn key_row() -> provider_keys::Model {
        let now = chrono::Utc::now();
        provider_keys::Model {
            id: "k1".into(),
            provider_id: "p1".into(),
            owner_user_id: None,
            sealed: b"CIPHERTEXT-CANARY".to_vec(),
            key_version: 1,
            fingerprint: "fp_0123".into(),
            mask: "sk-****abcd".into(),
            label: "main".into(),
            weight: 2,
            allowed_models: r#"["gpt-x"]"#.into(),
            state: "active".into(),
            last_used_at: None,
            last_error_class: None,
            created_at: now,
            updated_at: now,
            rpm_limit: Some(60),
            tpm_limit: None,
            last_tested_at: None,
            last_test_result: None,
            state_reason: None,
        }
    }

    #[test]
    fn key_view_has_exactly_the_public_fields() {
        let v = serde_json::to_value(KeyView::new(&key_row(), &[], false)).unwrap();
        let mut names: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "allowed_models",
                "cooldowns",
                "created_at",
                "fingerprint",
                "id",
                "key_version",
                "label",
                "last_error_class",
                "last_test_result",
                "last_tested_at",
                "last_used_at",
                "masked",
                "owner_user_id",
                "pool",
                "provider_id",
                "rpm_limit",
                "state",
                "state_reason",
                "tpm_limit",
                "updated_at",
                "weight",
            ]
        );
        let text = v.to_string();
        assert!(!text.contains("CIPHERTEXT"), "{text}");
        assert_eq!(v["pool"], "shared");
        assert_eq!(v["allowed_models"], json!(["gpt-x"]));
        assert_eq!(v["rpm_limit"], 60);
        assert_eq!(v["tpm_limit"], serde_json::Value::Null);
        assert_eq!(v["state"], "active");
    }

    #[test]
    fn key_view_state_shows_cooldowns_and_unreadable_keys() {
        let k = key_row();
        let c = key_cooldowns::Model {
            key_id: "k1".into(),
            model: String::new(),
            until: chrono::Utc::now(),
            class: "rate_limited".into(),
            source: "proxy-1".into(),
            client_key_prefix: None,
            updated_at: chrono::Utc::now(),
        };
        let v = serde_json::to_value(KeyView::new(&k, std::slice::from_ref(&c), false)).unwrap();
        assert_eq!(v["state"], "cooling_down");
        assert_eq!(v["cooldowns"][0]["model"], serde_json::Value::Null);
        assert_eq!(v["cooldowns"][0]["class"], "rate_limited");
        let other = key_cooldowns::Model {
            key_id: "k2".into(),
            ..c
        };
        let v = serde_json::to_value(KeyView::new(&k, &[other], true)).unwrap();
        assert_eq!(v["state"], "unreadable");
        assert_eq!(v["cooldowns"], json!([]));
    }

    #[test]
    fn import_lines_keep_their_shape() {
        let lines = vec![
            ImportLine::Skipped { line: 1 },
            ImportLine::Created {
                line: 2,
                id: "k".into(),
                masked: "m".into(),
                fingerprint: "f".into(),
            },
            ImportLine::Duplicate {
                line: 3,
                fingerprint: "f".into(),
            },
            ImportLine::Invalid {
                line: 4,
                error: "e".into(),
            },
        ];
        assert_eq!(
            serde_json::to_value(lines).unwrap(),
            json!([
                {"line": 1, "result": "skipped"},
                {"line": 2, "result": "created", "id": "k", "masked": "m", "fingerprint": "f"},
                {"line": 3, "result": "duplicate", "fingerprint": "f"},
                {"line": 4, "result": "invalid", "error": "e"},
            ])
        );
    }
}
