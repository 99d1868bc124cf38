#!/usr/bin/env python3
"""Soak test for the llamafile server: N clients on loopback for a while (default 16 for 10
minutes) mixing normal streamed requests, streams the client hangs up on mid-way, temperature-0
requests whose answers must equal the ones the server gave sequentially before the load, and
malformed requests (bad JSON, a foreign Host, a cross-origin POST, huge headers, headers that
never finish, garbage bytes, an oversized body), each of which must get its own clean answer.
The server's memory (RSS, from /proc) is sampled over the run. Standard library only; every
loop ends by itself at the deadline and every socket has a timeout.

Start a server and soak it:
    python3 tests/server_soak.py --llamafile target/ci/llamafile \\
        --model ~/.cache/llamafile-rs/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
Shorter:  --seconds 60.   A running server: --url http://127.0.0.1:8080/ --pid 1234
(then its --header-timeout should be --header-timeout given here).

Half the temperature-0 requests say `cache_prompt: false`, as the sequential ones do: the whole
prompt is evaluated. The other half reuse the slot's cache; for a greedy request the engine
reuses only keys and values whose arithmetic does not depend on how the prompt was cut, so those
answers must be identical too. Before the load every slot's context is filled once, so that the
memory its cache takes is counted from the first RSS sample on.

The RSS is reported whole and split into anonymous memory (the heap: what a leak grows) and
file pages (the mapped weights, which grow as the page cache brings in parts not read before,
e.g. rows of the token embedding matrix for tokens not seen yet).

Exit status 1 on any unexpected answer, any temperature-0 answer different from the sequential
one, or a dead server.
"""
import argparse
import collections
import http.client
import json
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_load import add_server_options, get_json, rss_kib, server_from_options, sse_data, stop_server  # noqa: E402

# Temperature-0 requests: (messages, max_tokens). Some share a conversation prefix with
# another, so that slots reuse each other's cached prompts while others generate.
PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is a mutex? One sentence.",
    "Name three sorting algorithms.",
    "Explain what `git rebase` does in two sentences.",
    "Write a haiku about the sea.",
    "What does HTTP status 404 mean?",
]
MAX_TOKENS = 24


def reference_requests():
    """The temperature-0 requests, as (name, messages)."""
    reqs = []
    for i, p in enumerate(PROMPTS):
        reqs.append((f"p{i}", [{"role": "user", "content": p}]))
    return reqs


def fill_slots(host, port):
    """Fill every slot's context once (all slots at once, so each request gets its own), so that
    the pages of the KV caches are all touched before memory is measured."""
    health = get_json(host, port, "/health")
    slots = health["slots_idle"] + health["slots_processing"]
    n_ctx = get_json(host, port, "/props")["n_ctx"]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", "/tokenize", json.dumps({"content": "The cat sat on the mat. " * n_ctx}))
    tokens = json.loads(conn.getresponse().read())["tokens"][: n_ctx - 4]
    conn.close()

    failed = []

    def fill():
        c = http.client.HTTPConnection(host, port, timeout=900)
        c.request("POST", "/completion", json.dumps({"prompt": tokens, "n_predict": 2, "cache_prompt": False}))
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            failed.append(f"HTTP {r.status} {body[:200]!r}")
        c.close()
    threads = [threading.Thread(target=fill) for _ in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.exit(f"filling the slots failed: {failed[0]}")


def follow_ups(refs, answers):
    """Second turns on the first two conversations, using the answers the server gave."""
    out = []
    for name, messages in refs[:2]:
        out.append((f"{name}+", messages + [{"role": "assistant", "content": answers[name]},
                                            {"role": "user", "content": "Now say it more briefly."}]))
    return out


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = collections.Counter()        # expected outcomes by kind
        self.errors = collections.Counter()    # unexpected outcomes by kind
        self.examples = {}                     # kind -> first unexpected outcome
        self.mismatches = []

    def good(self, kind):
        with self.lock:
            self.ok[kind] += 1

    def bad(self, kind, what):
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, what)


def read_sse(resp, hang_up_after=None):
    """The text of an OpenAI chat stream; None if hung up on purpose. Raises on a bad stream."""
    text, events = [], 0
    for data in sse_data(resp):
        if data == b"[DONE]":
            return "".join(text)
        j = json.loads(data)
        if "error" in j:
            raise RuntimeError(f"error event: {j['error']}")
        if j.get("choices"):
            text.append(j["choices"][0]["delta"].get("content") or "")
        events += 1
        if hang_up_after and events >= hang_up_after:
            return None
    raise RuntimeError(f"stream ended without [DONE] after {events} events")


def chat(host, port, messages, max_tokens, temperature, stream, timeout, hang_up_after=None, cache_prompt=True):
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stream": stream,
            "cache_prompt": cache_prompt}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} {resp.read()[:200]!r}")
        if stream:
            return read_sse(resp, hang_up_after)
        return json.loads(resp.read())["choices"][0]["message"]["content"]
    finally:
        conn.close()


def raw_exchange(host, port, data, timeout, trickle_then_wait=False):
    """Send bytes, read until the server closes. Returns (status or None, body bytes, seconds)."""
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout=timeout)
    raw = b""
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before all of a huge request is sent
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            raw += chunk
    finally:
        s.close()
    secs = time.monotonic() - t0
    if not raw.startswith(b"HTTP/1."):
        return None, raw, secs
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, secs


def request_bytes(method, path, headers, body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CLOSED = "closed"


def malformed(kind, host, port, rng, header_timeout):
    """One malformed request. Returns None if the answer is the expected one, CLOSED if the
    server closed the connection without an answer where that is acceptable (it stopped reading
    a request too large to read; the kernel may then reset the connection before the client has
    read the answer), else what the answer was."""
    own = f"Host: {host}:{port}"
    chat_body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    t = 30
    if kind == "bad_json":
        st, body, _ = raw_exchange(host, port, request_bytes("POST", "/v1/chat/completions", [own, "Content-Type: application/json"], b'{"messages": [{"role": "user", "content": "hi"}'), t)
        return None if st == 400 and b"invalid_json" in body else f"{st} {body[:120]!r}"
    if kind == "wrong_host":
        st, body, _ = raw_exchange(host, port, request_bytes("POST", "/v1/chat/completions", ["Host: rebind.example:8080", "Content-Type: application/json"], chat_body), t)
        return None if st == 403 and b"Host" in body else f"{st} {body[:120]!r}"
    if kind == "cross_origin":
        st, body, _ = raw_exchange(host, port, request_bytes("POST", "/v1/chat/completions", [own, "Origin: http://evil.example", "Content-Type: text/plain"], chat_body), t)
        return None if st == 403 and b"cross-origin" in body else f"{st} {body[:120]!r}"
    if kind == "huge_headers":
        big = "X-Big: " + "a" * (1 << 20)
        st, body, _ = raw_exchange(host, port, request_bytes("GET", "/health", [own, big]), t)
        return None if st == 431 else CLOSED if st is None else f"{st} {body[:120]!r}"
    if kind == "slow_headers":
        # Part of a header, then silence: the server must close it after its header timeout.
        st, body, secs = raw_exchange(host, port, f"GET /health HTTP/1.1\r\n{own}\r\nX-Slow: ".encode(), header_timeout + 20)
        if st not in (None, 408) or secs > header_timeout + 10:
            return f"{st} after {secs:.1f} s {body[:80]!r}"
        return None if secs >= header_timeout - 1 else f"closed after {secs:.1f} s, before the header timeout"
    if kind == "garbage":
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))) + b"\r\n\r\n"
        st, body, _ = raw_exchange(host, port, junk, t)
        return None if st == 400 else CLOSED if st is None else f"{st} {body[:120]!r}"
    if kind == "too_large":
        st, body, _ = raw_exchange(host, port, request_bytes("POST", "/v1/chat/completions", [own, "Content-Type: application/json"], b" " * (5 << 20)), t)
        return None if st == 413 else CLOSED if st is None else f"{st} {body[:120]!r}"
    raise ValueError(kind)


MALFORMED = ["bad_json", "wrong_host", "cross_origin", "huge_headers", "slow_headers", "garbage", "too_large"]


def rss_parts_kib(pid):
    """(anonymous, file-backed) resident KiB of the process, from /proc; None if unreadable."""
    got = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile"):
                    got[key] = int(line.split()[1])
    except OSError:
        return None
    return (got["RssAnon"], got["RssFile"]) if len(got) == 2 else None


def client(i, host, port, deadline, seed, refs, answers, tally, header_timeout):
    rng = random.Random(seed * 1000 + i)
    topics = ["the sea", "a robot", "Rust", "coffee", "mountains", "a lost key"]
    while time.monotonic() < deadline:
        roll = rng.random()
        try:
            if roll < 0.35:
                name, messages = rng.choice(refs)
                stream, fresh = rng.random() < 0.5, rng.random() < 0.5
                got = chat(host, port, messages, MAX_TOKENS, 0, stream, 300, cache_prompt=not fresh)
                kind = "temp0_" + ("fresh_" if fresh else "cached_") + ("stream" if stream else "json")
                if got == answers[name]:
                    tally.good(kind)
                else:
                    with tally.lock:
                        tally.mismatches.append((name, kind, answers[name], got))
            elif roll < 0.60:
                msg = [{"role": "user", "content": f"Tell me about {rng.choice(topics)}. ({rng.random():.6f})"}]
                chat(host, port, msg, rng.randint(8, 48), 0.8, True, 300)
                tally.good("stream")
            elif roll < 0.78:
                msg = [{"role": "user", "content": f"Write a story about {rng.choice(topics)}."}]
                chat(host, port, msg, 200, 0.8, True, 300, hang_up_after=rng.randint(1, 6))
                tally.good("hang_up")
            else:
                kind = rng.choice(MALFORMED)
                what = malformed(kind, host, port, rng, header_timeout)
                if what is None:
                    tally.good(kind)
                elif what == CLOSED:
                    tally.good(kind + "_closed_unanswered")
                else:
                    tally.bad(kind, what)
        except Exception as e:  # noqa: BLE001 - any failure is an unexpected outcome
            tally.bad(type(e).__name__, f"{type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(ap, ctx=1024, seconds=600)
    ap.add_argument("--threads", type=int, default=1, help="with --llamafile: threads per generation (default 1)")
    ap.add_argument("--header-timeout", type=int, default=5, help="the server's --header-timeout (default 5)")
    args = ap.parse_args()
    proc, (host, port) = server_from_options(ap, args, ["-t", str(args.threads), "--header-timeout", str(args.header_timeout)])
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the soak runs on loopback only")

    tally = Tally()
    rss = []  # (seconds since start, KiB)
    try:
        fill_slots(host, port)
        # Sequential references, one request at a time on an idle server.
        refs = reference_requests()
        answers = {name: chat(host, port, m, MAX_TOKENS, 0, False, 300, cache_prompt=False) for name, m in refs}
        refs += follow_ups(refs, answers)
        for name, m in refs[len(PROMPTS):]:
            answers[name] = chat(host, port, m, MAX_TOKENS, 0, False, 300, cache_prompt=False)

        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(i, host, port, deadline, args.seed, refs, answers, tally, args.header_timeout))
                   for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if args.pid:
                kib = rss_kib(args.pid)
                parts = rss_parts_kib(args.pid)
                if kib and parts:
                    rss.append((time.monotonic() - t0, kib, *parts))
            time.sleep(5)
        elapsed = time.monotonic() - t0
        # The same references again, sequentially, after the load.
        after = {name: chat(host, port, m, MAX_TOKENS, 0, False, 300, cache_prompt=False) for name, m in refs}
        for name in after:
            if after[name] != answers[name]:
                tally.mismatches.append((name, "sequential_after_the_load", answers[name], after[name]))
        health = get_json(host, port, "/health")
        alive = proc.poll() is None if proc else True
    finally:
        if proc:
            stop_server(proc)

    requests = sum(tally.ok.values()) + sum(tally.errors.values()) + len(tally.mismatches)
    mib = lambda k: round(k / 1024, 1)  # noqa: E731
    summary = {
        "clients": args.clients, "seconds": round(elapsed, 1), "requests": requests,
        "expected": dict(sorted(tally.ok.items())), "unexpected": dict(sorted(tally.errors.items())),
        "mismatches": dict(collections.Counter(kind for _, kind, _, _ in tally.mismatches)),
        "rss_first_mib": mib(rss[0][1]) if rss else None, "rss_last_mib": mib(rss[-1][1]) if rss else None,
        "rss_max_mib": mib(max(r[1] for r in rss)) if rss else None,
        "anon_first_mib": mib(rss[0][2]) if rss else None, "anon_last_mib": mib(rss[-1][2]) if rss else None,
        "file_first_mib": mib(rss[0][3]) if rss else None, "file_last_mib": mib(rss[-1][3]) if rss else None,
        "idle_after": health["slots_processing"] == 0 and health["queued"] == 0, "server_alive": alive,
    }
    print(f"{args.clients} clients for {summary['seconds']} s against {args.url}: {requests} requests")
    print("expected answers by kind: " + ", ".join(f"{k} {v}" for k, v in summary["expected"].items()))
    print("unexpected answers by kind: " + (", ".join(f"{k} {v}" for k, v in summary["unexpected"].items()) or "none"))
    for kind, what in tally.examples.items():
        print(f"  first unexpected {kind}: {what}")
    print("temperature-0 answers different from the sequential ones: "
          + (", ".join(f"{k} {v}" for k, v in sorted(summary["mismatches"].items())) or "none"))
    for name, kind, want, got in tally.mismatches[:5]:
        print(f"  {name} ({kind}): expected {want!r}, got {got!r}")
    if rss:
        print(f"server RSS: first {summary['rss_first_mib']} MiB, last {summary['rss_last_mib']} MiB, max {summary['rss_max_mib']} MiB")
        print(f"  of which anonymous (heap): first {summary['anon_first_mib']} MiB, last {summary['anon_last_mib']} MiB; "
              f"file pages (weights): first {summary['file_first_mib']} MiB, last {summary['file_last_mib']} MiB")
        every = max(1, len(rss) // 10)
        print("RSS over time (s: total/anonymous/file MiB): "
              + " ".join(f"{r[0]:.0f}:{mib(r[1])}/{mib(r[2])}/{mib(r[3])}" for r in rss[::every]))
    print(f"afterwards: slots idle and queue empty: {summary['idle_after']}, server alive: {alive}")
    if args.json:
        print(json.dumps(summary))
    sys.exit(0 if not tally.errors and not tally.mismatches and alive and summary["idle_after"] else 1)


if __name__ == "__main__":
    main()
