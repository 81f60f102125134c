//! OpenAI Chat Completions served by Anthropic's Messages API.
//!
//! Request: system messages → `system`; text and image parts; assistant `tool_calls` →
//! `tool_use` blocks; `tool` messages → `tool_result` blocks; tools and `tool_choice`; `stop` →
//! `stop_sequences`; `max_tokens`/`max_completion_tokens`. Fields Anthropic cannot honour are
//! refused with a 400 naming them, never dropped silently.
//!
//! Response and stream: text and `tool_use` back to `message.content` / `tool_calls`, stop
//! reasons, usage; Anthropic's `message_start` / `content_block_*` / `message_delta` /
//! `message_stop` events to `chat.completion.chunk`s ending in `[DONE]`.

use serde_json::{Map, Value, json};

use super::field;
use crate::usage::{Observed, Shape, reading};

/// Anthropic requires `max_tokens`; OpenAI clients often omit it.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Request fields that translate (or need no translation).
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "user",
    "n",
    "parallel_tool_calls",
    "metadata",
];

fn bad(msg: impl Into<String>) -> String {
    msg.into()
}

/// An OpenAI content part → an Anthropic content block.
fn part(p: &Value) -> Result<Value, String> {
    match p["type"].as_str() {
        Some("text") => Ok(json!({"type": "text", "text": p["text"].as_str().unwrap_or("")})),
        Some("image_url") => {
            let url = p["image_url"]["url"].as_str().unwrap_or("");
            if let Some(rest) = url.strip_prefix("data:") {
                let (meta, data) = rest
                    .split_once(',')
                    .ok_or_else(|| bad("messages: an image data URL has no data"))?;
                let media_type = meta
                    .strip_suffix(";base64")
                    .ok_or_else(|| bad("messages: image data URLs must be base64 encoded"))?;
                Ok(
                    json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
                )
            } else if url.starts_with("https://") || url.starts_with("http://") {
                Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
            } else {
                Err(bad(
                    "messages: image_url must be a data URL or an http(s) URL",
                ))
            }
        }
        other => Err(format!(
            "messages: content part type {other:?} is not supported by this model's provider"
        )),
    }
}

fn content_blocks(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts.iter().map(part).collect(),
        Value::Null => Ok(vec![]),
        _ => Err(bad(
            "messages: content must be a string or an array of parts",
        )),
    }
}

/// Appends blocks to the last message when it has the same role (Anthropic wants alternation).
fn push(out: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = out.last_mut()
        && last["role"] == role
        && let Some(arr) = last["content"].as_array_mut()
    {
        arr.extend(blocks);
        return;
    }
    out.push(json!({"role": role, "content": blocks}));
}

/// Translates an OpenAI chat request (model already set to the upstream model).
pub fn request(openai: &Map<String, Value>) -> Result<Value, String> {
    if let Some(unknown) = openai.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "`{unknown}` is not supported when this model is served by an Anthropic provider"
        ));
    }
    if openai
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return Err(bad("`n` must be 1 for this model"));
    }
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in field(openai, "messages").as_array().into_iter().flatten() {
        match m["role"].as_str() {
            Some("system" | "developer") => system.extend(content_blocks(&m["content"])?),
            Some("user") => push(&mut messages, "user", content_blocks(&m["content"])?),
            Some("assistant") => {
                let mut blocks = content_blocks(&m["content"])?;
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(args)
                        .map_err(|_| bad("messages: tool call arguments must be JSON"))?;
                    blocks.push(json!({"type": "tool_use", "id": call["id"],
                        "name": call["function"]["name"], "input": input}));
                }
                push(&mut messages, "assistant", blocks);
            }
            Some("tool") => {
                let content = match &m["content"] {
                    Value::String(s) => json!(s),
                    other => json!(content_blocks(other)?),
                };
                push(
                    &mut messages,
                    "user",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": content}),
                    ],
                );
            }
            other => return Err(format!("messages: role {other:?} is not supported")),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), field(openai, "model").clone());
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let max_tokens = openai
        .get("max_completion_tokens")
        .or_else(|| openai.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    for k in ["temperature", "top_p", "stream"] {
        if let Some(v) = openai.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    match openai.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = openai.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = openai.get("tools").and_then(Value::as_array) {
        let mut t = Vec::new();
        for tool in tools {
            if tool["type"] != "function" {
                return Err(bad("tools: only function tools are supported"));
            }
            let f = &tool["function"];
            let mut def = json!({"name": f["name"], "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(d) = f.get("description") {
                def["description"] = d.clone();
            }
            t.push(def);
        }
        out.insert("tools".into(), Value::Array(t));
    }
    if let Some(choice) = openai.get("tool_choice") {
        let mapped = match choice {
            Value::String(s) if s == "auto" => json!({"type": "auto"}),
            Value::String(s) if s == "required" => json!({"type": "any"}),
            Value::String(s) if s == "none" => json!({"type": "none"}),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"type": "tool", "name": o["function"]["name"]})
            }
            _ => return Err(bad("tool_choice: unsupported value")),
        };
        out.insert("tool_choice".into(), mapped);
    }
    Ok(Value::Object(out))
}

pub fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        Some("end_turn" | "stop_sequence") => json!("stop"),
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        None => Value::Null,
        Some(_) => json!("stop"),
    }
}

/// A message's usage in OpenAI's terms (the cache reads and writes count as prompt tokens).
fn usage(message: &Value) -> Value {
    super::openai_usage(&reading(Shape::Anthropic, message).unwrap_or_default())
}

/// Translates a Messages response into a `chat.completion` named after the public model.
pub fn response(anthropic: &Value, public_model: &str, created: u64) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in anthropic["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": format!("chatcmpl-{}", anthropic["id"].as_str().unwrap_or("anthropic")),
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [{"index": 0, "message": message,
            "finish_reason": finish_reason(anthropic["stop_reason"].as_str())}],
        "usage": usage(anthropic),
    })
}

/// Translates an Anthropic error body into OpenAI's error shape.
pub fn error(anthropic: &Value) -> Value {
    let ty = anthropic["error"]["type"].as_str().unwrap_or("api_error");
    json!({"error": {
        "message": anthropic["error"]["message"].as_str().unwrap_or("the provider rejected the request"),
        "type": if ty == "invalid_request_error" { "invalid_request_error" } else { ty },
        "param": null, "code": null,
    }})
}

/// Turns Anthropic's SSE events into OpenAI chunk events.
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    buf: Vec<u8>,
    /// Anthropic block index → OpenAI tool-call index.
    tool_index: std::collections::HashMap<u64, u64>,
    observed: Observed,
    finish: Value,
    done: bool,
}

impl StreamTranslator {
    pub fn new(public_model: &str, created: u64, include_usage: bool) -> Self {
        StreamTranslator {
            id: "chatcmpl-anthropic".into(),
            model: public_model.to_owned(),
            created,
            include_usage,
            buf: Vec::new(),
            tool_index: Default::default(),
            observed: Observed::default(),
            finish: Value::Null,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    }

    /// Feeds bytes from upstream; returns the OpenAI events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some(end) = super::event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&event[..end.0]).into_owned();
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            out.push_str(&self.event(&v));
        }
        out
    }

    fn event(&mut self, v: &Value) -> String {
        if let Some(r) = reading(Shape::Anthropic, v) {
            self.observed.reading.merge(r);
        }
        match v["type"].as_str() {
            Some("message_start") => {
                if let Some(id) = v["message"]["id"].as_str() {
                    self.id = format!("chatcmpl-{id}");
                }
                self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)
            }
            Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                let idx = self.tool_index.len() as u64;
                self.tool_index
                    .insert(v["index"].as_u64().unwrap_or(0), idx);
                self.chunk(
                    json!({"tool_calls": [{"index": idx, "id": v["content_block"]["id"], "type": "function",
                        "function": {"name": v["content_block"]["name"], "arguments": ""}}]}),
                    Value::Null,
                )
            }
            Some("content_block_delta") => match v["delta"]["type"].as_str() {
                Some("text_delta") => {
                    self.observed.text_bytes += super::text_len(&v["delta"]["text"]);
                    self.chunk(json!({"content": v["delta"]["text"]}), Value::Null)
                }
                Some("input_json_delta") => {
                    self.observed.text_bytes += super::text_len(&v["delta"]["partial_json"]);
                    let idx = self
                        .tool_index
                        .get(&v["index"].as_u64().unwrap_or(0))
                        .copied()
                        .unwrap_or(0);
                    self.chunk(
                        json!({"tool_calls": [{"index": idx, "function": {"arguments": v["delta"]["partial_json"]}}]}),
                        Value::Null,
                    )
                }
                _ => String::new(),
            },
            Some("message_delta") => {
                self.finish = finish_reason(v["delta"]["stop_reason"].as_str());
                self.chunk(json!({}), self.finish.clone())
            }
            Some("message_stop") => {
                self.done = true;
                let mut out = String::new();
                if self.include_usage {
                    let u = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [],
                        "usage": super::openai_usage(&self.observed.reading)});
                    out.push_str(&format!("data: {u}\n\n"));
                }
                out.push_str("data: [DONE]\n\n");
                out
            }
            Some("error") => {
                self.done = true;
                format!("data: {}\n\n", error(v))
            }
            _ => String::new(),
        }
    }

    /// Whether the upstream stream ended properly (`message_stop` or an error event).
    pub fn finished(&self) -> bool {
        self.done
    }
}

/// An OpenAI chat client served by an Anthropic provider.
pub struct OpenAiToAnthropic;

impl super::Translator for OpenAiToAnthropic {
    fn request(&self, client: &Map<String, Value>) -> Result<Value, String> {
        request(client)
    }

    fn response(&self, provider: &Value, public_model: &str, created: u64) -> Value {
        response(provider, public_model, created)
    }

    fn error(&self, provider: &Value, _status: u16) -> Value {
        error(provider)
    }

    fn stream(
        &self,
        public_model: &str,
        created: u64,
        include_usage: bool,
    ) -> Box<dyn super::StreamTranslate> {
        Box::new(StreamTranslator::new(public_model, created, include_usage))
    }
}

impl super::StreamTranslate for StreamTranslator {
    fn feed(&mut self, bytes: &[u8]) -> String {
        StreamTranslator::feed(self, bytes)
    }

    fn end(&mut self) -> Option<String> {
        self.finished().then(String::new)
    }

    fn observed(&self) -> Observed {
        self.observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn request_translation_table() {
        let cases = vec![
            (
                json!({"model": "claude-x", "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"}]}),
                json!({"model": "claude-x", "max_tokens": 4096,
                    "system": [{"type": "text", "text": "be brief"}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            ),
            (
                json!({"model": "m", "max_tokens": 50, "temperature": 0.2, "stop": "END", "stream": true,
                    "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
                json!({"model": "m", "max_tokens": 50, "temperature": 0.2, "stream": true, "stop_sequences": ["END"],
                    "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}),
            ),
            (
                json!({"model": "m", "tool_choice": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                    "messages": [
                        {"role": "user", "content": "weather in Oslo?"},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                        {"role": "tool", "tool_call_id": "call_1", "content": "-3C"}]}),
                json!({"model": "m", "max_tokens": 4096, "tool_choice": {"type": "any"},
                    "tools": [{"name": "get_weather", "description": "w",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]},
                        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "-3C"}]}]}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(request(&obj(input.clone())).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("response_format", json!({"type": "json_object"})),
            ("presence_penalty", json!(0.5)),
        ] {
            let mut m = obj(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
            m.insert(field.into(), value);
            let err = request(&m).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        let m = obj(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
        assert!(request(&m).is_err());
    }

    #[test]
    fn response_translation() {
        let a = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 4,
                "cache_read_input_tokens": 90, "cache_creation_input_tokens": 0}});
        let o = response(&a, "gpt-public", 7);
        assert_eq!(o["model"], "gpt-public");
        assert_eq!(o["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(
            o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            o["usage"],
            json!({"prompt_tokens": 100, "completion_tokens": 4, "total_tokens": 104,
                "prompt_tokens_details": {"cached_tokens": 90}}),
            "cache reads are prompt tokens in OpenAI's terms"
        );
        for (stop, want) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
        ] {
            assert_eq!(finish_reason(Some(stop)), want);
        }
    }

    #[test]
    fn stream_translation_across_arbitrary_chunk_boundaries() {
        let upstream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":7}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        for split in [1usize, 7, 64, upstream.len()] {
            let mut t = StreamTranslator::new("gpt-public", 1, true);
            let mut out = String::new();
            for piece in upstream.as_bytes().chunks(split) {
                out.push_str(&t.feed(piece));
            }
            assert!(t.finished());
            let events: Vec<Value> = out
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = events
                .iter()
                .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert_eq!(text, "Hello", "split {split}");
            assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
            assert!(
                events
                    .iter()
                    .all(|e| e["model"] == "gpt-public" && e["id"] == "chatcmpl-msg_9")
            );
            let tool = events
                .iter()
                .find(|e| e["choices"][0]["delta"]["tool_calls"][0]["id"] == "toolu_1")
                .unwrap();
            assert_eq!(
                tool["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
                "f"
            );
            assert!(
                events
                    .iter()
                    .any(|e| e["choices"][0]["finish_reason"] == "tool_calls")
            );
            assert_eq!(events.last().unwrap()["usage"]["total_tokens"], 12);
            assert!(out.ends_with("data: [DONE]\n\n"));
            let seen = super::super::StreamTranslate::observed(&t);
            assert_eq!(
                (
                    seen.reading.prompt,
                    seen.reading.completion,
                    seen.text_bytes
                ),
                (Some(5), Some(7), 12),
                "split {split}: input from message_start, output from message_delta"
            );
        }
    }
}
