//! The proxy's source of wall-clock time. Cooldowns, rate windows and half-open trials are
//! decided against it, so tests can move time instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Milliseconds since the Unix epoch (atomics hold instants in this form).
pub fn millis(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

pub fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (component tests).
#[derive(Debug)]
pub struct ManualClock {
    /// Milliseconds since the Unix epoch.
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            ms: AtomicU64::new(millis(start)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        from_millis(self.ms.load(Ordering::SeqCst))
    }
}
