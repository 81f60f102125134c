//! The walking skeleton's schema: accounts, providers, sealed provider keys, hashed client keys,
//! routes, sealed settings and routing records.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    Email,
    PasswordHash,
    Role,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Providers {
    Table,
    Id,
    Name,
    Kind,
    BaseUrl,
    Enabled,
    RequestTimeoutMs,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ProviderKeys {
    Table,
    Id,
    ProviderId,
    OwnerUserId,
    Sealed,
    KeyVersion,
    Fingerprint,
    Mask,
    Label,
    Weight,
    AllowedModels,
    State,
    LastUsedAt,
    LastErrorClass,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ClientKeys {
    Table,
    Id,
    UserId,
    Name,
    KeyHash,
    Prefix,
    AllowedModels,
    Enabled,
    UseSharedPool,
    ExpiresAt,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Routes {
    Table,
    Id,
    PublicModel,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RouteTargets {
    Table,
    Id,
    RouteId,
    ProviderId,
    UpstreamModel,
    Weight,
    Priority,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Name,
    Sealed,
    KeyVersion,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RoutingRecords {
    Table,
    RequestId,
    ProxyId,
    StartedAt,
    UserId,
    ClientKeyPrefix,
    PublicModel,
    Status,
    LatencyMs,
    Stream,
    Detail,
    ReceivedAt,
}

fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .string_len(36)
        .not_null()
        .primary_key()
        .to_owned()
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(id(Users::Id))
                .col(
                    ColumnDef::new(Users::Username)
                        .string_len(64)
                        .not_null()
                        .unique_key(),
                )
                .col(
                    ColumnDef::new(Users::Email)
                        .string_len(254)
                        .null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Users::PasswordHash).text().not_null())
                .col(ColumnDef::new(Users::Role).string_len(16).not_null())
                .col(ColumnDef::new(Users::Status).string_len(16).not_null())
                .col(ts(Users::CreatedAt))
                .col(ts(Users::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Providers::Table)
                .col(id(Providers::Id))
                .col(
                    ColumnDef::new(Providers::Name)
                        .string_len(64)
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Providers::Kind).string_len(32).not_null())
                .col(ColumnDef::new(Providers::BaseUrl).text().not_null())
                .col(ColumnDef::new(Providers::Enabled).boolean().not_null())
                .col(
                    ColumnDef::new(Providers::RequestTimeoutMs)
                        .integer()
                        .not_null(),
                )
                .col(ts(Providers::CreatedAt))
                .col(ts(Providers::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ProviderKeys::Table)
                .col(id(ProviderKeys::Id))
                .col(
                    ColumnDef::new(ProviderKeys::ProviderId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ProviderKeys::OwnerUserId)
                        .string_len(36)
                        .null(),
                )
                .col(ColumnDef::new(ProviderKeys::Sealed).blob().not_null())
                .col(
                    ColumnDef::new(ProviderKeys::KeyVersion)
                        .integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ProviderKeys::Fingerprint)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(ProviderKeys::Mask).string_len(24).not_null())
                .col(
                    ColumnDef::new(ProviderKeys::Label)
                        .string_len(128)
                        .not_null(),
                )
                .col(ColumnDef::new(ProviderKeys::Weight).integer().not_null())
                .col(
                    ColumnDef::new(ProviderKeys::AllowedModels)
                        .text()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ProviderKeys::State)
                        .string_len(32)
                        .not_null(),
                )
                .col(ts_null(ProviderKeys::LastUsedAt))
                .col(
                    ColumnDef::new(ProviderKeys::LastErrorClass)
                        .string_len(32)
                        .null(),
                )
                .col(ts(ProviderKeys::CreatedAt))
                .col(ts(ProviderKeys::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(ProviderKeys::Table, ProviderKeys::ProviderId)
                        .to(Providers::Table, Providers::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ProviderKeys::Table, ProviderKeys::OwnerUserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_provider_keys_provider")
                .table(ProviderKeys::Table)
                .col(ProviderKeys::ProviderId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ClientKeys::Table)
                .col(id(ClientKeys::Id))
                .col(ColumnDef::new(ClientKeys::UserId).string_len(36).not_null())
                .col(ColumnDef::new(ClientKeys::Name).string_len(128).not_null())
                .col(
                    ColumnDef::new(ClientKeys::KeyHash)
                        .blob()
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(ClientKeys::Prefix).string_len(16).not_null())
                .col(ColumnDef::new(ClientKeys::AllowedModels).text().not_null())
                .col(ColumnDef::new(ClientKeys::Enabled).boolean().not_null())
                .col(
                    ColumnDef::new(ClientKeys::UseSharedPool)
                        .boolean()
                        .not_null(),
                )
                .col(ts_null(ClientKeys::ExpiresAt))
                .col(ts(ClientKeys::CreatedAt))
                .col(ts_null(ClientKeys::RevokedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(ClientKeys::Table, ClientKeys::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Routes::Table)
                .col(id(Routes::Id))
                .col(
                    ColumnDef::new(Routes::PublicModel)
                        .string_len(128)
                        .not_null()
                        .unique_key(),
                )
                .col(ts(Routes::CreatedAt))
                .col(ts(Routes::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RouteTargets::Table)
                .col(id(RouteTargets::Id))
                .col(
                    ColumnDef::new(RouteTargets::RouteId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RouteTargets::ProviderId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RouteTargets::UpstreamModel)
                        .string_len(128)
                        .not_null(),
                )
                .col(ColumnDef::new(RouteTargets::Weight).integer().not_null())
                .col(ColumnDef::new(RouteTargets::Priority).integer().not_null())
                .foreign_key(
                    ForeignKey::create()
                        .from(RouteTargets::Table, RouteTargets::RouteId)
                        .to(Routes::Table, Routes::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(RouteTargets::Table, RouteTargets::ProviderId)
                        .to(Providers::Table, Providers::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Settings::Table)
                .col(
                    ColumnDef::new(Settings::Name)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Settings::Sealed).blob().not_null())
                .col(ColumnDef::new(Settings::KeyVersion).integer().not_null())
                .col(ts(Settings::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RoutingRecords::Table)
                .col(
                    ColumnDef::new(RoutingRecords::RequestId)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(RoutingRecords::ProxyId)
                        .string_len(64)
                        .not_null(),
                )
                .col(ts(RoutingRecords::StartedAt))
                .col(
                    ColumnDef::new(RoutingRecords::UserId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RoutingRecords::ClientKeyPrefix)
                        .string_len(16)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RoutingRecords::PublicModel)
                        .string_len(128)
                        .not_null(),
                )
                .col(ColumnDef::new(RoutingRecords::Status).integer().not_null())
                .col(
                    ColumnDef::new(RoutingRecords::LatencyMs)
                        .integer()
                        .not_null(),
                )
                .col(ColumnDef::new(RoutingRecords::Stream).boolean().not_null())
                .col(ColumnDef::new(RoutingRecords::Detail).text().not_null())
                .col(ts(RoutingRecords::ReceivedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_routing_records_user_started")
                .table(RoutingRecords::Table)
                .col(RoutingRecords::UserId)
                .col(RoutingRecords::StartedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
