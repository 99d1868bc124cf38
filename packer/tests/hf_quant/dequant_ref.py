#!/usr/bin/env python3
"""An independent numpy reader of GPTQ and AWQ GEMM checkpoints, written from the formats'
descriptions (AutoGPTQ, AutoAWQ, transformers), to check pack's Rust dequantizer against.

GPTQ ("gptq" checkpoint format, as AutoGPTQ and transformers write it):
  qweight int32 [in/8, out]   eight 4-bit codes per int32 along the input dimension,
                              code of input 8*r + k in bits 4k..4k+3 of qweight[r, j]
  qzeros  int32 [groups, out/8]  zero points packed the same way along the output dimension;
                              AutoGPTQ stores zero - 1 and its readers add 1 back
                              ("gptq_v2" stores the zero point itself)
  scales  f16   [groups, out]
  g_idx   int32 [in]          the group of each input column (permuted with desc_act)
  weight[j, i] = scales[g_idx[i], j] * (code[i, j] - zero[g_idx[i], j])
AWQ GEMM (AutoAWQ):
  qweight int32 [in, out/8]   eight codes per int32 along the output dimension; nibble k of
                              qweight[i, c] holds column 8c + (0, 2, 4, 6, 1, 3, 5, 7)[k]
  qzeros  int32 [in/group, out/8]  zero points, same order, stored as they are
  scales  f16   [in/group, out]
  weight[j, i] = scales[i // group, j] * (code[i, j] - zero[i // group, j])
The products are taken in float32, where they are exact.

Usage as a program: dequant_ref.py CHECKPOINT_DIR OUT.safetensors writes every quantized linear
layer of the checkpoint as float32 `PREFIX.weight` [out, in].
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32, "I32": np.int32}
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def read_safetensors(path):
    """{name: array} of a .safetensors file (8-byte header length, JSON header, data)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        if t["dtype"] == "BF16":
            bits = np.frombuffer(data[a:b], dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=np.dtype(DTYPES[t["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(t["shape"])
    return out


def write_safetensors(path, tensors):
    """Write {name: array} (float16, float32 or int32) as a .safetensors file."""
    names = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def nibbles(words):
    """int32 [..., n] -> uint8 codes [..., 8n]: the 4-bit fields of each word, lowest first.
    A little-endian word's byte b holds fields 2b (low half) and 2b + 1 (high half)."""
    b = np.ascontiguousarray(words).astype("<i4").view(np.uint8).reshape(*words.shape, 4)
    fields = np.stack([b & 0x0F, b >> 4], axis=-1)
    return fields.reshape(*words.shape[:-1], words.shape[-1] * 8)


def gptq(qweight, qzeros, scales, g_idx, group_size, zeros_minus_one=True):
    """Float32 [out, in] of a GPTQ layer (group_size None: one group per row)."""
    codes = nibbles(qweight.T).astype(np.int32)  # [out, in]
    zeros = nibbles(qzeros).astype(np.int32) + (1 if zeros_minus_one else 0)  # [groups, out]
    n_in = codes.shape[1]
    if g_idx is None:
        g_idx = np.arange(n_in) // (group_size or n_in)
    s = scales.astype(np.float32)[g_idx].T  # [out, in]
    z = zeros[g_idx].T
    return s * (codes - z).astype(np.float32)


def awq_columns(words):
    """int32 [rows, out/8] -> codes [rows, out] in column order."""
    fields = nibbles(words)
    cols = np.empty_like(fields)
    for k, col in enumerate(AWQ_PACK_ORDER):
        cols[:, col::8] = fields[:, k::8]
    return cols


def awq(qweight, qzeros, scales, group_size):
    """Float32 [out, in] of an AWQ GEMM layer."""
    codes = awq_columns(qweight).astype(np.int32)  # [in, out]
    zeros = awq_columns(qzeros).astype(np.int32)  # [groups, out]
    groups = np.arange(codes.shape[0]) // (group_size or codes.shape[0])
    s = scales.astype(np.float32)[groups]
    return (s * (codes - zeros[groups]).astype(np.float32)).T


def settings(ckpt):
    """('gptq' | 'awq', group_size or None, zeros_minus_one) from the checkpoint's files."""
    with open(os.path.join(ckpt, "config.json")) as f:
        q = json.load(f).get("quantization_config")
    if q is None:
        for name in ("quantize_config.json", "quant_config.json"):
            p = os.path.join(ckpt, name)
            if os.path.exists(p):
                with open(p) as f:
                    q = json.load(f)
                q.setdefault("quant_method", "gptq" if name == "quantize_config.json" else "awq")
    method = q["quant_method"].lower()
    g = q.get("group_size", q.get("q_group_size"))
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    return method, (None if g == -1 else g), fmt != "gptq_v2"


def dequantize_checkpoint(ckpt):
    """{PREFIX.weight: float32 [out, in]} for every quantized layer of the checkpoint."""
    method, group_size, minus_one = settings(ckpt)
    t = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    out = {}
    for name in t:
        if not name.endswith(".qweight"):
            continue
        p = name[: -len(".qweight")]
        if method == "gptq":
            w = gptq(t[name], t[p + ".qzeros"], t[p + ".scales"], t.get(p + ".g_idx"), group_size, minus_one)
        else:
            w = awq(t[name], t[p + ".qzeros"], t[p + ".scales"], group_size)
        out[p + ".weight"] = w
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: dequant_ref.py CHECKPOINT_DIR OUT.safetensors")
    write_safetensors(sys.argv[2], dequantize_checkpoint(sys.argv[1]))
