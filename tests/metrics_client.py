#!/usr/bin/env python3
"""`/metrics` read with Prometheus' own Python client parser (`prometheus-client` from PyPI).

Usage: python3 tests/metrics_client.py http://127.0.0.1:PORT/ API_KEY
Sends a few generation requests (each with a fresh prompt cache), then checks that the
exposition parses, has llama.cpp's metric names with their types, and that the token counters
equal the usage the responses reported. Exit status 0 when every check passes; 2 when
`prometheus-client` is not installed.
"""
import json
import sys
import urllib.request

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("SKIP: the prometheus-client package is not installed (pip install prometheus-client)", file=sys.stderr)
    sys.exit(2)


def ok(what):
    print("ok -", what, flush=True)


def call(url, key, path, body=None):
    req = urllib.request.Request(url.rstrip("/") + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.headers, r.read().decode()


def scrape(url, key):
    headers, text = call(url, key, "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {s.name: s.value for f in families.values() for s in f.samples}
    return families, values


def main(url, key):
    families, before = scrape(url, key)
    expected = {
        "llamacpp:prompt_tokens": "counter", "llamacpp:prompt_tokens_cached": "counter", "llamacpp:prompt_seconds": "counter",
        "llamacpp:tokens_predicted": "counter", "llamacpp:tokens_predicted_seconds": "counter", "llamacpp:n_decode": "counter",
        "llamacpp:prompt_tokens_seconds": "gauge", "llamacpp:predicted_tokens_seconds": "gauge",
        "llamacpp:requests_processing": "gauge", "llamacpp:requests_deferred": "gauge",
        "llamacpp:kv_cache_usage_ratio": "gauge", "llamacpp:kv_cache_tokens": "gauge",
    }
    for name, kind in expected.items():
        assert name in families and families[name].type == kind, (name, kind, families.get(name))
        assert families[name].documentation, name
    ok(f"the exposition parses: {len(families)} families, llama.cpp's names with HELP and TYPE")

    prompt = completion = 0
    bodies = [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 12, "cache_prompt": False}),
        ("/v1/completions", {"prompt": "The capital of France is", "max_tokens": 7, "cache_prompt": False}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 9, "cache_prompt": False}),
    ]
    for path, body in bodies:
        _, text = call(url, key, path, body)
        usage = json.loads(text)["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    _, after = scrape(url, key)
    d = lambda name: after[name] - before[name]
    assert d("llamacpp:prompt_tokens_total") == prompt, (d("llamacpp:prompt_tokens_total"), prompt)
    assert d("llamacpp:prompt_tokens_cached_total") == 0, d("llamacpp:prompt_tokens_cached_total")
    assert d("llamacpp:tokens_predicted_total") == completion, (d("llamacpp:tokens_predicted_total"), completion)
    # one pass per prompt batch, then one per generated token fed back
    assert completion <= d("llamacpp:n_decode_total") <= completion + 2 * len(bodies), d("llamacpp:n_decode_total")
    assert d("llamacpp:prompt_seconds_total") > 0 and d("llamacpp:tokens_predicted_seconds_total") > 0
    assert after["llamacpp:predicted_tokens_seconds"] > 0 and after["llamacpp:requests_processing"] == 0, after
    assert 0 < after["llamacpp:kv_cache_usage_ratio"] <= 1, after["llamacpp:kv_cache_usage_ratio"]
    ok(f"after {len(bodies)} requests: {prompt} prompt and {completion} generated tokens counted, as their usage said")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
