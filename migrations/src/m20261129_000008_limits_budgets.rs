//! Limits and budgets as data, and client-key rotation with a grace period.
//!
//! Client keys and users get requests/tokens per minute and concurrent-request limits (NULL = no
//! limit) and a budget: its limit in nano-US-dollars (NULL = no budget), its period (`none`,
//! `daily`, `weekly`, `monthly`), its anchor (when it was set: the start of a `none` budget's one
//! period) and its expiry. Client keys also keep the previous key's hash after a rotation, valid
//! until `previous_valid_until`, and when they were last rotated.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    PreviousKeyHash,
    PreviousValidUntil,
    RotatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
}

/// The columns both tables share.
#[derive(DeriveIden)]
enum LimitColumn {
    RpmLimit,
    TpmLimit,
    MaxConcurrent,
    BudgetNanos,
    BudgetPeriod,
    BudgetAnchor,
    BudgetExpiresAt,
}

fn limit_columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new(LimitColumn::RpmLimit)
            .integer()
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::TpmLimit)
            .integer()
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::MaxConcurrent)
            .integer()
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::BudgetNanos)
            .big_integer()
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::BudgetPeriod)
            .string_len(16)
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::BudgetAnchor)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
        ColumnDef::new(LimitColumn::BudgetExpiresAt)
            .timestamp_with_time_zone()
            .null()
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds a single column at a time.
        let mut client_key_columns = limit_columns();
        client_key_columns.extend([
            ColumnDef::new(ClientKeys::PreviousKeyHash)
                .blob()
                .null()
                .to_owned(),
            ColumnDef::new(ClientKeys::PreviousValidUntil)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new(ClientKeys::RotatedAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ]);
        for col in client_key_columns {
            m.alter_table(
                Table::alter()
                    .table(ClientKeys::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        for col in limit_columns() {
            m.alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
