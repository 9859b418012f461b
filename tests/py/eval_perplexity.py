#!/usr/bin/env python3
"""Perplexity of a causal language model with onnxruntime: the reference for `compactor eval`.

    python tests/py/eval_perplexity.py MODEL TOKENS.npy [--window 512] [--stride N]
                                       [--max-tokens N] [--threads N]

Windows of `window` tokens start every `stride` tokens (default: the window); each token is
scored once, in the first window that holds it with context before it (Hugging Face's strided
evaluation). Inputs: input_ids, and when the model has them attention_mask (ones),
position_ids (0, 1, ...) and empty past_key_values.* caches. Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def windows(n, window, stride):
    out, scored_until, start = [], 0, 0
    while start + 1 < n:
        end = min(start + window, n)
        scored_from = max(scored_until, start + 1)
        if scored_from < end:
            out.append((start, end, scored_from))
        scored_until = end
        if end == n:
            break
        start += stride
    return out


def feeds_for(session, ids):
    n = len(ids)
    feeds = {}
    for i in session.get_inputs():
        dt = np.int32 if i.type == "tensor(int32)" else np.int64
        if i.name == "input_ids":
            feeds[i.name] = np.asarray(ids, dt)[None, :]
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, n), dt)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(n, dtype=dt)[None, :]
        elif i.name.startswith("past"):
            shape = [d if isinstance(d, int) else (1 if k == 0 else 0) for k, d in enumerate(i.shape)]
            feeds[i.name] = np.zeros(shape, np.float16 if i.type == "tensor(float16)" else np.float32)
        else:
            raise SystemExit(f"input {i.name}: not an input of a causal language model")
    return feeds


def perplexity(session, tokens, window, stride):
    """Perplexity of `tokens` (int64) over the windows, as a dict (also mean NLL, tokens scored, windows)."""
    names = [o.name for o in session.get_outputs()]
    output = "logits" if "logits" in names else names[0]
    plan = windows(len(tokens), window, stride)
    nll, scored = 0.0, 0
    for start, end, scored_from in plan:
        logits = session.run([output], feeds_for(session, tokens[start:end]))[0][0].astype(np.float64)
        rows = logits[scored_from - start - 1 : end - start - 1]
        m = rows.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))[:, 0]
        targets = tokens[scored_from:end]
        nll += float((lse - rows[np.arange(len(targets)), targets]).sum())
        scored += len(targets)
    mean = nll / max(scored, 1)
    return {"perplexity": float(np.exp(mean)), "mean_nll": mean, "tokens_scored": scored, "windows": len(plan)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    tokens = np.load(a.tokens).reshape(-1).astype(np.int64)
    if a.max_tokens:
        tokens = tokens[: a.max_tokens]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = a.threads
    session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    start_time = time.time()
    result = perplexity(session, tokens, a.window, a.stride or a.window)
    print(json.dumps({**result, "seconds": time.time() - start_time}))


if __name__ == "__main__":
    main()
