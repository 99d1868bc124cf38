#!/usr/bin/env python3
"""Writes the reference engine's tokenization of tests/data/tekken_strings.json with Mistral's
Tekken vocabulary (Mistral Nemo's tekken.json, as the mistral-common package ships it) in the
shared reference format's "tokenize" entries, both parse_special modes, BOS as the vocabulary
says.

The vocabulary is converted as the reference converter converts a Mistral-format model
(convert_hf_to_gguf.py --mistral-format: `_set_vocab_mistral`, through gguf-py's MistralVocab
over mistral-common's Tekkenizer) into a metadata-only GGUF (architecture llama, no tensors),
which the reference's `llama-tokenize` loads with vocab_only.

Usage: B=<llama.cpp>/build/bin PYTHONPATH=<llama.cpp>/gguf-py \\
    PYTHON_WITH_MISTRAL_COMMON make_tekken_reference.py DIR_WITH_tekken.json OUT.vocab.gguf \\
    > tests/data/reference/tekken-tokenize.json
"""
import json, os, subprocess, sys, tempfile
from pathlib import Path
import gguf
from gguf.vocab import MistralVocab, MistralTokenizerType

src_dir, out_gguf = Path(sys.argv[1]), sys.argv[2]
strings = json.load(open(Path(__file__).parent / "tekken_strings.json"))

vocab = MistralVocab(src_dir)
assert vocab.tokenizer_type == MistralTokenizerType.tekken
w = gguf.GGUFWriter(out_gguf, "llama")
# The llama hyperparameters a vocab_only load still reads (Mistral Nemo's).
w.add_block_count(40)
w.add_context_length(1024000)
w.add_embedding_length(5120)
w.add_feed_forward_length(14336)
w.add_head_count(32)
w.add_head_count_kv(8)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(1e6)
# What _set_vocab_mistral writes, in its order (no chat template: tokenization does not use it).
w.add_tokenizer_model(vocab.gguf_tokenizer_model)
tokens, scores, toktypes = [], [], []
for text, score, toktype in vocab.all_tokens():
    tokens.append(text)
    scores.append(score)
    toktypes.append(toktype)
assert len(tokens) == vocab.vocab_size
w.add_tokenizer_pre("tekken")
w.add_token_merges(vocab.extract_vocab_merges_from_model())
w.add_bos_token_id(vocab.bos_id)
w.add_eos_token_id(vocab.eos_id)
w.add_unk_token_id(vocab.unk_id)
w.add_pad_token_id(vocab.pad_id)
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(toktypes)
w.add_vocab_size(vocab.vocab_size)
w.add_add_bos_token(True)
w.add_add_eos_token(False)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

b = os.environ["B"]
env = dict(os.environ, LD_LIBRARY_PATH=b)
out = {"vocabulary": "tekken.json of mistral-common (Mistral Nemo, tekken_240718.json)", "tokenize": []}
with tempfile.TemporaryDirectory() as d:
    for text in strings:
        for special in (True, False):
            p = os.path.join(d, "prompt.txt")
            open(p, "w", encoding="utf-8", newline="").write(text)
            args = [os.path.join(b, "llama-tokenize"), "-m", out_gguf, "-f", p, "--no-escape", "--ids", "--log-disable"]
            if not special:
                args.append("--no-parse-special")
            r = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
            ids = json.loads(r.stdout.strip().splitlines()[-1])
            out["tokenize"].append({"text": text, "parse_special": special, "ids": ids})
# One entry per line.
sys.stdout.write(json.dumps({"vocabulary": out["vocabulary"]})[:-1] + ', "tokenize": [\n')
sys.stdout.write(",\n".join(json.dumps(e, ensure_ascii=False) for e in out["tokenize"]) + "\n]}\n")
