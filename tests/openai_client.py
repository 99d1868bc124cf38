#!/usr/bin/env python3
"""The official `openai` Python client (from PyPI) against a running llamafile server.

Usage: python3 tests/openai_client.py http://127.0.0.1:PORT/
Checks non-streaming and streaming chat completions and completions, stop strings, seeds,
log-probabilities, several choices (n), and that errors arrive as the client's own exception
types. Exit status 0 when every check passes;
2 when the `openai` package is not installed (the Rust test that runs this skips then).
"""
import math
import sys

try:
    import openai
    from openai import OpenAI
except ImportError:
    print("SKIP: the openai package is not installed (pip install openai)", file=sys.stderr)
    sys.exit(2)


def ok(what):
    print("ok -", what, flush=True)


def main(url):
    client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key="not-needed", max_retries=0, timeout=60)

    models = client.models.list()
    model = models.data[0].id
    assert model, models
    ok(f"models.list: {model}")

    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, seed=1)
    text = chat.choices[0].message.content
    assert chat.object == "chat.completion", chat
    assert chat.choices[0].message.role == "assistant"
    assert text, chat
    assert chat.choices[0].finish_reason in ("stop", "length"), chat.choices[0].finish_reason
    assert chat.usage.prompt_tokens > 0 and 0 < chat.usage.completion_tokens <= 16, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    ok(f"chat.completions (non-streaming): {chat.usage.completion_tokens} tokens")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, n_chunks = [], None, None, 0
    for chunk in stream:
        n_chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    streamed = "".join(pieces)
    assert streamed == text, (streamed, text)
    assert finish == chat.choices[0].finish_reason, finish
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert n_chunks >= 3, n_chunks
    ok(f"chat.completions (streaming): {n_chunks} chunks, same text as non-streaming")

    # the same seed samples the same reply at a temperature above 0
    a = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=1.0, seed=7)
    b = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=1.0, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content
    ok("chat.completions: same seed, same sample")

    # log-probabilities: greedy, so the chosen token leads its sorted list of alternatives;
    # cache_prompt false: every request evaluates the prompt the same way
    fresh = {"cache_prompt": False}
    lp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, extra_body=fresh,
    )
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, (len(content), lp.usage)
    for t in content:
        tops = t.top_logprobs
        assert len(tops) == 3, tops
        assert [x.logprob for x in tops] == sorted((x.logprob for x in tops), reverse=True), tops
        assert sum(math.exp(x.logprob) for x in tops) <= 1.0 + 1e-6, tops
        assert tops[0].token == t.token and tops[0].logprob == t.logprob, (t, tops)
        assert t.bytes is not None and t.logprob <= 0.0
    ok(f"chat.completions logprobs: {len(content)} tokens with top_logprobs")

    # several choices: each with its index, the same seed gives the same ones
    kw = dict(model=model, messages=messages, max_tokens=8, temperature=1.0, seed=7, n=3, extra_body=fresh)
    multi = client.chat.completions.create(**kw)
    assert [c.index for c in multi.choices] == [0, 1, 2], multi.choices
    assert multi.usage.prompt_tokens == lp.usage.prompt_tokens, multi.usage
    again = client.chat.completions.create(**kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in multi.choices]
    greedy = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, n=2, extra_body=fresh)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content, greedy.choices
    ok("chat.completions n=3: three choices, reproducible; n=2 greedy: identical")

    legacy = client.completions.create(model=model, prompt="The quick brown", max_tokens=5, temperature=0, logprobs=2, extra_body=fresh)
    lpl = legacy.choices[0].logprobs
    assert len(lpl.tokens) == len(lpl.token_logprobs) == len(lpl.top_logprobs) == len(lpl.text_offset) == 5, lpl
    assert all(len(d) <= 2 for d in lpl.top_logprobs), lpl.top_logprobs
    ok("completions logprobs=2: tokens, token_logprobs, top_logprobs, text_offset")

    prompt = "The capital of France is"
    comp = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    ctext = comp.choices[0].text
    assert comp.object == "text_completion", comp
    assert ctext, comp
    assert comp.usage.completion_tokens <= 16
    ok(f"completions (non-streaming): {comp.usage.completion_tokens} tokens")

    cstream = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, stream=True)
    cstreamed = "".join(c.choices[0].text for c in cstream if c.choices)
    assert cstreamed == ctext, (cstreamed, ctext)
    ok("completions (streaming): same text as non-streaming")

    # a stop string cuts the text before its first occurrence
    if len(ctext) >= 6:
        stop = ctext[3:6]
        cut = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
        assert cut.choices[0].text == ctext[: ctext.index(stop)], (cut.choices[0].text, ctext, stop)
        assert cut.choices[0].finish_reason == "stop"
        ok(f"completions: stop={stop!r} cuts the text")

    # errors come back as the client's exception types
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 20000}])
        raise AssertionError("a prompt over the context was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.code == "context_length_exceeded", e.body
    ok("a prompt over the context: BadRequestError(context_length_exceeded)")
    try:
        client.chat.completions.create(model=model, messages=messages, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert "temperature" in str(e), e
    ok("an out-of-range temperature: BadRequestError")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
