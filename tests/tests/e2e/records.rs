//! The ledger's query API end to end: `GET /api/v1/records` filters by time, user, client key,
//! model, provider, status and key fingerprint and pages with an opaque cursor; a user sees only
//! their own records and usage; `GET /api/v1/usage` sums match the requests made, per model,
//! day, client key, user and provider; bad queries get 400. And the budget seed: a budget set
//! on a key that already spent this period starts from what the ledger holds, on a proxy whose
//! shared counter is new.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, Proxy, ProxyOptions, redis_url};
use llmhub_e2e::mock::{CHAT_USAGE, MockProvider};
use serde_json::{Value, json};

on_both_backends!(
    records_filter_page_and_stay_with_their_owner,
    usage_adds_up_per_model_day_key_user_and_provider,
    bad_record_and_usage_queries_are_400,
    a_budget_starts_from_what_the_ledger_holds
);

const STRONG: &str = "violet-otter-jumps-42-quietly";

/// Two providers behind three routes, an admin with two client keys and a user (alice) with
/// one, and requests already made and stored: `m1` (gpt-4o on `one`) three times with the
/// admin's first key and twice with alice's, `m2` (gpt-4o-mini on `two`) twice with the admin's
/// second key, and `bad` once (the provider answers 400).
struct Ledger {
    _mock: MockProvider,
    cp: ControlPlane,
    _proxy: Proxy,
    alice: String,
    alice_id: String,
    admin_id: String,
    one: String,
    two: String,
    two_fingerprint: String,
    admin_keys: [String; 2],
    alice_key: String,
    /// Every record, newest first, as the admin lists them.
    all: Vec<Value>,
}

async fn client_key(cp: &ControlPlane, token: Option<&str>, name: &str) -> (String, String) {
    let body = Some(json!({"name": name}));
    let (s, v) = match token {
        Some(t) => {
            let (s, _, v) = cp
                .call("POST", "/api/v1/client-keys", Some(t), body)
                .await
                .unwrap();
            (s, v)
        }
        None => cp.api("POST", "/api/v1/client-keys", body).await.unwrap(),
    };
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn chat(proxy: &Proxy, key: &str, model: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `GET path` as the admin (no token) or with `token`: status and body.
async fn get(cp: &ControlPlane, token: Option<&str>, path: &str) -> (u16, Value) {
    match token {
        None => cp.api("GET", path, None).await.unwrap(),
        Some(t) => {
            let (s, _, v) = cp.call("GET", path, Some(t), None).await.unwrap();
            (s, v)
        }
    }
}

/// The records a query lists (one page of up to 500).
async fn listed(cp: &ControlPlane, token: Option<&str>, query: &str) -> Vec<Value> {
    let (s, v) = get(cp, token, &format!("/api/v1/records?limit=500&{query}")).await;
    assert_eq!(s, 200, "{query}: {v}");
    v["data"].as_array().unwrap().clone()
}

fn request_ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A time for a query string (`+` would arrive as a space).
fn q_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ledger {
    async fn start(backend: Backend) -> anyhow::Result<Ledger> {
        let mock = MockProvider::start().await?;
        let cp = ControlPlane::start(backend).await?;
        let one = cp
            .add_provider("one", "openai-compatible", &mock.base_url())
            .await?;
        let two = cp
            .add_provider("two", "openai-compatible", &mock.base_url())
            .await?;
        cp.add_shared_key(&one, "sk-one-0123456789abcdef").await?;
        let two_key = cp.add_shared_key(&two, "sk-two-0123456789abcdef").await?;
        cp.add_route("m1", &one, "gpt-4o").await?;
        cp.add_route("m2", &two, "gpt-4o-mini").await?;
        cp.add_route("bad", &one, "mock-400").await?;
        let alice_id = cp.create_user("alice", STRONG, "user").await?;
        let alice = cp.login_tokens("alice", STRONG).await?["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, me) = cp.api("GET", "/api/v1/me", None).await?;
        let admin_id = me["id"].as_str().unwrap().to_owned();
        let (a1, a1_key) = client_key(&cp, None, "admin-1").await;
        let (a2, a2_key) = client_key(&cp, None, "admin-2").await;
        let (b, b_key) = client_key(&cp, Some(&alice), "alice").await;
        let proxy = cp.ready_proxy("proxy-1").await?;
        for (key, model, n, status) in [
            (&a1_key, "m1", 3, 200),
            (&b_key, "m1", 2, 200),
            (&a2_key, "m2", 2, 200),
            (&a1_key, "bad", 1, 400),
        ] {
            for _ in 0..n {
                assert_eq!(chat(&proxy, key, model).await, status, "{model}");
            }
        }
        // Every record stored (the Report stream is asynchronous).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let all = loop {
            let all = listed(&cp, None, "").await;
            if all.len() >= 8 {
                break all;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "stored {} of 8",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(all.len(), 8);
        Ok(Ledger {
            _mock: mock,
            cp,
            _proxy: proxy,
            alice,
            alice_id,
            admin_id,
            one,
            two,
            two_fingerprint: two_key["fingerprint"].as_str().unwrap().to_owned(),
            admin_keys: [a1, a2],
            alice_key: b,
            all,
        })
    }

    /// The ids of all records matching `pred`, newest first.
    fn expect(&self, pred: impl Fn(&Value) -> bool) -> Vec<String> {
        let rows: Vec<Value> = self.all.iter().filter(|r| pred(r)).cloned().collect();
        request_ids(&rows)
    }
}

async fn records_filter_page_and_stay_with_their_owner(backend: Backend) -> anyhow::Result<()> {
    let l = Ledger::start(backend).await?;
    let cp = &l.cp;
    // Newest first, each with its serving attempt, usage and cost.
    for w in l.all.windows(2) {
        let key = |r: &Value| {
            (
                r["started_at"]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap(),
                r["request_id"].as_str().unwrap().to_owned(),
            )
        };
        assert!(key(&w[0]) > key(&w[1]), "newest first");
    }
    let m2 = l.all.iter().find(|r| r["public_model"] == "m2").unwrap();
    assert_eq!(m2["provider_id"], l.two.as_str());
    assert_eq!(m2["key_fingerprint"], l.two_fingerprint.as_str());
    assert_eq!(m2["upstream_model"], "gpt-4o-mini");
    assert_eq!(
        m2["detail"]["attempts"][0]["key_fingerprint"],
        l.two_fingerprint.as_str()
    );
    assert!(m2["detail"]["skipped"].is_array());
    assert_eq!(m2["prompt_tokens"], CHAT_USAGE.prompt);
    assert!(m2["cost_nanos"].as_u64().unwrap() > 0);
    assert_eq!(m2["partial"], false);

    // Each filter, alone and together, lists exactly the records it names.
    let cases: Vec<(String, Vec<String>)> = vec![
        ("model=m2".into(), l.expect(|r| r["public_model"] == "m2")),
        (
            format!("provider_id={}", l.one),
            l.expect(|r| r["provider_id"] == l.one.as_str()),
        ),
        (
            format!("key_fingerprint={}", l.two_fingerprint),
            l.expect(|r| r["public_model"] == "m2"),
        ),
        (
            format!("client_key_id={}", l.admin_keys[0]),
            l.expect(|r| r["client_key_id"] == l.admin_keys[0].as_str()),
        ),
        (
            format!("user_id={}", l.alice_id),
            l.expect(|r| r["user_id"] == l.alice_id.as_str()),
        ),
        ("status=error".into(), l.expect(|r| r["status"] == 400)),
        ("status=4xx".into(), l.expect(|r| r["status"] == 400)),
        ("status=400".into(), l.expect(|r| r["status"] == 400)),
        ("status=2xx".into(), l.expect(|r| r["status"] == 200)),
        ("status=5xx".into(), vec![]),
        (
            "model=m1&status=2xx".into(),
            l.expect(|r| r["public_model"] == "m1"),
        ),
        (
            format!("model=m1&client_key_id={}", l.alice_key),
            l.expect(|r| r["client_key_id"] == l.alice_key.as_str()),
        ),
    ];
    for (query, want) in &cases {
        assert!(!want.is_empty() || query.contains("5xx"), "{query}");
        assert_eq!(
            &request_ids(&listed(cp, None, query).await),
            want,
            "{query}"
        );
    }
    assert_eq!(l.expect(|r| r["status"] == 400).len(), 1);
    assert_eq!(l.expect(|r| r["public_model"] == "m2").len(), 2);
    // A time range: from included, to excluded.
    let times: Vec<chrono::DateTime<chrono::Utc>> = l
        .all
        .iter()
        .map(|r| r["started_at"].as_str().unwrap().parse().unwrap())
        .collect();
    let (newest, oldest) = (times[0], times[times.len() - 1]);
    let q = format!(
        "from={}&to={}",
        q_time(oldest - chrono::Duration::seconds(1)),
        q_time(newest + chrono::Duration::seconds(1))
    );
    assert_eq!(listed(cp, None, &q).await.len(), 8);
    let q = format!("from={}", q_time(newest + chrono::Duration::seconds(1)));
    assert!(listed(cp, None, &q).await.is_empty());
    let q = format!("to={}", q_time(oldest - chrono::Duration::seconds(1)));
    assert!(listed(cp, None, &q).await.is_empty());
    // `+` written into a query string unencoded still reads as an offset.
    let q = format!(
        "from={}",
        (oldest - chrono::Duration::seconds(1))
            .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
            .to_rfc3339()
    );
    assert_eq!(listed(cp, None, &q).await.len(), 8);

    // Pages of 3: a cursor continues each page where the last ended, the last page has none.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/records?limit=3&cursor={c}"),
            None => "/api/v1/records?limit=3".into(),
        };
        let (s, v) = get(cp, None, &path).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        seen.extend(request_ids(v["data"].as_array().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, request_ids(&l.all), "no gap, no repeat");
    // The older name lists the same.
    let (s, v) = get(cp, None, "/api/v1/routing-records?limit=1000").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        request_ids(v["data"].as_array().unwrap()),
        request_ids(&l.all)
    );

    // A user sees only their own records; asking for someone else's is "not found".
    let mine = listed(cp, Some(&l.alice), "").await;
    assert_eq!(
        request_ids(&mine),
        l.expect(|r| r["user_id"] == l.alice_id.as_str())
    );
    assert_eq!(mine.len(), 2);
    let q = format!("user_id={}", l.alice_id);
    assert_eq!(listed(cp, Some(&l.alice), &q).await.len(), 2);
    let (s, v) = get(
        cp,
        Some(&l.alice),
        &format!("/api/v1/records?user_id={}", l.admin_id),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let q = format!("client_key_id={}", l.admin_keys[0]);
    assert!(listed(cp, Some(&l.alice), &q).await.is_empty());
    assert!(listed(cp, Some(&l.alice), "model=m2").await.is_empty());
    let (s, v) = get(cp, Some(&l.alice), "/api/v1/routing-records").await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 2));
    Ok(())
}

/// The sums of the records' fields, per value of `by`.
fn sums_by(rows: &[Value], by: impl Fn(&Value) -> String) -> HashMap<String, [u64; 6]> {
    let mut out: HashMap<String, [u64; 6]> = HashMap::new();
    for r in rows {
        let e = out.entry(by(r)).or_default();
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        e[0] += 1;
        e[1] += u64::from(r["status"].as_u64().unwrap() >= 400);
        e[2] += n("prompt_tokens");
        e[3] += n("completion_tokens");
        e[4] += n("cached_tokens");
        e[5] += n("cost_nanos");
    }
    out
}

fn usage_rows(v: &Value) -> HashMap<String, [u64; 6]> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["key"].as_str().unwrap().to_owned(),
                [
                    n("requests"),
                    n("errors"),
                    n("prompt_tokens"),
                    n("completion_tokens"),
                    n("cached_tokens"),
                    n("cost_nanos"),
                ],
            )
        })
        .collect()
}

async fn usage_adds_up_per_model_day_key_user_and_provider(backend: Backend) -> anyhow::Result<()> {
    let l = Ledger::start(backend).await?;
    let cp = &l.cp;
    async fn usage(cp: &ControlPlane, token: Option<&str>, query: &str) -> Value {
        let path = format!("/api/v1/usage?{query}");
        let (s, v) = get(cp, token, &path).await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }
    // Per model, as the requests made: m1 five chats, m2 two, `bad` one refused by the provider
    // (no usage); tokens as the mock reports them, cost as the records carry it.
    let per_model = usage_rows(&usage(cp, None, "group_by=model").await);
    let c = CHAT_USAGE;
    assert_eq!(
        per_model["m1"][..5],
        [5, 0, 5 * c.prompt, 5 * c.completion, 5 * c.cached]
    );
    assert_eq!(
        per_model["m2"][..5],
        [2, 0, 2 * c.prompt, 2 * c.completion, 2 * c.cached]
    );
    assert_eq!(per_model["bad"][..2], [1, 1]);
    let cost_of = |model: &str| {
        l.all
            .iter()
            .filter(|r| r["public_model"] == model)
            .map(|r| r["cost_nanos"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let m1 = cost_of("m1");
    assert!(m1.iter().all(|c| *c == m1[0] && *c > 0), "{m1:?}");
    assert_eq!(per_model["m1"][5], 5 * m1[0]);
    assert_eq!(per_model["m2"][5], cost_of("m2").iter().sum::<u64>());
    assert!(
        per_model["m2"][5] < per_model["m1"][5] * 2 / 5,
        "gpt-4o-mini is cheaper"
    );

    // Every grouping agrees with the records themselves.
    let field = |k: &'static str| move |r: &Value| r[k].as_str().unwrap().to_owned();
    for (group, by) in [
        (
            "model",
            Box::new(field("public_model")) as Box<dyn Fn(&Value) -> String>,
        ),
        ("client_key", Box::new(field("client_key_id"))),
        ("user", Box::new(field("user_id"))),
        ("provider", Box::new(field("provider_id"))),
        (
            "day",
            Box::new(|r: &Value| r["started_at"].as_str().unwrap()[..10].to_owned()),
        ),
    ] {
        let got = usage_rows(&usage(cp, None, &format!("group_by={group}")).await);
        assert_eq!(got, sums_by(&l.all, by), "group_by={group}");
    }
    let v = usage(cp, None, "").await;
    assert_eq!(v["group_by"], "day", "by day unless asked");
    assert_eq!(v["data"][0]["unknown_cost_requests"], 0);
    // Filters narrow the sums; a range that ends before the requests has none.
    let two = usage_rows(&usage(cp, None, &format!("group_by=model&provider_id={}", l.two)).await);
    assert_eq!(two.keys().collect::<Vec<_>>(), ["m2"]);
    let key = usage_rows(
        &usage(
            cp,
            None,
            &format!(
                "group_by=client_key&client_key_id={}&model=m1",
                l.admin_keys[0]
            ),
        )
        .await,
    );
    assert_eq!(key[&l.admin_keys[0]][0], 3);
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let long_ago = format!(
        "from={}T00:00:00Z&to={}T00:00:00Z",
        yesterday - chrono::Duration::days(30),
        yesterday - chrono::Duration::days(1)
    );
    assert!(
        usage(cp, None, &long_ago).await["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A user's usage is their own.
    let alice = usage_rows(&usage(cp, Some(&l.alice), "group_by=model").await);
    assert_eq!(alice.keys().collect::<Vec<_>>(), ["m1"]);
    assert_eq!(alice["m1"][0], 2);
    let alice = usage_rows(&usage(cp, Some(&l.alice), "group_by=client_key").await);
    assert_eq!(alice.keys().collect::<Vec<_>>(), [&l.alice_key]);
    let (s, v) = get(
        cp,
        Some(&l.alice),
        &format!("/api/v1/usage?user_id={}", l.admin_id),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    Ok(())
}

async fn bad_record_and_usage_queries_are_400(backend: Backend) -> anyhow::Result<()> {
    let cp = ControlPlane::start(backend).await?;
    for query in [
        "/api/v1/records?from=yesterday",
        "/api/v1/records?to=2025-03-05",
        "/api/v1/records?from=2025-03-06T00:00:00Z&to=2025-03-05T00:00:00Z",
        "/api/v1/records?limit=0",
        "/api/v1/records?limit=501",
        "/api/v1/records?limit=ten",
        "/api/v1/records?cursor=not-a-cursor",
        "/api/v1/records?cursor=bm90IGEgY3Vyc29y",
        "/api/v1/records?status=7xx",
        "/api/v1/records?status=teapot",
        "/api/v1/records?model=",
        "/api/v1/records?colour=red",
        "/api/v1/usage?group_by=week",
        "/api/v1/usage?from=2025-03-05T00:00:00",
        "/api/v1/usage?from=2025-03-06T00:00:00Z&to=2025-03-06T00:00:00Z",
        "/api/v1/usage?limit=10",
    ] {
        let (s, v) = cp.api("GET", query, None).await?;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{query}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    for query in [
        "/api/v1/records?limit=500",
        "/api/v1/usage?group_by=provider",
    ] {
        assert_eq!(cp.api("GET", query, None).await?.0, 200, "{query}");
    }
    Ok(())
}

/// A key that spent before it had a budget: the budget set now counts that spend (the ledger's
/// figure reaches the proxies in the snapshot), so a proxy whose shared counter is new — a Redis
/// prefix no proxy used — admits only what is left.
async fn a_budget_starts_from_what_the_ledger_holds(backend: Backend) -> anyhow::Result<()> {
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(backend).await?;
    let pid = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    cp.add_shared_key(&pid, &format!("sk-good-{}", uuid::Uuid::new_v4().simple()))
        .await?;
    cp.add_route("m", &pid, "mock-ok").await?;
    let (s, v) = cp
        .api(
            "PUT",
            "/api/v1/prices/m",
            Some(json!({"input_nanos_per_token": 1000, "output_nanos_per_token": 4000})),
        )
        .await?;
    anyhow::ensure!(s == 200, "price: {s} {v}");
    let (key_id, key) = client_key(&cp, None, "spender").await;
    let prefix = || {
        Some((
            redis_url(),
            format!("llmhub-e2e-{}:", uuid::Uuid::new_v4().simple()),
        ))
    };
    let first = cp
        .ready_proxy_with(
            "proxy-1",
            &ProxyOptions {
                redis: prefix(),
                ..ProxyOptions::default()
            },
        )
        .await?;
    let http = reqwest::Client::new();
    let send = |proxy: &Proxy| {
        http.post(format!("{}/v1/chat/completions", proxy.url))
            .bearer_auth(&key)
            .json(&json!({"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    const SPENT_BEFORE: usize = 6;
    for _ in 0..SPENT_BEFORE {
        assert_eq!(send(&first).await?.status(), 200);
    }
    // What those requests cost, once stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let costs: Vec<u64> = loop {
        let rows = listed(&cp, None, &format!("client_key_id={key_id}")).await;
        if rows.len() == SPENT_BEFORE {
            break rows
                .iter()
                .map(|r| r["cost_nanos"].as_u64().unwrap())
                .collect();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "records: {}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cost = costs[0];
    assert!(cost > 0 && costs.iter().all(|c| *c == cost), "{costs:?}");
    drop(first);

    // A daily budget of 12 such requests, 6 of them already spent today.
    let budget_nanos = 12 * cost;
    let (s, v) = cp
        .api(
            "PATCH",
            &format!("/api/v1/client-keys/{key_id}"),
            Some(json!({"budget": {"usd": budget_nanos as f64 / 1e9, "period": "daily"}})),
        )
        .await?;
    anyhow::ensure!(s == 200, "budget: {s} {v}");
    let second = cp
        .ready_proxy_with(
            "proxy-2",
            &ProxyOptions {
                redis: prefix(),
                ..ProxyOptions::default()
            },
        )
        .await?;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(send(&second).await?.status().as_u16());
        // Let the settlement of each request's real cost reach Redis before the next.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    // Without the ledger's figure the new counter would start at zero and admit about 11 (each
    // reservation is the request's estimated cost, a little under two real ones).
    assert!(
        (1..=12 - SPENT_BEFORE).contains(&admitted),
        "{admitted} admitted of a budget of 12 with {SPENT_BEFORE} spent: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let refused: BTreeSet<u16> = statuses.iter().copied().filter(|s| *s != 200).collect();
    assert_eq!(refused.into_iter().collect::<Vec<_>>(), [429]);
    Ok(())
}
