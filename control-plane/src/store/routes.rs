//! Routes: a public model name (and its aliases) and the provider targets it resolves to.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};

use super::entities::{route_targets, routes};
use super::{AuditEvent, Result, Store, StoreError, clamp_i32, json_list, new_id};

pub struct NewRouteTarget {
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
}

/// What an admin may change on a route; `None` leaves a field as it is. Targets are replaced as a
/// whole list. The public name identifies the route and does not change (client keys and routing
/// records refer to it by name).
#[derive(Default)]
pub struct RouteChange {
    pub strategy: Option<String>,
    pub aliases: Option<Vec<String>>,
    pub targets: Option<Vec<NewRouteTarget>>,
}

#[derive(Debug)]
pub struct RouteWithTargets {
    pub route: routes::Model,
    pub targets: Vec<route_targets::Model>,
}

async fn insert_targets(
    txn: &sea_orm::DatabaseTransaction,
    route_id: &str,
    targets: Vec<NewRouteTarget>,
) -> Result<Vec<route_targets::Model>> {
    let mut rows = Vec::with_capacity(targets.len());
    for t in targets {
        let row = route_targets::Entity::insert(route_targets::ActiveModel {
            id: Set(new_id()),
            route_id: Set(route_id.to_owned()),
            provider_id: Set(t.provider_id),
            upstream_model: Set(t.upstream_model),
            weight: Set(clamp_i32(t.weight)),
            priority: Set(clamp_i32(t.priority)),
        })
        .exec_with_returning(txn)
        .await?;
        rows.push(row);
    }
    Ok(rows)
}

/// The targets of one route, by priority.
async fn targets_of(
    txn: &sea_orm::DatabaseTransaction,
    route_id: &str,
) -> Result<Vec<route_targets::Model>> {
    Ok(route_targets::Entity::find()
        .filter(route_targets::Column::RouteId.eq(route_id))
        .order_by_asc(route_targets::Column::Priority)
        .all(txn)
        .await?)
}

fn target_summary(t: &[route_targets::Model]) -> serde_json::Value {
    t.iter()
        .map(|t| serde_json::json!({"provider_id": t.provider_id, "upstream_model": t.upstream_model, "weight": t.weight, "priority": t.priority}))
        .collect()
}

async fn route_by_name(
    txn: &sea_orm::DatabaseTransaction,
    public_model: &str,
) -> Result<routes::Model> {
    routes::Entity::find()
        .filter(routes::Column::PublicModel.eq(public_model))
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound)
}

impl Store {
    /// Creates a route and its targets. `strategy` is stored as given (`weighted`,
    /// `least_inflight` or `latency`; the API checks it).
    pub async fn create_route(
        &self,
        public_model: &str,
        strategy: &str,
        aliases: &[String],
        targets: Vec<NewRouteTarget>,
        audit: AuditEvent,
    ) -> Result<RouteWithTargets> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let route = routes::Entity::insert(routes::ActiveModel {
            id: Set(new_id()),
            public_model: Set(public_model.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            strategy: Set(strategy.to_owned()),
            aliases: Set(json_list(aliases)),
        })
        .exec_with_returning(&txn)
        .await
        .map_err(|e| StoreError::from(e).conflict_as("route"))?;
        let rows = insert_targets(&txn, &route.id, targets).await?;
        let ev = audit
            .target(&route.id)
            .detail(serde_json::json!({"public_model": route.public_model, "targets": rows.len()}));
        self.commit_audited(txn, ev).await?;
        Ok(RouteWithTargets {
            route,
            targets: rows,
        })
    }

    /// Changes the route named `public_model` (its public name, not an alias). Replaced targets
    /// take effect on the proxies with the next snapshot; the audit row keeps both lists.
    pub async fn update_route(
        &self,
        public_model: &str,
        change: RouteChange,
        audit: AuditEvent,
    ) -> Result<RouteWithTargets> {
        let txn = self.db.begin().await?;
        let route = route_by_name(&txn, public_model).await?;
        let before = targets_of(&txn, &route.id).await?;
        let mut m: routes::ActiveModel = route.into();
        let mut changed = Vec::new();
        if let Some(s) = change.strategy {
            m.strategy = Set(s);
            changed.push("strategy");
        }
        if let Some(a) = change.aliases {
            m.aliases = Set(json_list(&a));
            changed.push("aliases");
        }
        m.updated_at = Set(Utc::now());
        let route = routes::Entity::update(m).exec(&txn).await?;
        let targets = match change.targets {
            None => before.clone(),
            Some(new) => {
                route_targets::Entity::delete_many()
                    .filter(route_targets::Column::RouteId.eq(route.id.as_str()))
                    .exec(&txn)
                    .await?;
                insert_targets(&txn, &route.id, new).await?;
                changed.push("targets");
                targets_of(&txn, &route.id).await?
            }
        };
        let ev = audit.target(&route.id).detail(serde_json::json!({
            "public_model": route.public_model,
            "changed": changed,
            "strategy": route.strategy,
            "targets": {"from": target_summary(&before), "to": target_summary(&targets)},
        }));
        self.commit_audited(txn, ev).await?;
        Ok(RouteWithTargets { route, targets })
    }

    /// Deletes the route named `public_model` with its targets. Client keys that list the name
    /// keep it (it answers `model_not_found` until a route of that name exists again); routing
    /// records keep the name they were written with.
    pub async fn delete_route(&self, public_model: &str, audit: AuditEvent) -> Result<()> {
        let txn = self.db.begin().await?;
        let route = route_by_name(&txn, public_model).await?;
        let targets = targets_of(&txn, &route.id).await?;
        route_targets::Entity::delete_many()
            .filter(route_targets::Column::RouteId.eq(route.id.as_str()))
            .exec(&txn)
            .await?;
        routes::Entity::delete_by_id(route.id.clone())
            .exec(&txn)
            .await?;
        let ev = audit.target(&route.id).detail(serde_json::json!({
            "public_model": route.public_model,
            "aliases": super::parse_list(&route.aliases),
            "targets": target_summary(&targets),
        }));
        self.commit_audited(txn, ev).await
    }

    /// Every route by public name, each with its targets by priority.
    pub async fn routes(&self) -> Result<Vec<RouteWithTargets>> {
        let routes = routes::Entity::find()
            .order_by_asc(routes::Column::PublicModel)
            .all(&self.db)
            .await?;
        let mut targets = route_targets::Entity::find()
            .order_by_asc(route_targets::Column::Priority)
            .all(&self.db)
            .await?;
        Ok(routes
            .into_iter()
            .map(|route| {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    targets.drain(..).partition(|t| t.route_id == route.id);
                targets = rest;
                RouteWithTargets {
                    route,
                    targets: mine,
                }
            })
            .collect())
    }
}
