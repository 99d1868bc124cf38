#!/usr/bin/env python3
"""Tiny Hugging Face checkpoints for pack's import tests, from seeded random weights:

  fp16/                 the float model (LlamaForCausalLM, float16 safetensors)
  gptq/                 GPTQ, 4 bits, group 32, symmetric, no desc_act (TheBloke's usual
                        settings; quantize_config.json and config.json's quantization_config)
  gptq-desc-act/        GPTQ, 4 bits, group 32, asymmetric, desc_act with a permuted g_idx
                        (quantize_config.json only)
  awq/                  AWQ GEMM, 4 bits, group 32 (quant_config.json and quantization_config)
  NAME-dequantized/     each quantized checkpoint's float twin: the same tensors, with every
                        quantized layer replaced by its float32 weight as dequant_ref.py reads it

The quantization is round-to-nearest per group (the formats are what is tested, not GPTQ's or
AWQ's search). Usage: make_fixtures.py OUT_DIR [--tokenizer DIR] (copies tokenizer.json,
tokenizer_config.json, tokenizer.model, special_tokens_map.json from DIR when there, and sizes
the vocabulary after tokenizer.json, or --vocab N for a tokenizer.model; 256 tokens otherwise).
"""
import argparse
import json
import os
import shutil

import numpy as np

import dequant_ref

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
GROUP = 32
SEED = 20261205


def config(vocab):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }


def float_model(rng, vocab):
    """{name: float32 array} of a tiny Llama; linear weights [out, in]."""
    head = HIDDEN // HEADS
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, HIDDEN)), "model.norm.weight": 1 + rng.normal(0, 0.1, HIDDEN)}
    t["lm_head.weight"] = rng.normal(0, 0.2, (vocab, HIDDEN))
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        for name, shape in linears(head):
            t[p + name + ".weight"] = rng.normal(0, 1 / np.sqrt(shape[1]), shape)
    return {k: v.astype(np.float32) for k, v in t.items()}


def linears(head):
    return [
        ("self_attn.q_proj", (HEADS * head, HIDDEN)),
        ("self_attn.k_proj", (KV_HEADS * head, HIDDEN)),
        ("self_attn.v_proj", (KV_HEADS * head, HIDDEN)),
        ("self_attn.o_proj", (HIDDEN, HEADS * head)),
        ("mlp.gate_proj", (FFN, HIDDEN)),
        ("mlp.up_proj", (FFN, HIDDEN)),
        ("mlp.down_proj", (HIDDEN, FFN)),
    ]


def round_to_grid(w, sym, min_zero):
    """Codes, scales (float16) and zero points of `w` [out, n] as one group per row."""
    if sym:
        amax = np.abs(w).max(axis=1)
        scale = (2 * amax / 15).astype(np.float16)
        zero = np.full(w.shape[0], 8)
    else:
        lo, hi = np.minimum(w.min(axis=1), 0), np.maximum(w.max(axis=1), 0)
        scale = ((hi - lo) / 15).astype(np.float16)
        zero = np.clip(np.round(-lo / scale.astype(np.float32)), min_zero, 15).astype(np.int64)
    s = scale.astype(np.float32)[:, None]
    codes = np.clip(np.round(w / s) + zero[:, None], 0, 15).astype(np.int64)
    return codes, scale, zero


def pack_along_last(codes, order=tuple(range(8))):
    """uint codes [..., 8n] -> int32 [..., n]: field k of word c holds code 8c + order[k]."""
    c = codes.reshape(*codes.shape[:-1], -1, 8).astype(np.uint32)
    words = np.zeros(c.shape[:-1], dtype=np.uint32)
    for k, col in enumerate(order):
        words |= c[..., col] << np.uint32(4 * k)
    return words.view(np.int32)


def gptq_layer(w, sym, desc_act, rng):
    """GPTQ tensors of w [out, in], and s * (q - z) from the codes before packing."""
    n_out, n_in = w.shape
    groups = n_in // GROUP
    if desc_act:
        # Columns in a random "activation" order, grouped in that order.
        order = rng.permutation(n_in)
        g_idx = np.empty(n_in, dtype=np.int32)
        g_idx[order] = np.arange(n_in) // GROUP
    else:
        g_idx = (np.arange(n_in) // GROUP).astype(np.int32)
    codes = np.zeros((n_out, n_in), dtype=np.int64)
    scales = np.zeros((groups, n_out), dtype=np.float16)
    zeros = np.zeros((groups, n_out), dtype=np.int64)
    for g in range(groups):
        cols = np.nonzero(g_idx == g)[0]
        # The original format stores zero - 1 in 4 bits: a zero point of 0 cannot be written.
        q, s, z = round_to_grid(w[:, cols], sym, min_zero=1)
        codes[:, cols], scales[g], zeros[g] = q, s, z
    expect = scales.astype(np.float32)[g_idx].T * (codes - zeros[g_idx].T).astype(np.float32)
    tensors = {
        "qweight": pack_along_last(codes).T.copy(),  # [in/8, out]
        "qzeros": pack_along_last(zeros - 1),  # [groups, out/8]
        "scales": scales,
        "g_idx": g_idx,
    }
    return tensors, expect


def awq_layer(w):
    n_out, n_in = w.shape
    groups = n_in // GROUP
    codes = np.zeros((n_in, n_out), dtype=np.int64)
    scales = np.zeros((groups, n_out), dtype=np.float16)
    zeros = np.zeros((groups, n_out), dtype=np.int64)
    for g in range(groups):
        cols = slice(g * GROUP, (g + 1) * GROUP)
        q, s, z = round_to_grid(w[:, cols], sym=False, min_zero=0)
        codes[cols], scales[g], zeros[g] = q.T, s, z
    gi = np.arange(n_in) // GROUP
    expect = (scales.astype(np.float32)[gi] * (codes - zeros[gi]).astype(np.float32)).T
    order = dequant_ref.AWQ_PACK_ORDER
    tensors = {"qweight": pack_along_last(codes, order), "qzeros": pack_along_last(zeros, order), "scales": scales}
    return tensors, expect


def write_dir(path, cfg, tensors, files, tokenizer):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name, obj in files.items():
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f, indent=2)
    dequant_ref.write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
        if tokenizer and os.path.exists(os.path.join(tokenizer, name)):
            shutil.copy(os.path.join(tokenizer, name), os.path.join(path, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer")
    ap.add_argument("--vocab", type=int, default=256)
    a = ap.parse_args()
    vocab = a.vocab
    if a.tokenizer and os.path.exists(os.path.join(a.tokenizer, "tokenizer.json")):
        with open(os.path.join(a.tokenizer, "tokenizer.json")) as f:
            tok = json.load(f)
        ids = list(tok["model"]["vocab"].values()) if isinstance(tok["model"]["vocab"], dict) else range(len(tok["model"]["vocab"]))
        ids = list(ids) + [t["id"] for t in tok.get("added_tokens", [])]
        vocab = max(ids) + 1
    rng = np.random.default_rng(SEED)
    model = float_model(rng, vocab)
    cfg = config(vocab)
    write_dir(os.path.join(a.out, "fp16"), cfg, {k: v.astype(np.float16) for k, v in model.items()}, {}, a.tokenizer)

    gptq_cfg = {"bits": 4, "group_size": GROUP, "damp_percent": 0.01, "true_sequential": True, "quant_method": "gptq",
                "checkpoint_format": "gptq", "model_file_base_name": "model"}
    kinds = {
        "gptq": ({**gptq_cfg, "desc_act": False, "sym": True}, "quantize_config.json", True),
        "gptq-desc-act": ({**gptq_cfg, "desc_act": True, "sym": False}, "quantize_config.json", False),
        "awq": ({"zero_point": True, "q_group_size": GROUP, "w_bit": 4, "version": "GEMM"}, "quant_config.json", True),
    }
    for kind, (qcfg, qfile, in_config) in kinds.items():
        quantized = {k: v.astype(np.float16) for k, v in model.items() if not is_linear(k)}
        dequantized = dict(quantized)
        expected = {}
        for name, w in model.items():
            if not is_linear(name):
                continue
            prefix = name[: -len(".weight")]
            if kind == "awq":
                tensors, expect = awq_layer(w)
            else:
                tensors, expect = gptq_layer(w, qcfg["sym"], qcfg["desc_act"], rng)
            quantized.update({f"{prefix}.{k}": v for k, v in tensors.items()})
            expected[name] = expect
        qc = dict(cfg)
        if in_config:
            qc["quantization_config"] = (
                {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
                if kind == "awq" else qcfg)
        path = os.path.join(a.out, kind)
        write_dir(path, qc, quantized, {qfile: qcfg}, a.tokenizer)
        # The reader, from the packed file, must give back what was packed.
        read = dequant_ref.dequantize_checkpoint(path)
        assert sorted(read) == sorted(expected), kind
        for name, w in read.items():
            assert np.array_equal(w.view(np.uint32), expected[name].view(np.uint32)), (kind, name)
        dequantized.update(read)
        write_dir(os.path.join(a.out, kind + "-dequantized"), cfg, dequantized, {}, a.tokenizer)


def is_linear(name):
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


if __name__ == "__main__":
    main()
