//! The end-to-end suite as one test binary (one link instead of one per file). Each module is a
//! former test file; test names carry the module path, e.g. `accounts::login_lockout_sqlite`.
//!
//! Every test spawns the real binaries, so build the workspace first: `cargo test --workspace`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

/// Runs each scenario `async fn name(backend: Backend) -> anyhow::Result<()>` of the calling
/// module as two tests, `name::sqlite` and `name::postgres`, so one failing scenario or backend
/// hides no other.
macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$scenario(llmhub_e2e::harness::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$scenario(llmhub_e2e::harness::Backend::Postgres).await
            }
        }
    )+};
}

mod accounts;
mod architecture;
mod catalog;
mod dialects;
mod ledger;
mod limits;
mod mtls;
mod records;
mod routing;
mod sdk;
mod skeleton;
mod up;
mod usage;
mod vault;
