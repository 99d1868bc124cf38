#!/usr/bin/env python3
"""Writes iq4_vectors.json: for IQ4_NL and IQ4_XS, the first rows of two tensors of a file the
reference's llama-quantize made from ../shared/models/tiny-mistral-f16.gguf, as raw block bytes
(hex) and as the `gguf` Python package dequantizes them (f32 printed in full).

Usage: make_iq4_vectors.py DIR > iq4_vectors.json, with DIR/tiny-mistral-iq4_{nl,xs}.gguf made by
  llama-quantize ../shared/models/tiny-mistral-f16.gguf DIR/tiny-mistral-iq4_nl.gguf IQ4_NL
  llama-quantize ../shared/models/tiny-mistral-f16.gguf DIR/tiny-mistral-iq4_xs.gguf IQ4_XS
"""
import json, sys
import numpy as np
import gguf
from gguf.quants import dequantize
from importlib.metadata import version

ROWS = 4
entries = []
for kind in ["iq4_nl", "iq4_xs"]:
    r = gguf.GGUFReader(f"{sys.argv[1]}/tiny-mistral-{kind}.gguf")
    for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"]:
        t = next(t for t in r.tensors if t.name == name)
        row_len = int(t.shape[0])
        raw = np.asarray(t.data)[:ROWS]
        vals = dequantize(raw, t.tensor_type).reshape(-1).astype(np.float32)
        entries.append({
            "source": "tiny-mistral-f16.gguf", "tensor": name, "type": t.tensor_type.name,
            "row_len": row_len, "rows": ROWS, "bytes": raw.tobytes().hex(),
            "values": [float(v) for v in vals],
        })
json.dump({"source": f"gguf python package {version('gguf')} (gguf.quants.dequantize) on llama-quantize output",
           "entries": entries}, sys.stdout)
