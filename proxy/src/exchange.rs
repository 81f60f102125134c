//! One request's context, carried through the phases: its id, the client's dialect, the facts
//! the access log wants, and the routing record. Finishing emits the access-log event and sends
//! the record, exactly once: when the response is complete, when a relayed body ends, or (on
//! drop) when the client went away first. The record carries the answer's usage and its cost at
//! the price of the model that served it.

use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method};
use llmhub_proto::v1 as pb;
use llmhub_providers::Dialect;

use crate::control::Reporter;
use crate::limits::{Amounts, Ticket};
use crate::usage::{Price, Usage};

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
    price: Option<Price>,
    reporter: Reporter,
    tickets: Vec<Ticket>,
}

impl Trail {
    /// `partial`: the client went away before the answer ended; `usage` covers what was
    /// delivered.
    fn emit(mut self, status: u16, usage: Usage, partial: bool) {
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
            prompt_tokens = usage.prompt,
            completion_tokens = usage.completion,
            "request"
        );
        // No price known for the model: the cost is 0 (the control plane stores it as unknown
        // when there were tokens to pay for).
        let cost_nanos = self.price.map_or(0, |p| p.cost(&usage));
        // The limits learn what the request really used: the provider's usage when it reported
        // some (or what a cut stream delivered), nothing for a request that failed without any,
        // else the estimate stands.
        let used = Amounts {
            tokens: usage.prompt + usage.completion,
            cost_nanos,
        };
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
            r.prompt_tokens = usage.prompt;
            r.completion_tokens = usage.completion;
            r.cached_tokens = usage.cached;
            r.partial = partial;
            r.cost_nanos = cost_nanos;
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
    /// The price of the model that served the answer, once an attempt succeeded.
    price: Option<Price>,
    /// Usage of an answer the exchange finishes itself (a translated JSON answer).
    usage: Usage,
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
            price: None,
            usage: Usage::default(),
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

    /// The price the answer's cost is computed at.
    pub fn set_price(&mut self, price: Option<Price>) {
        self.price = price;
    }

    /// The usage of an answer that is complete before the response goes out.
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = usage;
    }

    /// Finishes now with the response's status (a no-op once finished or handed off).
    pub fn finish(&mut self, status: u16) {
        self.finish_with(status, false);
    }

    fn finish_with(&mut self, status: u16, partial: bool) {
        let usage = self.usage;
        if let Some(t) = self.take_trail() {
            t.emit(status, usage, partial);
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
            price: self.price,
            reporter: self.reporter.clone(),
            tickets: std::mem::take(&mut self.tickets),
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // 499: the client closed the connection before an answer was ready.
        self.finish_with(499, true);
    }
}

/// The rest of an exchange, owned by a relayed body.
pub struct Finish(Option<Trail>);

impl Finish {
    /// Finishes with the body's status and the usage it carried (`partial`: the client went
    /// away first). Only the first call counts.
    pub fn done(&mut self, status: u16, usage: Usage, partial: bool) {
        if let Some(t) = self.0.take() {
            t.emit(status, usage, partial);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // 499: the client closed the connection before the body was complete. The relay
        // normally finishes first with the usage it saw; this is the backstop.
        self.done(499, Usage::default(), true);
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
