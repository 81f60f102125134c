//! One request's context, carried through the phases: its id, the client's dialect, the facts
//! the access log wants, and the routing record. Finishing emits the access-log event and sends
//! the record, exactly once: when the response is complete, when a relayed body ends, or (on
//! drop) when the client went away first.

use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method};
use llmhub_proto::v1 as pb;
use llmhub_providers::Dialect;

use crate::control::Reporter;
use crate::limits::{Amounts, Ticket};

/// Facts gathered along the way for the access log.
#[derive(Default, Debug)]
pub struct LogFields {
    pub model: Option<String>,
    pub client_prefix: Option<String>,
    pub provider: Option<String>,
    pub key_fingerprint: Option<String>,
    pub attempts: u32,
}

struct Trail {
    request_id: HeaderValue,
    method: Method,
    path: String,
    started: Instant,
    log: LogFields,
    record: Option<pb::RoutingRecord>,
    reporter: Reporter,
    tickets: Vec<Ticket>,
}

impl Trail {
    fn emit(mut self, status: u16) {
        let latency = self.started.elapsed();
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or_default(),
            method = %self.method,
            path = %self.path,
            status,
            latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            model = self.log.model.as_deref().unwrap_or(""),
            client_key = self.log.client_prefix.as_deref().unwrap_or(""),
            provider = self.log.provider.as_deref().unwrap_or(""),
            key = self.log.key_fingerprint.as_deref().unwrap_or(""),
            attempts = self.log.attempts,
            "request"
        );
        // The limits learn what the request really used: the provider's usage when it reported
        // some, nothing for a request that failed without any, else the estimate stands.
        let used = self
            .record
            .as_ref()
            .map_or(Amounts::default(), |r| Amounts {
                tokens: r.prompt_tokens + r.completion_tokens,
                cost_nanos: r.cost_nanos,
            });
        for t in &mut self.tickets {
            if used.tokens > 0 {
                t.settle(used);
            } else if !(200..300).contains(&status) {
                t.settle(Amounts::default());
            }
        }
        drop(std::mem::take(&mut self.tickets));
        if let Some(mut r) = self.record {
            r.status = u32::from(status);
            r.latency_ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
            self.reporter.record(r);
        }
    }
}

/// The per-request context.
pub struct Exchange {
    pub request_id: HeaderValue,
    /// Decided once, when the request arrives; every error is rendered in it.
    pub dialect: Dialect,
    pub log: LogFields,
    started: Instant,
    method: Method,
    path: String,
    record: Option<pb::RoutingRecord>,
    reporter: Reporter,
    open: bool,
    /// Limit reservations, settled when the exchange finishes (so a stream holds its
    /// concurrency slot until it ends).
    tickets: Vec<Ticket>,
}

impl Exchange {
    pub fn new(dialect: Dialect, method: Method, path: String, reporter: Reporter) -> Self {
        Exchange {
            request_id: HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple()))
                .expect("uuid is header-safe"),
            dialect,
            log: LogFields::default(),
            started: Instant::now(),
            method,
            path,
            record: None,
            reporter,
            open: true,
            tickets: Vec::new(),
        }
    }

    /// Starts the routing record once the request is admitted and planned.
    pub fn start_record(&mut self, record: pb::RoutingRecord) {
        self.record = Some(record);
    }

    /// Keeps a limit reservation until the exchange finishes.
    pub fn hold(&mut self, ticket: Ticket) {
        self.tickets.push(ticket);
    }

    pub fn record(&mut self) -> Option<&mut pb::RoutingRecord> {
        self.record.as_mut()
    }

    /// Notes a candidate that was passed over, for the routing record.
    pub fn skip(&mut self, line: String) {
        if let Some(r) = self.record.as_mut() {
            r.skipped.push(line);
        }
    }

    pub fn push_attempt(&mut self, a: pb::Attempt) {
        if let Some(r) = self.record.as_mut() {
            r.attempts.push(a);
        }
    }

    /// Finishes now with the response's status (a no-op once finished or handed off).
    pub fn finish(&mut self, status: u16) {
        if let Some(t) = self.take_trail() {
            t.emit(status);
        }
    }

    /// Hands finishing over to a response body that completes later.
    pub fn hand_off(&mut self) -> Finish {
        Finish(self.take_trail())
    }

    fn take_trail(&mut self) -> Option<Trail> {
        if !std::mem::take(&mut self.open) {
            return None;
        }
        Some(Trail {
            request_id: self.request_id.clone(),
            method: self.method.clone(),
            path: std::mem::take(&mut self.path),
            started: self.started,
            log: std::mem::take(&mut self.log),
            record: self.record.take(),
            reporter: self.reporter.clone(),
            tickets: std::mem::take(&mut self.tickets),
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // 499: the client closed the connection before an answer was ready.
        self.finish(499);
    }
}

/// The rest of an exchange, owned by a relayed body.
pub struct Finish(Option<Trail>);

impl Finish {
    pub fn done(&mut self, status: u16) {
        if let Some(t) = self.0.take() {
            t.emit(status);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // 499: the client closed the connection before the body was complete.
        self.done(499);
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(0),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
