//! Key health: cooldowns per key × model, the history of state changes, the reason a key is
//! disabled, and a routing strategy per route.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyCooldowns {
    Table,
    KeyId,
    Model,
    Until,
    Class,
    Source,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum KeyEvents {
    Table,
    Id,
    KeyId,
    At,
    Event,
    Class,
    Model,
    Until,
    Source,
}

#[derive(DeriveIden)]
enum ProviderKeys {
    Table,
    Id,
    StateReason,
}

#[derive(DeriveIden)]
enum Routes {
    Table,
    Strategy,
    Aliases,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(KeyCooldowns::Table)
                .col(
                    ColumnDef::new(KeyCooldowns::KeyId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(KeyCooldowns::Model)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(KeyCooldowns::Until)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(KeyCooldowns::Class)
                        .string_len(32)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(KeyCooldowns::Source)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(KeyCooldowns::UpdatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(KeyCooldowns::KeyId)
                        .col(KeyCooldowns::Model),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(KeyCooldowns::Table, KeyCooldowns::KeyId)
                        .to(ProviderKeys::Table, ProviderKeys::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(KeyEvents::Table)
                .col(
                    ColumnDef::new(KeyEvents::Id)
                        .string_len(36)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(KeyEvents::KeyId).string_len(36).not_null())
                .col(
                    ColumnDef::new(KeyEvents::At)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .col(ColumnDef::new(KeyEvents::Event).string_len(32).not_null())
                .col(ColumnDef::new(KeyEvents::Class).string_len(32).not_null())
                .col(ColumnDef::new(KeyEvents::Model).string_len(128).not_null())
                .col(
                    ColumnDef::new(KeyEvents::Until)
                        .timestamp_with_time_zone()
                        .null(),
                )
                .col(ColumnDef::new(KeyEvents::Source).string_len(64).not_null())
                .foreign_key(
                    ForeignKey::create()
                        .from(KeyEvents::Table, KeyEvents::KeyId)
                        .to(ProviderKeys::Table, ProviderKeys::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_key_events_key_at")
                .table(KeyEvents::Table)
                .col(KeyEvents::KeyId)
                .col(KeyEvents::At)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(ProviderKeys::Table)
                .add_column(
                    ColumnDef::new(ProviderKeys::StateReason)
                        .string_len(64)
                        .null(),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Routes::Table)
                .add_column(
                    ColumnDef::new(Routes::Strategy)
                        .string_len(16)
                        .not_null()
                        .default("weighted"),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Routes::Table)
                .add_column(
                    ColumnDef::new(Routes::Aliases)
                        .text()
                        .not_null()
                        .default("[]"),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
