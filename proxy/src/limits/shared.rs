//! Counting shared by every proxy through Redis: one script call per request checks and reserves
//! all of its limits atomically, on the Redis server's clock (so proxies with skewed clocks
//! agree). Settlements run from a background task, off the request path.
//!
//! Per limit, under `<prefix><dim>:<scope>:<id>`:
//! - requests per minute: a sorted set of request ids scored by admission time;
//! - tokens per minute: a sorted set of `request id:tokens` scored by admission time, and the
//!   window's running sum beside it (`…:sum`), so a check costs no walk over the window;
//! - concurrency: a sorted set of request ids scored by when their lease expires;
//! - budgets: the period's spend in nano-USD (`…:<period start>`), expiring when it ends.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{Check, Decision, Demand, Dim, LEASE, Refusal, Settlement, Ticket, WINDOW, millis_of};

/// Checks every limit, then (only if all have room and some candidate key has too) reserves the
/// request in all of them. Returns `{0, chosen key index or -1}`, `{1, check index, wait ms}` or
/// `{2, key index, check index within the key, wait ms}`; a wait of [`NEVER_MS`] means waiting
/// will not help (a budget that never resets).
///
/// KEYS: per check in order — requests: the set; tokens: the set, the sum; concurrency: the
/// set; budget: the counter. ARGV: request id, tokens, cost, window ms, lease ms, number of
/// checks, (dim, limit, a, b) per check, number of keys, then per key its number of checks and
/// (dim, limit, a, b) per check. Dims: 1 requests, 2 tokens, 3 concurrency, 4 budget (a: the
/// ledger's spend, b: ms until the period ends, 0 = never).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local never = tonumber(ARGV[6])
local ki, ai = 1, 7

local function read_check()
  local c = {dim = tonumber(ARGV[ai]), limit = tonumber(ARGV[ai + 1]),
             a = tonumber(ARGV[ai + 2]), b = tonumber(ARGV[ai + 3]), z = KEYS[ki]}
  ai = ai + 4
  ki = ki + 1
  if c.dim == 2 then
    c.s = KEYS[ki]
    ki = ki + 1
  end
  return c
end

local function amount(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

local function fits(sum, limit)
  return sum <= 0 or sum + tokens <= limit
end

-- 0 when the limit has room, else how long (ms) until it has.
local function wait(c)
  if c.dim == 4 then
    local cur = tonumber(redis.call('GET', c.z) or '-1')
    -- Missing (first use, or Redis lost it) or behind the ledger: start from the ledger.
    if cur < c.a then
      if c.b > 0 then redis.call('SET', c.z, c.a, 'PX', c.b) else redis.call('SET', c.z, c.a) end
      cur = c.a
    end
    if cur + cost <= c.limit then return 0 end
    if c.b > 0 then return c.b end
    return never
  end
  if c.dim == 3 then
    redis.call('ZREMRANGEBYSCORE', c.z, '-inf', now)
    if redis.call('ZCARD', c.z) < c.limit then return 0 end
    return 1000
  end
  if c.dim == 1 then
    redis.call('ZREMRANGEBYSCORE', c.z, '-inf', now - window)
    local n = redis.call('ZCARD', c.z)
    if n < c.limit then return 0 end
    local e = redis.call('ZRANGE', c.z, n - c.limit, n - c.limit, 'WITHSCORES')
    return math.max(tonumber(e[2]) + window - now, 1)
  end
  local sum = tonumber(redis.call('GET', c.s) or '0')
  local old = redis.call('ZRANGEBYSCORE', c.z, '-inf', now - window)
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - amount(m) end
    if sum < 0 then sum = 0 end
    redis.call('ZREMRANGEBYSCORE', c.z, '-inf', now - window)
    if redis.call('EXISTS', c.s) == 1 then redis.call('SET', c.s, sum, 'KEEPTTL') end
  end
  if fits(sum, c.limit) then return 0 end
  local live = redis.call('ZRANGE', c.z, 0, -1, 'WITHSCORES')
  for i = 1, #live, 2 do
    sum = sum - amount(live[i])
    if fits(sum, c.limit) then
      return math.max(tonumber(live[i + 1]) + window - now, 1)
    end
  end
  return window
end

local function reserve(c)
  if c.dim == 1 then
    redis.call('ZADD', c.z, now, id)
    redis.call('PEXPIRE', c.z, window)
  elseif c.dim == 2 then
    redis.call('ZADD', c.z, now, id .. ':' .. tokens)
    redis.call('INCRBY', c.s, tokens)
    redis.call('PEXPIRE', c.z, window)
    redis.call('PEXPIRE', c.s, window)
  elseif c.dim == 3 then
    redis.call('ZADD', c.z, now + lease, id)
    redis.call('PEXPIRE', c.z, lease)
  else
    redis.call('INCRBY', c.z, cost)
  end
end

local nchecks = tonumber(ARGV[ai])
ai = ai + 1
local checks = {}
for i = 1, nchecks do checks[i] = read_check() end
local worst, worst_i = 0, 0
for i, c in ipairs(checks) do
  local w = wait(c)
  if w > worst then worst, worst_i = w, i end
end
if worst > 0 then return {1, worst_i - 1, worst} end

local nkeys = tonumber(ARGV[ai])
ai = ai + 1
local chosen, soonest, soonest_k, soonest_c = -1, nil, 0, 0
for k = 1, nkeys do
  local kc = {}
  local m = tonumber(ARGV[ai])
  ai = ai + 1
  for j = 1, m do kc[j] = read_check() end
  if chosen < 0 then
    local kw, kwi = 0, 0
    for j, c in ipairs(kc) do
      local w = wait(c)
      if w > kw then kw, kwi = w, j end
    end
    if kw == 0 then
      chosen = k - 1
      for _, c in ipairs(kc) do reserve(c) end
    elseif soonest == nil or kw < soonest then
      soonest, soonest_k, soonest_c = kw, k - 1, kwi - 1
    end
  end
end
if nkeys > 0 and chosen < 0 then return {2, soonest_k, soonest_c, soonest} end
for _, c in ipairs(checks) do reserve(c) end
return {0, chosen}";

/// Corrects token and budget reservations to real usage and releases concurrency leases, for
/// a batch of ended requests at once.
/// KEYS: per request, per counter — tokens: the set, the sum; budget: the counter; concurrency:
/// the set. ARGV: number of requests, then per request its id, reserved tokens, actual tokens,
/// number of counters and (dim, actual − reserved) per counter.
const SETTLE: &str = r"
local ki, ai = 1, 2
local function add(key, delta)
  if delta ~= 0 and redis.call('EXISTS', key) == 1 and redis.call('INCRBY', key, delta) < 0 then
    redis.call('SET', key, 0, 'KEEPTTL')
  end
end
for r = 1, tonumber(ARGV[1]) do
  local id, rt, at, n = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2], tonumber(ARGV[ai + 3])
  ai = ai + 4
  for c = 1, n do
    local dim, delta = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
    ai = ai + 2
    if dim == 2 then
      local z, s = KEYS[ki], KEYS[ki + 1]
      ki = ki + 2
      local old = id .. ':' .. rt
      local score = redis.call('ZSCORE', z, old)
      if score and delta ~= 0 then
        redis.call('ZREM', z, old)
        redis.call('ZADD', z, score, id .. ':' .. at)
        add(s, delta)
      end
    elseif dim == 4 then
      add(KEYS[ki], delta)
      ki = ki + 1
    else
      redis.call('ZREM', KEYS[ki], id)
      ki = ki + 1
    end
  end
end
return 1";

/// Most settlements sent in one script call.
const SETTLE_BATCH: usize = 64;

/// The wait the script reports when waiting will not help.
const NEVER_MS: u64 = 1 << 50;

#[derive(Clone)]
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    admit: redis::Script,
    settle: redis::Script,
}

impl Shared {
    /// Connects lazily, so a proxy starts (counting locally) while Redis is down.
    pub fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Shared, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Shared {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: prefix.to_owned(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
        })
    }

    fn keys_of(&self, inv: &mut redis::ScriptInvocation<'_>, c: &Check) {
        let name = format!("{}{}", self.prefix, c.counter());
        // Keys in the order the script reads them: a token limit's sum follows its set.
        if c.dim == Dim::Tokens {
            inv.key(&name);
            inv.key(format!("{name}:sum"));
        } else {
            inv.key(name);
        }
    }

    /// One round trip: checks and reserves.
    pub async fn admit(&self, d: &Demand) -> Result<Decision, redis::RedisError> {
        let mut inv = self.admit.prepare_invoke();
        let window = millis_of(WINDOW);
        let lease = millis_of(LEASE);
        inv.arg(&d.request_id)
            .arg(d.tokens)
            .arg(d.cost_nanos)
            .arg(window)
            .arg(lease)
            .arg(NEVER_MS)
            .arg(d.checks.len());
        // The proxy's clock says when a budget period ends; the script's own clock is Redis's,
        // so it gets the remaining time rather than the instant.
        let now = crate::clock::millis(std::time::SystemTime::now());
        let check_args = |inv: &mut redis::ScriptInvocation<'_>, c: &Check| {
            self.keys_of(inv, c);
            let (a, b) = c.period.as_ref().map_or((0, 0), |p| {
                (
                    p.seed,
                    p.end_ms.map_or(0, |end| end.saturating_sub(now).max(1)),
                )
            });
            inv.arg(dim_code(c.dim)).arg(c.limit).arg(a).arg(b);
        };
        for c in &d.checks {
            check_args(&mut inv, c);
        }
        inv.arg(d.keys.len());
        let key_checks: Vec<Vec<Check>> = d.keys.iter().map(|k| k.checks().collect()).collect();
        for checks in &key_checks {
            inv.arg(checks.len());
            for c in checks {
                check_args(&mut inv, c);
            }
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let wait = |ms: i64| match u64::try_from(ms).unwrap_or(1) {
            NEVER_MS.. => Duration::ZERO,
            ms => Duration::from_millis(ms.max(1)),
        };
        let refusal = |c: &Check, ms: i64| Refusal {
            scope: c.scope,
            dim: c.dim,
            limit: c.limit,
            retry_after: wait(ms),
        };
        let idx = |v: i64| usize::try_from(v).ok();
        match reply.as_slice() {
            [0, chosen] => {
                let mut t = Ticket::free();
                t.key = idx(*chosen);
                Ok(Decision::Admit(t))
            }
            [1, i, ms] => match idx(*i).and_then(|i| d.checks.get(i)) {
                Some(c) => Ok(Decision::Refuse(refusal(c, *ms))),
                None => Err(unexpected()),
            },
            [2, k, j, ms] => match idx(*k)
                .and_then(|k| key_checks.get(k))
                .and_then(|cs| idx(*j).and_then(|j| cs.get(j)))
            {
                Some(c) => Ok(Decision::Refuse(refusal(c, *ms))),
                None => Err(unexpected()),
            },
            _ => Err(unexpected()),
        }
    }

    /// One script call for a batch of ended requests.
    async fn settle_batch(&self, batch: &[Settlement]) -> Result<(), redis::RedisError> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(batch.len());
        for s in batch {
            inv.arg(&s.request_id)
                .arg(s.reserved.tokens)
                .arg(s.actual.tokens)
                .arg(s.counters.len());
            for c in &s.counters {
                self.keys_of(&mut inv, c);
                inv.arg(dim_code(c.dim)).arg(s.delta(c));
            }
        }
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Applies settlements as they come, batching those that queue up while a call is in
    /// flight (under load one call settles many requests). A failed batch is logged and left:
    /// its token estimates stay in their windows until they slide out, its leases until they
    /// expire.
    pub async fn settle_loop(self, mut rx: mpsc::Receiver<Settlement>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < SETTLE_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.settle_batch(&batch).await {
                tracing::debug!(error = %e, requests = batch.len(), "limit settlements not applied");
            }
        }
    }
}

fn dim_code(d: Dim) -> u8 {
    match d {
        Dim::Requests => 1,
        Dim::Tokens => 2,
        Dim::Concurrent => 3,
        Dim::Budget => 4,
    }
}

fn unexpected() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply from the limit script",
    ))
}
