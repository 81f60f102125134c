//! Counters for login-abuse protection and admin API rate limits.
//!
//! In production the counters live in Redis so every control-plane replica sees the same failures
//! and budgets; the embedded mode keeps them in process. When Redis cannot be reached every check
//! fails closed ([`LimitError::Unavailable`] → 503): an outage must not switch protection off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate-limit store unavailable")]
    Unavailable,
}

impl From<redis::RedisError> for LimitError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "redis error; failing closed");
        LimitError::Unavailable
    }
}

type R<T> = Result<T, LimitError>;

/// Fixed-window counter increment with expiry on first use, atomically.
const INCR_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n";

/// Sliding-log admission, atomically: drop entries older than the window, admit (and log) the
/// request if fewer than the limit remain, else return how long until the oldest leaves. Time is
/// the Redis server's, so replicas with skewed clocks agree. Returns 0 when admitted, else the
/// wait in milliseconds.
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
return wait";

enum Backend {
    Redis {
        conn: ConnectionManager,
        prefix: String,
        incr: redis::Script,
        admit: redis::Script,
    },
    Memory(Mutex<Mem>),
}

#[derive(Default)]
struct Mem {
    values: HashMap<String, (u64, Instant)>,
    sets: HashMap<String, (std::collections::BTreeSet<String>, Instant)>,
    /// Admission times of the sliding windows (at most `limit` each), and when they expire.
    logs: HashMap<String, (std::collections::VecDeque<Instant>, Instant)>,
}

/// Key-value counters with expiry: Redis, or an in-process map for a single replica.
pub struct Counters {
    backend: Backend,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Counters {
    pub fn memory() -> Self {
        Counters {
            backend: Backend::Memory(Mutex::new(Mem::default())),
        }
    }

    /// Connects lazily: the control plane starts even while Redis is down (and fails closed).
    pub fn redis(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Counters {
            backend: Backend::Redis {
                conn,
                prefix: prefix.to_owned(),
                incr: redis::Script::new(INCR_SCRIPT),
                admit: redis::Script::new(ADMIT_SCRIPT),
            },
        })
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    fn with_map<T>(map: &Mutex<Mem>, f: impl FnOnce(&mut Mem) -> T) -> T {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if m.values.len() + m.sets.len() + m.logs.len() > 100_000 {
            m.values.retain(|_, (_, exp)| *exp > now);
            m.sets.retain(|_, (_, exp)| *exp > now);
            m.logs.retain(|_, (_, exp)| *exp > now);
        }
        f(&mut m)
    }

    /// Adds one and returns the new count; the key expires `ttl` after its first increment.
    pub async fn incr(&self, key: &str, ttl: Duration) -> R<u64> {
        match &self.backend {
            Backend::Redis {
                conn, prefix, incr, ..
            } => {
                let mut c = conn.clone();
                Ok(incr
                    .key(format!("{prefix}{key}"))
                    .arg(ms(ttl))
                    .invoke_async(&mut c)
                    .await?)
            }
            Backend::Memory(map) => Ok(Self::with_map(map, |m| {
                let now = Instant::now();
                let e = m.values.entry(key.to_owned()).or_insert((0, now + ttl));
                if e.1 <= now {
                    *e = (0, now + ttl);
                }
                e.0 += 1;
                e.0
            })),
        }
    }

    /// Sliding-window admission: `None` (and the request is counted) when fewer than `limit`
    /// requests were admitted in the last `window`, else how long until one leaves the window.
    /// Refused requests are not counted.
    pub async fn admit(&self, key: &str, window: Duration, limit: u64) -> R<Option<Duration>> {
        match &self.backend {
            Backend::Redis {
                conn,
                prefix,
                admit,
                ..
            } => {
                let mut c = conn.clone();
                let wait: u64 = admit
                    .key(format!("{prefix}{key}"))
                    .arg(ms(window))
                    .arg(limit)
                    .arg(uuid::Uuid::new_v4().simple().to_string())
                    .invoke_async(&mut c)
                    .await?;
                Ok((wait > 0).then(|| Duration::from_millis(wait)))
            }
            Backend::Memory(map) => Ok(Self::with_map(map, |m| {
                let now = Instant::now();
                let (log, exp) = m
                    .logs
                    .entry(key.to_owned())
                    .or_insert_with(|| (Default::default(), now + window));
                while log
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    log.pop_front();
                }
                if (log.len() as u64) < limit {
                    log.push_back(now);
                    *exp = now + window;
                    None
                } else {
                    let oldest = log.front().copied().unwrap_or(now);
                    Some(
                        (oldest + window)
                            .saturating_duration_since(now)
                            .max(Duration::from_millis(1)),
                    )
                }
            })),
        }
    }

    /// Stores `value` for `ttl`.
    pub async fn set(&self, key: &str, value: u64, ttl: Duration) -> R<()> {
        match &self.backend {
            Backend::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let _: () = redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg(value)
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
            Backend::Memory(map) => {
                Self::with_map(map, |m| {
                    m.values
                        .insert(key.to_owned(), (value, Instant::now() + ttl))
                });
                Ok(())
            }
        }
    }

    /// The value and remaining lifetime of a live key.
    pub async fn get(&self, key: &str) -> R<Option<(u64, Duration)>> {
        match &self.backend {
            Backend::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let k = format!("{prefix}{key}");
                let (v, pttl): (Option<u64>, i64) = redis::pipe()
                    .atomic()
                    .get(&k)
                    .pttl(&k)
                    .query_async(&mut c)
                    .await?;
                Ok(match (v, u64::try_from(pttl)) {
                    (Some(v), Ok(p)) => Some((v, Duration::from_millis(p))),
                    _ => None,
                })
            }
            Backend::Memory(map) => Ok(Self::with_map(map, |m| {
                let now = Instant::now();
                m.values
                    .get(key)
                    .filter(|(_, exp)| *exp > now)
                    .map(|(v, exp)| (*v, *exp - now))
            })),
        }
    }

    pub async fn del(&self, keys: &[String]) -> R<()> {
        match &self.backend {
            Backend::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let full: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
                let _: () = redis::cmd("DEL").arg(full).query_async(&mut c).await?;
                Ok(())
            }
            Backend::Memory(map) => {
                Self::with_map(map, |m| {
                    for k in keys {
                        m.values.remove(k);
                        m.sets.remove(k);
                    }
                });
                Ok(())
            }
        }
    }

    /// Adds `member` to a set that expires `ttl` after this call.
    pub async fn sadd(&self, key: &str, member: &str, ttl: Duration) -> R<()> {
        match &self.backend {
            Backend::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let k = format!("{prefix}{key}");
                let _: () = redis::pipe()
                    .atomic()
                    .sadd(&k, member)
                    .ignore()
                    .pexpire(&k, i64::try_from(ms(ttl)).unwrap_or(i64::MAX))
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
            Backend::Memory(map) => {
                Self::with_map(map, |m| {
                    let now = Instant::now();
                    let e = m
                        .sets
                        .entry(key.to_owned())
                        .or_insert_with(|| (Default::default(), now + ttl));
                    if e.1 <= now {
                        e.0.clear();
                    }
                    e.0.insert(member.to_owned());
                    e.1 = now + ttl;
                });
                Ok(())
            }
        }
    }

    pub async fn smembers(&self, key: &str) -> R<Vec<String>> {
        match &self.backend {
            Backend::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                Ok(redis::cmd("SMEMBERS")
                    .arg(format!("{prefix}{key}"))
                    .query_async(&mut c)
                    .await?)
            }
            Backend::Memory(map) => Ok(Self::with_map(map, |m| {
                m.sets
                    .get(key)
                    .filter(|(_, exp)| *exp > Instant::now())
                    .map(|(s, _)| s.iter().cloned().collect())
                    .unwrap_or_default()
            })),
        }
    }
}

/// Thresholds for login-abuse protection.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// Failures for one account from one address before it is locked for that address.
    pub max_failures: u64,
    /// Window in which those failures count.
    pub failure_window: Duration,
    /// First lockout; each further lockout within a day doubles it, up to `lock_max`.
    pub lock_base: Duration,
    pub lock_max: Duration,
    /// Failures from one address across all accounts (password spraying) before it is throttled.
    pub ip_max_failures: u64,
    pub ip_window: Duration,
    /// Failures for one account from all addresses together (a distributed guess) before the
    /// account is throttled everywhere for a while (same growing, capped backoff).
    pub account_max_failures: u64,
    pub account_window: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            lock_base: Duration::from_secs(60),
            lock_max: Duration::from_secs(15 * 60),
            ip_max_failures: 30,
            ip_window: Duration::from_secs(10 * 60),
            account_max_failures: 20,
            account_window: Duration::from_secs(15 * 60),
        }
    }
}

pub enum LoginGate {
    Open,
    /// This account is locked for this address (for this long); a login sees an ordinary failed
    /// login.
    AccountLocked(Duration),
    /// This address is throttled for every account.
    IpThrottled(Duration),
    /// This account is throttled from every address (too many failures across addresses).
    AccountThrottled(Duration),
}

/// One lockout, for the admin view.
#[derive(Debug, serde::Serialize)]
pub struct Lockout {
    pub ip: String,
    pub remaining_secs: u64,
    pub lock_count: u64,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The address as counters see it: IPv4 as is, IPv6 by its /64 prefix (one subscriber usually
/// holds a whole /64, so counting single IPv6 addresses would let one client rotate through
/// billions of them). IPv4-mapped IPv6 counts as the IPv4 address; anything unparsable as given.
pub fn addr_key(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Err(_) => ip.to_owned(),
    }
}

/// The admin view's address for an account-wide throttle.
const ANY_ADDRESS: &str = "*";

/// Failure counting and lockouts.
///
/// Lockouts are per (account, address): an attacker's failures from their addresses never lock
/// the account's owner out of their own address. Spraying many accounts from one address
/// throttles that address. Guessing one account's password from many addresses is capped too:
/// past `account_max_failures` in `account_window` the account is throttled from every address
/// (429) — a temporary throttle, never a lock an attacker could extend at will beyond
/// `lock_max` per offence. All of them grow exponentially with repeated offences, are capped and
/// expire by themselves. IPv6 addresses count by /64 ([`addr_key`]).
pub struct LoginGuard {
    counters: std::sync::Arc<Counters>,
    policy: LoginPolicy,
}

impl LoginGuard {
    pub fn new(counters: std::sync::Arc<Counters>, policy: LoginPolicy) -> Self {
        LoginGuard { counters, policy }
    }

    fn backoff(&self, count: u64) -> Duration {
        let exp = u32::try_from(count.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        self.policy
            .lock_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.policy.lock_max)
    }

    pub async fn check(&self, account: &str, ip: &str) -> R<LoginGate> {
        let ip = &addr_key(ip);
        if let Some((_, left)) = self.counters.get(&format!("login:iplock:{ip}")).await? {
            return Ok(LoginGate::IpThrottled(left));
        }
        if let Some((_, left)) = self
            .counters
            .get(&format!("login:acctlock:{account}"))
            .await?
        {
            return Ok(LoginGate::AccountThrottled(left));
        }
        if let Some((_, left)) = self
            .counters
            .get(&format!("login:lock:{account}:{ip}"))
            .await?
        {
            return Ok(LoginGate::AccountLocked(left));
        }
        Ok(LoginGate::Open)
    }

    pub async fn record_failure(&self, account: &str, ip: &str) -> R<()> {
        let ip = &addr_key(ip);
        let p = &self.policy;
        let n_ip = self
            .counters
            .incr(&format!("login:ipfail:{ip}"), p.ip_window)
            .await?;
        if n_ip >= p.ip_max_failures {
            let c = self
                .counters
                .incr(&format!("login:iplocks:{ip}"), DAY)
                .await?;
            self.counters
                .set(&format!("login:iplock:{ip}"), c, self.backoff(c))
                .await?;
            self.counters.del(&[format!("login:ipfail:{ip}")]).await?;
            tracing::warn!(%ip, lock_count = c, "address throttled after repeated login failures");
        }
        let n = self
            .counters
            .incr(&format!("login:fail:{account}:{ip}"), p.failure_window)
            .await?;
        if n >= p.max_failures {
            let c = self
                .counters
                .incr(&format!("login:locks:{account}:{ip}"), DAY)
                .await?;
            let d = self.backoff(c);
            self.counters
                .set(&format!("login:lock:{account}:{ip}"), c, d)
                .await?;
            self.counters
                .del(&[format!("login:fail:{account}:{ip}")])
                .await?;
            // Addresses with lockouts for this account, for the admin view and unlock.
            self.counters
                .sadd(&format!("login:lockips:{account}"), ip, DAY)
                .await?;
            tracing::warn!(account, %ip, lock_count = c, lock_secs = d.as_secs(), "account locked for this address");
        }
        // Across all addresses: not reset by a success, so a distributed guess stays bounded.
        let n_acct = self
            .counters
            .incr(&format!("login:acctfail:{account}"), p.account_window)
            .await?;
        if n_acct >= p.account_max_failures {
            let c = self
                .counters
                .incr(&format!("login:acctlocks:{account}"), DAY)
                .await?;
            let d = self.backoff(c);
            self.counters
                .set(&format!("login:acctlock:{account}"), c, d)
                .await?;
            self.counters
                .del(&[format!("login:acctfail:{account}")])
                .await?;
            tracing::warn!(
                event = "account_throttled",
                account,
                lock_count = c,
                lock_secs = d.as_secs(),
                "account throttled after failures from many addresses"
            );
        }
        Ok(())
    }

    /// Current lockouts of an account, by address.
    pub async fn lockouts(&self, account: &str) -> R<Vec<Lockout>> {
        let mut out = Vec::new();
        if let Some((count, left)) = self
            .counters
            .get(&format!("login:acctlock:{account}"))
            .await?
        {
            out.push(Lockout {
                ip: ANY_ADDRESS.to_owned(),
                remaining_secs: left.as_secs_f64().ceil() as u64,
                lock_count: count,
            });
        }
        for ip in self
            .counters
            .smembers(&format!("login:lockips:{account}"))
            .await?
        {
            if let Some((count, left)) = self
                .counters
                .get(&format!("login:lock:{account}:{ip}"))
                .await?
            {
                out.push(Lockout {
                    ip,
                    remaining_secs: left.as_secs_f64().ceil() as u64,
                    lock_count: count,
                });
            }
        }
        out.sort_by(|a, b| a.ip.cmp(&b.ip));
        Ok(out)
    }

    /// Lifts every lockout of an account (admin action).
    pub async fn clear(&self, account: &str) -> R<()> {
        let set = format!("login:lockips:{account}");
        let mut keys = vec![
            set.clone(),
            format!("login:acctlock:{account}"),
            format!("login:acctlocks:{account}"),
            format!("login:acctfail:{account}"),
        ];
        for ip in self.counters.smembers(&set).await? {
            keys.push(format!("login:lock:{account}:{ip}"));
            keys.push(format!("login:locks:{account}:{ip}"));
            keys.push(format!("login:fail:{account}:{ip}"));
        }
        self.counters.del(&keys).await
    }

    pub async fn record_success(&self, account: &str, ip: &str) -> R<()> {
        let ip = &addr_key(ip);
        self.counters
            .del(&[
                format!("login:fail:{account}:{ip}"),
                format!("login:locks:{account}:{ip}"),
            ])
            .await
    }
}

/// Sliding-window rate limiter over [`Counters`]: a log of the admitted requests of the last
/// `window` (a Redis sorted set, or an in-process queue), so at most `limit` requests are
/// admitted in any interval of that length — a burst straddling a fixed-window boundary is still
/// one burst. Only admitted requests are logged, so each key holds at most `limit` entries.
pub struct RateLimiter {
    counters: std::sync::Arc<Counters>,
    window: Duration,
}

impl RateLimiter {
    pub fn new(counters: std::sync::Arc<Counters>, window: Duration) -> Self {
        RateLimiter { counters, window }
    }

    /// Counts one request for `scope:id`; `Ok(Some(retry_after))` when over `limit`.
    pub async fn hit(&self, scope: &str, id: &str, limit: u64) -> R<Option<Duration>> {
        // `rls:` (not the fixed window's `rl:`): another type of Redis value.
        let wait = self
            .counters
            .admit(&format!("rls:{scope}:{id}"), self.window, limit)
            .await?;
        // Whole seconds for Retry-After, rounded up so a client waiting that long gets in.
        Ok(wait.map(|w| {
            Duration::from_secs(w.as_millis().div_ceil(1000).try_into().unwrap_or(u64::MAX))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn guard(base_ms: u64) -> LoginGuard {
        LoginGuard::new(
            Arc::new(Counters::memory()),
            LoginPolicy {
                max_failures: 3,
                failure_window: Duration::from_secs(60),
                lock_base: Duration::from_millis(base_ms),
                lock_max: Duration::from_millis(base_ms * 4),
                ip_max_failures: 10,
                ip_window: Duration::from_secs(60),
                ..LoginPolicy::default()
            },
        )
    }

    #[tokio::test]
    async fn failures_from_many_addresses_throttle_the_account_for_a_while() {
        let g = guard(300);
        for i in 0..101 {
            let ip = format!("10.0.{}.{}", i / 200, i % 200 + 1);
            if matches!(g.check("u1", &ip).await.unwrap(), LoginGate::Open) {
                g.record_failure("u1", &ip).await.unwrap();
            }
        }
        assert!(
            !matches!(g.check("u1", "10.9.9.9").await.unwrap(), LoginGate::Open),
            "101 failures from 101 addresses left the account open"
        );
        assert!(matches!(
            g.check("u2", "10.9.9.9").await.unwrap(),
            LoginGate::Open
        ));
        // A throttle, not a lock: it ends on its own.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(matches!(
            g.check("u1", "10.9.9.9").await.unwrap(),
            LoginGate::Open
        ));
    }

    #[test]
    fn address_keys() {
        for (ip, key) in [
            ("1.2.3.4", "1.2.3.4"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("unknown", "unknown"),
        ] {
            assert_eq!(addr_key(ip), key, "{ip}");
        }
    }

    #[tokio::test]
    async fn ipv6_addresses_share_counters_per_64() {
        let g = guard(1000);
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            g.record_failure("u1", ip).await.unwrap();
        }
        assert!(
            matches!(
                g.check("u1", "2001:db8:1:2::99").await.unwrap(),
                LoginGate::AccountLocked { .. }
            ),
            "one /64 did not share a counter"
        );
        assert!(matches!(
            g.check("u1", "2001:db8:1:3::1").await.unwrap(),
            LoginGate::Open
        ));
    }

    /// A full burst just before a (fixed) window boundary and another just after it: a sliding
    /// window refuses the second.
    async fn burst_across_the_boundary_is_refused(counters: Arc<Counters>) {
        let rl = RateLimiter::new(counters, Duration::from_secs(2));
        let id = uuid::Uuid::new_v4().to_string();
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        // 1.7 s into a 2 s slot aligned to the epoch (where a fixed window resets).
        let into = u64::try_from(now_ms() % 2000).unwrap();
        tokio::time::sleep(Duration::from_millis((1700 + 2000 - into) % 2000)).await;
        for _ in 0..5 {
            assert!(rl.hit("ip", &id, 5).await.unwrap().is_none());
        }
        let into = u64::try_from(now_ms() % 2000).unwrap();
        assert!(into >= 1700, "test too slow to straddle the boundary");
        tokio::time::sleep(Duration::from_millis(2000 - into + 100)).await;
        let mut admitted = 0;
        for _ in 0..5 {
            if rl.hit("ip", &id, 5).await.unwrap().is_none() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 0, "a second full burst right after the boundary");
    }

    #[tokio::test]
    async fn sliding_window_in_process() {
        burst_across_the_boundary_is_refused(Arc::new(Counters::memory())).await;
    }

    #[tokio::test]
    async fn sliding_window_redis() {
        let url = std::env::var("LLMHUB_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("llmhub-unit-{}:", uuid::Uuid::new_v4().simple());
        burst_across_the_boundary_is_refused(Arc::new(Counters::redis(&url, &prefix).unwrap()))
            .await;
    }

    #[tokio::test]
    async fn locks_per_account_and_address_with_growing_capped_backoff() {
        let g = guard(1000);
        for _ in 0..3 {
            assert!(matches!(
                g.check("u1", "1.1.1.1").await.unwrap(),
                LoginGate::Open
            ));
            g.record_failure("u1", "1.1.1.1").await.unwrap();
        }
        assert!(matches!(
            g.check("u1", "1.1.1.1").await.unwrap(),
            LoginGate::AccountLocked(_)
        ));
        // Another address (the owner) is not locked out by the attacker's failures.
        assert!(matches!(
            g.check("u1", "2.2.2.2").await.unwrap(),
            LoginGate::Open
        ));
        let l = g.lockouts("u1").await.unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].ip.as_str(), l[0].lock_count), ("1.1.1.1", 1));
        assert_eq!(g.backoff(1), Duration::from_millis(1000));
        assert_eq!(g.backoff(2), Duration::from_millis(2000));
        assert_eq!(g.backoff(3), Duration::from_millis(4000));
        assert_eq!(g.backoff(30), Duration::from_millis(4000), "capped");
        g.clear("u1").await.unwrap();
        assert!(matches!(
            g.check("u1", "1.1.1.1").await.unwrap(),
            LoginGate::Open
        ));
        assert!(g.lockouts("u1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn spraying_from_one_address_throttles_it() {
        let g = guard(1000);
        for i in 0..10 {
            g.record_failure(&format!("user{i}"), "9.9.9.9")
                .await
                .unwrap();
        }
        assert!(matches!(
            g.check("fresh", "9.9.9.9").await.unwrap(),
            LoginGate::IpThrottled(_)
        ));
        assert!(matches!(
            g.check("fresh", "8.8.8.8").await.unwrap(),
            LoginGate::Open
        ));
    }

    #[tokio::test]
    async fn success_resets_failures() {
        let g = guard(1000);
        g.record_failure("u", "ip").await.unwrap();
        g.record_failure("u", "ip").await.unwrap();
        g.record_success("u", "ip").await.unwrap();
        g.record_failure("u", "ip").await.unwrap();
        assert!(matches!(g.check("u", "ip").await.unwrap(), LoginGate::Open));
    }

    #[tokio::test]
    async fn rate_limiter_counts_per_window() {
        let rl = RateLimiter::new(Arc::new(Counters::memory()), Duration::from_secs(60));
        for _ in 0..5 {
            assert!(rl.hit("ip", "a", 5).await.unwrap().is_none());
        }
        let retry = rl.hit("ip", "a", 5).await.unwrap().unwrap();
        assert!(retry <= Duration::from_secs(60));
        assert!(rl.hit("ip", "b", 5).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unreachable_redis_fails_closed() {
        // Nothing listens on port 1.
        let c = Arc::new(Counters::redis("redis://127.0.0.1:1", "t:").unwrap());
        let g = LoginGuard::new(c.clone(), LoginPolicy::default());
        assert!(g.check("u", "ip").await.is_err());
        let rl = RateLimiter::new(c, Duration::from_secs(60));
        assert!(rl.hit("ip", "x", 100).await.is_err());
    }
}
