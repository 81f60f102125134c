"""The official OpenAI and Anthropic Python SDKs against a running llm-hub proxy.

Run by tests/tests/sdk.rs, which starts the control plane, a proxy and the mock provider and
passes their coordinates in the environment. Exits non-zero on the first failure.
"""

import os
import sys

import anthropic
import openai

PROXY = os.environ["LLMHUB_PROXY"]
KEY = os.environ["LLMHUB_KEY"]

results = []


def case(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
        except Exception as e:  # noqa: BLE001 - report every failure, not just the first
            results.append((name, f"{type(e).__name__}: {e}"))
        return fn

    return wrap


oa = openai.OpenAI(base_url=f"{PROXY}/v1", api_key=KEY, max_retries=0)
an = anthropic.Anthropic(base_url=PROXY, api_key=KEY, max_retries=0)
MSG = [{"role": "user", "content": "hi"}]


@case("openai: chat completion")
def _():
    r = oa.chat.completions.create(model="gpt-test", messages=MSG)
    assert r.choices[0].message.content == "hello from mock", r


@case("openai: streaming")
def _():
    text = ""
    for chunk in oa.chat.completions.create(model="gpt-test", messages=MSG, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "hello from mock", text


@case("openai: tool calls")
def _():
    tools = [{"type": "function", "function": {"name": "get_weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    r = oa.chat.completions.create(model="gpt-tools", messages=MSG, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert r.choices[0].finish_reason == "tool_calls"


@case("openai: served by anthropic (translated)")
def _():
    r = oa.chat.completions.create(model="claude", messages=MSG, max_tokens=32)
    assert r.choices[0].message.content == "hello from mock", r
    text = "".join(c.choices[0].delta.content or "" for c in
                   oa.chat.completions.create(model="claude", messages=MSG, stream=True) if c.choices)
    assert text == "hello from mock", text


@case("openai: embeddings")
def _():
    r = oa.embeddings.create(model="gpt-test", input="hello")
    assert len(r.data[0].embedding) == 3, r


@case("openai: model list")
def _():
    ids = [m.id for m in oa.models.list()]
    assert "gpt-test" in ids and "claude" in ids, ids


@case("openai: bad key raises AuthenticationError")
def _():
    bad = openai.OpenAI(base_url=f"{PROXY}/v1", api_key="lh-not-a-key", max_retries=0)
    try:
        bad.chat.completions.create(model="gpt-test", messages=MSG)
    except openai.AuthenticationError:
        return
    raise AssertionError("no AuthenticationError")


@case("openai: all keys cooling raises RateLimitError with a retry hint")
def _():
    try:
        oa.chat.completions.create(model="gpt-cooling", messages=MSG)
    except openai.RateLimitError as e:
        assert int(e.response.headers["retry-after"]) > 0
        return
    raise AssertionError("no RateLimitError")


@case("anthropic: message")
def _():
    r = an.messages.create(model="claude", max_tokens=64, messages=MSG)
    assert r.content[0].text == "hello from mock", r


@case("anthropic: streaming")
def _():
    text = ""
    with an.messages.stream(model="claude", max_tokens=64, messages=MSG) as s:
        for t in s.text_stream:
            text += t
    assert text == "hello from mock", text


@case("anthropic: served by an OpenAI-compatible provider (translated)")
def _():
    r = an.messages.create(model="gpt-test", max_tokens=64, messages=MSG)
    assert r.content[0].text == "hello from mock", r
    text = ""
    with an.messages.stream(model="gpt-test", max_tokens=64, messages=MSG) as s:
        for t in s.text_stream:
            text += t
    assert text == "hello from mock", text


@case("anthropic: bad key raises AuthenticationError")
def _():
    bad = anthropic.Anthropic(base_url=PROXY, api_key="lh-not-a-key", max_retries=0)
    try:
        bad.messages.create(model="claude", max_tokens=8, messages=MSG)
    except anthropic.AuthenticationError:
        return
    raise AssertionError("no AuthenticationError")


@case("anthropic: all keys cooling raises RateLimitError with a retry hint")
def _():
    try:
        an.messages.create(model="claude-cooling", max_tokens=8, messages=MSG)
    except anthropic.RateLimitError as e:
        assert int(e.response.headers["retry-after"]) > 0
        return
    raise AssertionError("no RateLimitError")


failed = [(n, err) for n, err in results if err]
for name, err in results:
    print(f"{'ok  ' if err is None else 'FAIL'} {name}" + (f": {err}" if err else ""))
print(f"sdk: {len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
