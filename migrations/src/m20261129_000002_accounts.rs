//! Accounts and sessions: token versions on users, login sessions with rotating refresh tokens,
//! and the hash-chained audit log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    TokenVersion,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    CreatedAt,
    LastUsedAt,
    ExpiresAt,
    RevokedAt,
    RevokedReason,
    Ip,
    UserAgent,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Id,
    SessionId,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Seq,
    At,
    ActorUserId,
    ActorIp,
    UserAgent,
    Action,
    TargetType,
    TargetId,
    Outcome,
    Detail,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum AuditHead {
    Table,
    Id,
    Seq,
    Hash,
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
        m.alter_table(
            Table::alter()
                .table(Users::Table)
                .add_column(
                    ColumnDef::new(Users::TokenVersion)
                        .integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(
                    ColumnDef::new(Sessions::Id)
                        .string_len(36)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Sessions::UserId).string_len(36).not_null())
                .col(ts(Sessions::CreatedAt))
                .col(ts(Sessions::LastUsedAt))
                .col(ts(Sessions::ExpiresAt))
                .col(ts_null(Sessions::RevokedAt))
                .col(
                    ColumnDef::new(Sessions::RevokedReason)
                        .string_len(32)
                        .null(),
                )
                .col(ColumnDef::new(Sessions::Ip).string_len(64).not_null())
                .col(
                    ColumnDef::new(Sessions::UserAgent)
                        .string_len(256)
                        .not_null(),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Alias::new("id"))
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_sessions_user")
                .table(Sessions::Table)
                .col(Sessions::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RefreshTokens::Table)
                .col(
                    ColumnDef::new(RefreshTokens::Id)
                        .string_len(36)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(RefreshTokens::SessionId)
                        .string_len(36)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RefreshTokens::TokenHash)
                        .blob()
                        .not_null()
                        .unique_key(),
                )
                .col(ts(RefreshTokens::CreatedAt))
                .col(ts(RefreshTokens::ExpiresAt))
                .col(ts_null(RefreshTokens::UsedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(RefreshTokens::Table, RefreshTokens::SessionId)
                        .to(Sessions::Table, Sessions::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .col(
                    ColumnDef::new(AuditLog::Seq)
                        .big_integer()
                        .not_null()
                        .primary_key(),
                )
                .col(ts(AuditLog::At))
                .col(ColumnDef::new(AuditLog::ActorUserId).string_len(36).null())
                .col(ColumnDef::new(AuditLog::ActorIp).string_len(64).not_null())
                .col(
                    ColumnDef::new(AuditLog::UserAgent)
                        .string_len(256)
                        .not_null(),
                )
                .col(ColumnDef::new(AuditLog::Action).string_len(64).not_null())
                .col(
                    ColumnDef::new(AuditLog::TargetType)
                        .string_len(32)
                        .not_null(),
                )
                .col(ColumnDef::new(AuditLog::TargetId).string_len(64).not_null())
                .col(ColumnDef::new(AuditLog::Outcome).string_len(16).not_null())
                .col(ColumnDef::new(AuditLog::Detail).text().not_null())
                .col(ColumnDef::new(AuditLog::PrevHash).blob().not_null())
                .col(ColumnDef::new(AuditLog::Hash).blob().not_null())
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("idx_audit_action", AuditLog::Action),
            ("idx_audit_actor", AuditLog::ActorUserId),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(AuditLog::Table)
                    .col(col)
                    .to_owned(),
            )
            .await?;
        }

        // One row: the chain's head. Appends update it in the same transaction, which serialises
        // writers (a row lock on Postgres, the database lock on SQLite).
        m.create_table(
            Table::create()
                .table(AuditHead::Table)
                .col(
                    ColumnDef::new(AuditHead::Id)
                        .integer()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(AuditHead::Seq).big_integer().not_null())
                .col(ColumnDef::new(AuditHead::Hash).blob().not_null())
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table(AuditHead::Table)
                .columns([AuditHead::Id, AuditHead::Seq, AuditHead::Hash])
                .values_panic([1.into(), 0i64.into(), vec![0u8; 32].into()])
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
