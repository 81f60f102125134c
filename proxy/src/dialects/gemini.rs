//! OpenAI Chat Completions served by Google Gemini (`generateContent`, and
//! `streamGenerateContent?alt=sse` for streams).
//!
//! Request: system messages → `systemInstruction`; user/assistant turns → `contents` with roles
//! `user`/`model`; text and inline images; assistant `tool_calls` → `functionCall` parts and
//! `tool` messages → `functionResponse` parts (named by the call they answer); tools →
//! `functionDeclarations`; `tool_choice` → `toolConfig`; sampling and stop settings →
//! `generationConfig`. Unsupported fields get a 400 naming them.

use serde_json::{Map, Value, json};

use super::field;
use crate::usage::{Observed, Reading, Shape, reading};

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
    "n",
    "user",
    "response_format",
];

fn parts_of(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Null => Ok(vec![]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") => Ok(json!({"text": p["text"]})),
                Some("image_url") => {
                    let url = p["image_url"]["url"].as_str().unwrap_or("");
                    let rest = url.strip_prefix("data:").ok_or_else(|| {
                        "messages: images for this model must be data URLs".to_owned()
                    })?;
                    let (meta, data) = rest
                        .split_once(',')
                        .ok_or_else(|| "messages: an image data URL has no data".to_owned())?;
                    let mime = meta.strip_suffix(";base64").unwrap_or(meta);
                    Ok(json!({"inline_data": {"mime_type": mime, "data": data}}))
                }
                other => Err(format!(
                    "messages: content part type {other:?} is not supported"
                )),
            })
            .collect(),
        _ => Err("messages: content must be a string or an array of parts".into()),
    }
}

pub fn request(o: &Map<String, Value>) -> Result<Value, String> {
    if let Some(unknown) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "`{unknown}` is not supported when this model is served by a Gemini provider"
        ));
    }
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    let mut call_names = std::collections::HashMap::new();
    for m in field(o, "messages").as_array().into_iter().flatten() {
        let (role, parts) = match m["role"].as_str() {
            Some("system" | "developer") => {
                system.extend(parts_of(&m["content"])?);
                continue;
            }
            Some("user") => ("user", parts_of(&m["content"])?),
            Some("assistant") => {
                let mut parts = parts_of(&m["content"])?;
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let args: Value =
                        serde_json::from_str(c["function"]["arguments"].as_str().unwrap_or("{}"))
                            .map_err(|_| "messages: tool call arguments must be JSON".to_owned())?;
                    call_names.insert(
                        c["id"].as_str().unwrap_or("").to_owned(),
                        c["function"]["name"].clone(),
                    );
                    parts.push(
                        json!({"functionCall": {"name": c["function"]["name"], "args": args}}),
                    );
                }
                ("model", parts)
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                let name = call_names
                    .get(id)
                    .cloned()
                    .ok_or_else(|| format!("messages: tool result for unknown call {id:?}"))?;
                let response = match &m["content"] {
                    Value::String(s) => serde_json::from_str::<Value>(s)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({"result": s})),
                    other => json!({"result": other}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            other => return Err(format!("messages: role {other:?} is not supported")),
        };
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(p) = last["parts"].as_array_mut() {
                    p.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut out = json!({"contents": contents});
    if !system.is_empty() {
        out["systemInstruction"] = json!({"parts": system});
    }
    let mut config = Map::new();
    if let Some(v) = o
        .get("max_completion_tokens")
        .or_else(|| o.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        config.insert("maxOutputTokens".into(), v.clone());
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match o.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    match o.get("response_format").map(|r| r["type"].as_str()) {
        None | Some(Some("text")) => {}
        Some(Some("json_object")) => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(_) => {
            return Err(
                "response_format: only text and json_object are supported for this model".into(),
            );
        }
    }
    if !config.is_empty() {
        out["generationConfig"] = Value::Object(config);
    }
    if let Some(tools) = o.get("tools").and_then(Value::as_array) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut d = json!({"name": f["name"]});
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(p) = f.get("parameters") {
                    d["parameters"] = p.clone();
                }
                d
            })
            .collect();
        out["tools"] = json!([{"functionDeclarations": decls}]);
    }
    if let Some(choice) = o.get("tool_choice") {
        let cfg = match choice {
            Value::String(s) if s == "auto" => json!({"mode": "AUTO"}),
            Value::String(s) if s == "required" => json!({"mode": "ANY"}),
            Value::String(s) if s == "none" => json!({"mode": "NONE"}),
            Value::Object(c) => {
                json!({"mode": "ANY", "allowedFunctionNames": [c.get("function").map_or(&Value::Null, |f| &f["name"])]})
            }
            _ => return Err("tool_choice: unsupported value".into()),
        };
        out["toolConfig"] = json!({"functionCallingConfig": cfg});
    }
    Ok(out)
}

pub fn finish_reason(r: Option<&str>, has_calls: bool) -> Value {
    if has_calls {
        return json!("tool_calls");
    }
    match r {
        Some("STOP") => json!("stop"),
        Some("MAX_TOKENS") => json!("length"),
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => {
            json!("content_filter")
        }
        None => Value::Null,
        Some(_) => json!("stop"),
    }
}

/// Text and tool calls of the first candidate.
fn candidate(g: &Value, call_offset: usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in g["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = p["text"].as_str() {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let i = call_offset + calls.len();
            calls.push(
                json!({"index": i, "id": format!("call_{i}"), "type": "function",
                "function": {"name": fc["name"], "arguments": fc["args"].to_string()}}),
            );
        }
    }
    (text, calls)
}

pub fn response(g: &Value, public_model: &str, created: u64) -> Value {
    let (text, calls) = candidate(g, 0);
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|mut c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("index");
                }
                c
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let has_calls = message.get("tool_calls").is_some();
    json!({
        "id": format!("chatcmpl-{}", g["responseId"].as_str().unwrap_or("gemini")),
        "object": "chat.completion", "created": created, "model": public_model,
        "choices": [{"index": 0, "message": message,
            "finish_reason": finish_reason(g["candidates"][0]["finishReason"].as_str(), has_calls)}],
        "usage": super::openai_usage(&reading(Shape::Gemini, g).unwrap_or_default()),
    })
}

pub fn error(g: &Value) -> Value {
    json!({"error": {"message": g["error"]["message"].as_str().unwrap_or("the provider rejected the request"),
        "type": "invalid_request_error", "param": null, "code": g["error"]["status"]}})
}

/// Gemini's SSE (`data: GenerateContentResponse`) to OpenAI chunks; the stream has no closing
/// event, so [`StreamTranslator::end`] writes `[DONE]` when the upstream body ends.
pub struct StreamTranslator {
    model: String,
    created: u64,
    include_usage: bool,
    buf: Vec<u8>,
    started: bool,
    calls: usize,
    observed: Observed,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(public_model: &str, created: u64, include_usage: bool) -> Self {
        StreamTranslator {
            model: public_model.to_owned(),
            created,
            include_usage,
            buf: Vec::new(),
            started: false,
            calls: 0,
            observed: Observed::default(),
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let v = json!({"id": "chatcmpl-gemini", "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    }

    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some((end, full)) = super::event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..full).collect();
            let text = String::from_utf8_lossy(&event[..end]).into_owned();
            for data in text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
            {
                if let Ok(g) = serde_json::from_str::<Value>(data) {
                    out.push_str(&self.event(&g));
                }
            }
        }
        out
    }

    fn event(&mut self, g: &Value) -> String {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
        let (text, calls) = candidate(g, self.calls);
        self.calls += calls.len();
        self.observed.text_bytes += text.len() as u64;
        for c in &calls {
            self.observed.text_bytes += super::text_len(&c["function"]["arguments"]);
        }
        if !text.is_empty() {
            out.push_str(&self.chunk(json!({"content": text}), Value::Null));
        }
        if !calls.is_empty() {
            out.push_str(&self.chunk(json!({"tool_calls": calls}), Value::Null));
        }
        if let Some(r) = reading(Shape::Gemini, g) {
            self.observed.reading.merge(r);
        }
        if let Some(r) = g["candidates"][0]["finishReason"].as_str() {
            self.finished = true;
            out.push_str(&self.chunk(json!({}), finish_reason(Some(r), self.calls > 0)));
        }
        out
    }

    /// The closing events once the upstream body has ended; `None` when it ended before the
    /// model finished (an interrupted stream).
    pub fn end(&mut self) -> Option<String> {
        if !self.finished {
            return None;
        }
        let mut out = String::new();
        if self.include_usage && self.observed.reading != Reading::default() {
            let u = json!({"id": "chatcmpl-gemini", "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": super::openai_usage(&self.observed.reading)});
            out.push_str(&format!("data: {u}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        Some(out)
    }
}

/// An OpenAI chat client served by Gemini.
pub struct OpenAiToGemini;

impl super::Translator for OpenAiToGemini {
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
        StreamTranslator::end(self)
    }

    fn observed(&self) -> Observed {
        self.observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_translation_table() {
        let o = json!({"model": "gemini-2.0-flash", "max_tokens": 64, "temperature": 0.1, "stop": ["X"],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\":-3}"}]});
        let g = request(o.as_object().unwrap()).unwrap();
        assert_eq!(
            g,
            json!({
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "see"}, {"inline_data": {"mime_type": "image/png", "data": "AAA"}}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": -3}}}]}],
                "generationConfig": {"maxOutputTokens": 64, "temperature": 0.1, "stopSequences": ["X"]},
                "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
            })
        );
        let bad =
            json!({"model": "g", "logprobs": true, "messages": [{"role": "user", "content": "x"}]});
        assert!(
            request(bad.as_object().unwrap())
                .unwrap_err()
                .contains("logprobs")
        );
    }

    #[test]
    fn response_translation() {
        let g = json!({"responseId": "r1", "candidates": [{"content": {"role": "model", "parts": [
            {"text": "hi "}, {"text": "there"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}});
        let o = response(&g, "pub", 1);
        assert_eq!(o["choices"][0]["message"]["content"], "hi there");
        assert_eq!(o["choices"][0]["finish_reason"], "stop");
        assert_eq!(o["usage"]["total_tokens"], 6);
        let g = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}]});
        let o = response(&g, "pub", 1);
        assert_eq!(
            o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn stream_translation() {
        let upstream = concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\"}],",
            "\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"totalTokenCount\":5}}\r\n\r\n",
        );
        for split in [1usize, 9, upstream.len()] {
            let mut t = StreamTranslator::new("pub", 1, true);
            let mut out = String::new();
            for piece in upstream.as_bytes().chunks(split) {
                out.push_str(&t.feed(piece));
            }
            out.push_str(&t.end().unwrap());
            let datas: Vec<Value> = out
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = datas
                .iter()
                .filter_map(|d| d["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert_eq!(text, "Hello");
            assert!(
                datas
                    .iter()
                    .any(|d| d["choices"][0]["finish_reason"] == "stop")
            );
            assert_eq!(datas.last().unwrap()["usage"]["total_tokens"], 5);
            assert!(out.ends_with("data: [DONE]\n\n"));
            let seen = super::super::StreamTranslate::observed(&t);
            assert_eq!(
                (
                    seen.reading.prompt,
                    seen.reading.completion,
                    seen.text_bytes
                ),
                (Some(3), Some(2), 5),
                "split {split}"
            );
        }
        let mut cut = StreamTranslator::new("pub", 1, false);
        cut.feed(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]}}]}\n\n");
        assert!(cut.end().is_none(), "no finishReason: the stream was cut");
        let seen = super::super::StreamTranslate::observed(&cut);
        assert_eq!((seen.reading.completion, seen.text_bytes), (None, 1));
    }
}
