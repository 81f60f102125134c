//! Routes: a public model name (and its aliases) and the provider targets it resolves to.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::{EntityTrait, QueryOrder, TransactionTrait};

use super::entities::{route_targets, routes};
use super::{AuditEvent, Result, Store, StoreError, clamp_i32, json_list, new_id};

pub struct NewRouteTarget {
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
}

#[derive(Debug)]
pub struct RouteWithTargets {
    pub route: routes::Model,
    pub targets: Vec<route_targets::Model>,
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
        let mut rows = Vec::with_capacity(targets.len());
        for t in targets {
            let row = route_targets::Entity::insert(route_targets::ActiveModel {
                id: Set(new_id()),
                route_id: Set(route.id.clone()),
                provider_id: Set(t.provider_id),
                upstream_model: Set(t.upstream_model),
                weight: Set(clamp_i32(t.weight)),
                priority: Set(clamp_i32(t.priority)),
            })
            .exec_with_returning(&txn)
            .await?;
            rows.push(row);
        }
        let ev = audit
            .target(&route.id)
            .detail(serde_json::json!({"public_model": route.public_model, "targets": rows.len()}));
        self.commit_audited(txn, ev).await?;
        Ok(RouteWithTargets {
            route,
            targets: rows,
        })
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
