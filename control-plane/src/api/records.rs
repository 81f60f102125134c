//! The usage ledger, read: routing records with filters and cursor pagination, and usage and
//! spend summed per day, model, client key, user or provider from the daily rollups. Users see
//! their own; admins everyone's.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, ApiQuery, AppState, AuthUser};
use crate::auth::Role;
use crate::store::entities::routing_records;
use crate::store::{RecordCursor, RecordFilter, StatusFilter, UsageFilter, UsageGroup, UsageRow};

/// Records per page by default, and at most.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 500;
/// `GET /api/v1/routing-records` (the older name) keeps its own bound, clamped rather than
/// refused, as before.
const LEGACY_MAX_LIMIT: u64 = 1000;
/// The usage API's range when `from` is not given.
const DEFAULT_USAGE_DAYS: i64 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordsQuery {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    client_key_id: Option<String>,
    model: Option<String>,
    provider_id: Option<String>,
    status: Option<String>,
    key_fingerprint: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub(super) struct RoutingRecordView {
    request_id: String,
    proxy_id: String,
    started_at: DateTime<Utc>,
    user_id: String,
    /// Empty for records from before it was reported.
    client_key_id: String,
    client_key_prefix: String,
    public_model: String,
    status: i32,
    latency_ms: i32,
    stream: bool,
    /// The serving (last) attempt's provider, key fingerprint and upstream model; empty when no
    /// attempt was made.
    provider_id: String,
    key_fingerprint: String,
    upstream_model: String,
    /// Attempts and skipped candidates: `{"attempts": [...], "skipped": [...]}` (`null` if the
    /// stored JSON is unreadable).
    detail: Value,
    /// Usage as the provider reported it; `prompt_tokens` includes `cached_tokens`. For a
    /// `partial` record (the client went away mid-answer) it covers what was delivered, the
    /// completion estimated from the text when the provider had not reported it yet.
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    partial: bool,
    /// Nano-US-dollars; `null` when no price was known for a request that used tokens.
    cost_nanos: Option<i64>,
}

impl From<routing_records::Model> for RoutingRecordView {
    fn from(r: routing_records::Model) -> Self {
        RoutingRecordView {
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
            request_id: r.request_id,
            proxy_id: r.proxy_id,
            started_at: r.started_at,
            user_id: r.user_id,
            client_key_id: r.client_key_id,
            client_key_prefix: r.client_key_prefix,
            public_model: r.public_model,
            status: r.status,
            latency_ms: r.latency_ms,
            stream: r.stream,
            provider_id: r.provider_id,
            key_fingerprint: r.key_fingerprint,
            upstream_model: r.upstream_model,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            partial: r.partial,
            cost_nanos: r.cost_nanos,
        }
    }
}

/// One page, newest first; `next_cursor` (absent on the last page) continues after it.
#[derive(Serialize)]
pub(super) struct RecordPage {
    data: Vec<RoutingRecordView>,
    next_cursor: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// An RFC 3339 time. A `+` left unencoded in a query string arrives as a space; it is read as
/// the `+` it was.
fn time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .or_else(|e| {
            if v.contains(' ') {
                DateTime::parse_from_rfc3339(&v.replace(' ', "+"))
            } else {
                Err(e)
            }
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad(format!(
                "{name} must be an RFC 3339 time like 2025-03-05T00:00:00Z"
            ))
        })
}

/// A time range's ends; either may be open.
type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` and `to` (either may be absent); `from` must come before `to`.
fn range(from: Option<&str>, to: Option<&str>) -> Result<Range, ApiError> {
    let from = from.map(|v| time("from", v)).transpose()?;
    let to = to.map(|v| time("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(bad("from must be before to"));
    }
    Ok((from, to))
}

/// An id or name filter: non-empty and of a sane length.
fn ident(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(v) if v.is_empty() || v.len() > 128 => {
            Err(bad(format!("{name} must be 1 to 128 characters")))
        }
        v => Ok(v),
    }
}

/// The cursor is opaque to clients: URL-safe base64 of the last record's start time (RFC 3339,
/// nanoseconds) and request id.
fn encode_cursor(c: &RecordCursor) -> String {
    let raw = format!(
        "{}\n{}",
        c.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        c.request_id
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(s: &str) -> Result<RecordCursor, ApiError> {
    let invalid = || bad("cursor is not one this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (t, id) = raw.split_once('\n').ok_or_else(invalid)?;
    if id.is_empty() || id.len() > 64 {
        return Err(invalid());
    }
    Ok(RecordCursor {
        started_at: DateTime::parse_from_rfc3339(t)
            .map_err(|_| invalid())?
            .with_timezone(&Utc),
        request_id: id.to_owned(),
    })
}

/// Narrows a query to the caller's own rows unless the caller is an admin. A user asking for
/// someone else's (`user_id`) is told it does not exist, as for any other tenant's resource.
fn owner(user: &AuthUser, asked: Option<String>) -> Result<Option<String>, ApiError> {
    if user.role == Role::Admin {
        return ident("user_id", asked);
    }
    match asked {
        Some(id) if id != user.id => Err(ApiError::NotFound),
        _ => Ok(Some(user.id.clone())),
    }
}

/// `limit`: refused out of range, or (the older endpoint) clamped into it.
fn page_size(v: Option<&str>, max: u64, clamp: bool) -> Result<u64, ApiError> {
    let Some(v) = v else {
        return Ok(DEFAULT_LIMIT.min(max));
    };
    let out_of_range = || bad(format!("limit must be a whole number from 1 to {max}"));
    let n: u64 = v.parse().map_err(|_| out_of_range())?;
    match (n, clamp) {
        (1.., _) if n <= max => Ok(n),
        (_, true) => Ok(n.clamp(1, max)),
        _ => Err(out_of_range()),
    }
}

async fn page(
    s: &AppState,
    user: &AuthUser,
    q: RecordsQuery,
    max: u64,
    clamp: bool,
) -> Result<RecordPage, ApiError> {
    let limit = page_size(q.limit.as_deref(), max, clamp)?;
    let (from, to) = range(q.from.as_deref(), q.to.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|v| {
            StatusFilter::parse(v).ok_or_else(|| {
                bad("status must be a status code (429), a class (2xx, 4xx, 5xx) or error")
            })
        })
        .transpose()?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = RecordFilter {
        from,
        to,
        user_id: owner(user, q.user_id)?,
        client_key_id: ident("client_key_id", q.client_key_id)?,
        model: ident("model", q.model)?,
        provider_id: ident("provider_id", q.provider_id)?,
        status,
        key_fingerprint: ident("key_fingerprint", q.key_fingerprint)?,
    };
    // One more than the page: whether another page follows, without an empty last page.
    let mut rows = s
        .store
        .routing_records(&filter, after.as_ref(), limit + 1)
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(&RecordCursor::from(r))))
        .flatten();
    Ok(RecordPage {
        data: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    })
}

/// `GET /api/v1/records`.
pub(super) async fn list_records(
    State(s): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> Result<Json<RecordPage>, ApiError> {
    Ok(Json(page(&s, &user, q, MAX_LIMIT, false).await?))
}

/// `GET /api/v1/routing-records`: the same, under its older name and page bound.
pub(super) async fn list_routing_records(
    State(s): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> Result<Json<RecordPage>, ApiError> {
    Ok(Json(page(&s, &user, q, LEGACY_MAX_LIMIT, true).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    user_id: Option<String>,
    client_key_id: Option<String>,
    model: Option<String>,
    provider_id: Option<String>,
}

#[derive(Serialize)]
pub(super) struct UsageView {
    group_by: &'static str,
    /// The UTC days summed, first and last included.
    first_day: NaiveDate,
    last_day: NaiveDate,
    data: Vec<UsageRowView>,
}

#[derive(Serialize)]
pub(super) struct UsageRowView {
    /// The day (`2025-03-05`), public model, client key id, user id or provider id.
    key: String,
    requests: i64,
    /// Requests answered with status 400 or above (499: the client went away).
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    /// Nano-US-dollars, of the requests whose cost is known.
    cost_nanos: i64,
    /// Requests whose cost is unknown (no price for the model).
    unknown_cost_requests: i64,
}

impl From<UsageRow> for UsageRowView {
    fn from(r: UsageRow) -> Self {
        UsageRowView {
            key: r.key,
            requests: r.requests,
            errors: r.errors,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            cost_nanos: r.cost_nanos,
            unknown_cost_requests: r.unknown_cost,
        }
    }
}

/// `GET /api/v1/usage`: usage per group over the UTC days the range touches (the rollups are
/// per day), by default the last 30 days up to now.
pub(super) async fn usage(
    State(s): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let group = match q.group_by.as_deref() {
        None => UsageGroup::Day,
        Some(g) => UsageGroup::parse(g)
            .ok_or_else(|| bad("group_by must be one of day, model, client_key, user, provider"))?,
    };
    let (from, to) = range(q.from.as_deref(), q.to.as_deref())?;
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - Duration::days(DEFAULT_USAGE_DAYS));
    if from >= to {
        return Err(bad("from must be before to"));
    }
    // `to` is exclusive: a range ending at midnight does not touch the day it ends on.
    let last_day = (to - Duration::nanoseconds(1)).date_naive();
    let filter = UsageFilter {
        first_day: from.date_naive(),
        last_day,
        user_id: owner(&user, q.user_id)?,
        client_key_id: ident("client_key_id", q.client_key_id)?,
        model: ident("model", q.model)?,
        provider_id: ident("provider_id", q.provider_id)?,
    };
    let rows = s.store.usage(&filter, group).await?;
    Ok(Json(UsageView {
        group_by: group.as_str(),
        first_day: filter.first_day,
        last_day: filter.last_day,
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = RecordCursor {
            started_at: "2025-03-05T17:00:00.123456789Z".parse().unwrap(),
            request_id: "req-1".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)).unwrap(), c);
        for bad in [
            "",
            "!!!",
            "bm90IGEgY3Vyc29y",
            &encode_cursor(&RecordCursor {
                request_id: String::new(),
                ..c.clone()
            }),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_and_a_decoded_plus_is_forgiven() {
        let t = time("from", "2025-03-05T01:00:00+01:00").unwrap();
        assert_eq!(t, "2025-03-05T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(time("from", "2025-03-05T01:00:00 01:00").unwrap(), t);
        for v in ["2025-03-05", "yesterday", "", "2025-13-01T00:00:00Z"] {
            assert!(time("from", v).is_err(), "{v:?}");
        }
        assert!(range(Some("2025-03-05T00:00:00Z"), Some("2025-03-05T00:00:00Z")).is_err());
        assert!(range(Some("2025-03-05T00:00:00Z"), Some("2025-03-06T00:00:00Z")).is_ok());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(None, 500, false).unwrap(), 100);
        assert_eq!(page_size(Some("500"), 500, false).unwrap(), 500);
        assert_eq!(page_size(Some("1"), 500, false).unwrap(), 1);
        for v in ["0", "501", "-1", "x", ""] {
            assert!(page_size(Some(v), 500, false).is_err(), "{v:?}");
        }
        assert_eq!(page_size(Some("5000"), 1000, true).unwrap(), 1000);
        assert_eq!(page_size(Some("0"), 1000, true).unwrap(), 1);
    }
}
