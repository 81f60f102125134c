//! sea-orm entities, one module per table of `migrations/`. Only `store` uses them.

macro_rules! no_relations {
    () => {
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl ActiveModelBehavior for ActiveModel {}
    };
}

pub mod users {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub username: String,
        pub email: Option<String>,
        /// argon2id PHC string; not a secret by itself but never leaves the store.
        pub password_hash: String,
        pub role: String,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// Bumped on password change, role change and disabling: access tokens carry the version
        /// they were issued under and stop working when it moves.
        pub token_version: i32,
        /// Whether this user's requests may use the admin-managed shared key pool.
        pub shared_pool_access: bool,
        /// Limits across all of the user's client keys, set by admins only (NULL = no limit).
        pub rpm_limit: Option<i32>,
        pub tpm_limit: Option<i32>,
        pub max_concurrent: Option<i32>,
        /// Budget in nano-US-dollars (NULL = no budget) and the columns that complete it; see
        /// `store::limits`.
        pub budget_nanos: Option<i64>,
        pub budget_period: Option<String>,
        pub budget_anchor: Option<DateTimeUtc>,
        pub budget_expires_at: Option<DateTimeUtc>,
    }
    no_relations!();
}

pub mod sessions {
    use sea_orm::entity::prelude::*;

    /// One sign-in: a family of refresh tokens; access tokens name it in `sid`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub created_at: DateTimeUtc,
        pub last_used_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
        pub revoked_reason: Option<String>,
        pub ip: String,
        pub user_agent: String,
    }
    no_relations!();
}

pub mod refresh_tokens {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub session_id: String,
        /// Keyed hash of the opaque token; the token itself is never stored.
        pub token_hash: Vec<u8>,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        /// Set when the token is exchanged; a second exchange is reuse.
        pub used_at: Option<DateTimeUtc>,
    }
    no_relations!();
}

pub mod audit_log {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_log")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at: DateTimeUtc,
        pub actor_user_id: Option<String>,
        pub actor_ip: String,
        pub user_agent: String,
        pub action: String,
        pub target_type: String,
        pub target_id: String,
        pub outcome: String,
        pub detail: String,
        pub prev_hash: Vec<u8>,
        pub hash: Vec<u8>,
    }
    no_relations!();
}

pub mod audit_head {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_head")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub seq: i64,
        pub hash: Vec<u8>,
    }
    no_relations!();
}

pub mod providers {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "providers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub kind: String,
        pub base_url: String,
        pub enabled: bool,
        pub request_timeout_ms: i32,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// The preset the provider was created from (`groq`, `mistral`, …), if any.
        pub preset: Option<String>,
        /// Azure OpenAI `api-version` query parameter.
        pub api_version: Option<String>,
    }
    no_relations!();
}

pub mod provider_keys {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "provider_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub provider_id: String,
        pub owner_user_id: Option<String>,
        /// `keyring` output: version ‖ nonce ‖ ciphertext+tag, bound to (id, owner, provider).
        pub sealed: Vec<u8>,
        pub key_version: i32,
        pub fingerprint: String,
        /// Display form such as `sk-****abcd`; at most the last four characters of the key.
        pub mask: String,
        pub label: String,
        pub weight: i32,
        /// JSON array of upstream model names; empty means all.
        pub allowed_models: String,
        pub state: String,
        pub last_used_at: Option<DateTimeUtc>,
        pub last_error_class: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// Requests and tokens per minute this key may take (enforced by the routing issue).
        pub rpm_limit: Option<i32>,
        pub tpm_limit: Option<i32>,
        pub last_tested_at: Option<DateTimeUtc>,
        pub last_test_result: Option<String>,
        /// Why the key is disabled (e.g. `invalid_key`), when it is.
        pub state_reason: Option<String>,
    }
    no_relations!();
}

pub mod client_keys {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "client_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub name: String,
        /// HMAC-SHA256 of the full key under the sealed `client_key_hash_secret` setting.
        pub key_hash: Vec<u8>,
        pub prefix: String,
        pub allowed_models: String,
        pub enabled: bool,
        pub use_shared_pool: bool,
        pub expires_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
        /// The owner's self-imposed limits on this key (NULL = no limit).
        pub rpm_limit: Option<i32>,
        pub tpm_limit: Option<i32>,
        pub max_concurrent: Option<i32>,
        /// Budget in nano-US-dollars (NULL = no budget) and the columns that complete it; see
        /// `store::limits`.
        pub budget_nanos: Option<i64>,
        pub budget_period: Option<String>,
        pub budget_anchor: Option<DateTimeUtc>,
        pub budget_expires_at: Option<DateTimeUtc>,
        /// After a rotation: the replaced key's hash, still accepted until `previous_valid_until`.
        pub previous_key_hash: Option<Vec<u8>>,
        pub previous_valid_until: Option<DateTimeUtc>,
        pub rotated_at: Option<DateTimeUtc>,
    }
    no_relations!();
}

pub mod routes {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "routes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub public_model: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub strategy: String,
        /// JSON list of other public names for this route.
        pub aliases: String,
    }
    no_relations!();
}

pub mod route_targets {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "route_targets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub route_id: String,
        pub provider_id: String,
        pub upstream_model: String,
        pub weight: i32,
        pub priority: i32,
    }
    no_relations!();
}

pub mod settings {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub sealed: Vec<u8>,
        pub key_version: i32,
        pub updated_at: DateTimeUtc,
    }
    no_relations!();
}

pub mod routing_records {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "routing_records")]
    pub struct Model {
        /// With `started_at`, the key: on Postgres the table is partitioned by `started_at`,
        /// and a partitioned table's key must contain the partition key. A replayed record
        /// carries its original start time, so the pair still identifies one request.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub proxy_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub started_at: DateTimeUtc,
        pub user_id: String,
        pub client_key_prefix: String,
        pub public_model: String,
        pub status: i32,
        pub latency_ms: i32,
        pub stream: bool,
        /// JSON: attempts and skipped candidates.
        pub detail: String,
        pub received_at: DateTimeUtc,
        /// Usage as the provider reported it (prompt includes cached), or for a partial record
        /// as far as it was delivered.
        pub prompt_tokens: i64,
        pub completion_tokens: i64,
        pub cached_tokens: i64,
        /// The client went away before the answer ended.
        pub partial: bool,
        /// Nano-US-dollars; `None` when no price was known for a request that used tokens.
        pub cost_nanos: Option<i64>,
        /// Empty for records stored before it was reported.
        pub client_key_id: String,
        /// The serving (last) attempt's provider, key fingerprint and upstream model; empty when
        /// no attempt was made. Copies of `detail`'s, as columns the records API filters on.
        pub provider_id: String,
        pub key_fingerprint: String,
        pub upstream_model: String,
    }
    no_relations!();
}

pub mod usage_daily {
    use sea_orm::entity::prelude::*;

    /// Per UTC day, user, client key, public model and provider: what the routing records stored
    /// so far add up to. Maintained in the transaction that stores the records, for the records
    /// actually inserted (a duplicate delivery adds nothing). Kept when records are dropped by
    /// the retention, so charts and lifetime budgets outlive the records.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_daily")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: Date,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub client_key_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub public_model: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub provider_id: String,
        pub requests: i64,
        /// Records with status 400 or above.
        pub errors: i64,
        pub prompt_tokens: i64,
        pub completion_tokens: i64,
        pub cached_tokens: i64,
        /// Nano-US-dollars of the records whose cost is known.
        pub cost_nanos: i64,
        /// Records whose cost is unknown (no price).
        pub unknown_cost: i64,
    }
    no_relations!();
}

pub mod model_prices {
    use sea_orm::entity::prelude::*;

    /// An admin's price for a model: an override of a built-in list price, or a model the list
    /// lacks. Nano-US-dollars per token.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "model_prices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub model: String,
        pub input_nanos_per_token: i64,
        pub output_nanos_per_token: i64,
        pub cached_input_nanos_per_token: i64,
        pub updated_at: DateTimeUtc,
        /// The admin's user id.
        pub updated_by: String,
    }
    no_relations!();
}

pub mod key_cooldowns {
    use sea_orm::entity::prelude::*;

    /// A live cooldown of a key for one upstream model (`model` empty: the whole key).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "key_cooldowns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub model: String,
        pub until: DateTimeUtc,
        pub class: String,
        /// Proxy id or `admin:<user id>`.
        pub source: String,
        /// The client key whose request led to the cooldown, when a proxy reported it.
        pub client_key_prefix: Option<String>,
        pub updated_at: DateTimeUtc,
    }
    no_relations!();
}

pub mod key_events {
    use sea_orm::entity::prelude::*;

    /// One change of a key's health, for its history.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "key_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub key_id: String,
        pub at: DateTimeUtc,
        /// `cooldown`, `cleared`, `disabled`, `enabled`.
        pub event: String,
        pub class: String,
        pub model: String,
        pub until: Option<DateTimeUtc>,
        pub source: String,
        /// The client key whose request led to the event, when a proxy reported it.
        pub client_key_prefix: Option<String>,
    }
    no_relations!();
}
