//! Provider settings beyond the base URL: the preset a provider was created from and the Azure
//! OpenAI `api-version`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Providers {
    Table,
    Preset,
    ApiVersion,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            ColumnDef::new(Providers::Preset)
                .string_len(32)
                .null()
                .to_owned(),
            ColumnDef::new(Providers::ApiVersion)
                .string_len(32)
                .null()
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Providers::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
