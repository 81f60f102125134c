//! llm-hub control plane: accounts, the provider-key vault, routes, and the mTLS gRPC service
//! that streams snapshots to proxies. `main.rs` is a thin CLI over this library; the end-to-end
//! tests run the same binary.

pub mod api;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod egress;
pub mod grpc;
pub mod hub;
pub mod keyring;
pub mod limits;
pub mod prices;
pub mod probe;
pub mod store;
pub mod vault;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::auth::{PasswordHasherPool, Role, TokenIssuer};
use crate::config::{Config, LogFormat};
use crate::hub::SnapshotHub;
use crate::store::Store;
use crate::vault::HashSecret;

/// Exit status for bad configuration or usage (BSD `EX_USAGE`/`EX_CONFIG` family).
pub const EXIT_CONFIG: i32 = 64;

/// Logs go to stderr; stdout is reserved for the machine-readable start-up lines
/// (`listening`, `bootstrap_admin`) that launchers and tests read.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A control plane connected to its store, with its first snapshot built.
pub struct App {
    pub state: api::AppState,
}

impl App {
    pub async fn open(config: &Config) -> anyhow::Result<App> {
        let store = Store::connect(&config.database_url)
            .await
            .context("cannot connect to the database")?;
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            anyhow::bail!(
                "database schema is not up to date ({} pending migrations): run `llmhub-control migrate` first",
                pending.len()
            );
        }
        let vault = Arc::new(vault::Vault::new(
            config.keyring.clone(),
            config.master_key_file.clone(),
        ));
        vault.check_versions(&store).await?;
        let hash_secret = Arc::new(HashSecret::load_or_create(&store, &vault.keyring()).await?);
        let store = store.with_audit_key(hash_secret.audit_key());
        vault.sync(&store).await?;
        let hub = SnapshotHub::new(store.clone(), vault.clone(), hash_secret.clone());
        hub.rebuild().await?;
        let tokens = Arc::new(TokenIssuer::new(
            secrecy::ExposeSecret::expose_secret(&config.jwt_secret),
            config.access_token_ttl,
        )?);
        let hasher = PasswordHasherPool::new(config.hash_cost, config.hash_concurrency)?;
        // One process-wide crypto provider (ring) for the outbound client's rustls.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            // Key tests connect only to addresses the egress policy permits.
            .dns_resolver(Arc::new(egress::Resolver(Arc::new(config.egress.clone()))))
            // Directly: through an `HTTP(S)_PROXY` from the environment the address connected to
            // would be the proxy's, and the policy could not see the provider's.
            .no_proxy()
            .build()
            .context("building the outbound HTTP client")?;
        hub.start_verifier(probe::Prober {
            http: http.clone(),
            egress: config.egress.clone(),
        });
        let counters = Arc::new(match &config.redis_url {
            Some(url) => limits::Counters::redis(url, &config.redis_prefix)
                .context("redis_url: cannot create a Redis client")?,
            None => {
                tracing::warn!(
                    "no redis_url: login counters and rate limits are kept in this process only; run one replica or configure Redis"
                );
                limits::Counters::memory()
            }
        });
        let policy = Arc::new(api::Policy {
            registration: config.registration,
            refresh_ttl: config.refresh_ttl,
            rate_limit_ip: config.admin_rate_limit_ip,
            rate_limit_user: config.admin_rate_limit_user,
            registration_limit: config.registration_rate_limit,
            trust_forwarded_for: config.trust_forwarded_for,
            tls: config.admin_tls.is_some(),
            dashboard_origins: config.dashboard_origins.clone(),
            counters_shared: counters.is_shared(),
            egress: config.egress.clone(),
        });
        Ok(App {
            state: api::AppState {
                store,
                hub,
                tokens,
                hasher,
                vault,
                http,
                hash_secret,
                login_guard: Arc::new(limits::LoginGuard::new(
                    counters.clone(),
                    config.login_policy.clone(),
                )),
                limiter: Arc::new(limits::RateLimiter::new(
                    counters.clone(),
                    std::time::Duration::from_secs(60),
                )),
                registration_limiter: Arc::new(limits::RateLimiter::new(
                    counters.clone(),
                    std::time::Duration::from_secs(3600),
                )),
                policy,
                counters,
            },
        })
    }

    /// Creates `admin` with a random one-time password when no user exists yet. Returns the
    /// credentials so the caller can show them once; they are never logged.
    pub async fn bootstrap_admin(&self) -> anyhow::Result<Option<(String, Zeroizing<String>)>> {
        let s = &self.state;
        if s.store.count_users().await? > 0 {
            return Ok(None);
        }
        let password = Zeroizing::new(auth::random_password());
        let hash = s.hasher.hash(&password).await?;
        let new = store::NewUser {
            username: "admin".into(),
            email: None,
            password_hash: hash,
            role: Role::Admin.as_str(),
            status: store::UserStatus::Active,
        };
        let ev = store::AuditEvent::new(&system_actor(), "user_bootstrapped", "user");
        match s.store.create_user(new, ev).await {
            Ok(_) => Ok(Some(("admin".into(), password))),
            // Another replica bootstrapped first.
            Err(store::StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates an admin account with a random password and returns the password.
    pub async fn create_admin(&self, username: &str) -> anyhow::Result<Zeroizing<String>> {
        if username.is_empty() || username.len() > 64 {
            anyhow::bail!("username must be 1-64 characters");
        }
        let password = Zeroizing::new(auth::random_password());
        let hash = self.state.hasher.hash(&password).await?;
        let new = store::NewUser {
            username: username.to_owned(),
            email: None,
            password_hash: hash,
            role: Role::Admin.as_str(),
            status: store::UserStatus::Active,
        };
        let ev = store::AuditEvent::new(&system_actor(), "user_bootstrapped", "user");
        self.state.store.create_user(new, ev).await?;
        Ok(password)
    }

    /// Serves the admin API and the gRPC service until `shutdown` resolves.
    pub async fn serve(
        self,
        config: &Config,
        admin: TcpListener,
        grpc: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let grpc_task = tokio::spawn(grpc::serve(
            self.state.hub.clone(),
            config.tls.clone(),
            grpc,
            stop_rx.clone(),
        ));
        // Other replicas may change the store; a periodic rebuild picks that up (and publishes
        // only when something changed). A rebuild also runs right at each budget period
        // boundary (a UTC midnight), so proxies get the new period's start at once rather than
        // up to one tick late.
        let hub = self.state.hub.clone();
        let (vault, store) = (self.state.vault.clone(), self.state.store.clone());
        let refresh_stop = wait(stop_rx.clone());
        let refresh = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(refresh_stop);
            loop {
                let now = chrono::Utc::now();
                let to_rollover = (hub::next_rollover(now) - now).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = vault.sync(&store).await {
                            tracing::warn!(error = %e, "vault state sync failed");
                        }
                        if let Err(e) = hub.rebuild().await {
                            tracing::warn!(error = %e, "periodic snapshot rebuild failed");
                        }
                    }
                    // Woken early by a clock step, the rebuild finds the same period and
                    // publishes nothing; the loop then waits for the rest.
                    () = tokio::time::sleep(to_rollover) => {
                        if let Err(e) = hub.rebuild().await {
                            tracing::warn!(error = %e, "budget period rollover rebuild failed");
                        }
                    }
                    () = &mut refresh_stop => break,
                }
            }
        });
        // The ledger's retention: daily partitions ahead (Postgres), and expired records
        // dropped, at start and then hourly. Idempotent, and serialised across replicas.
        let (store, retention_days) = (self.state.store.clone(), config.record_retention_days);
        let ledger_stop = wait(stop_rx.clone());
        let ledger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEDGER_MAINTENANCE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(ledger_stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => maintain_ledger(&store, retention_days).await,
                    () = &mut ledger_stop => break,
                }
            }
        });
        let tls = match &config.admin_tls {
            Some((cert, key)) => Some(api::serve::tls_acceptor(cert, key)?),
            None => None,
        };
        let router = api::router(self.state);
        let admin_task = tokio::spawn(api::serve::serve(admin, router, tls, wait(stop_rx)));
        let mut grpc_task = grpc_task;
        let mut admin_task = admin_task;
        let outcome: anyhow::Result<()> = tokio::select! {
            () = shutdown => Ok(()),
            r = &mut grpc_task => Err(match r {
                Ok(Ok(())) => anyhow::anyhow!("grpc server stopped unexpectedly"),
                Ok(Err(e)) => e.context("grpc server failed"),
                Err(e) => anyhow::Error::from(e).context("grpc server panicked"),
            }),
            r = &mut admin_task => Err(match r {
                Ok(Ok(())) => anyhow::anyhow!("admin server stopped unexpectedly"),
                Ok(Err(e)) => anyhow::Error::from(e).context("admin server failed"),
                Err(e) => anyhow::Error::from(e).context("admin server panicked"),
            }),
        };
        let _ = stop_tx.send(true);
        refresh.abort();
        ledger.abort();
        if outcome.is_ok() {
            let drain = std::time::Duration::from_secs(15);
            match tokio::time::timeout(drain, async { (grpc_task.await, admin_task.await) }).await {
                Ok((g, a)) => {
                    g??;
                    a??;
                }
                Err(_) => tracing::warn!("shutdown drain timed out"),
            }
        }
        outcome
    }
}

/// How often the ledger's partitions and retention are maintained. A day's partitions exist
/// [`store::retention::DAYS_AHEAD`] days ahead, so an hour late is never too late.
const LEDGER_MAINTENANCE: std::time::Duration = std::time::Duration::from_secs(3600);

async fn maintain_ledger(store: &Store, retention_days: u32) {
    match store
        .maintain_records(chrono::Utc::now(), retention_days)
        .await
    {
        Ok(m) if m == store::Maintenance::default() => {}
        Ok(m) => tracing::info!(
            event = "ledger_maintained",
            partitions_created = ?m.created,
            partitions_dropped = ?m.dropped,
            rows_deleted = m.deleted,
            retention_days,
            "routing records maintained"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "routing record maintenance failed; retried in an hour")
        }
    }
}

/// A master-key operation run from the command line.
pub enum VaultOp {
    Status,
    Use(u32),
    Rewrap(u64),
    Retire(u32),
}

/// Runs a vault operation against the configured database, as the admin API would (same checks,
/// same audit rows). Returns the resulting status as JSON.
pub async fn vault_command(config: &Config, op: VaultOp) -> anyhow::Result<String> {
    let store = Store::connect(&config.database_url).await?;
    let vault = vault::Vault::new(config.keyring.clone(), config.master_key_file.clone());
    vault.check_versions(&store).await?;
    let hash_secret = HashSecret::load_or_create(&store, &vault.keyring()).await?;
    let store = store.with_audit_key(hash_secret.audit_key());
    vault.sync(&store).await?;
    let actor = store::Actor {
        user_id: None,
        ip: "local".into(),
        user_agent: "llmhub-control vault".into(),
    };
    match op {
        VaultOp::Status => {}
        VaultOp::Use(v) => vault.set_current(&store, v, &actor).await?,
        VaultOp::Retire(v) => vault.retire(&store, v, &actor).await?,
        VaultOp::Rewrap(batch) => {
            anyhow::ensure!(vault.begin_rewrap(), "a re-wrap is already running");
            let p = vault.run_rewrap(&store, batch.max(1), &actor).await?;
            eprintln!(
                "re-wrapped {} of {} (failed {})",
                p.rewrapped, p.total, p.failed
            );
        }
    }
    Ok(serde_json::to_string_pretty(&vault.status(&store).await?)?)
}

/// The actor recorded for actions the process takes by itself (bootstrap).
fn system_actor() -> store::Actor {
    store::Actor {
        user_id: None,
        ip: "local".into(),
        user_agent: "llmhub-control".into(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
