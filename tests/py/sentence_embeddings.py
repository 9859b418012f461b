"""Compares sentence embeddings of two MiniLM-style models in onnxruntime.

Usage: sentence_embeddings.py REFERENCE.onnx CANDIDATE.onnx --input NAME=FILE.npy ... [--threads N]
The embedding is all-MiniLM-L6-v2's: the mean of the last hidden state over the attention
mask, L2-normalised. Prints JSON: per-sentence cosine similarity, its minimum and mean, and the
max abs difference of the last hidden state.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort


def embeddings(path, feeds, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    hidden = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return hidden, pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--input", action="append", default=[])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    feeds = {k: np.load(v) for k, v in (s.split("=", 1) for s in args.input)}
    h_ref, e_ref = embeddings(args.reference, feeds, args.threads)
    h_new, e_new = embeddings(args.candidate, feeds, args.threads)
    cos = (e_ref * e_new).sum(1)
    print(json.dumps({"cosine": cos.tolist(), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "max_abs_hidden": float(np.abs(h_ref - h_new).max())}))


if __name__ == "__main__":
    main()
