//! Usage and prices: the token usage, cost and client key of each routing record, and the
//! admin's model prices (overrides of the built-in list prices, and models the list lacks).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ModelPrices {
    Table,
    Model,
    InputNanosPerToken,
    OutputNanosPerToken,
    CachedInputNanosPerToken,
    UpdatedAt,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum RoutingRecords {
    Table,
    PromptTokens,
    CompletionTokens,
    CachedTokens,
    Partial,
    CostNanos,
    ClientKeyId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Nano-US-dollars per token (= US dollars per billion tokens).
        let nanos = |col| ColumnDef::new(col).big_integer().not_null().to_owned();
        m.create_table(
            Table::create()
                .table(ModelPrices::Table)
                .col(
                    ColumnDef::new(ModelPrices::Model)
                        .string_len(128)
                        .not_null()
                        .primary_key(),
                )
                .col(nanos(ModelPrices::InputNanosPerToken))
                .col(nanos(ModelPrices::OutputNanosPerToken))
                .col(nanos(ModelPrices::CachedInputNanosPerToken))
                .col(
                    ColumnDef::new(ModelPrices::UpdatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                // The admin's user id.
                .col(
                    ColumnDef::new(ModelPrices::UpdatedBy)
                        .string_len(36)
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        // One column per statement: SQLite alters one column at a time. Records stored before
        // this migration read as no usage, not partial, unknown cost and no client key id.
        for col in [
            ColumnDef::new(RoutingRecords::PromptTokens)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(RoutingRecords::CompletionTokens)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(RoutingRecords::CachedTokens)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(RoutingRecords::Partial)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            // Null: no price was known for the model, so the cost is unknown.
            ColumnDef::new(RoutingRecords::CostNanos)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(RoutingRecords::ClientKeyId)
                .string_len(36)
                .not_null()
                .default("")
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(RoutingRecords::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
