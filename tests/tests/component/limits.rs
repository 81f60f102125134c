//! The fleet-wide limiter against a real Redis: several limiters stand in for several proxies
//! sharing one Redis (each test under its own key prefix), and a private `redis-server` is
//! stopped and started again to show the fallback and the recovery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use llmhub_e2e::harness::{PrivateRedis, free_port, redis_url};
use llmhub_proxy::limits::{
    Amounts, Check, Decision, Demand, Dim, KeyLimits, Limiter, Period, Scope, Shared,
};

fn prefix() -> String {
    format!("llmhub-test:{}:", uuid::Uuid::new_v4().simple())
}

fn fleet(n: usize, url: &str, prefix: &str) -> Vec<Arc<Limiter>> {
    (0..n)
        .map(|_| {
            let shared = Shared::connect(url, prefix, Duration::from_millis(500)).unwrap();
            let l = Limiter::shared(shared, Duration::from_millis(500));
            l.set_live_proxies(n as u32);
            Arc::new(l)
        })
        .collect()
}

fn client(dim: Dim, limit: u64) -> Check {
    Check {
        scope: Scope::ClientKey,
        id: "ck1".into(),
        dim,
        limit,
        period: None,
    }
}

fn demand(tokens: u64, checks: Vec<Check>) -> Demand {
    Demand {
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        tokens,
        cost_nanos: 0,
        checks,
        keys: Vec::new(),
    }
}

/// Offers `demands` spread round-robin over the fleet, all at once; returns the admitted
/// demands' token sizes (tickets dropped at once, so nothing is released that matters to
/// per-minute limits).
async fn offer(fleet: &[Arc<Limiter>], demands: Vec<Demand>) -> Vec<u64> {
    let mut tasks = Vec::new();
    for (i, d) in demands.into_iter().enumerate() {
        let l = fleet[i % fleet.len()].clone();
        tasks.push(tokio::spawn(async move {
            match l.admit(&d, SystemTime::now()).await {
                Decision::Admit(t) => {
                    assert_eq!(t.counted, llmhub_proxy::limits::Counted::Shared);
                    Some(d.tokens)
                }
                Decision::Refuse(_) => None,
            }
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        if let Some(n) = t.await.unwrap() {
            admitted.push(n);
        }
    }
    admitted
}

#[tokio::test]
async fn three_proxies_share_one_request_limit() {
    let fleet = fleet(3, &redis_url(), &prefix());
    // Twice the limit offered at once through three proxies: exactly the limit gets through,
    // not three times it.
    let demands = (0..40)
        .map(|_| demand(1, vec![client(Dim::Requests, 20)]))
        .collect();
    let admitted = offer(&fleet, demands).await;
    assert_eq!(admitted.len(), 20);
    let refused: u64 = fleet
        .iter()
        .map(|l| l.counters.refused.load(Ordering::Relaxed))
        .sum();
    assert_eq!(refused, 20);
    // The refusal says which limit and when to come back.
    match fleet[0]
        .admit(
            &demand(1, vec![client(Dim::Requests, 20)]),
            SystemTime::now(),
        )
        .await
    {
        Decision::Refuse(r) => {
            assert_eq!(
                (r.scope, r.dim, r.limit),
                (Scope::ClientKey, Dim::Requests, 20)
            );
            assert!(
                r.retry_after > Duration::from_secs(50) && r.retry_after <= Duration::from_secs(60),
                "{:?}",
                r.retry_after
            );
        }
        Decision::Admit(_) => panic!("21st request in the minute admitted"),
    }
}

#[tokio::test]
async fn token_limit_holds_for_mixed_sizes_and_settles_with_real_usage() {
    let fleet = fleet(3, &redis_url(), &prefix());
    let sizes = [40u64, 310, 75, 120, 500, 90, 260, 33, 410, 150, 60, 220];
    let demands = sizes
        .iter()
        .cycle()
        .take(48)
        .map(|n| demand(*n, vec![client(Dim::Tokens, 2000)]))
        .collect();
    let admitted = offer(&fleet, demands).await;
    let total: u64 = admitted.iter().sum();
    assert!(total <= 2000, "admitted {total} tokens against 2000");
    assert!(total > 1400, "the limit was not used: {total}");

    // A reservation settled with less real usage frees the difference for everyone.
    let fleet = self::fleet(2, &redis_url(), &prefix());
    let big = demand(1500, vec![client(Dim::Tokens, 2000)]);
    let Decision::Admit(mut t) = fleet[0].admit(&big, SystemTime::now()).await else {
        panic!("an empty window refused")
    };
    let next = || demand(1000, vec![client(Dim::Tokens, 2000)]);
    assert!(matches!(
        fleet[1].admit(&next(), SystemTime::now()).await,
        Decision::Refuse(_)
    ));
    t.settle(Amounts {
        tokens: 200,
        cost_nanos: 0,
    });
    drop(t);
    // Settlement runs in the background: wait for it.
    let mut ok = false;
    for _ in 0..50 {
        if let Decision::Admit(_) = fleet[1].admit(&next(), SystemTime::now()).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the settled reservation was never corrected");
}

#[tokio::test]
async fn concurrency_limit_holds_across_proxies_and_frees_on_end() {
    let fleet = fleet(3, &redis_url(), &prefix());
    let cc = || demand(1, vec![client(Dim::Concurrent, 3)]);
    let mut held = Vec::new();
    for i in 0..6 {
        if let Decision::Admit(t) = fleet[i % 3].admit(&cc(), SystemTime::now()).await {
            held.push(t);
        }
    }
    assert_eq!(held.len(), 3);
    held.pop();
    let mut ok = false;
    for _ in 0..50 {
        if let Decision::Admit(t) = fleet[1].admit(&cc(), SystemTime::now()).await {
            held.push(t);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "an ended request's slot was never released");
    assert!(matches!(
        fleet[2].admit(&cc(), SystemTime::now()).await,
        Decision::Refuse(_)
    ));
}

#[tokio::test]
async fn provider_key_limits_pick_the_first_key_with_room() {
    let fleet = fleet(2, &redis_url(), &prefix());
    let keys = || {
        vec![
            KeyLimits {
                id: "k1".into(),
                rpm: 2,
                tpm: 0,
            },
            KeyLimits {
                id: "k2".into(),
                rpm: 1,
                tpm: 0,
            },
        ]
    };
    let mut chosen = Vec::new();
    for i in 0..4 {
        let d = Demand {
            keys: keys(),
            ..demand(1, Vec::new())
        };
        match fleet[i % 2].admit(&d, SystemTime::now()).await {
            Decision::Admit(t) => chosen.push(t.key),
            Decision::Refuse(r) => {
                assert_eq!(r.scope, Scope::ProviderKey);
                chosen.push(None);
            }
        }
    }
    assert_eq!(chosen, [Some(0), Some(0), Some(1), None]);
}

#[tokio::test]
async fn redis_outage_falls_back_to_the_local_share_then_resumes() {
    let mut redis = PrivateRedis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = fleet(2, &url, &prefix());
    let l = &fleet[0];
    let rpm = |n| demand(1, vec![client(Dim::Requests, n)]);
    assert!(matches!(
        l.admit(&rpm(100), SystemTime::now()).await,
        Decision::Admit(t) if t.counted == llmhub_proxy::limits::Counted::Shared
    ));

    redis.stop();
    // Every decision is still taken, quickly, on this proxy's half of the limit; none fails.
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for _ in 0..10 {
        match l.admit(&rpm(8), SystemTime::now()).await {
            Decision::Admit(t) => {
                assert_eq!(t.counted, llmhub_proxy::limits::Counted::Local);
                admitted += 1;
            }
            Decision::Refuse(r) => assert_eq!(r.limit, 4, "the local share of 8 over 2 proxies"),
        }
    }
    assert_eq!(admitted, 4);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an outage must not cost every request the time budget: {:?}",
        started.elapsed()
    );
    assert_eq!(l.counters.degraded.load(Ordering::Relaxed), 10);
    assert!(l.counters.shared_errors.load(Ordering::Relaxed) >= 1);

    // Redis back: after the retry pause, counting is shared again.
    let _redis = PrivateRedis::start(redis.port);
    let mut shared = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Decision::Admit(t) = l.admit(&rpm(100), SystemTime::now()).await
            && t.counted == llmhub_proxy::limits::Counted::Shared
        {
            shared = true;
            break;
        }
    }
    assert!(shared, "shared counting never resumed");
}

/// Through the proxy's request path (counting in process): a provider key's fleet-wide RPM
/// sends the overflow to the next key, and when every key is full the client gets a 429 in its
/// dialect saying which limit and when to come back.
#[tokio::test]
async fn provider_key_rpm_through_the_request_path() {
    use super::rig::{P, R, Rig};
    use llmhub_proto::v1 as pb;
    let mut rig = Rig::start(super::breaker()).await;
    let mut snap = rig.build(
        1,
        &[P {
            id: "p",
            kind: pb::ProviderKind::OpenaiCompatible,
        }],
        &[("k1", "p", "sk-good-1"), ("k2", "p", "sk-good-2")],
        &[R {
            model: "gpt",
            targets: vec![("p", "mock-ok", 0)],
        }],
    );
    snap.provider_keys[0].rpm_limit = 2;
    snap.provider_keys[1].rpm_limit = 1;
    rig.send_snapshot(snap);
    let mut served = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = rig.chat("gpt").await;
        assert_eq!(status, 200, "{body}");
        let rec = rig.record().await;
        served.push(rec.attempts[0].key_fingerprint.clone());
    }
    served.sort();
    assert_eq!(served, ["fp_k1", "fp_k1", "fp_k2"]);
    let (status, headers, body) = rig.chat("gpt").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(headers["x-ratelimit-scope"], "provider_key");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let rec = rig.record().await;
    assert_eq!(rec.status, 429);
    assert!(
        rec.attempts.is_empty(),
        "refused before any upstream request"
    );
    assert_eq!(rig.upstream_count(), 3);
    // A minute later the window has slid past them.
    rig.advance(Duration::from_secs(61));
    assert_eq!(rig.chat("gpt").await.0, 200);
}

fn budget(limit: u64, seed: u64, start_ms: u64) -> Check {
    Check {
        scope: Scope::User,
        id: "u1".into(),
        dim: Dim::Budget,
        limit,
        period: Some(Period {
            start_ms,
            end_ms: Some(llmhub_proxy::clock::millis(SystemTime::now()) + 3_600_000),
            seed,
        }),
    }
}

/// 50 concurrent requests over three proxies against a budget that covers 10 of them: each
/// reserves its estimated cost (here an upper bound, as when a request caps its output), so no
/// more than 10 get through and the spend never passes the budget; settling to the real (lower)
/// cost lets later requests use what the estimates held back.
#[tokio::test]
async fn concurrent_requests_cannot_overrun_a_budget() {
    let fleet = fleet(3, &redis_url(), &prefix());
    let start = 1_000;
    let spend = |cost: u64| Demand {
        cost_nanos: cost,
        ..demand(1, vec![budget(10_000, 0, start)])
    };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let l = fleet[i % 3].clone();
        let d = spend(1_000);
        tasks.push(tokio::spawn(async move {
            match l.admit(&d, SystemTime::now()).await {
                Decision::Admit(t) => Some(t),
                Decision::Refuse(r) => {
                    assert_eq!((r.scope, r.dim), (Scope::User, Dim::Budget));
                    assert!(
                        r.retry_after > Duration::from_secs(3500),
                        "until the period ends"
                    );
                    None
                }
            }
        }));
    }
    let mut tickets = Vec::new();
    for t in tasks {
        tickets.extend(t.await.unwrap());
    }
    assert_eq!(
        tickets.len(),
        10,
        "a budget of 10 requests admitted {}",
        tickets.len()
    );
    // They really cost 600 each: 4000 of the budget comes back.
    for mut t in tickets {
        t.settle(Amounts {
            tokens: 1,
            cost_nanos: 600,
        });
    }
    let mut later = 0;
    for _ in 0..100 {
        match fleet[0].admit(&spend(1_000), SystemTime::now()).await {
            Decision::Admit(mut t) => {
                t.settle(Amounts {
                    tokens: 1,
                    cost_nanos: 1_000,
                });
                later += 1;
            }
            Decision::Refuse(_) if later >= 4 => break,
            Decision::Refuse(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(later, 4, "6000 spent, 4000 left, 1000 each");
    // The ledger's own figure seeds a counter Redis does not have (a new period, or Redis
    // restarted): 9500 already spent leaves room for nothing of 1000.
    let fresh = Demand {
        cost_nanos: 1_000,
        ..demand(1, vec![budget(10_000, 9_500, start + 1)])
    };
    assert!(matches!(
        fleet[1].admit(&fresh, SystemTime::now()).await,
        Decision::Refuse(_)
    ));
}
