#!/usr/bin/env python3
"""Load test for the llamafile server: N concurrent streaming clients on loopback for a while,
some hanging up early. Reports requests/s, latencies and the slowest request, and the server's
memory before and after. Standard library only.

Start a server and test it:
    python3 tests/server_load.py --llamafile target/ci/llamafile --model ../shared/models/tiny-mistral-q8_0.gguf
Or test a running one (memory needs its pid):
    python3 tests/server_load.py --url http://127.0.0.1:8080/ --pid 1234

Exit status 1 if any request failed or the server died.
"""
import argparse
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0            # streams read to [DONE]
        self.hung_up = 0         # streams the client left early, on purpose
        self.errors = []
        self.latencies = []      # seconds, completed requests
        self.slowest = (0.0, "")
        self.tokens = 0

    def add(self, kind, secs, what, tokens=0):
        with self.lock:
            if kind == "done":
                self.done += 1
                self.latencies.append(secs)
                self.tokens += tokens
                if secs > self.slowest[0]:
                    self.slowest = (secs, what)
            elif kind == "hung_up":
                self.hung_up += 1
            else:
                self.errors.append(what)


def sse_data(resp):
    """The `data:` payloads of a server-sent-event response, as bytes, as they arrive."""
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            data = b"\n".join(l[5:].lstrip() for l in ev.split(b"\n") if l.startswith(b"data:"))
            if data:
                yield data


def one_request(host, port, rng, stats, timeout):
    max_tokens = rng.randint(8, 64)
    hang_up_after = rng.randint(1, 4) if rng.random() < 0.25 else None
    topic = rng.choice(["the sea", "a robot", "Rust", "coffee", "mountains", "a lost key"])
    body = json.dumps({
        "messages": [{"role": "user", "content": f"Tell me about {topic}. ({rng.random():.6f})"}],
        "max_tokens": max_tokens, "stream": True, "temperature": 0.8,
    })
    what = f"max_tokens={max_tokens}" + (f" hang_up_after={hang_up_after}" if hang_up_after else "")
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            stats.add("error", 0, f"{what}: HTTP {resp.status} {resp.read()[:200]!r}")
            return
        events, tokens = 0, 0
        for data in sse_data(resp):
            if data == b"[DONE]":
                stats.add("done", time.monotonic() - t0, what, tokens)
                return
            j = json.loads(data)
            if "error" in j:
                stats.add("error", 0, f"{what}: {j['error']}")
                return
            if j.get("choices") and j["choices"][0]["delta"].get("content"):
                tokens += 1
            events += 1
            if hang_up_after and events >= hang_up_after:
                stats.add("hung_up", time.monotonic() - t0, what)
                return  # the finally closes the socket mid-stream
        stats.add("error", 0, f"{what}: stream ended without [DONE] after {events} events")
    except Exception as e:  # noqa: BLE001 - any failure is a failed request
        stats.add("error", 0, f"{what}: {type(e).__name__}: {e}")
    finally:
        conn.close()


def start_server(binary, model, extra_args):
    """Start `binary` as a server on a free loopback port; returns (process, url) once it serves."""
    proc = subprocess.Popen(
        [binary, "-m", model, "--server", "--nobrowser", "--port", "0", "--log-disable", *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"at (http://\S+)", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, m.group(1)


def add_server_options(ap, ctx, seconds):
    """The options server_load.py and server_soak.py share: which server, and the clients."""
    ap.add_argument("--url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--llamafile", help="start this binary as the server")
    ap.add_argument("--model", help="with --llamafile: the model to serve")
    ap.add_argument("--parallel", type=int, default=4, help="with --llamafile: slots (default 4)")
    ap.add_argument("--ctx", type=int, default=ctx, help=f"with --llamafile: context per slot (default {ctx})")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON line too")


def server_from_options(ap, args, extra_args=()):
    """Start the server the options name (setting args.url and args.pid); returns its process or
    None for a running one, and its (host, port)."""
    proc = None
    if args.llamafile:
        if not args.model:
            ap.error("--llamafile needs --model")
        proc, args.url = start_server(args.llamafile, args.model, ["--parallel", str(args.parallel), "-c", str(args.ctx), *extra_args])
        args.pid = proc.pid
    if not args.url:
        ap.error("give --url (and --pid) or --llamafile and --model")
    u = urllib.parse.urlparse(args.url)
    return proc, (u.hostname, u.port or 80)


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def get_json(host, port, path):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(ap, ctx=512, seconds=60)
    args = ap.parse_args()
    proc, (host, port) = server_from_options(ap, args)
    try:
        health = get_json(host, port, "/health")
        slots = health["slots_idle"] + health["slots_processing"]
        # warm-up: one request per slot, so that one-time allocations are not counted as growth
        warm = Stats()
        rng = random.Random(args.seed)
        ts = [threading.Thread(target=one_request, args=(host, port, random.Random(i), warm, 120)) for i in range(slots)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        if warm.errors:
            sys.exit(f"warm-up failed: {warm.errors[0]}")
        rss_before = rss_kib(args.pid) if args.pid else None

        stats = Stats()
        deadline = time.monotonic() + args.seconds
        rss_samples = []

        def client(i):
            r = random.Random(rng.random() + i)
            while time.monotonic() < deadline:
                one_request(host, port, r, stats, 300)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if args.pid:
                rss_samples.append(rss_kib(args.pid))
            time.sleep(1)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        rss_after = rss_kib(args.pid) if args.pid else None
        health = get_json(host, port, "/health")
        alive = proc.poll() is None if proc else True
    finally:
        if proc:
            stop_server(proc)

    lat = sorted(stats.latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0  # noqa: E731
    total = stats.done + stats.hung_up
    summary = {
        "clients": args.clients, "seconds": round(elapsed, 1), "slots": slots,
        "requests": total, "completed": stats.done, "hung_up_early": stats.hung_up, "errors": len(stats.errors),
        "requests_per_s": round(total / elapsed, 2), "stream_chunks_per_s": round(stats.tokens / elapsed, 1),
        "latency_p50_s": round(pct(0.5), 3), "latency_p95_s": round(pct(0.95), 3),
        "slowest_s": round(stats.slowest[0], 3), "slowest_request": stats.slowest[1],
        "rss_before_mib": round(rss_before / 1024, 1) if rss_before else None,
        "rss_after_mib": round(rss_after / 1024, 1) if rss_after else None,
        "rss_peak_mib": round(max(s for s in rss_samples if s) / 1024, 1) if any(rss_samples) else None,
        "idle_after": health["slots_processing"] == 0 and health["queued"] == 0, "server_alive": alive,
    }
    print(f"{args.clients} clients for {summary['seconds']} s against {args.url} ({slots} slots)")
    print(f"requests: {total} ({stats.done} completed, {stats.hung_up} hung up early on purpose), errors: {len(stats.errors)}")
    print(f"requests/s: {summary['requests_per_s']}, streamed chunks/s: {summary['stream_chunks_per_s']}")
    print(f"latency of completed requests: p50 {summary['latency_p50_s']} s, p95 {summary['latency_p95_s']} s, "
          f"slowest {summary['slowest_s']} s ({summary['slowest_request']})")
    if rss_before:
        print(f"server memory (RSS): {summary['rss_before_mib']} MiB after warm-up, {summary['rss_after_mib']} MiB after, "
              f"peak {summary['rss_peak_mib']} MiB")
        every = max(1, len(rss_samples) // 6)
        series = [f"{s / 1024:.1f}" for s in rss_samples[::every] if s]
        print(f"RSS during the run, every {every} s (MiB): {' '.join(series)}")
    print(f"afterwards: slots idle and queue empty: {summary['idle_after']}, server alive: {alive}")
    for e in stats.errors[:10]:
        print("error:", e)
    if args.json:
        print(json.dumps(summary))
    sys.exit(0 if not stats.errors and alive and summary["idle_after"] else 1)


if __name__ == "__main__":
    main()
