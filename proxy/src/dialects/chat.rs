//! Anthropic Messages clients served by OpenAI Chat Completions providers (OpenAI, Azure,
//! OpenAI-compatible).
//!
//! Request: `system` → a system message; text and image blocks; `tool_use` blocks → assistant
//! `tool_calls`; `tool_result` blocks → `tool` messages; tools and `tool_choice`;
//! `stop_sequences` → `stop`. Fields with no OpenAI counterpart (`top_k`, `thinking`, …) are
//! refused with a 400 naming them. Response and stream: back to Anthropic's message shape and
//! its `message_start` … `message_stop` events.

use serde_json::{Map, Value, json};

use super::field;
use crate::usage::{Observed, Shape, reading};

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn image_part(block: &Value) -> Result<Value, String> {
    let src = &block["source"];
    match src["type"].as_str() {
        Some("base64") => Ok(json!({"type": "image_url", "image_url": {"url": format!(
            "data:{};base64,{}", src["media_type"].as_str().unwrap_or("image/png"), src["data"].as_str().unwrap_or(""))}})),
        Some("url") => Ok(json!({"type": "image_url", "image_url": {"url": src["url"]}})),
        _ => Err("messages: image source must be base64 or url".into()),
    }
}

/// Translates an Anthropic Messages request (model already set to the upstream model).
pub fn request(a: &Map<String, Value>) -> Result<Value, String> {
    if let Some(unknown) = a.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "{unknown}: not supported when this model is served by an OpenAI-compatible provider"
        ));
    }
    let mut messages = Vec::new();
    match a.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => messages.push(json!({"role": "system", "content": text_of(s)})),
    }
    for m in field(a, "messages").as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("");
        let blocks = match &m["content"] {
            Value::String(s) => {
                messages.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(b) => b.clone(),
            _ => return Err("messages: content must be a string or an array of blocks".into()),
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for b in &blocks {
            match b["type"].as_str() {
                Some("text") => parts.push(json!({"type": "text", "text": b["text"]})),
                Some("image") => parts.push(image_part(b)?),
                Some("tool_use") => calls.push(json!({"id": b["id"], "type": "function",
                    "function": {"name": b["name"], "arguments": b["input"].to_string()}})),
                Some("tool_result") => messages.push(json!({"role": "tool",
                    "tool_call_id": b["tool_use_id"], "content": text_of(&b["content"])})),
                other => {
                    return Err(format!(
                        "messages: content block type {other:?} is not supported for this model"
                    ));
                }
            }
        }
        match role {
            "assistant" => {
                let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
            "user" if !parts.is_empty() => messages.push(json!({"role": "user", "content": parts})),
            "user" => {}
            other => return Err(format!("messages: role {other:?} is not supported")),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), field(a, "model").clone());
    out.insert("messages".into(), Value::Array(messages));
    if let Some(v) = a.get("max_tokens") {
        out.insert("max_tokens".into(), v.clone());
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(stop) = a.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    if a.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        // Usage arrives in a last chunk, for Anthropic's final `message_delta`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = field(a, "metadata")["user_id"].as_str() {
        out.insert("user".into(), json!(user));
    }
    if let Some(tools) = a.get("tools").and_then(Value::as_array) {
        let t: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t["name"], "parameters": t["input_schema"]});
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(t));
    }
    if let Some(choice) = a.get("tool_choice") {
        let mapped = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => return Err("tool_choice: unsupported value".into()),
        };
        out.insert("tool_choice".into(), mapped);
    }
    Ok(Value::Object(out))
}

pub fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        Some("stop") => json!("end_turn"),
        Some("length") => json!("max_tokens"),
        Some("tool_calls" | "function_call") => json!("tool_use"),
        Some("content_filter") => json!("refusal"),
        None => Value::Null,
        Some(_) => json!("end_turn"),
    }
}

/// Translates a `chat.completion` into an Anthropic message named after the public model.
pub fn response(o: &Value, public_model: &str) -> Value {
    let msg = &o["choices"][0]["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        let input: Value =
            serde_json::from_str(c["function"]["arguments"].as_str().unwrap_or("{}"))
                .unwrap_or(json!({}));
        content.push(json!({"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": input}));
    }
    json!({
        "id": format!("msg_{}", o["id"].as_str().unwrap_or("openai")),
        "type": "message", "role": "assistant", "model": public_model, "content": content,
        "stop_reason": stop_reason(o["choices"][0]["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": super::anthropic_usage(&reading(Shape::OpenAi, o).unwrap_or_default()),
    })
}

/// Translates an OpenAI error body into Anthropic's error shape.
pub fn error(o: &Value, status: u16) -> Value {
    let ty = match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": ty,
        "message": o["error"]["message"].as_str().unwrap_or("the provider rejected the request")}})
}

/// Turns OpenAI chunk events into Anthropic's stream events.
pub struct StreamTranslator {
    model: String,
    buf: Vec<u8>,
    started: bool,
    /// Index and kind of the open content block, if any.
    open: Option<(u64, bool)>,
    next_index: u64,
    finish: Value,
    observed: Observed,
    done: bool,
}

fn ev(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl StreamTranslator {
    pub fn new(public_model: &str) -> Self {
        StreamTranslator {
            model: public_model.to_owned(),
            buf: Vec::new(),
            started: false,
            open: None,
            next_index: 0,
            finish: Value::Null,
            observed: Observed::default(),
            done: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.done
    }

    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some((_, full)) = super::event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..full).collect();
            let text = String::from_utf8_lossy(&event).into_owned();
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    out.push_str(&self.finish_events());
                } else if let Ok(v) = serde_json::from_str::<Value>(data) {
                    out.push_str(&self.chunk(&v));
                }
            }
        }
        out
    }

    fn close_block(&mut self) -> String {
        match self.open.take() {
            Some((i, _)) => ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ),
            None => String::new(),
        }
    }

    fn chunk(&mut self, v: &Value) -> String {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&ev(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": format!("msg_{}", v["id"].as_str().unwrap_or("openai")), "type": "message",
                "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
        if let Some(r) = reading(Shape::OpenAi, v) {
            self.observed.reading.merge(r);
        }
        let Some(choice) = v["choices"].get(0) else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some((_, false))) {
                out.push_str(&self.close_block());
                let i = self.next_index;
                self.next_index += 1;
                self.open = Some((i, false));
                out.push_str(&ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": ""}}),
                ));
            }
            let i = self.open.map_or(0, |o| o.0);
            self.observed.text_bytes += text.len() as u64;
            out.push_str(&ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i,
                "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            if call.get("id").is_some_and(|id| !id.is_null()) {
                out.push_str(&self.close_block());
                let i = self.next_index;
                self.next_index += 1;
                self.open = Some((i, true));
                out.push_str(&ev("content_block_start", json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}})));
            }
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                let i = self.open.map_or(0, |o| o.0);
                self.observed.text_bytes += args.len() as u64;
                out.push_str(&ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = stop_reason(Some(f));
        }
        out
    }

    fn finish_events(&mut self) -> String {
        self.done = true;
        let mut out = self.close_block();
        out.push_str(&ev(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.finish, "stop_sequence": null},
            "usage": super::anthropic_usage(&self.observed.reading)}),
        ));
        out.push_str(&ev("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// An Anthropic Messages client served by an OpenAI-compatible provider.
pub struct AnthropicToOpenAi;

impl super::Translator for AnthropicToOpenAi {
    fn request(&self, client: &Map<String, Value>) -> Result<Value, String> {
        request(client)
    }

    fn response(&self, provider: &Value, public_model: &str, _created: u64) -> Value {
        response(provider, public_model)
    }

    fn error(&self, provider: &Value, status: u16) -> Value {
        error(provider, status)
    }

    fn stream(
        &self,
        public_model: &str,
        _created: u64,
        _include_usage: bool,
    ) -> Box<dyn super::StreamTranslate> {
        Box::new(StreamTranslator::new(public_model))
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
                json!({"model": "gpt", "max_tokens": 100, "system": "be brief",
                    "messages": [{"role": "user", "content": "hi"}]}),
                json!({"model": "gpt", "max_tokens": 100, "messages": [
                    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
            ),
            (
                json!({"model": "gpt", "max_tokens": 10, "stop_sequences": ["END"], "stream": true,
                    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
                    "tool_choice": {"type": "any"},
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "look"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QQ=="}}]},
                        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}),
                json!({"model": "gpt", "max_tokens": 10, "stop": ["END"], "stream": true,
                    "stream_options": {"include_usage": true},
                    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
                    "tool_choice": "required",
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ=="}}]},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                            "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                        {"role": "tool", "tool_call_id": "t1", "content": "ok"}]}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(request(&obj(input.clone())).unwrap(), want, "{input}");
        }
        let err = request(&obj(
            json!({"model": "m", "max_tokens": 1, "top_k": 5, "messages": []}),
        ))
        .unwrap_err();
        assert!(err.contains("top_k"), "{err}");
    }

    #[test]
    fn response_translation() {
        let o = json!({"id": "abc", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "checking", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":2}"}}]}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 3}}});
        let a = response(&o, "claude-public");
        assert_eq!(a["model"], "claude-public");
        assert_eq!(a["content"][0], json!({"type": "text", "text": "checking"}));
        assert_eq!(a["content"][1]["input"], json!({"a": 2}));
        assert_eq!(a["stop_reason"], "tool_use");
        assert_eq!(
            a["usage"],
            json!({"input_tokens": 1, "cache_read_input_tokens": 3, "output_tokens": 6}),
            "Anthropic's input excludes the cache reads"
        );
        assert_eq!(
            error(&json!({"error": {"message": "too long"}}), 400)["error"]["type"],
            "invalid_request_error"
        );
    }

    #[test]
    fn stream_translation_across_chunk_boundaries() {
        let chunks = [
            json!({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}),
        ];
        let mut upstream: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        upstream.push_str("data: [DONE]\n\n");
        for split in [1usize, 5, 100, upstream.len()] {
            let mut t = StreamTranslator::new("claude-public");
            let mut out = String::new();
            for piece in upstream.as_bytes().chunks(split) {
                out.push_str(&t.feed(piece));
            }
            assert!(t.finished());
            let names: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "split {split}"
            );
            let datas: Vec<Value> = out
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = datas
                .iter()
                .filter_map(|d| d["delta"]["text"].as_str())
                .collect();
            assert_eq!(text, "Hello");
            let delta = datas.iter().find(|d| d["type"] == "message_delta").unwrap();
            assert_eq!(delta["delta"]["stop_reason"], "tool_use");
            assert_eq!(delta["usage"]["output_tokens"], 5);
            let seen = super::super::StreamTranslate::observed(&t);
            assert_eq!(
                (
                    seen.reading.prompt,
                    seen.reading.completion,
                    seen.text_bytes
                ),
                (Some(3), Some(5), 12),
                "split {split}"
            );
        }
    }
}
