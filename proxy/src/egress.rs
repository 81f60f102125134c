//! The upstream client's DNS resolver under the egress policy: a provider's host name is
//! resolved here and only the addresses [`EgressPolicy::permits`] are connected to, so a name
//! cannot point (or rebind) the proxy at loopback, a private network or a metadata service.
//! IP-literal URLs never reach a resolver; `upstream::prepare` checks those before sending.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use llmhub_providers::EgressPolicy;
use llmhub_providers::egress::{denied_message, permits_name};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A connection the policy refuses; nothing was sent.
#[derive(Debug)]
pub struct EgressDenied(pub String);

impl std::fmt::Display for EgressDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&denied_message(&self.0))
    }
}

impl Error for EgressDenied {}

/// Resolves with the system resolver and keeps only permitted addresses.
pub struct Resolver(pub Arc<EgressPolicy>);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if !permits_name(&host) {
                return Err(Box::new(EgressDenied(host)) as Box<dyn Error + Send + Sync>);
            }
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(EgressDenied(host)) as Box<dyn Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The refusal somewhere in an error's chain (reqwest wraps the resolver's error).
pub fn denied_in<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a EgressDenied> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<EgressDenied>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}
