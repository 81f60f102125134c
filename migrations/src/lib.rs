//! Schema migrations for `llmhub-control`, shared by Postgres and SQLite.
//!
//! Applied only by the control plane's explicit `migrate` subcommand (or the embedded `up`
//! launcher), never implicitly at connect time: several control-plane replicas starting together
//! must not race to change the schema.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_initial;
mod m20261129_000002_accounts;
mod m20261129_000003_vault;
mod m20261129_000004_health;
mod m20261129_000005_provider_settings;
mod m20261129_000006_penalty_client_key;
mod m20261129_000007_usage;
mod m20261129_000008_limits_budgets;
mod m20261129_000009_ledger;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_initial::Migration),
            Box::new(m20261129_000002_accounts::Migration),
            Box::new(m20261129_000003_vault::Migration),
            Box::new(m20261129_000004_health::Migration),
            Box::new(m20261129_000005_provider_settings::Migration),
            Box::new(m20261129_000006_penalty_client_key::Migration),
            Box::new(m20261129_000007_usage::Migration),
            Box::new(m20261129_000008_limits_budgets::Migration),
            Box::new(m20261129_000009_ledger::Migration),
        ]
    }
}
