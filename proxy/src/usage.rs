//! Usage metering: prompt, completion and cached tokens as the *provider* reported them, on every
//! path a success takes (passthrough JSON and SSE, translated JSON and streams), and each
//! request's cost from the snapshot's prices.
//!
//! Every provider dialect states usage its own way; [`reading`] turns one report into a
//! [`Reading`] whose `prompt` includes the cached tokens (OpenAI's convention):
//!
//! | dialect   | where                                   | prompt                                   | cached                      | completion                    |
//! |-----------|-----------------------------------------|------------------------------------------|-----------------------------|-------------------------------|
//! | OpenAI    | `usage` (the last chunk of a stream)    | `prompt_tokens`                          | `prompt_tokens_details.cached_tokens` | `completion_tokens` |
//! | Responses | `usage`, `response.usage` in `response.completed` | `input_tokens`                 | `input_tokens_details.cached_tokens` | `output_tokens`    |
//! | Anthropic | `usage`, `message.usage` in `message_start`, `usage` in `message_delta` | `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens` | `cache_read_input_tokens` | `output_tokens` |
//! | Gemini    | `usageMetadata` (every stream chunk)    | `promptTokenCount` + `toolUsePromptTokenCount` | `cachedContentTokenCount` | `candidatesTokenCount` + `thoughtsTokenCount` |
//!
//! Every dialect's counts are cumulative, so a later report's fields replace an earlier one's.
//!
//! A passthrough body goes through a [`Meter`]: it forwards the provider's bytes as they come
//! (zero-copy slices of the chunks), finds event boundaries itself and parses only the events
//! that carry a usage object, so a stream is never buffered. The only bytes it copies are an
//! event split across two chunks, which any event parser must reassemble.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::{Buf, Bytes, BytesMut};
use llmhub_providers::{Kind, Op, Serving, Translation};
use memchr::memmem;
use serde_json::Value;

/// Token usage of one request. `cached` is the part of `prompt` the provider served from its
/// prompt cache (never more than `prompt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

/// What usage reports said so far; a field is `None` until some report states it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub cached: Option<u64>,
}

impl Reading {
    /// A newer report's fields replace the older ones: every dialect's counts are cumulative
    /// (Anthropic's `message_delta` restates `output_tokens`, Gemini restates everything).
    pub fn merge(&mut self, newer: Reading) {
        self.prompt = newer.prompt.or(self.prompt);
        self.completion = newer.completion.or(self.completion);
        self.cached = newer.cached.or(self.cached);
    }
}

/// Usage observed while relaying a body: the provider's reports, and how much answer text went
/// out (for an estimate when the reports never came).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub reading: Reading,
    /// Bytes of answer text (content, tool-call arguments, reasoning) relayed to the client.
    pub text_bytes: u64,
}

/// Rough bytes per token of English text and JSON, for estimates only.
const BYTES_PER_TOKEN: u64 = 4;

impl Observed {
    /// The usage to record. For a complete answer that is what the provider reported. For a
    /// stream that stopped early (`cut`: the client went away, or the provider's stream broke)
    /// the provider may never have sent its usage: the completion is then *estimated* from the
    /// answer text relayed (about 4 bytes per token), and a prompt that was never reported is
    /// estimated the same way from the client's request body (`prompt_bytes`). Estimates never
    /// lower a count the provider did report.
    pub fn settle(&self, prompt_bytes: usize, cut: bool) -> Usage {
        let r = self.reading;
        let (prompt, completion) = if cut {
            let text = self.text_bytes.div_ceil(BYTES_PER_TOKEN);
            let body = (prompt_bytes as u64).div_ceil(BYTES_PER_TOKEN);
            (
                r.prompt.unwrap_or(body),
                r.completion.unwrap_or(0).max(text),
            )
        } else {
            (r.prompt.unwrap_or(0), r.completion.unwrap_or(0))
        };
        Usage {
            prompt,
            completion,
            cached: r.cached.unwrap_or(0).min(prompt),
        }
    }
}

/// The usage dialect of what a provider sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    // The order indexes `NEEDLES`.
    /// Chat completions, completions, embeddings (OpenAI and compatible, Azure).
    OpenAi,
    /// OpenAI's Responses API.
    Responses,
    Anthropic,
    Gemini,
}

impl Shape {
    /// The dialect the provider answers in, from how the request is served: the wire operation
    /// when it passes through, the translation's provider side otherwise.
    pub fn of(serving: Serving) -> Shape {
        match serving.translation {
            Translation::None => match serving.wire {
                Op::Messages => Shape::Anthropic,
                Op::Responses => Shape::Responses,
                Op::ChatCompletions | Op::Completions | Op::Embeddings => Shape::OpenAi,
            },
            Translation::OpenAiToAnthropic => Shape::Anthropic,
            Translation::AnthropicToOpenAi => Shape::OpenAi,
            Translation::OpenAiToGemini => Shape::Gemini,
        }
    }

    /// The top-level key of the usage object in a whole response or a stream event.
    fn key(self) -> &'static [u8] {
        match self {
            Shape::Gemini => b"usageMetadata",
            Shape::OpenAi | Shape::Responses | Shape::Anthropic => b"usage",
        }
    }

    /// [`Shape::key`] in quotes, as it appears in JSON text.
    fn quoted_key(self) -> &'static [u8] {
        match self {
            Shape::Gemini => b"\"usageMetadata\"",
            Shape::OpenAi | Shape::Responses | Shape::Anthropic => b"\"usage\"",
        }
    }

    /// JSON keys whose string values are answer text in this dialect's stream events.
    fn text_keys(self) -> &'static [&'static [u8]] {
        match self {
            Shape::OpenAi => &[
                b"\"content\"",
                b"\"arguments\"",
                b"\"text\"",
                b"\"reasoning_content\"",
            ],
            Shape::Responses => &[b"\"delta\""],
            Shape::Anthropic => &[b"\"text\"", b"\"partial_json\"", b"\"thinking\""],
            Shape::Gemini => &[b"\"text\""],
        }
    }
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// The usage a whole response or one stream event reports, if any.
pub fn reading(shape: Shape, v: &Value) -> Option<Reading> {
    let u = match shape {
        Shape::OpenAi => &v["usage"],
        Shape::Gemini => &v["usageMetadata"],
        // A whole response, or a `response.*` event carrying the response.
        Shape::Responses => match &v["usage"] {
            Value::Object(_) => &v["usage"],
            _ => &v["response"]["usage"],
        },
        // A whole message or `message_delta`, or `message_start` carrying the message.
        Shape::Anthropic => match &v["usage"] {
            Value::Object(_) => &v["usage"],
            _ => &v["message"]["usage"],
        },
    };
    u.is_object().then(|| usage_object(shape, u))
}

/// One usage object in the dialect's terms.
fn usage_object(shape: Shape, u: &Value) -> Reading {
    match shape {
        Shape::OpenAi => {
            let prompt = num(&u["prompt_tokens"]);
            // DeepSeek states cache hits as `prompt_cache_hit_tokens`.
            let cached = num(&u["prompt_tokens_details"]["cached_tokens"])
                .or_else(|| num(&u["prompt_cache_hit_tokens"]));
            Reading {
                prompt,
                completion: num(&u["completion_tokens"]),
                cached: prompt.map(|_| cached.unwrap_or(0)),
            }
        }
        Shape::Responses => {
            let prompt = num(&u["input_tokens"]);
            Reading {
                prompt,
                completion: num(&u["output_tokens"]),
                cached: prompt
                    .map(|_| num(&u["input_tokens_details"]["cached_tokens"]).unwrap_or(0)),
            }
        }
        Shape::Anthropic => {
            // `input_tokens` excludes the cache: reads and writes are billed as input too (reads
            // at the cached price; writes are counted at the plain input price).
            let input = num(&u["input_tokens"]);
            let read = num(&u["cache_read_input_tokens"]).unwrap_or(0);
            let write = num(&u["cache_creation_input_tokens"]).unwrap_or(0);
            Reading {
                prompt: input.map(|i| i.saturating_add(read).saturating_add(write)),
                completion: num(&u["output_tokens"]),
                cached: input.map(|_| read),
            }
        }
        Shape::Gemini => {
            let prompt = num(&u["promptTokenCount"])
                .map(|p| p.saturating_add(num(&u["toolUsePromptTokenCount"]).unwrap_or(0)));
            let candidates = num(&u["candidatesTokenCount"]);
            let thoughts = num(&u["thoughtsTokenCount"]);
            // Thinking tokens are billed as output.
            let completion = match (candidates, thoughts) {
                (None, None) => None,
                (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
            };
            Reading {
                prompt,
                completion,
                cached: prompt.map(|_| num(&u["cachedContentTokenCount"]).unwrap_or(0)),
            }
        }
    }
}

/// Price of a model in nano-US-dollars per token (= US dollars per billion tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl Price {
    /// Uncached prompt tokens at the input price, cached ones at the cached price, completion
    /// tokens at the output price. Saturates instead of wrapping.
    pub fn cost(&self, u: &Usage) -> u64 {
        let cached = u.cached.min(u.prompt);
        (u.prompt - cached)
            .saturating_mul(self.input)
            .saturating_add(cached.saturating_mul(self.cached_input))
            .saturating_add(u.completion.saturating_mul(self.output))
    }
}

/// The snapshot's price table. A price is named by a public model, an upstream model, or an
/// upstream model qualified by its provider kind (`anthropic/claude-sonnet-4-20250514`), for
/// when the same name costs differently at two kinds of provider.
#[derive(Debug, Default)]
pub struct Prices {
    by_model: HashMap<String, Price>,
    /// The kind-qualified entries, by kind then upstream model, so a lookup builds no string.
    by_kind: HashMap<Kind, HashMap<String, Price>>,
}

impl Prices {
    pub fn insert(&mut self, model: &str, price: Price) {
        // Every entry is also found by its whole name: an OpenRouter-style upstream model such
        // as `anthropic/claude-3.5-sonnet` is a plain name that merely looks qualified.
        if let Some((prefix, rest)) = model.split_once('/')
            && let Some(kind) = Kind::from_slug(prefix)
        {
            self.by_kind
                .entry(kind)
                .or_default()
                .insert(rest.to_owned(), price);
        }
        self.by_model.insert(model.to_owned(), price);
    }

    pub fn len(&self) -> usize {
        self.by_model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// The price of a request: by the public model the client named (an admin can price a
    /// route as a product), else by the upstream model of the attempt that served it, qualified
    /// by its provider's kind first. `None`: no price is known, and the request costs 0.
    pub fn lookup(&self, public: &str, kind: Option<Kind>, upstream: &str) -> Option<Price> {
        self.by_model
            .get(public)
            .or_else(|| {
                kind.and_then(|k| self.by_kind.get(&k))
                    .and_then(|m| m.get(upstream))
            })
            .or_else(|| self.by_model.get(upstream))
            .copied()
    }
}

/// Largest single SSE event or usage object a meter reassembles. A Responses stream's
/// `response.completed` repeats the whole answer, so this is generous; past it the event is
/// relayed but not metered (its usage is then missing, never wrong).
const MAX_EVENT: usize = 8 << 20;

/// Meters a passthrough body on its way to the client.
pub struct Meter {
    shape: Shape,
    observed: Observed,
    framing: Framing,
}

enum Framing {
    Sse(Sse),
    Json(JsonScan),
}

struct Sse {
    /// Bytes of an event that is not complete yet.
    carry: BytesMut,
    /// Drop usage-only chunks (`choices: []` with `usage`): the proxy asked for them, the client
    /// did not. Complete events only are forwarded then, so one can be left out.
    strip: bool,
    /// The carried event outgrew [`MAX_EVENT`]: relayed unmetered up to its end.
    oversized: bool,
}

impl Meter {
    /// A meter for a body in `shape`'s dialect, framed as SSE (`sse`) or one JSON document.
    /// `strip` removes the usage-only chunk of an OpenAI-family stream (SSE only).
    pub fn new(shape: Shape, sse: bool, strip: bool) -> Meter {
        let framing = if sse {
            Framing::Sse(Sse {
                carry: BytesMut::new(),
                strip,
                oversized: false,
            })
        } else {
            Framing::Json(JsonScan::new(shape.key()))
        };
        Meter {
            shape,
            observed: Observed::default(),
            framing,
        }
    }

    pub fn observed(&self) -> Observed {
        self.observed
    }

    /// Takes one chunk from the provider; returns what to send the client now (`None`: nothing
    /// yet, an event is still incomplete).
    pub fn relay(&mut self, chunk: Bytes) -> Option<Bytes> {
        let shape = self.shape;
        let observed = &mut self.observed;
        match &mut self.framing {
            Framing::Json(scan) => {
                if let Some(r) = scan.feed(&chunk).and_then(|u| parse_usage(shape, &u)) {
                    observed.reading.merge(r);
                }
                Some(chunk)
            }
            Framing::Sse(sse) => sse.relay(chunk, shape, observed),
        }
    }

    /// The upstream body ended: whatever is still held (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        let Framing::Sse(sse) = &mut self.framing else {
            return None;
        };
        if sse.carry.is_empty() {
            return None;
        }
        let tail = sse.carry.split().freeze();
        if !sse.oversized {
            event(&tail, self.shape, &mut self.observed);
        }
        // Held back only when stripping; otherwise it already went out with its chunks.
        sse.strip.then_some(tail)
    }
}

/// Parses a captured usage object.
fn parse_usage(shape: Shape, bytes: &[u8]) -> Option<Reading> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.is_object().then(|| usage_object(shape, &v))
}

impl Sse {
    fn relay(&mut self, chunk: Bytes, shape: Shape, observed: &mut Observed) -> Option<Bytes> {
        if !self.strip {
            // Relayed as it came; the events are only read.
            if self.carry.is_empty() {
                let done = self.scan(&chunk, 0, shape, observed).consumed;
                self.hold(&chunk[done..]);
            } else {
                let searched = self.carry.len();
                self.carry.extend_from_slice(&chunk);
                let carry = std::mem::take(&mut self.carry);
                let done = self.scan(&carry, searched, shape, observed).consumed;
                self.carry = carry;
                self.carry.advance(done);
                self.bound();
            }
            return Some(chunk);
        }
        // Stripping: complete events go out, minus a usage-only chunk; the rest waits.
        let (out, strip) = if self.carry.is_empty() {
            let Scan { consumed, strip } = self.scan(&chunk, 0, shape, observed);
            self.hold(&chunk[consumed..]);
            (chunk.slice(..consumed), strip)
        } else {
            let searched = self.carry.len();
            self.carry.extend_from_slice(&chunk);
            let mut carry = std::mem::take(&mut self.carry);
            let Scan { consumed, strip } = self.scan(&carry, searched, shape, observed);
            let out = carry.split_to(consumed).freeze();
            self.carry = carry;
            self.bound();
            (out, strip)
        };
        let out = match strip {
            None => out,
            Some((0, b)) => out.slice(b..),
            Some((a, b)) if b == out.len() => out.slice(..a),
            // Once per stream at most: the usage chunk between other events of one read.
            Some((a, b)) => Bytes::from([&out[..a], &out[b..]].concat()),
        };
        (!out.is_empty()).then_some(out)
    }

    /// Holds the start of an incomplete event.
    fn hold(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || (self.oversized && !self.strip) {
            return;
        }
        self.carry.extend_from_slice(bytes);
        self.bound();
    }

    /// An event past [`MAX_EVENT`] is relayed unmetered: its bytes are no longer held for
    /// reading (when stripping they are held only until the next chunk sends them on).
    fn bound(&mut self) {
        if self.carry.len() > MAX_EVENT && !self.oversized {
            self.oversized = true;
            if !self.strip {
                self.carry.clear();
            }
        }
    }

    /// Reads the complete events at the start of `buf`, whose first `searched` bytes (held
    /// from earlier chunks) are known to hold no boundary: a long event split over many chunks
    /// is searched once, not once per chunk.
    fn scan(&mut self, buf: &[u8], searched: usize, shape: Shape, observed: &mut Observed) -> Scan {
        let after = |at: usize| boundary(&buf[at..]).map(|(end, full)| (at + end, at + full));
        let mut at = 0;
        let mut strip = None;
        // A boundary may straddle the old end (`\r\n` held, `\r\n` new).
        let mut next = after(searched.saturating_sub(3));
        if self.oversized {
            // The rest of an oversized event: skip to its end unread (sending it on at once
            // when stripping).
            let Some((_, full)) = next else {
                return Scan {
                    consumed: if self.strip { buf.len() } else { 0 },
                    strip: None,
                };
            };
            self.oversized = false;
            at = full;
            next = after(at);
        }
        while let Some((end, full)) = next {
            let usage_only = event(&buf[at..end], shape, observed);
            if self.strip && usage_only && strip.is_none() {
                strip = Some((at, full));
            }
            at = full;
            next = after(at);
        }
        Scan {
            consumed: at,
            strip,
        }
    }
}

struct Scan {
    /// End of the last complete event.
    consumed: usize,
    /// The usage-only chunk's bytes (with its separator), when stripping.
    strip: Option<(usize, usize)>,
}

/// The first event boundary in `buf`: (end of the event's text, end including the blank line,
/// `\n\n` or `\r\n\r\n`).
fn boundary(buf: &[u8]) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => {
                let text_end = if i > 0 && buf[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                return Some((text_end, i + 3));
            }
            _ => {}
        }
    }
    None
}

/// Reads one SSE event: counts its answer text and takes its usage, if it carries any.
/// Returns whether it is a usage-only chunk (`choices: []` with a usage object).
fn event(text: &[u8], shape: Shape, observed: &mut Observed) -> bool {
    let needles = needles(shape);
    for key in &needles.text {
        observed.text_bytes += string_values_len(text, key);
    }
    if !has_object_value(text, &needles.usage) {
        return false;
    }
    let Some(v) = data(text) else {
        return false;
    };
    let Some(r) = reading(shape, &v) else {
        return false;
    };
    observed.reading.merge(r);
    shape == Shape::OpenAi && v["choices"].as_array().is_some_and(Vec::is_empty)
}

/// The JSON of an event's `data:` lines (joined by newlines when there are several).
fn data(event: &[u8]) -> Option<Value> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|l| l.strip_prefix(b" ").unwrap_or(l));
    let first = lines.next()?;
    match lines.next() {
        None => serde_json::from_slice(first).ok(),
        Some(second) => {
            let mut joined = [first, second].join(&b'\n');
            for l in lines {
                joined.push(b'\n');
                joined.extend_from_slice(l);
            }
            serde_json::from_slice(&joined).ok()
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// A shape's searchers, built once: building a substring searcher costs more than running it
/// over one event.
struct Needles {
    usage: memmem::Finder<'static>,
    text: Vec<memmem::Finder<'static>>,
}

static NEEDLES: LazyLock<[Needles; 4]> = LazyLock::new(|| {
    [
        Shape::OpenAi,
        Shape::Responses,
        Shape::Anthropic,
        Shape::Gemini,
    ]
    .map(|shape| Needles {
        usage: memmem::Finder::new(shape.quoted_key()).into_owned(),
        text: shape
            .text_keys()
            .iter()
            .map(|k| memmem::Finder::new(k).into_owned())
            .collect(),
    })
});

fn needles(shape: Shape) -> &'static Needles {
    &NEEDLES[shape as usize]
}

/// The position right after a quoted key and its colon, at each place the key appears.
fn after_key<'a>(
    text: &'a [u8],
    quoted: &'a memmem::Finder<'static>,
) -> impl Iterator<Item = usize> + 'a {
    let len = quoted.needle().len();
    quoted.find_iter(text).filter_map(move |at| {
        let i = skip_ws(text, at + len);
        (text.get(i) == Some(&b':')).then(|| skip_ws(text, i + 1))
    })
}

/// Whether the key appears with an object value (`"usage":null` chunks are not worth parsing).
fn has_object_value(text: &[u8], quoted: &memmem::Finder<'static>) -> bool {
    after_key(text, quoted).any(|i| text.get(i) == Some(&b'{'))
}

/// Bytes of the key's string values in `text` (escapes counted as written: an estimate's
/// input, not an exact length).
fn string_values_len(text: &[u8], quoted: &memmem::Finder<'static>) -> u64 {
    let mut total = 0;
    for i in after_key(text, quoted) {
        if text.get(i) != Some(&b'"') {
            continue;
        }
        let body = &text[i + 1..];
        let mut j = 0;
        while let Some(k) = memchr::memchr2(b'"', b'\\', &body[j..]) {
            if body[j + k] == b'\\' {
                j += k + 2;
                if j >= body.len() {
                    break;
                }
            } else {
                j += k;
                break;
            }
        }
        total += j.min(body.len()) as u64;
    }
    total
}

/// Finds the value of one top-level key of a JSON document as its bytes stream past, without
/// holding the document: a small state machine over depth and strings that captures only the
/// usage object.
struct JsonScan {
    key: &'static [u8],
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1 the next string is a key.
    want_key: bool,
    /// Reading a depth-1 key; `key_len` bytes of it matched `key` so far.
    reading_key: bool,
    key_len: usize,
    key_matches: bool,
    /// The last depth-1 key was `key`: its value comes next.
    matched: bool,
    capture: Option<Vec<u8>>,
    done: bool,
}

impl JsonScan {
    fn new(key: &'static [u8]) -> Self {
        JsonScan {
            key,
            depth: 0,
            in_string: false,
            escaped: false,
            want_key: false,
            reading_key: false,
            key_len: 0,
            key_matches: false,
            matched: false,
            capture: None,
            done: false,
        }
    }

    /// Feeds the next bytes; returns the captured object once it is complete.
    fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut start = self.capture.is_some().then_some(0);
        // Most bytes are inside strings or inside nested values, where only a few bytes
        // matter: those stretches are skipped with vectorised searches, each found position
        // kept until it is passed, so every byte is searched once.
        let mut next_quote = Next::default();
        let mut next_structure = Next::default();
        let mut next_bracket = Next::default();
        let mut i = 0;
        while i < chunk.len() {
            if self.in_string && !self.escaped && !self.reading_key {
                match next_quote.at(i, |from| memchr::memchr2(b'"', b'\\', &chunk[from..])) {
                    Some(k) => i = k,
                    None => break,
                }
            } else if !self.in_string && self.depth >= 2 {
                let a =
                    next_structure.at(i, |from| memchr::memchr3(b'"', b'{', b'}', &chunk[from..]));
                let b = next_bracket.at(i, |from| memchr::memchr2(b'[', b']', &chunk[from..]));
                match (a, b) {
                    (None, None) => break,
                    (a, b) => i = a.unwrap_or(usize::MAX).min(b.unwrap_or(usize::MAX)),
                }
            }
            let b = chunk[i];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                    self.key_matches = false;
                } else if b == b'"' {
                    self.in_string = false;
                    if std::mem::take(&mut self.reading_key) {
                        self.matched = self.key_matches && self.key_len == self.key.len();
                    }
                } else if self.reading_key {
                    self.key_matches &= self.key.get(self.key_len) == Some(&b);
                    self.key_len += 1;
                }
                i += 1;
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.want_key {
                        self.want_key = false;
                        self.reading_key = true;
                        self.key_len = 0;
                        self.key_matches = true;
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 1 && std::mem::take(&mut self.matched) && b == b'{' {
                        self.capture = Some(Vec::new());
                        start = Some(i);
                    }
                    self.depth += 1;
                    self.want_key = b == b'{' && self.depth == 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1
                        && let (Some(mut cap), Some(s)) = (self.capture.take(), start)
                    {
                        cap.extend_from_slice(&chunk[s..=i]);
                        self.done = true;
                        return Some(cap);
                    }
                }
                b',' if self.depth == 1 => {
                    self.want_key = true;
                    self.matched = false;
                }
                _ => {}
            }
            i += 1;
        }
        if let (Some(cap), Some(s)) = (self.capture.as_mut(), start) {
            cap.extend_from_slice(&chunk[s..]);
            if cap.len() > MAX_EVENT {
                self.capture = None;
                self.done = true;
            }
        }
        None
    }
}

/// The next position of a searched set of bytes at or after some point, remembered until the
/// scan passes it.
#[derive(Default)]
struct Next {
    /// (searched from, found at): `None` found means none after `from`.
    known: Option<(usize, Option<usize>)>,
}

impl Next {
    fn at(&mut self, from: usize, search: impl FnOnce(usize) -> Option<usize>) -> Option<usize> {
        match self.known {
            Some((searched, found)) if searched <= from && found.is_none_or(|f| f >= from) => found,
            _ => {
                let found = search(from).map(|k| from + k);
                self.known = Some((from, found));
                found
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(prompt: u64, completion: u64, cached: u64) -> Reading {
        Reading {
            prompt: Some(prompt),
            completion: Some(completion),
            cached: Some(cached),
        }
    }

    #[test]
    fn each_dialects_usage_shapes() {
        let cases = [
            (
                Shape::OpenAi,
                json!({"usage": {"prompt_tokens": 120, "completion_tokens": 30,
                    "prompt_tokens_details": {"cached_tokens": 100}}}),
                Some(r(120, 30, 100)),
            ),
            (
                Shape::OpenAi,
                json!({"usage": {"prompt_tokens": 7, "total_tokens": 7}}),
                Some(Reading {
                    prompt: Some(7),
                    completion: None,
                    cached: Some(0),
                }),
            ),
            (
                Shape::OpenAi,
                json!({"usage": {"prompt_tokens": 50, "completion_tokens": 5, "prompt_cache_hit_tokens": 40}}),
                Some(r(50, 5, 40)),
            ),
            (Shape::OpenAi, json!({"usage": null, "choices": []}), None),
            (
                Shape::Responses,
                json!({"usage": {"input_tokens": 90, "output_tokens": 12,
                    "input_tokens_details": {"cached_tokens": 64}}}),
                Some(r(90, 12, 64)),
            ),
            (
                Shape::Responses,
                json!({"type": "response.completed", "response": {"usage": {"input_tokens": 9, "output_tokens": 3}}}),
                Some(r(9, 3, 0)),
            ),
            (
                Shape::Responses,
                json!({"type": "response.created", "response": {"usage": null}}),
                None,
            ),
            (
                Shape::Anthropic,
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 10,
                    "cache_read_input_tokens": 200, "cache_creation_input_tokens": 30, "output_tokens": 1}}}),
                Some(r(240, 1, 200)),
            ),
            (
                Shape::Anthropic,
                json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
                Some(Reading {
                    prompt: None,
                    completion: Some(42),
                    cached: None,
                }),
            ),
            (
                Shape::Gemini,
                json!({"usageMetadata": {"promptTokenCount": 80, "candidatesTokenCount": 6,
                    "thoughtsTokenCount": 4, "cachedContentTokenCount": 64}}),
                Some(r(80, 10, 64)),
            ),
            (
                Shape::Gemini,
                json!({"usageMetadata": {"promptTokenCount": 8}}),
                Some(Reading {
                    prompt: Some(8),
                    completion: None,
                    cached: Some(0),
                }),
            ),
        ];
        for (shape, v, want) in cases {
            assert_eq!(reading(shape, &v), want, "{shape:?} {v}");
        }
    }

    #[test]
    fn later_reports_replace_what_they_state() {
        let mut seen = Reading::default();
        seen.merge(r(240, 1, 200));
        seen.merge(Reading {
            completion: Some(42),
            ..Reading::default()
        });
        assert_eq!(seen, r(240, 42, 200));
    }

    #[test]
    fn cost_prices_cached_prompt_tokens_apart() {
        let p = Price {
            input: 2500,
            output: 10_000,
            cached_input: 1250,
        };
        let u = Usage {
            prompt: 1000,
            completion: 100,
            cached: 400,
        };
        assert_eq!(p.cost(&u), 600 * 2500 + 400 * 1250 + 100 * 10_000);
        let absurd = Usage {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: 0,
        };
        assert_eq!(p.cost(&absurd), u64::MAX, "saturates");
    }

    #[test]
    fn prices_by_public_then_kind_qualified_then_upstream_model() {
        let p = |n| Price {
            input: n,
            output: n,
            cached_input: n,
        };
        let mut prices = Prices::default();
        prices.insert("gpt-4o", p(1));
        prices.insert("my-product", p(2));
        prices.insert("azure-openai/gpt-4o", p(3));
        prices.insert("anthropic/claude-3.5-sonnet", p(4));
        let lookup = |public, kind, upstream| prices.lookup(public, kind, upstream);
        assert_eq!(
            lookup("my-product", Some(Kind::OpenAi), "gpt-4o"),
            Some(p(2))
        );
        assert_eq!(lookup("x", Some(Kind::OpenAi), "gpt-4o"), Some(p(1)));
        assert_eq!(lookup("x", Some(Kind::AzureOpenAi), "gpt-4o"), Some(p(3)));
        assert_eq!(
            lookup(
                "x",
                Some(Kind::OpenAiCompatible),
                "anthropic/claude-3.5-sonnet"
            ),
            Some(p(4)),
            "a slash in an upstream name is just a name"
        );
        assert_eq!(lookup("x", None, "unknown"), None);
    }

    #[test]
    fn a_cut_stream_estimates_what_was_never_reported() {
        let o = Observed {
            reading: Reading::default(),
            text_bytes: 41,
        };
        assert_eq!(
            o.settle(400, true),
            Usage {
                prompt: 100,
                completion: 11,
                cached: 0
            }
        );
        assert_eq!(
            o.settle(400, false),
            Usage::default(),
            "complete: as reported"
        );
        let anthropic = Observed {
            reading: r(240, 1, 200),
            text_bytes: 80,
        };
        assert_eq!(
            anthropic.settle(10, true),
            Usage {
                prompt: 240,
                completion: 20,
                cached: 200
            },
            "the reported prompt stands; the early output count is raised by the text"
        );
    }

    fn sse(events: &[Value]) -> String {
        let mut s: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn openai_stream(with_usage: bool) -> String {
        let mut events = vec![
            json!({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": null}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": null}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}], "usage": null}),
        ];
        if with_usage {
            events.push(json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 16}}}));
        }
        sse(&events)
    }

    /// Feeds `body` in pieces of `split` bytes; returns what the client got and the meter.
    fn run(meter: &mut Meter, body: &str, split: usize) -> String {
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(split) {
            if let Some(b) = meter.relay(Bytes::copy_from_slice(piece)) {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = meter.finish() {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_openai_stream_is_metered_across_any_chunk_boundaries() {
        let body = openai_stream(true);
        for split in [1, 2, 3, 7, 50, body.len()] {
            let mut m = Meter::new(Shape::OpenAi, true, false);
            let out = run(&mut m, &body, split);
            assert_eq!(out, body, "split {split}: relayed unchanged");
            assert_eq!(m.observed().reading, r(20, 2, 16), "split {split}");
            assert_eq!(m.observed().text_bytes, 11, "split {split}");
        }
    }

    #[test]
    fn the_injected_usage_chunk_is_stripped_and_nothing_else() {
        let body = openai_stream(true);
        let without = openai_stream(false);
        for split in [1, 4, 9, 64, 200, body.len()] {
            let mut m = Meter::new(Shape::OpenAi, true, true);
            let out = run(&mut m, &body, split);
            assert_eq!(out, without, "split {split}");
            assert_eq!(m.observed().reading, r(20, 2, 16), "split {split}");
        }
        // CRLF framing, and a provider that sends usage alongside a choice (kept: it is not a
        // usage-only chunk).
        let crlf = body.replace("\n\n", "\r\n\r\n");
        let mut m = Meter::new(Shape::OpenAi, true, true);
        assert_eq!(run(&mut m, &crlf, 5), without.replace("\n\n", "\r\n\r\n"));
        let mixed = sse(&[
            json!({"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
        ]);
        let mut m = Meter::new(Shape::OpenAi, true, true);
        assert_eq!(run(&mut m, &mixed, 10), mixed);
        assert_eq!(m.observed().reading.completion, Some(1));
    }

    #[test]
    fn azure_content_filter_chunks_without_usage_are_not_stripped() {
        let body = sse(&[
            json!({"choices": [], "prompt_filter_results": [{"prompt_index": 0}]}),
            json!({"choices": [{"delta": {"content": "hi"}}]}),
        ]);
        let mut m = Meter::new(Shape::OpenAi, true, true);
        assert_eq!(run(&mut m, &body, 7), body);
    }

    #[test]
    fn an_unterminated_last_event_is_still_relayed_and_read() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}]}\n\ndata: [DONE]";
        let mut m = Meter::new(Shape::OpenAi, true, true);
        assert_eq!(run(&mut m, body, 6), body);
        assert_eq!(m.observed().text_bytes, 4);
    }

    #[test]
    fn an_oversized_event_is_relayed_unmetered_and_metering_resumes_after_it() {
        let huge = "x".repeat(MAX_EVENT + 1000);
        let events = [
            json!({"choices": [{"delta": {"content": huge}}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}),
        ];
        let body = sse(&events);
        let without = sse(&events[..1]);
        for strip in [false, true] {
            let mut m = Meter::new(Shape::OpenAi, true, strip);
            let out = run(&mut m, &body, 64 * 1024);
            assert_eq!(out.len(), if strip { without.len() } else { body.len() });
            assert!(
                out == if strip {
                    without.as_str()
                } else {
                    body.as_str()
                }
            );
            assert_eq!(m.observed().reading.completion, Some(9), "strip {strip}");
        }
    }

    #[test]
    fn anthropic_streams_report_input_at_start_and_output_at_the_end() {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let body = [
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "m", "content": [], "usage":
                {"input_tokens": 12, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there"}}),
            ),
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
            ),
            ev("message_stop", json!({"type": "message_stop"})),
        ]
        .concat();
        for split in [1, 13, body.len()] {
            let mut m = Meter::new(Shape::Anthropic, true, false);
            assert_eq!(run(&mut m, &body, split), body);
            assert_eq!(m.observed().reading, r(312, 9, 300), "split {split}");
            assert_eq!(m.observed().text_bytes, 8);
        }
    }

    #[test]
    fn responses_streams_report_usage_in_response_completed() {
        let ev = |data: Value| {
            format!(
                "event: {}\ndata: {data}\n\n",
                data["type"].as_str().unwrap()
            )
        };
        let body = [
            ev(json!({"type": "response.created", "response": {"id": "r", "usage": null}})),
            ev(json!({"type": "response.output_text.delta", "delta": "Hello"})),
            ev(json!({"type": "response.completed", "response": {"id": "r",
                "output": [{"content": [{"text": "Hello \"usage\": {}"}]}],
                "usage": {"input_tokens": 30, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 0}}}})),
        ]
        .concat();
        for split in [3, body.len()] {
            let mut m = Meter::new(Shape::Responses, true, false);
            run(&mut m, &body, split);
            assert_eq!(m.observed().reading, r(30, 2, 0), "split {split}");
            assert_eq!(m.observed().text_bytes, 5);
        }
    }

    #[test]
    fn json_bodies_are_metered_without_being_held() {
        let bodies = [
            (
                Shape::OpenAi,
                json!({"id": "x", "choices": [{"message": {"content": "a \"usage\": {\"prompt_tokens\": 999} b"}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}}}),
                r(11, 4, 3),
            ),
            (
                Shape::OpenAi,
                json!({"object": "list", "data": [{"embedding": [0.1, -2.5e-3, 3]}], "usage": {"prompt_tokens": 6, "total_tokens": 6}}),
                Reading {
                    prompt: Some(6),
                    completion: None,
                    cached: Some(0),
                },
            ),
            (
                Shape::Anthropic,
                json!({"usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 3},
                    "content": [{"type": "text", "text": "{\"usage\":{}}"}], "meta": {"usage": {"input_tokens": 1}}}),
                r(7, 3, 2),
            ),
            (
                Shape::Gemini,
                json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}}],
                    "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3}}),
                r(4, 3, 0),
            ),
        ];
        for (shape, v, want) in bodies {
            let text = serde_json::to_string_pretty(&v).unwrap();
            for split in [1, 5, text.len()] {
                let mut m = Meter::new(shape, false, false);
                assert_eq!(run(&mut m, &text, split), text, "relayed unchanged");
                assert_eq!(m.observed().reading, want, "{shape:?} split {split}");
            }
        }
    }

    #[test]
    fn serving_decides_the_shape() {
        for (serving, shape) in [
            (Serving::native(Op::ChatCompletions), Shape::OpenAi),
            (Serving::native(Op::Embeddings), Shape::OpenAi),
            (Serving::native(Op::Responses), Shape::Responses),
            (Serving::native(Op::Messages), Shape::Anthropic),
            (
                Serving {
                    wire: Op::Messages,
                    translation: Translation::OpenAiToAnthropic,
                },
                Shape::Anthropic,
            ),
            (
                Serving {
                    wire: Op::ChatCompletions,
                    translation: Translation::OpenAiToGemini,
                },
                Shape::Gemini,
            ),
        ] {
            assert_eq!(Shape::of(serving), shape);
        }
    }
}
