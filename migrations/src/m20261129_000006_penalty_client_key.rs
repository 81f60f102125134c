//! Which client key's request led to a key penalty (a cooldown or a disabled key), so an admin
//! can see who keeps exhausting or breaking a shared key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyCooldowns {
    Table,
    ClientKeyPrefix,
}

#[derive(DeriveIden)]
enum KeyEvents {
    Table,
    ClientKeyPrefix,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(KeyCooldowns::Table)
                .add_column(
                    ColumnDef::new(KeyCooldowns::ClientKeyPrefix)
                        .string_len(16)
                        .null(),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(KeyEvents::Table)
                .add_column(
                    ColumnDef::new(KeyEvents::ClientKeyPrefix)
                        .string_len(16)
                        .null(),
                )
                .to_owned(),
        )
        .await
    }
}
