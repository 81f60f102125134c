//! The proxy's shared state for the public API: what every request reads, built once at start.

use std::sync::Arc;

use crate::clock::Clock;
use crate::control::Reporter;
use crate::health::Health;
use crate::limits::Limiter;
use crate::state::SnapshotCell;

pub struct App {
    /// The current snapshot (one atomic load per request).
    pub cell: Arc<SnapshotCell>,
    /// This proxy's key and provider health (lock-free reads).
    pub health: Arc<Health>,
    /// One pooled upstream client for every provider.
    pub http: reqwest::Client,
    /// Non-blocking queues to the control plane.
    pub reporter: Reporter,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    /// Where provider traffic may go (the client's resolver enforces it for names too).
    pub egress: Arc<llmhub_providers::EgressPolicy>,
    /// Fleet-wide request, token and concurrency limits.
    pub limiter: Arc<Limiter>,
}
