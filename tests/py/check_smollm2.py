#!/usr/bin/env python3
"""Checks the SmolLM2 ONNX graphs of fixtures/make_smollm2.py with onnxruntime.

    python tests/py/check_smollm2.py CACHE_DIR [--no-ppl]

(a) greedy generation from a chat-formatted prompt (the GGUF's chat template), prefill then
    decode with the KV cache, printed;
(b) prefill logits over a prompt == step-by-step decode logits (one token at a time with the
    growing cache), max abs diff;
(c) batch 2 with left padding == batch 1 for the real tokens, max abs diff (prefill and one
    decode step);
(e) the fused form (prefill_fused.onnx, decode_fused.onnx: onnxruntime's GroupQueryAttention,
    RotaryEmbedding, SimplifiedLayerNormalization ops) gives the plain form's logits, its own
    step-by-step decode agrees with its prefill, and its greedy answer is the plain form's;
(d) f32 perplexity of CACHE/smollm2/text_evaluation.npy (fixtures/make_eval_text.py) over
    non-overlapping 512-token windows, when that file exists.
Ends with one JSON summary line; exits non-zero when a check fails.
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

TOL = 1e-3
WINDOW = 512


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class Model:
    def __init__(self, d, cfg, form=""):
        self.cfg = cfg
        self.prefill = session(os.path.join(d, f"prefill{form}.onnx"))
        self.decode = session(os.path.join(d, f"decode{form}.onnx"))
        self.L = cfg["num_hidden_layers"]
        self.kv = cfg["num_key_value_heads"]
        self.hd = cfg["head_dim"]
        self.present_names = [o.name for o in self.decode.get_outputs()][1:]

    def empty_past(self, batch):
        z = np.zeros((batch, self.kv, 0, self.hd), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(self.L) for k in ("key", "value")}

    def step(self, ids, mask, pos, past):
        """One decode-graph call; returns logits and the new past."""
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **past}
        outs = self.decode.run(None, feeds)
        new = {n.replace("present.", "past_key_values."): v for n, v in zip(self.present_names, outs[1:])}
        return outs[0], new

    def stepwise_logits(self, ids):
        """Logits of a batch-1 sequence fed one token at a time through the decode graph."""
        past, steps = self.empty_past(1), []
        for t in range(ids.shape[1]):
            lg, past = self.step(ids[:, t:t + 1], np.ones((1, t + 1), np.int64), np.array([[t]], np.int64), past)
            steps.append(lg[:, 0])
        return np.stack(steps, axis=1)

    def logits(self, ids, mask, pos):
        return self.prefill.run(["logits"], {"input_ids": ids, "attention_mask": mask, "position_ids": pos})[0]


def positions(mask):
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


def generate(m, ids, n, eos):
    ids = np.array([ids], np.int64)
    mask = np.ones_like(ids)
    logits, past = m.step(ids, mask, positions(mask), m.empty_past(1))
    out = []
    for _ in range(n):
        nxt = int(np.argmax(logits[0, -1]))
        if nxt == eos:
            break
        out.append(nxt)
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        logits, past = m.step(np.array([[nxt]], np.int64), mask, np.array([[mask.shape[1] - 1]], np.int64), past)
    return out


def perplexity(m, tokens):
    nll, count, windows = 0.0, 0, 0
    for start in range(0, len(tokens) - WINDOW + 1, WINDOW):
        w = tokens[start:start + WINDOW][None, :].astype(np.int64)
        mask = np.ones_like(w)
        lg = m.logits(w, mask, positions(mask))[0, :-1].astype(np.float64)
        tgt = w[0, 1:]
        mx = lg.max(axis=-1, keepdims=True)
        lse = (mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=-1)))
        nll += float((lse - lg[np.arange(len(tgt)), tgt]).sum())
        count += len(tgt)
        windows += 1
    return float(np.exp(nll / count)), windows, count


def main():
    cache = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("COMPACTOR_CACHE", ".cache"))
    d = os.path.join(cache, "smollm2")
    cfg = json.load(open(os.path.join(d, "config.json")))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    t0 = time.time()
    m = Model(d, cfg)
    summary = {"load_s": round(time.time() - t0, 2)}
    ok = True

    # (a) greedy generation from the chat template (system message added as the template does).
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(prompt).ids
    t0 = time.time()
    gen = generate(m, ids, 30, cfg["eos_token_id"])
    text = tok.decode(gen)
    summary["generate_s"] = round(time.time() - t0, 2)
    summary["generated_tokens"] = len(gen)
    summary["generated"] = text
    print(f"(a) prompt {len(ids)} tokens; greedy: {text!r}")
    if "paris" not in text.lower():
        ok = False
        print("(a) FAIL: the answer does not name Paris")

    story = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
             "<|im_start|>user\nWrite a short story about a cat who learns to fly.<|im_end|>\n<|im_start|>assistant\n")
    gen = generate(m, tok.encode(story).ids, 30, cfg["eos_token_id"])
    summary["generated_story"] = tok.decode(gen)
    print(f"(a) story, {len(gen)} tokens: {tok.decode(gen)!r}")
    if len(gen) < 30:
        ok = False
        print("(a) FAIL: the story stopped early")

    # (b) prefill logits == step-by-step decode logits.
    text_b = "The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed the ocean blue."
    ids_b = np.array([tok.encode(text_b).ids], np.int64)
    mask = np.ones_like(ids_b)
    full = m.logits(ids_b, mask, positions(mask))
    diff_b = float(np.abs(m.stepwise_logits(ids_b) - full).max())
    summary["prefill_vs_decode_max_abs"] = diff_b
    summary["prefill_vs_decode_tokens"] = int(ids_b.shape[1])
    print(f"(b) prefill vs step-by-step decode over {ids_b.shape[1]} tokens: max abs diff {diff_b:.3g}")
    ok &= diff_b <= TOL

    # (c) batch 2 with left padding == batch 1 for the real tokens.
    a = tok.encode("Paris is the capital of France, and Berlin is").ids
    b = tok.encode("Once upon a time").ids
    n = max(len(a), len(b))
    pad = cfg["pad_token_id"]
    ids_c = np.array([[pad] * (n - len(s)) + s for s in (a, b)], np.int64)
    mask_c = np.array([[0] * (n - len(s)) + [1] * len(s) for s in (a, b)], np.int64)
    pos_c = positions(mask_c)
    batch = m.logits(ids_c, mask_c, pos_c)
    diff_c = 0.0
    for r, s in enumerate((a, b)):
        single = m.logits(np.array([s], np.int64), np.ones((1, len(s)), np.int64), positions(np.ones((1, len(s)), np.int64)))
        diff_c = max(diff_c, float(np.abs(batch[r, n - len(s):] - single[0]).max()))
    # the same through the decode graph: padded prefill, then one more token per row
    lg, past = m.step(ids_c, mask_c, pos_c, m.empty_past(2))
    nxt = np.argmax(lg[:, -1], axis=-1)[:, None].astype(np.int64)
    mask2 = np.concatenate([mask_c, np.ones((2, 1), np.int64)], axis=1)
    lg2, _ = m.step(nxt, mask2, pos_c[:, -1:] + 1, past)
    diff_c_dec = 0.0
    for r, s in enumerate((a, b)):
        seq = np.array([s + [int(nxt[r, 0])]], np.int64)
        single = m.logits(seq, np.ones_like(seq), positions(np.ones_like(seq)))
        diff_c_dec = max(diff_c_dec, float(np.abs(lg2[r, 0] - single[0, -1]).max()))
    summary["left_padding_max_abs"] = diff_c
    summary["left_padding_decode_max_abs"] = diff_c_dec
    print(f"(c) batch 2 left-padded ({len(a)} and {len(b)} tokens) vs batch 1: prefill max abs diff {diff_c:.3g}, "
          f"next decode step {diff_c_dec:.3g}")
    ok &= diff_c <= TOL and diff_c_dec <= TOL

    # (e) the fused form against the plain one.
    fused = Model(d, cfg, "_fused")
    full_fused = fused.logits(ids_b, mask, positions(mask))
    diff_e = float(np.abs(full_fused - full).max())
    diff_e_dec = float(np.abs(fused.stepwise_logits(ids_b) - full_fused).max())
    gen_fused = tok.decode(generate(fused, ids, 30, cfg["eos_token_id"]))
    summary.update(fused_vs_plain_max_abs=diff_e, fused_prefill_vs_decode_max_abs=diff_e_dec, fused_generated=gen_fused)
    print(f"(e) fused vs plain prefill: max abs diff {diff_e:.3g}; fused prefill vs its decode: {diff_e_dec:.3g}; greedy: {gen_fused!r}")
    ok &= diff_e <= TOL and diff_e_dec <= TOL and gen_fused == text

    # (d) perplexity of the evaluation text.
    ev = os.path.join(d, "text_evaluation.npy")
    if "--no-ppl" not in sys.argv and os.path.exists(ev):
        tokens = np.load(ev)
        t0 = time.time()
        ppl, windows, count = perplexity(m, tokens)
        summary.update(perplexity=round(ppl, 3), ppl_windows=windows, ppl_tokens=count,
                       ppl_s=round(time.time() - t0, 1))
        print(f"(d) f32 perplexity of text_evaluation.npy: {ppl:.3f} ({windows} windows of {WINDOW}, {count} predicted tokens)")
        src = os.path.join(d, "text_source.json")
        if os.path.exists(src):
            src = json.load(open(src))
            summary["ppl_text"] = f"{src['work']}; {src['package']}: {src['file']}"
            print(f"(d) text: {summary['ppl_text']}")
        ok &= ppl < 100

    summary["ok"] = bool(ok)
    print(json.dumps(summary, sort_keys=True))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
