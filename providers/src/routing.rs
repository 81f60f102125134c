//! How traffic is shared between equal-priority targets and keys.

/// A route's strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Round-robin in proportion to key weights.
    #[default]
    Weighted,
    /// The key with the fewest requests in flight on this proxy.
    LeastInFlight,
    /// The key with the lowest latency EWMA (untried keys first, to learn them).
    Latency,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::Weighted,
        Strategy::LeastInFlight,
        Strategy::Latency,
    ];

    /// The name used in the admin API, the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::LeastInFlight => "least_inflight",
            Strategy::Latency => "latency",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("random"), None);
    }
}
