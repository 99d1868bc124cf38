#!/usr/bin/env python3
"""Writes the reference engine's answers on a model in the shared reference format
(../shared/README.md): tokenization, teacher-forced top-10 logits at every position, NLL and
the 32-token greedy continuation, for the cases (same token ids) of a shared reference file.

Usage: PYTHONPATH=LLAMA_CPP_PYTHON LLAMA_CPP_LIB_PATH=BUILD/bin \
    make_reference.py MODEL.gguf ../shared/reference/tiny-mistral-q4_0.json [--retokenize] [--n-ctx=N] > OUT.json
--retokenize: the cases' texts tokenized with MODEL's own vocabulary instead (special tokens
parsed; `long`: the first 700 tokens of ../shared/reference/long.txt), for a model whose
vocabulary is not the cases file's.
--n-ctx=N: the context size (default 1024); it selects e.g. LongRoPE's short or long factors.
(llama-cpp-python's ctypes binding over the reference's own libllama; 2 threads, f16 KV cache,
the prompt in one batch.)
"""
import json, math, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

model, cases_from = sys.argv[1], sys.argv[2]
flags = sys.argv[3:]
retokenize = "--retokenize" in flags
n_ctx = next((int(f.split("=", 1)[1]) for f in flags if f.startswith("--n-ctx=")), 1024)
if any(f != "--retokenize" and not f.startswith("--n-ctx=") for f in flags):
    sys.exit(f"unknown arguments {flags}")
src = json.load(open(cases_from))
llm = Llama(model_path=model, n_ctx=n_ctx, n_batch=1024, n_ubatch=1024, n_threads=2, logits_all=True, verbose=False)

def tokenize(text, special):
    return llm.tokenize(text.encode(), add_bos=True, special=special)

out = {"model": model.split("/")[-1],
       "reference": f"llama.cpp as vendored in llama-cpp-python {llama_cpp.__version__} (CPU, 2 threads, f16 KV cache, context {n_ctx})",
       "tokenize": [{"text": t["text"], "parse_special": t["parse_special"], "ids": tokenize(t["text"], t["parse_special"])} for t in src["tokenize"]],
       "cases": []}
for c in src["cases"]:
    toks = c["tokens"]
    if retokenize:
        if c["text"] is None:
            long_txt = cases_from.rsplit("/", 1)[0] + "/long.txt"
            toks = tokenize(open(long_txt).read(), True)[:700]
        else:
            toks = tokenize(c["text"], True)
    llm.reset()
    llm.eval(toks)
    logits = np.array(llm.scores[:len(toks)], dtype=np.float64)
    top10 = []
    nll = []
    for i, row in enumerate(logits):
        idx = np.argsort(-row, kind="stable")[:10]
        top10.append([[int(j), float(np.float32(row[j]))] for j in idx])
        if i + 1 < len(toks):
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll.append(float(lse - row[toks[i + 1]]))
    greedy = []
    nxt = int(np.argmax(logits[-1]))
    for _ in range(32):
        greedy.append(nxt)
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out["cases"].append({"name": c["name"], "text": c["text"], "tokens": toks, "top10": top10, "nll": nll, "greedy": greedy})
json.dump(out, sys.stdout)
