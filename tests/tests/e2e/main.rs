//! The end-to-end suite as one test binary (one link instead of one per file). Each module is a
//! former test file; test names carry the module path, e.g. `accounts::login_lockout_sqlite`.
//!
//! Every test spawns the real binaries, so build the workspace first: `cargo test --workspace`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod accounts;
mod dialects;
mod mtls;
mod routing;
mod sdk;
mod skeleton;
mod up;
mod vault;
