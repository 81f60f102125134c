//! End-to-end test support: spawns the real `llmhub-control` and `llmhub-proxy` binaries on
//! port 0 against real SQLite files or uniquely named Postgres databases, plus a mock provider.

pub mod harness;
pub mod mock;
