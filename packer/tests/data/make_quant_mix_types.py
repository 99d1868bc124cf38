#!/usr/bin/env python3
"""Write quant_mix_types.json: the tensor types (in file order) the reference quantizer gives
each fixture model of packer/tests/quantize.rs for every mix `pack --quantize` accepts.

Usage (the fixtures are written by the test run):
  cargo test --profile ci -p packer --test quantize
  B=<llama.cpp>/build/bin PYTHONPATH=<llama.cpp>/gguf-py \\
    python3 packer/tests/data/make_quant_mix_types.py target/tmp > packer/tests/data/quant_mix_types.json
"""
import json
import os
import subprocess
import sys
import tempfile

from gguf import GGUFReader

MIXES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
FIXTURES = ["deep", "narrow"]


def main():
    tmpdir = sys.argv[1]
    b = os.environ["B"]
    env = dict(os.environ, LD_LIBRARY_PATH=b)
    out = {}
    with tempfile.TemporaryDirectory() as work:
        for fx in FIXTURES:
            src = os.path.join(tmpdir, f"quant-mix-{fx}-f16.gguf")
            out[fx] = {}
            for mix in MIXES:
                dst = os.path.join(work, f"{fx}-{mix}.gguf")
                subprocess.run([os.path.join(b, "llama-quantize"), src, dst, mix, "1"], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                out[fx][mix] = [[t.name, t.tensor_type.name] for t in GGUFReader(dst).tensors]
                os.remove(dst)
    # One tensor a line, so that a change in the reference reads as a small diff.
    fixtures = []
    for fx, mixes in out.items():
        blocks = []
        for mix, types in mixes.items():
            rows = ",\n".join("    " + json.dumps(t) for t in types)
            blocks.append(f'  "{mix}": [\n{rows}\n  ]')
        fixtures.append(f'"{fx}": {{\n' + ",\n".join(blocks) + "\n}")
    sys.stdout.write("{\n" + ",\n".join(fixtures) + "\n}\n")


if __name__ == "__main__":
    main()
