#!/usr/bin/env python3
"""The official `anthropic` Python client's Messages API against a running llamafile server.

Usage: python3 tests/anthropic_client.py http://127.0.0.1:PORT/ API_KEY
Checks messages.create (system, content blocks, stop_sequences, max_tokens), messages.stream
(the text as it comes and the final message), tool use and its round trip, count_tokens, and
that errors arrive as the client's own exception types (a wrong key, a bad request).
Exit status 0 when every check passes; 2 when the `anthropic` package is not installed.
"""
import sys

try:
    import anthropic
except ImportError:
    print("SKIP: the anthropic package is not installed (pip install anthropic)", file=sys.stderr)
    sys.exit(2)


# Recent clients no longer take temperature as an argument; the server still reads it. Each
# prompt is evaluated whole (llama.cpp's cache_prompt: false), so that equal prompts give equal
# replies whatever a slot held before.
GREEDY = {"temperature": 0, "cache_prompt": False}


def ok(what):
    print("ok -", what, flush=True)


def main(url, key):
    base = url.rstrip("/")
    # the client sends the key as x-api-key
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
    model = "claude-sonnet-4-5"  # any name: the server answers with its one model

    system = [{"type": "text", "text": "Answer in one or two sentences."}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Say hello and tell me who you are."}]}]
    m = client.messages.create(model=model, system=system, messages=messages, max_tokens=64, extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_"), m
    assert m.content[0].type == "text" and m.content[0].text, m.content
    assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 64, m.usage
    text = m.content[0].text
    ok(f"messages.create: {m.usage.output_tokens} tokens, stop_reason {m.stop_reason}")

    same = client.messages.create(model=model, system="Answer in one or two sentences.", max_tokens=64, extra_body=GREEDY,
                                  messages=[{"role": "user", "content": "Say hello and tell me who you are."}])
    assert same.content[0].text == text, (same.content[0].text, text)
    ok("messages.create: string content gives the same reply as text blocks")

    cut = client.messages.create(model=model, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                                 max_tokens=3, extra_body=GREEDY)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3, cut
    ok("messages.create: max_tokens gives stop_reason max_tokens")

    if len(text) >= 6:
        stop = text[3:6]
        s = client.messages.create(model=model, system=system, messages=messages, max_tokens=64, extra_body=GREEDY,
                                   stop_sequences=["\u2603never", stop])
        assert s.stop_reason == "stop_sequence" and s.stop_sequence == stop, (s.stop_reason, s.stop_sequence, stop)
        assert s.content[0].text == text[: text.index(stop)], (s.content[0].text, text, stop)
        ok(f"messages.create: stop_sequences={stop!r} gives stop_reason stop_sequence, stop_sequence {stop!r}")

    pieces = []
    with client.messages.stream(model=model, system=system, messages=messages, max_tokens=64, extra_body=GREEDY) as s:
        for t in s.text_stream:
            pieces.append(t)
        final = s.get_final_message()
    assert "".join(pieces) == text and final.content[0].text == text, (pieces, final)
    assert len(pieces) >= 2, pieces
    assert final.stop_reason == m.stop_reason and final.usage.output_tokens == m.usage.output_tokens, final
    ok(f"messages.stream: {len(pieces)} pieces, the same text and final message")

    raw = list(client.messages.create(model=model, system=system, messages=messages, max_tokens=64, extra_body=GREEDY, stream=True))
    kinds = [e.type for e in raw]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    ok(f"messages.create(stream=True): {len(raw)} events in order")

    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    t = client.messages.create(model=model, messages=ask, tools=tools, tool_choice={"type": "any"}, max_tokens=64, extra_body=GREEDY)
    uses = [b for b in t.content if b.type == "tool_use"]
    assert t.stop_reason == "tool_use" and uses and uses[0].name == "get_weather", t
    assert isinstance(uses[0].input, dict) and "city" in uses[0].input, uses[0].input
    ok(f"messages.create with tools: tool_use {uses[0].name}({uses[0].input})")

    with client.messages.stream(model=model, messages=ask, tools=tools, tool_choice={"type": "tool", "name": "get_weather"},
                                max_tokens=64, extra_body=GREEDY) as s:
        final = s.get_final_message()
    streamed_uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed_uses and streamed_uses[0].input == uses[0].input, final
    ok("messages.stream with tools: the same tool_use block")

    follow = client.messages.create(model=model, tools=tools, max_tokens=32, extra_body=GREEDY, messages=ask + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": uses[0].name, "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 24 C"}]},
    ])
    assert follow.content, follow
    ok(f"messages.create: a tool_result round trip ({follow.stop_reason})")

    n = client.messages.count_tokens(model=model, system=system, messages=messages)
    assert n.input_tokens == m.usage.input_tokens, (n, m.usage)
    ok(f"messages.count_tokens: {n.input_tokens}, as the reply's usage")

    try:
        client.messages.create(model=model, messages=[], max_tokens=8)
        raise AssertionError("an empty conversation was accepted")
    except anthropic.BadRequestError as e:
        assert e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error", e.body
    ok("an empty conversation: BadRequestError(invalid_request_error)")

    try:
        anthropic.Anthropic(base_url=base, api_key=key + "x", max_retries=0).messages.create(model=model, messages=ask, max_tokens=8)
        raise AssertionError("a wrong key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body
    ok("a wrong key: AuthenticationError(authentication_error)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
