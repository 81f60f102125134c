//! The gRPC contract between `llmhub-proxy` and `llmhub-control`, generated from
//! `proto/hub.proto`, plus the hand-written pieces the generated code cannot carry (redacting Debug
//! for the messages that hold secrets).

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("llmhub.v1");

    use std::fmt;

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

    impl ProviderKind {
        /// The name used in configuration and the admin API.
        pub fn slug(self) -> &'static str {
            match self {
                ProviderKind::Unspecified => "unspecified",
                ProviderKind::Openai => "openai",
                ProviderKind::OpenaiCompatible => "openai-compatible",
                ProviderKind::Anthropic => "anthropic",
                ProviderKind::Gemini => "gemini",
                ProviderKind::AzureOpenai => "azure-openai",
            }
        }

        pub fn from_slug(s: &str) -> Option<Self> {
            Some(match s {
                "openai" => ProviderKind::Openai,
                "openai-compatible" => ProviderKind::OpenaiCompatible,
                "anthropic" => ProviderKind::Anthropic,
                "gemini" => ProviderKind::Gemini,
                "azure-openai" => ProviderKind::AzureOpenai,
                _ => return None,
            })
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
    fn provider_kind_slugs_round_trip() {
        for k in [
            ProviderKind::Openai,
            ProviderKind::OpenaiCompatible,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
            ProviderKind::AzureOpenai,
        ] {
            assert_eq!(ProviderKind::from_slug(k.slug()), Some(k));
        }
        assert_eq!(ProviderKind::from_slug("nope"), None);
    }
}
