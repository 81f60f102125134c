//! Key pools and the vault: per-key limits and test results, and whether a user may draw on the
//! shared pool.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ProviderKeys {
    Table,
    RpmLimit,
    TpmLimit,
    LastTestedAt,
    LastTestResult,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    SharedPoolAccess,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for col in [
            ColumnDef::new(ProviderKeys::RpmLimit)
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(ProviderKeys::TpmLimit)
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(ProviderKeys::LastTestedAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new(ProviderKeys::LastTestResult)
                .string_len(32)
                .null()
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(ProviderKeys::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Users::Table)
                .add_column(
                    ColumnDef::new(Users::SharedPoolAccess)
                        .boolean()
                        .not_null()
                        .default(true),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
