//! Counting in this process: the embedded mode's counters, and every proxy's fallback while the
//! shared counters cannot be reached. Each limit is enforced at this proxy's share
//! ([`super::share`]).
//!
//! One mutex guards all windows so a request's checks and reservations across several limits
//! are atomic; it is held for a few map lookups and never across an await. Requests without
//! limits never take it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::{Check, Decision, Demand, Dim, Refusal, Settlement, Ticket, WINDOW, millis_of, share};

/// How a refusal without a natural end (a budget that never resets) says "not by waiting".
const NEVER: Duration = Duration::ZERO;

/// Windows beyond this many are pruned of the empty ones.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Default, Debug)]
pub struct Local {
    windows: Mutex<HashMap<String, Window>>,
}

/// One limit's recent admissions: a sliding log of (admitted at ms, request, amount) with its
/// running sum; for concurrency the slots held; for a budget the spend counted here (`sum`) on
/// top of the ledger's (`base`).
#[derive(Default, Debug)]
struct Window {
    log: VecDeque<(u64, String, u64)>,
    sum: u64,
    held: u64,
    base: u64,
}

impl Window {
    fn expire(&mut self, now: u64) {
        let window = millis_of(WINDOW);
        while let Some((at, _, amount)) = self.log.front() {
            if at + window > now {
                break;
            }
            self.sum -= amount;
            self.log.pop_front();
        }
    }

    /// Whether `amount` more fits under `limit`. An empty window admits anything, so a single
    /// request larger than a token limit is not refused forever.
    fn fits(&self, dim: Dim, amount: u64, limit: u64) -> bool {
        match dim {
            Dim::Requests => self.sum < limit,
            Dim::Tokens => self.sum == 0 || self.sum + amount <= limit,
            Dim::Concurrent => self.held < limit,
            Dim::Budget => self.sum + amount <= limit,
        }
    }

    /// How long until `amount` fits, as the oldest admissions leave the window.
    fn wait(&self, dim: Dim, amount: u64, limit: u64, now: u64) -> Duration {
        if dim == Dim::Concurrent {
            // A slot frees when some request ends; nothing says when.
            return Duration::from_secs(1);
        }
        let window = millis_of(WINDOW);
        let mut sum = self.sum;
        for (at, _, a) in &self.log {
            sum -= a;
            let fits = match dim {
                Dim::Requests => sum < limit,
                _ => sum == 0 || sum + amount <= limit,
            };
            if fits {
                return Duration::from_millis((at + window).saturating_sub(now).max(1));
            }
        }
        WINDOW
    }

    fn reserve(&mut self, dim: Dim, request_id: &str, amount: u64, now: u64) {
        match dim {
            Dim::Requests => {
                self.log.push_back((now, request_id.to_owned(), 1));
                self.sum += 1;
            }
            Dim::Tokens => {
                self.log.push_back((now, request_id.to_owned(), amount));
                self.sum += amount;
            }
            Dim::Concurrent => self.held += 1,
            Dim::Budget => self.sum += amount,
        }
    }
}

impl Local {
    /// Checks every limit of `demand` at this proxy's share and, when all have room and one of
    /// the candidate keys (if any) has too, reserves them.
    pub fn admit(&self, demand: &Demand, live_proxies: u32, now: u64) -> Decision {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| {
                w.expire(now);
                !w.log.is_empty() || w.held > 0
            });
        }
        let verdict = |windows: &mut HashMap<String, Window>, c: &Check| {
            let w = windows.entry(c.counter()).or_default();
            let amount = c.amount(demand);
            if let Some(p) = &c.period {
                // The ledger's spend grew past what this window started from: it now includes
                // what was counted here, so count from it afresh.
                if p.seed > w.base {
                    w.base = p.seed;
                    w.sum = 0;
                }
                // This proxy's share of what the ledger says is left.
                let left = c.limit.saturating_sub(w.base) / u64::from(live_proxies.max(1));
                return (!w.fits(Dim::Budget, amount, left)).then(|| Refusal {
                    scope: c.scope,
                    dim: c.dim,
                    limit: c.limit,
                    retry_after: p
                        .end_ms
                        .map_or(NEVER, |end| Duration::from_millis(end.saturating_sub(now))),
                });
            }
            let limit = share(c.limit, live_proxies);
            w.expire(now);
            if w.fits(c.dim, amount, limit) {
                None
            } else {
                Some(Refusal {
                    scope: c.scope,
                    dim: c.dim,
                    limit,
                    retry_after: w.wait(c.dim, amount, limit, now),
                })
            }
        };
        // The refusal that lasts longest: the request cannot pass before it ends anyway.
        let mut refused: Option<Refusal> = None;
        for c in &demand.checks {
            if let Some(r) = verdict(&mut windows, c) {
                refused = Some(match refused {
                    Some(prev) if prev.retry_after >= r.retry_after => prev,
                    _ => r,
                });
            }
        }
        if let Some(r) = refused {
            return Decision::Refuse(r);
        }
        let mut key = None;
        let mut soonest: Option<Refusal> = None;
        for (i, k) in demand.keys.iter().enumerate() {
            let mut blocked: Option<Refusal> = None;
            for c in k.checks() {
                if let Some(r) = verdict(&mut windows, &c) {
                    blocked = Some(match blocked {
                        Some(prev) if prev.retry_after >= r.retry_after => prev,
                        _ => r,
                    });
                }
            }
            match blocked {
                None => {
                    key = Some(i);
                    break;
                }
                Some(r) => {
                    if soonest
                        .as_ref()
                        .is_none_or(|s| r.retry_after < s.retry_after)
                    {
                        soonest = Some(r);
                    }
                }
            }
        }
        if !demand.keys.is_empty()
            && key.is_none()
            && let Some(r) = soonest
        {
            return Decision::Refuse(r);
        }
        let chosen = key.and_then(|i| demand.keys.get(i));
        for c in demand
            .checks
            .iter()
            .cloned()
            .chain(chosen.into_iter().flat_map(|k| k.checks()))
        {
            let amount = c.amount(demand);
            windows
                .entry(c.counter())
                .or_default()
                .reserve(c.dim, &demand.request_id, amount, now);
        }
        let mut t = Ticket::free();
        t.key = key;
        Decision::Admit(t)
    }

    /// Corrects token and budget reservations to the real usage and releases concurrency
    /// slots.
    pub fn settle(&self, s: &Settlement) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        for c in &s.counters {
            let Some(w) = windows.get_mut(&c.counter()) else {
                continue;
            };
            match c.dim {
                Dim::Tokens => {
                    if let Some(e) = w.log.iter_mut().rev().find(|e| e.1 == s.request_id) {
                        w.sum = w.sum - e.2 + s.actual.tokens;
                        e.2 = s.actual.tokens;
                    }
                }
                Dim::Budget => w.sum = w.sum.saturating_add_signed(s.delta(c)),
                Dim::Concurrent => w.held = w.held.saturating_sub(1),
                Dim::Requests => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Amounts, KeyLimits, Scope};
    use super::*;

    fn demand(id: &str, tokens: u64, checks: Vec<Check>, keys: Vec<KeyLimits>) -> Demand {
        Demand {
            request_id: id.into(),
            tokens,
            cost_nanos: tokens * 10,
            checks,
            keys,
        }
    }

    fn c(dim: Dim, limit: u64) -> Check {
        Check {
            scope: Scope::ClientKey,
            id: "c1".into(),
            dim,
            limit,
            period: None,
        }
    }

    fn admitted(d: Decision) -> Option<Ticket> {
        match d {
            Decision::Admit(t) => Some(t),
            Decision::Refuse(_) => None,
        }
    }

    #[test]
    fn requests_slide_rather_than_reset() {
        let l = Local::default();
        let d = demand("r", 1, vec![c(Dim::Requests, 3)], vec![]);
        for t in [0, 10_000, 20_000] {
            assert!(admitted(l.admit(&d, 1, t)).is_some());
        }
        let Decision::Refuse(r) = l.admit(&d, 1, 59_000) else {
            panic!("fourth request in a minute")
        };
        assert_eq!(r.retry_after, Duration::from_millis(1_000));
        assert_eq!((r.dim, r.limit), (Dim::Requests, 3));
        // The first left the window at 60 s; one more fits, not three (no fixed-window reset).
        assert!(admitted(l.admit(&d, 1, 60_000)).is_some());
        assert!(admitted(l.admit(&d, 1, 60_001)).is_none());
    }

    #[test]
    fn tokens_reserve_then_settle() {
        let l = Local::default();
        let a = demand("a", 600, vec![c(Dim::Tokens, 1000)], vec![]);
        let b = demand("b", 600, vec![c(Dim::Tokens, 1000)], vec![]);
        assert!(admitted(l.admit(&a, 1, 0)).is_some());
        assert!(admitted(l.admit(&b, 1, 1)).is_none(), "600 + 600 > 1000");
        // `a` really used 100: the reservation shrinks and `b` fits.
        l.settle(&Settlement {
            request_id: "a".into(),
            reserved: Amounts {
                tokens: 600,
                cost_nanos: 0,
            },
            actual: Amounts {
                tokens: 100,
                cost_nanos: 0,
            },
            counters: vec![c(Dim::Tokens, 1000)],
        });
        assert!(admitted(l.admit(&b, 1, 2)).is_some());
        // An oversized request fits an empty window only.
        let huge = demand("h", 5000, vec![c(Dim::Tokens, 1000)], vec![]);
        assert!(admitted(l.admit(&huge, 1, 3)).is_none());
        assert!(admitted(l.admit(&huge, 1, 70_000)).is_some());
    }

    #[test]
    fn refusal_reserves_nothing_anywhere() {
        let l = Local::default();
        let user = Check {
            scope: Scope::User,
            id: "u1".into(),
            dim: Dim::Requests,
            limit: 1,
            period: None,
        };
        let d = demand("x", 1, vec![c(Dim::Requests, 5), user.clone()], vec![]);
        assert!(admitted(l.admit(&d, 1, 0)).is_some());
        let Decision::Refuse(r) = l.admit(&d, 1, 1) else {
            panic!("user limit 1")
        };
        assert_eq!(r.scope, Scope::User);
        // The refused request took nothing from the client key's window.
        let w = l.windows.lock().unwrap();
        assert_eq!(w[&c(Dim::Requests, 5).counter()].sum, 1);
    }

    #[test]
    fn first_key_with_room_is_chosen() {
        let l = Local::default();
        let keys = vec![
            KeyLimits {
                id: "k1".into(),
                rpm: 1,
                tpm: 0,
            },
            KeyLimits {
                id: "k2".into(),
                rpm: 0,
                tpm: 100,
            },
        ];
        let d = demand("r", 60, vec![], keys);
        assert_eq!(admitted(l.admit(&d, 1, 0)).unwrap().key, Some(0));
        assert_eq!(admitted(l.admit(&d, 1, 1)).unwrap().key, Some(1));
        let Decision::Refuse(r) = l.admit(&d, 1, 2) else {
            panic!("both keys are full")
        };
        assert_eq!(r.scope, Scope::ProviderKey);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::super::{Amounts, Period, Scope};
    use super::*;

    fn budget(limit: u64, seed: u64) -> Check {
        Check {
            scope: Scope::User,
            id: "u1".into(),
            dim: Dim::Budget,
            limit,
            period: Some(Period {
                start_ms: 0,
                end_ms: Some(86_400_000),
                seed,
            }),
        }
    }

    fn spend(id: &str, cost: u64, check: Check) -> Demand {
        Demand {
            request_id: id.into(),
            tokens: 1,
            cost_nanos: cost,
            checks: vec![check],
            keys: vec![],
        }
    }

    #[test]
    fn a_budget_admits_only_what_is_left_and_settles_to_real_cost() {
        let l = Local::default();
        // 1000 budget, the ledger already knows 400 spent.
        assert!(matches!(
            l.admit(&spend("a", 500, budget(1000, 400)), 1, 10),
            Decision::Admit(_)
        ));
        let Decision::Refuse(r) = l.admit(&spend("b", 200, budget(1000, 400)), 1, 20) else {
            panic!("400 + 500 + 200 > 1000")
        };
        assert_eq!(r.dim, Dim::Budget);
        assert_eq!(
            r.retry_after,
            Duration::from_millis(86_400_000 - 20),
            "the period's end"
        );
        // `a` really cost 50: 400 + 50 + 200 fits.
        l.settle(&Settlement {
            request_id: "a".into(),
            reserved: Amounts {
                tokens: 1,
                cost_nanos: 500,
            },
            actual: Amounts {
                tokens: 1,
                cost_nanos: 50,
            },
            counters: vec![budget(1000, 400)],
        });
        assert!(matches!(
            l.admit(&spend("b", 200, budget(1000, 400)), 1, 30),
            Decision::Admit(_)
        ));
        // The ledger caught up (400 + 50 + 200): counting restarts from it, not on top of it.
        assert!(matches!(
            l.admit(&spend("c", 350, budget(1000, 650)), 1, 40),
            Decision::Admit(_)
        ));
        assert!(matches!(
            l.admit(&spend("d", 1, budget(1000, 650)), 1, 50),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn a_budget_share_splits_what_is_left_over_the_fleet() {
        let l = Local::default();
        // 1000 left over 4 proxies: 250 here.
        assert!(matches!(
            l.admit(&spend("a", 250, budget(1000, 0)), 4, 0),
            Decision::Admit(_)
        ));
        assert!(matches!(
            l.admit(&spend("b", 1, budget(1000, 0)), 4, 1),
            Decision::Refuse(_)
        ));
    }
}
