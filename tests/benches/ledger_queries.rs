//! The dashboard's ledger queries on 1,000,000 stored routing records: seeds a control plane's
//! Postgres database server-side (one `INSERT … SELECT … FROM generate_series`, daily
//! partitions as the control plane names them, rollups summed from the seeded rows), then
//! times each query through the real admin API of the running control plane. Fails when a
//! query's p95 exceeds the target.
//!
//!   cargo build --release --workspace
//!   cargo bench -p llmhub-e2e --bench ledger_queries
//!
//! `RECORDS` (default 1,000,000) and `RUNS` (default 50 per query) change the size;
//! `EXPLAIN=1` also prints the Postgres plans (`EXPLAIN ANALYZE`) of the main queries' SQL;
//! `LLMHUB_BIN_DIR` picks other binaries. The seeded data: 30 days, 50 users, 200 client keys
//! (four per user), 10 public models on 3 providers (each key uses three of them), about 5 %
//! errors, one model without a price.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed benchmark

use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use llmhub_e2e::harness::{Backend, ControlOptions, ControlPlane};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;

const TARGET_P95: Duration = Duration::from_millis(200);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeded models: public name, provider, upstream model, input and output price
/// (nano-USD per token; none for the unpriced one).
const MODELS: &str = "(VALUES
    (0, 'gpt-4o', 'prov-openai', 'gpt-4o', 2500, 10000),
    (1, 'gpt-4o-mini', 'prov-openai', 'gpt-4o-mini', 150, 600),
    (2, 'gpt-4.1', 'prov-openai', 'gpt-4.1', 2000, 8000),
    (3, 'o4-mini', 'prov-openai', 'o4-mini', 1100, 4400),
    (4, 'claude-sonnet-4', 'prov-anthropic', 'claude-sonnet-4-20250514', 3000, 15000),
    (5, 'claude-haiku', 'prov-anthropic', 'claude-3-5-haiku-20241022', 800, 4000),
    (6, 'gemini-2.5-pro', 'prov-gemini', 'gemini-2.5-pro', 1250, 10000),
    (7, 'gemini-2.5-flash', 'prov-gemini', 'gemini-2.5-flash', 300, 2500),
    (8, 'gemini-2.0-flash', 'prov-gemini', 'gemini-2.0-flash', 100, 400),
    (9, 'local-llama', 'prov-openai', 'llama-3.1-70b', NULL, NULL)
) AS m(idx, name, provider, upstream, price_in, price_out)";

/// Seeds `n` records over the last 30 days and their rollups; returns how long it took.
async fn seed(url: &str, n: u64) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let db = sea_orm::Database::connect(url).await?;
    let run = |sql: String| {
        let db = &db;
        async move { db.execute_unprepared(&sql).await.map(|_| ()) }
    };
    // The days' partitions, as the control plane names them (it creates today's and the next
    // two itself; the past ones would have been created on their days).
    let today = Utc::now().date_naive();
    for d in 0..=31 {
        let day = today - Days::days(d);
        let next = day + Days::days(1);
        run(format!(
            "CREATE TABLE IF NOT EXISTS routing_records_p{} PARTITION OF routing_records \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            day.format("%Y%m%d")
        ))
        .await?;
    }
    run("SELECT setseed(0.42)".into()).await?;
    run(format!(
        "INSERT INTO routing_records (request_id, proxy_id, started_at, user_id, \
           client_key_prefix, public_model, status, latency_ms, stream, detail, received_at, \
           prompt_tokens, completion_tokens, cached_tokens, partial, cost_nanos, client_key_id, \
           provider_id, key_fingerprint, upstream_model) \
         SELECT 'seed-' || g, 'proxy-' || (g % 3), t, \
           'user-' || lpad((k % 50)::text, 2, '0'), 'lh-' || lpad(k::text, 4, '0'), m.name, \
           st, 200 + (r_lat * 4000)::int, g % 4 = 0, \
           json_build_object('attempts', json_build_array(json_build_object( \
             'provider_id', m.provider, 'key_fingerprint', m.provider || '-fp' || (g % 4), \
             'upstream_model', m.upstream, 'status', st, 'latency_ms', 200 + (r_lat * 4000)::int, \
             'class', CASE WHEN st = 200 THEN 'ok' WHEN st = 429 THEN 'rate_limited' \
               WHEN st >= 500 THEN 'provider_unavailable' ELSE '' END)), \
             'skipped', json_build_array())::text, \
           t + interval '2 seconds', p, c, ca, st = 499, \
           CASE WHEN m.price_in IS NULL THEN NULL \
             ELSE (p - ca) * m.price_in + ca * m.price_in / 2 + c * m.price_out END, \
           'key-' || lpad(k::text, 3, '0'), m.provider, m.provider || '-fp' || (g % 4), \
           m.upstream \
         FROM ( \
           SELECT g, now() - random() * interval '30 days' AS t, \
             floor(random() * 200)::int AS k, floor(random() * 3)::int AS pick, \
             random() AS r_lat, \
             CASE WHEN random() < 0.05 \
               THEN (ARRAY[429, 500, 502, 400, 499, 503])[1 + floor(random() * 6)::int] \
               ELSE 200 END AS st, \
             (50 + random() * 2000)::bigint AS p, (10 + random() * 500)::bigint AS c, \
             random() < 0.3 AS cached \
           FROM generate_series(1, {n}) g \
         ) x(g, t, k, pick, r_lat, st, p, c, cached) \
         CROSS JOIN LATERAL (SELECT CASE WHEN x.cached THEN x.p / 2 ELSE 0 END AS ca) cc \
         JOIN {MODELS} ON m.idx = (x.k + x.pick) % 10"
    ))
    .await?;
    // The rollups, as storing the records one batch at a time would have summed them.
    run(
        "INSERT INTO usage_daily (day, user_id, client_key_id, public_model, provider_id, \
           requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost_nanos, \
           unknown_cost) \
         SELECT (started_at AT TIME ZONE 'UTC')::date, user_id, client_key_id, public_model, \
           provider_id, count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), \
           sum(completion_tokens), sum(cached_tokens), coalesce(sum(cost_nanos), 0), \
           count(*) FILTER (WHERE cost_nanos IS NULL) \
         FROM routing_records GROUP BY 1, 2, 3, 4, 5"
            .into(),
    )
    .await?;
    // As a table that has been live for a while would be: vacuumed and analysed.
    run("VACUUM ANALYZE routing_records".into()).await?;
    run("VACUUM ANALYZE usage_daily".into()).await?;
    let count = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM routing_records",
        ))
        .await?
        .unwrap()
        .try_get::<i64>("", "n")?;
    anyhow::ensure!(count as u64 == n, "seeded {count} of {n}");
    Ok(t0.elapsed())
}

/// The SQL the control plane runs for the main queries (as its store builds it), explained.
async fn explain(url: &str) -> anyhow::Result<()> {
    let db = sea_orm::Database::connect(url).await?;
    let page = "SELECT * FROM routing_records";
    let order = "ORDER BY started_at DESC, request_id DESC LIMIT 51";
    for sql in [
        format!("{page} {order}"),
        format!(
            "{page} WHERE user_id = 'user-07' AND (started_at, request_id) < \
             (now() - interval '1 day', 'seed-5') {order}"
        ),
        format!("{page} WHERE public_model = 'gpt-4o' AND status >= 400 AND status < 1000 {order}"),
        "SELECT client_key_id, CAST(LEAST(SUM(cost_nanos), 9223372036854775807) AS BIGINT) \
         FROM usage_daily WHERE day >= current_date - 30 AND day <= current_date \
         GROUP BY client_key_id ORDER BY client_key_id"
            .to_owned(),
    ] {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"),
            ))
            .await?;
        println!("\n{sql}");
        for r in rows {
            println!("  {}", r.try_get::<String>("", "QUERY PLAN")?);
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let records = env_num("RECORDS", 1_000_000);
    let runs = env_num("RUNS", 50) as usize;
    let cp = ControlPlane::start_with(
        Backend::Postgres,
        ControlOptions {
            admin_rate_limit_ip: Some(1_000_000),
            admin_rate_limit_user: Some(1_000_000),
            ..ControlOptions::default()
        },
    )
    .await?;
    let took = seed(&cp.db.url, records).await?;
    println!(
        "seeded {records} records and their rollups in {:.1} s",
        took.as_secs_f64()
    );

    if std::env::var_os("EXPLAIN").is_some() {
        explain(&cp.db.url).await?;
    }

    let now = Utc::now();
    let t = |d: i64| (now - Days::days(d)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, first) = cp.api("GET", "/api/v1/records?limit=50", None).await?;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let queries: Vec<(&str, String)> = vec![
        (
            "newest records (admin, no filter)",
            "/api/v1/records?limit=50".into(),
        ),
        (
            "next page (cursor)",
            format!("/api/v1/records?limit=50&cursor={cursor}"),
        ),
        (
            "a user's records",
            "/api/v1/records?limit=50&user_id=user-07".into(),
        ),
        (
            "a client key's records, 7 days",
            format!(
                "/api/v1/records?limit=50&client_key_id=key-042&from={}&to={}",
                t(7),
                t(0)
            ),
        ),
        (
            "a model's errors",
            "/api/v1/records?limit=50&model=gpt-4o&status=error".into(),
        ),
        (
            "a provider key's records (fingerprint)",
            "/api/v1/records?limit=50&key_fingerprint=prov-gemini-fp3".into(),
        ),
        (
            "usage per day, 30 days",
            format!("/api/v1/usage?group_by=day&from={}", t(30)),
        ),
        (
            "usage per model, 30 days",
            format!("/api/v1/usage?group_by=model&from={}", t(30)),
        ),
        (
            "usage per client key, 30 days",
            format!("/api/v1/usage?group_by=client_key&from={}", t(30)),
        ),
        (
            "usage per user, 30 days",
            format!("/api/v1/usage?group_by=user&from={}", t(30)),
        ),
        (
            "a user's usage per day, 30 days",
            format!("/api/v1/usage?group_by=day&user_id=user-07&from={}", t(30)),
        ),
    ];
    println!("| query | rows | p50 | p95 | p99 |");
    println!("|---|---|---|---|---|");
    let mut missed = Vec::new();
    for (name, path) in &queries {
        // One unmeasured run warms the connection pool and the plan cache.
        let (s, v) = cp.api("GET", path, None).await?;
        anyhow::ensure!(s == 200, "{path}: {s} {v}");
        let rows = v["data"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(rows > 0, "{name}: no rows");
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t0 = Instant::now();
            let (s, v): (u16, Value) = cp.api("GET", path, None).await?;
            times.push(t0.elapsed());
            anyhow::ensure!(s == 200, "{path}: {s} {v}");
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p95, p99) = (
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            percentile(&times, 0.99),
        );
        println!(
            "| {name} | {rows} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(p50),
            ms(p95),
            ms(p99)
        );
        if p95 >= TARGET_P95 {
            missed.push(format!("{name}: p95 {p95:?}"));
        }
    }
    anyhow::ensure!(
        missed.is_empty(),
        "over the {TARGET_P95:?} p95 target: {missed:?}"
    );
    Ok(())
}
