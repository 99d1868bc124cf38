#!/usr/bin/env python3
"""Write quant_mix_types.json: the tensor types (in file order) the reference quantizer gives
each fixture model of packer/tests/quantize.rs for every mix `pack --quantize` accepts, and the
sha256 of each file it writes (under "sha256", also for the "aligned" fixture quantized with the
importance matrix the tests write, under "aligned-imatrix").

Usage (the fixtures are written by the test run):
  cargo test --profile ci -p packer --test quantize
  B=<llama.cpp>/build/bin PYTHONPATH=<llama.cpp>/gguf-py \\
    python3 packer/tests/data/make_quant_mix_types.py target/tmp > packer/tests/data/quant_mix_types.json
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

from gguf import GGUFReader

MIXES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]
FIXTURES = ["deep", "narrow"]
IMATRIX_MIXES = ["Q4_K_M", "Q5_K_S", "Q6_K"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    tmpdir = sys.argv[1]
    b = os.environ["B"]
    env = dict(os.environ, LD_LIBRARY_PATH=b)
    out = {}
    shas = {}
    with tempfile.TemporaryDirectory() as work:
        for fx in FIXTURES:
            src = os.path.join(tmpdir, f"quant-mix-{fx}-f16.gguf")
            out[fx] = {}
            shas[fx] = {}
            for mix in MIXES:
                dst = os.path.join(work, f"{fx}-{mix}.gguf")
                subprocess.run([os.path.join(b, "llama-quantize"), src, dst, mix, "1"], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                out[fx][mix] = [[t.name, t.tensor_type.name] for t in GGUFReader(dst).tensors]
                shas[fx][mix] = sha256(dst)
                os.remove(dst)
        # Run beside the importance matrix: the output records its path as given.
        shas["aligned-imatrix"] = {}
        for mix in IMATRIX_MIXES:
            dst = os.path.join(work, f"aligned-{mix}.gguf")
            subprocess.run([os.path.join(b, "llama-quantize"), "--imatrix", "quant-mix-aligned-imatrix.gguf",
                            "quant-mix-aligned-f16.gguf", dst, mix, "1"], env=env, cwd=tmpdir,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shas["aligned-imatrix"][mix] = sha256(dst)
            os.remove(dst)
    # One tensor a line, so that a change in the reference reads as a small diff.
    fixtures = []
    for fx, mixes in out.items():
        blocks = []
        for mix, types in mixes.items():
            rows = ",\n".join("    " + json.dumps(t) for t in types)
            blocks.append(f'  "{mix}": [\n{rows}\n  ]')
        fixtures.append(f'"{fx}": {{\n' + ",\n".join(blocks) + "\n}")
    sha_lines = ",\n".join(f'  "{fx}": ' + json.dumps(m) for fx, m in shas.items())
    fixtures.append('"sha256": {\n' + sha_lines + "\n}")
    sys.stdout.write("{\n" + ",\n".join(fixtures) + "\n}\n")


if __name__ == "__main__":
    main()
