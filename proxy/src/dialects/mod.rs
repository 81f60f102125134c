//! Translation between client dialects and provider dialects. Each direction is one type behind
//! [`Translator`]: pure functions over JSON (requests, responses, errors) and a small state
//! machine over SSE events (streams), so it can be tested table by table without a network.

use llmhub_providers::Translation;
use serde_json::{Map, Value};

use crate::usage::{Observed, Reading};

pub mod anthropic;
pub mod chat;
pub mod gemini;

/// A top-level field, or null (indexing a `Map` directly would panic on a missing key).
fn field<'a>(m: &'a Map<String, Value>, k: &str) -> &'a Value {
    m.get(k).unwrap_or(&Value::Null)
}

/// The end of the first complete SSE event in `buf`: (end of its text, end including the
/// blank-line separator, `\n\n` or `\r\n\r\n`).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Bytes of a text field relayed to the client, for the estimate of a cut stream's usage.
fn text_len(v: &Value) -> u64 {
    v.as_str().map_or(0, |s| s.len() as u64)
}

/// Usage in OpenAI's shape (`prompt_tokens` includes the cached ones).
fn openai_usage(r: &Reading) -> Value {
    let (prompt, completion) = (r.prompt.unwrap_or(0), r.completion.unwrap_or(0));
    serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": r.cached.unwrap_or(0)}})
}

/// Usage in Anthropic's shape (`input_tokens` excludes the tokens read from the cache).
fn anthropic_usage(r: &Reading) -> Value {
    let cached = r.cached.unwrap_or(0);
    serde_json::json!({"input_tokens": r.prompt.unwrap_or(0).saturating_sub(cached),
        "cache_read_input_tokens": cached, "output_tokens": r.completion.unwrap_or(0)})
}

/// Rewrites a provider's SSE stream into the client's dialect, event by event.
pub trait StreamTranslate: Send {
    /// Consumes upstream bytes; returns whatever complete client events they produce.
    fn feed(&mut self, bytes: &[u8]) -> String;

    /// Called when the upstream body ends: the closing events still owed to the client, or
    /// `None` when the provider's stream stopped before it finished.
    fn end(&mut self) -> Option<String>;

    /// The provider's usage reports so far and the answer text sent on, for the record.
    fn observed(&self) -> Observed;
}

/// One direction of translation: the request on the way out, the answer (whole, streamed, or
/// an error) on the way back.
pub trait Translator: Sync {
    /// The provider's request body for the client's.
    fn request(&self, client: &Map<String, Value>) -> Result<Value, String>;

    /// The client's answer for the provider's JSON success.
    fn response(&self, provider: &Value, public_model: &str, created: u64) -> Value;

    /// The client's error body for the provider's.
    fn error(&self, provider: &Value, status: u16) -> Value;

    /// A translator for the provider's SSE stream.
    fn stream(
        &self,
        public_model: &str,
        created: u64,
        include_usage: bool,
    ) -> Box<dyn StreamTranslate>;
}

/// The translator for a direction; `None` when the request passes through. The one place a
/// direction is chosen: adding a direction fails to compile until it is handled here.
pub fn translator(t: Translation) -> Option<&'static dyn Translator> {
    match t {
        Translation::None => None,
        Translation::OpenAiToAnthropic => Some(&anthropic::OpenAiToAnthropic),
        Translation::AnthropicToOpenAi => Some(&chat::AnthropicToOpenAi),
        Translation::OpenAiToGemini => Some(&gemini::OpenAiToGemini),
    }
}

/// Snapshot files (`src/translate/snapshots/`) of every direction: requests, responses and
/// stream frames, so a change in any translation shows up as a reviewable diff.
#[cfg(test)]
mod snapshots {
    use serde_json::{Value, json};

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn frames(out: &str) -> Vec<Value> {
        out.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let event = e
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .map(str::to_owned);
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("");
                let data = serde_json::from_str::<Value>(data).unwrap_or(json!(data));
                json!({"event": event, "data": data})
            })
            .collect()
    }

    fn openai_chat_request() -> Value {
        json!({"model": "upstream-model", "max_tokens": 100, "temperature": 0.3, "stop": ["END"],
            "stream": true, "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo, and what is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":-3}"},
                {"role": "user", "content": "Thanks."}]})
    }

    #[test]
    fn openai_to_anthropic() {
        insta::assert_json_snapshot!(
            "openai_to_anthropic_request",
            super::anthropic::request(&obj(openai_chat_request())).unwrap()
        );
        let answer = json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "It is -3°C."}, {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Bergen"}}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 42, "output_tokens": 17}});
        insta::assert_json_snapshot!(
            "anthropic_to_openai_response",
            super::anthropic::response(&answer, "public-model", 1_700_000_000)
        );
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"It is -3°C.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":17}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut t = super::anthropic::StreamTranslator::new("public-model", 1_700_000_000, true);
        insta::assert_json_snapshot!(
            "anthropic_to_openai_stream",
            frames(&t.feed(stream.as_bytes()))
        );
    }

    #[test]
    fn anthropic_to_openai() {
        let req = json!({"model": "upstream-model", "max_tokens": 256, "system": "You are terse.",
            "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u-1"},
            "tools": [{"name": "get_weather", "description": "Weather by city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3C"}]}]}]});
        insta::assert_json_snapshot!(
            "anthropic_to_openai_request",
            super::chat::request(&obj(req)).unwrap()
        );
        let answer = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "It is cold"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}});
        insta::assert_json_snapshot!(
            "openai_to_anthropic_response",
            super::chat::response(&answer, "public-model")
        );
        let chunks = [
            json!({"id": "chatcmpl-9", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-9", "choices": [{"index": 0, "delta": {"content": "It is cold"}}]}),
            json!({"id": "chatcmpl-9", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 5}}),
        ];
        let mut upstream: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        upstream.push_str("data: [DONE]\n\n");
        let mut t = super::chat::StreamTranslator::new("public-model");
        insta::assert_json_snapshot!(
            "openai_to_anthropic_stream",
            frames(&t.feed(upstream.as_bytes()))
        );
    }

    #[test]
    fn openai_to_gemini() {
        let mut req = obj(openai_chat_request());
        req.remove("stream_options");
        insta::assert_json_snapshot!(
            "openai_to_gemini_request",
            super::gemini::request(&req).unwrap()
        );
        let answer = json!({"responseId": "r-7", "candidates": [{"index": 0, "finishReason": "STOP",
            "content": {"role": "model", "parts": [{"text": "It is -3°C."}]}}],
            "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 6, "totalTokenCount": 46}});
        insta::assert_json_snapshot!(
            "gemini_to_openai_response",
            super::gemini::response(&answer, "public-model", 1_700_000_000)
        );
        let stream = concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"It is\"}]}}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\" -3°C.\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":40,\"candidatesTokenCount\":6,\"totalTokenCount\":46}}\r\n\r\n",
        );
        let mut t = super::gemini::StreamTranslator::new("public-model", 1_700_000_000, true);
        let mut out = t.feed(stream.as_bytes());
        out.push_str(&t.end().unwrap_or_default());
        insta::assert_json_snapshot!("gemini_to_openai_stream", frames(&out));
    }
}
