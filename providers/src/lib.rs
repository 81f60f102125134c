//! The provider vocabulary both planes share, with no IO: provider kinds (one module each behind
//! [`Spec`]), presets, key formats, operations and dialects, per-kind endpoints and credentials,
//! the models probe, failure classes with the classifier and its header parsers, routing
//! strategies and budget periods. The proxy uses it to route and classify; the control plane uses
//! the same code to validate admin input and to test a key, so both planes always agree.

pub mod budget;
pub mod classify;
pub mod egress;
pub mod kind;
pub mod kinds;
pub mod op;
pub mod presets;
pub mod routing;
pub mod spec;
pub mod upstream;

pub use budget::BudgetPeriod;
pub use classify::{FailureClass, Verdict};
pub use egress::{Cidr, EgressPolicy};
pub use kind::Kind;
pub use kinds::anthropic::ANTHROPIC_VERSION;
pub use op::{Dialect, Op, Serving, Translation};
pub use routing::Strategy;
pub use spec::{Endpoint, Spec};
pub use upstream::{Upstream, models_request, upstream, validate_key};
