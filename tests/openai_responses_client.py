#!/usr/bin/env python3
"""The official `openai` Python client's Responses API against a running llamafile server.

Usage: python3 tests/openai_responses_client.py http://127.0.0.1:PORT/ API_KEY
Checks responses.create (text and items, instructions, max_output_tokens), its streamed events
(raw and through the client's responses.stream helper), a function tool call and its round
trip, the stateless refusals, and that a wrong key is the client's AuthenticationError.
Exit status 0 when every check passes; 2 when the `openai` package is not installed.
"""
import json
import sys

try:
    import openai
    from openai import OpenAI
except ImportError:
    print("SKIP: the openai package is not installed (pip install openai)", file=sys.stderr)
    sys.exit(2)


# Each prompt is evaluated whole (llama.cpp's cache_prompt: false), so that equal prompts give
# equal replies whatever a slot held before.
FRESH = {"cache_prompt": False}


def ok(what):
    print("ok -", what, flush=True)


def main(url, key):
    base = url.rstrip("/") + "/v1"
    client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id

    r = client.responses.create(model=model, input="Say hello and tell me who you are.", instructions="Answer in one or two sentences.",
                                max_output_tokens=64, temperature=0, extra_body=FRESH)
    assert r.object == "response" and r.id.startswith("resp_"), r
    assert r.status in ("completed", "incomplete"), r.status
    assert r.output[0].type == "message" and r.output[0].role == "assistant", r.output
    assert r.output[0].content[0].type == "output_text", r.output[0].content
    text = r.output_text
    assert text, r
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 64, r.usage
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, r.usage
    assert r.model == model, r.model
    ok(f"responses.create: {r.usage.output_tokens} tokens, status {r.status}")

    cut = client.responses.create(model=model, input="Write a long story about a dragon.", max_output_tokens=3, temperature=0, extra_body=FRESH)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens", cut
    assert cut.usage.output_tokens == 3, cut.usage
    ok("responses.create: max_output_tokens gives status incomplete")

    items = [
        {"role": "system", "content": "Answer in one or two sentences."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello and tell me who you are."}]},
    ]
    same = client.responses.create(model=model, input=items, max_output_tokens=64, temperature=0, extra_body=FRESH)
    assert same.output_text == text, (same.output_text, text)
    ok("responses.create: input items give the same reply as input text + instructions")

    events = list(client.responses.create(model=model, input="Say hello and tell me who you are.", instructions="Answer in one or two sentences.",
                                          max_output_tokens=64, temperature=0, extra_body=FRESH, stream=True))
    kinds = [e.type for e in events]
    head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[:4] == head, kinds
    assert kinds[-4:-1] == tail and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and "".join(deltas) == text, (deltas, text)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == r.usage.output_tokens
    ok(f"responses.create(stream=True): {len(events)} events in order, the same text")

    with client.responses.stream(model=model, input="Say hello and tell me who you are.", instructions="Answer in one or two sentences.",
                                 max_output_tokens=64, temperature=0, extra_body=FRESH) as s:
        streamed = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert streamed == text and final.output_text == text, (streamed, final.output_text)
    ok("responses.stream: the helper's final response")

    tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    call = client.responses.create(model=model, input="What is the weather in Paris?", tools=tools, tool_choice="required",
                                   max_output_tokens=64, temperature=0, extra_body=FRESH)
    calls = [o for o in call.output if o.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather", call.output
    assert "city" in json.loads(calls[0].arguments), calls[0].arguments
    ok(f"responses.create with tools: function_call {calls[0].name}({calls[0].arguments})")

    follow = client.responses.create(
        model=model, tools=tools, max_output_tokens=32, temperature=0, extra_body=FRESH,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 24 C"}])
    assert follow.output_text or any(o.type == "function_call" for o in follow.output), follow
    ok(f"responses.create: a function_call_output round trip ({follow.output_text[:40]!r})")

    streamed_call = list(client.responses.create(model=model, input="What is the weather in Paris?", tools=tools,
                                                 tool_choice="required", max_output_tokens=64, temperature=0, extra_body=FRESH, stream=True))
    done = [e.item for e in streamed_call if e.type == "response.output_item.done"]
    assert any(i.type == "function_call" and i.name == "get_weather" for i in done), done
    assert streamed_call[-1].type == "response.completed"
    ok("responses.create(stream=True) with tools: a function_call item")

    for kwargs, field in [({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store")]:
        try:
            client.responses.create(model=model, input="x", **kwargs)
            raise AssertionError(f"{field} was accepted")
        except openai.BadRequestError as e:
            assert field in str(e), e
    ok("previous_response_id and store: BadRequestError (the server keeps nothing)")

    try:
        OpenAI(base_url=base, api_key=key + "x", max_retries=0).responses.create(model=model, input="x")
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.code == "invalid_api_key", e.body
    ok("a wrong key: AuthenticationError(invalid_api_key)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
