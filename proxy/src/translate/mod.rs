//! Translation between client dialects and provider dialects. Each direction is a pure function
//! over JSON (requests, responses) or a small state machine over SSE events (streams), so it can
//! be tested table by table without a network.

pub mod anthropic;
