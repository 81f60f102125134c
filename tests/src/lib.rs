//! End-to-end test support: spawns the real `llmhub-control` and `llmhub-proxy` binaries on
//! port 0 against real SQLite files or uniquely named Postgres databases, plus a mock provider.

// Test support code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

pub mod harness;
pub mod mock;
