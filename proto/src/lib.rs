//! The gRPC contract between `llmhub-proxy` and `llmhub-control`, generated from
//! `proto/hub.proto`, plus the hand-written pieces the generated code cannot carry (redacting Debug
//! for the messages that hold secrets).

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("llmhub.v1");

    use std::fmt;

    use llmhub_providers::{BudgetPeriod as Period, FailureClass as Class, Kind, Strategy};

    /// Redacts the provider secret: snapshots pass through tracing and panic messages in both
    /// processes, and the generated Debug would print the key bytes.
    impl fmt::Debug for ProviderKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ProviderKey")
                .field("id", &self.id)
                .field("provider_id", &self.provider_id)
                .field("owner_user_id", &self.owner_user_id)
                .field("secret", &"[redacted]")
                .field("fingerprint", &self.fingerprint)
                .field("label", &self.label)
                .field("weight", &self.weight)
                .field("allowed_models", &self.allowed_models)
                .field("state", &self.state)
                .finish()
        }
    }

    /// Redacts the client-key hash secret and summarises the key list.
    impl fmt::Debug for Snapshot {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Snapshot")
                .field("version", &self.version)
                .field("providers", &self.providers)
                .field("provider_keys", &self.provider_keys)
                .field("client_keys", &self.client_keys.len())
                .field("routes", &self.routes)
                .field("client_key_hash_secret", &"[redacted]")
                .finish()
        }
    }

    // Domain <-> wire conversions for the shared vocabulary. Readers prefer the enum fields and
    // fall back to the strings a peer of an earlier version sends; writers fill both.

    impl From<Kind> for ProviderKind {
        fn from(k: Kind) -> Self {
            match k {
                Kind::OpenAi => ProviderKind::Openai,
                Kind::OpenAiCompatible => ProviderKind::OpenaiCompatible,
                Kind::Anthropic => ProviderKind::Anthropic,
                Kind::Gemini => ProviderKind::Gemini,
                Kind::AzureOpenAi => ProviderKind::AzureOpenai,
            }
        }
    }

    impl ProviderKind {
        /// The domain kind; `None` for `UNSPECIFIED`.
        pub fn kind(self) -> Option<Kind> {
            match self {
                ProviderKind::Unspecified => None,
                ProviderKind::Openai => Some(Kind::OpenAi),
                ProviderKind::OpenaiCompatible => Some(Kind::OpenAiCompatible),
                ProviderKind::Anthropic => Some(Kind::Anthropic),
                ProviderKind::Gemini => Some(Kind::Gemini),
                ProviderKind::AzureOpenai => Some(Kind::AzureOpenAi),
            }
        }
    }

    impl From<Strategy> for RoutingStrategy {
        fn from(s: Strategy) -> Self {
            match s {
                Strategy::Weighted => RoutingStrategy::Weighted,
                Strategy::LeastInFlight => RoutingStrategy::LeastInflight,
                Strategy::Latency => RoutingStrategy::Latency,
            }
        }
    }

    impl Route {
        /// Sets both the enum and the string form.
        pub fn set_strategy(&mut self, s: Strategy) {
            self.strategy = s.as_str().to_owned();
            self.routing_strategy = RoutingStrategy::from(s) as i32;
        }

        /// The route's strategy: the enum when set, else the string (an older control plane;
        /// empty means the default). `None` when neither names a known strategy.
        pub fn strategy(&self) -> Option<Strategy> {
            match RoutingStrategy::try_from(self.routing_strategy) {
                Ok(RoutingStrategy::Weighted) => Some(Strategy::Weighted),
                Ok(RoutingStrategy::LeastInflight) => Some(Strategy::LeastInFlight),
                Ok(RoutingStrategy::Latency) => Some(Strategy::Latency),
                // Unspecified (an older control plane) or a value this build does not know (a
                // newer one): the string says it.
                Ok(RoutingStrategy::Unspecified) | Err(_) if self.strategy.is_empty() => {
                    Some(Strategy::default())
                }
                Ok(RoutingStrategy::Unspecified) | Err(_) => Strategy::parse(&self.strategy),
            }
        }
    }

    impl From<Period> for BudgetPeriod {
        fn from(p: Period) -> Self {
            match p {
                Period::None => BudgetPeriod::None,
                Period::Daily => BudgetPeriod::Daily,
                Period::Weekly => BudgetPeriod::Weekly,
                Period::Monthly => BudgetPeriod::Monthly,
            }
        }
    }

    impl Budget {
        /// The budget's period; `None` when unspecified or unknown to this build (a budget
        /// nobody can count is refused, not guessed).
        pub fn budget_period(&self) -> Option<Period> {
            match BudgetPeriod::try_from(self.period) {
                Ok(BudgetPeriod::None) => Some(Period::None),
                Ok(BudgetPeriod::Daily) => Some(Period::Daily),
                Ok(BudgetPeriod::Weekly) => Some(Period::Weekly),
                Ok(BudgetPeriod::Monthly) => Some(Period::Monthly),
                Ok(BudgetPeriod::Unspecified) | Err(_) => None,
            }
        }
    }

    /// An outcome's class on the wire: `None` is success.
    impl From<Option<Class>> for FailureClass {
        fn from(c: Option<Class>) -> Self {
            match c {
                None => FailureClass::Ok,
                Some(Class::RateLimited) => FailureClass::RateLimited,
                Some(Class::QuotaExhausted) => FailureClass::QuotaExhausted,
                Some(Class::InvalidKey) => FailureClass::InvalidKey,
                Some(Class::Overloaded) => FailureClass::ProviderUnavailable,
                Some(Class::ClientError) => FailureClass::ClientError,
            }
        }
    }

    /// The string form of an outcome's class (`"ok"` for success).
    pub fn class_str(c: Option<Class>) -> &'static str {
        c.map_or("ok", Class::as_str)
    }

    /// Reads a class from the enum field, falling back to the string: `Some(None)` is success,
    /// `None` is a class this build does not know.
    fn read_class(value: i32, text: &str) -> Option<Option<Class>> {
        match FailureClass::try_from(value) {
            Ok(FailureClass::Ok) => Some(None),
            Ok(FailureClass::RateLimited) => Some(Some(Class::RateLimited)),
            Ok(FailureClass::QuotaExhausted) => Some(Some(Class::QuotaExhausted)),
            Ok(FailureClass::InvalidKey) => Some(Some(Class::InvalidKey)),
            Ok(FailureClass::ProviderUnavailable) => Some(Some(Class::Overloaded)),
            Ok(FailureClass::ClientError) => Some(Some(Class::ClientError)),
            // Unspecified (an older proxy) or a value this build does not know (a newer one):
            // the string says it.
            Ok(FailureClass::Unspecified) | Err(_) if text == "ok" => Some(None),
            Ok(FailureClass::Unspecified) | Err(_) => Class::parse(text).map(Some),
        }
    }

    impl KeyOutcome {
        pub fn set_class(&mut self, c: Option<Class>) {
            self.class = class_str(c).to_owned();
            self.failure_class = FailureClass::from(c) as i32;
        }

        /// See [`read_class`]: `Some(None)` success, `None` unknown.
        pub fn outcome_class(&self) -> Option<Option<Class>> {
            read_class(self.failure_class, &self.class)
        }
    }

    impl Attempt {
        pub fn set_class(&mut self, c: Option<Class>) {
            self.class = class_str(c).to_owned();
            self.failure_class = FailureClass::from(c) as i32;
        }

        pub fn attempt_class(&self) -> Option<Option<Class>> {
            read_class(self.failure_class, &self.class)
        }
    }
}

pub use v1::control_plane_client::ControlPlaneClient;
pub use v1::control_plane_server::{ControlPlane, ControlPlaneServer};

#[cfg(test)]
mod tests {
    use super::v1::*;

    #[test]
    fn debug_never_prints_provider_secret() {
        let key = ProviderKey {
            secret: b"sk-canary-secret-value".to_vec(),
            ..Default::default()
        };
        let snap = Snapshot {
            provider_keys: vec![key],
            client_key_hash_secret: b"hash-secret-bytes".to_vec(),
            ..Default::default()
        };
        let printed = format!("{snap:?} {snap:#?}");
        assert!(!printed.contains("canary"), "{printed}");
        assert!(!printed.contains("hash-secret"), "{printed}");
        assert!(!printed.contains("115, 107"), "byte form leaked: {printed}");
    }

    #[test]
    fn budget_periods_convert_both_ways() {
        for p in llmhub_providers::BudgetPeriod::ALL {
            let b = Budget {
                period: BudgetPeriod::from(p) as i32,
                ..Default::default()
            };
            assert_eq!(b.budget_period(), Some(p));
        }
        for unknown in [BudgetPeriod::Unspecified as i32, 42] {
            let b = Budget {
                period: unknown,
                ..Default::default()
            };
            assert_eq!(b.budget_period(), None);
        }
    }

    #[test]
    fn provider_kinds_convert_both_ways() {
        for k in llmhub_providers::Kind::ALL {
            assert_eq!(ProviderKind::from(k).kind(), Some(k));
        }
        assert_eq!(ProviderKind::Unspecified.kind(), None);
    }

    #[test]
    fn readers_prefer_the_enum_and_fall_back_to_strings() {
        use llmhub_providers::{FailureClass as C, Strategy as S};
        // A route from an older control plane: only the string.
        let old = Route {
            strategy: "latency".into(),
            ..Default::default()
        };
        assert_eq!(old.strategy(), Some(S::Latency));
        assert_eq!(Route::default().strategy(), Some(S::Weighted));
        let unknown = Route {
            strategy: "random".into(),
            ..Default::default()
        };
        assert_eq!(
            unknown.strategy(),
            None,
            "an unknown strategy is not silently weighted"
        );
        let mut new = Route::default();
        new.set_strategy(S::LeastInFlight);
        assert_eq!(new.strategy, "least_inflight");
        new.strategy = "latency".into();
        assert_eq!(new.strategy(), Some(S::LeastInFlight), "the enum wins");
        let newer = Route {
            routing_strategy: 99,
            strategy: "latency".into(),
            ..Default::default()
        };
        assert_eq!(
            newer.strategy(),
            Some(S::Latency),
            "an unknown enum reads the string"
        );

        let old = KeyOutcome {
            class: "quota_exhausted".into(),
            ..Default::default()
        };
        assert_eq!(old.outcome_class(), Some(Some(C::QuotaExhausted)));
        let ok = KeyOutcome {
            class: "ok".into(),
            ..Default::default()
        };
        assert_eq!(ok.outcome_class(), Some(None));
        for c in C::ALL.into_iter().map(Some).chain([None]) {
            let mut o = KeyOutcome::default();
            o.set_class(c);
            assert_eq!(o.outcome_class(), Some(c));
            o.class = "garbage".into();
            assert_eq!(o.outcome_class(), Some(c), "the enum wins");
            let mut a = Attempt::default();
            a.set_class(c);
            assert_eq!(a.attempt_class(), Some(c));
        }
        assert_eq!(KeyOutcome::default().outcome_class(), None);
        let newer = KeyOutcome {
            failure_class: 99,
            class: "rate_limited".into(),
            ..Default::default()
        };
        assert_eq!(newer.outcome_class(), Some(Some(C::RateLimited)));
    }
}
