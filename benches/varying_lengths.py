#!/usr/bin/env python3
"""The bundled runtime against onnxruntime when every run has another length: one session each,
runs going round through inputs of several lengths (`compactor bench runtime --input-set`), on
MiniLM unreduced and with token pruning inserted (whose reduced length is computed at run time),
and on SmolLM2's fused prefill graph with FastV. Per length: the bundled runtime's first run (any
planning for the new shape), its median, onnxruntime's median, and their ratio: medians over
`--repeats` invocations, with the range of the ratio.

    .cache/venv/bin/python benches/varying_lengths.py [--compactor target/release/compactor]
        [--runs 10] [--repeats 5] [--out target/varying-lengths-bench]

Inputs are windows of the evaluation text (batch 1). Prints a Markdown table and writes
RESULTS.json.
"""
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import factorize as fb  # noqa: E402
import token_pruning as tp  # noqa: E402

MINILM_LENGTHS = (64, 96, 128, 192, 256)
SMOLLM2_LENGTHS = (256, 384, 512, 768)


def input_sets(out_dir, prefix, sets):
    """Each feed dict written as a directory of NAME.npy."""
    dirs = []
    for length, feeds in sets:
        d = os.path.join(out_dir, f"{prefix}_{length}")
        os.makedirs(d, exist_ok=True)
        for name, value in feeds.items():
            np.save(os.path.join(d, f"{name}.npy"), value)
        dirs.append(d)
    return dirs


def bench(a, model, dirs):
    """`--repeats` invocations (each a fresh session of each runtime, ours first): per length,
    the invocations' medians and ratios. One invocation times the two runtimes one after the
    other, so load that comes and goes on the machine can favour either; the median ratio over
    invocations, with its range, is what the table reports."""
    cmd = [a.compactor, "bench", "runtime", model, "--threads", "2", "--runs", str(a.runs), "--warmup", "1", "--json"]
    for d in dirs:
        cmd += ["--input-set", d]
    runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout) for _ in range(a.repeats)]
    sets = []
    for per_length in zip(*(r["sets"] for r in runs)):
        med = lambda key: float(np.median([s[key] for s in per_length]))  # noqa: E731
        ratios = sorted(s["ratio"] for s in per_length)
        sets.append({"dir": per_length[0]["dir"], "compactor_first_ms": med("compactor_first_ms"), "compactor_median_ms": med("compactor_median_ms"),
                     "onnxruntime_median_ms": med("onnxruntime_median_ms"), "ratio": float(np.median(ratios)), "ratio_range": [ratios[0], ratios[-1]]})
    return {"sets": sets, "invocations": runs}


def main():
    ap = fb.arguments("varying-lengths-bench", "minilm,smollm2")
    ap.add_argument("--repeats", type=int, default=5, help="invocations of each bench (fresh sessions); the table gives their median ratio")
    a = ap.parse_args()
    a.runs = max(a.runs, 1)
    os.makedirs(a.out, exist_ok=True)
    results = {}
    if "minilm" in a.models:
        src = os.path.join(a.shared, "minilm-l6-v2.onnx")
        out_dir = os.path.join(a.out, "minilm")
        os.makedirs(out_dir, exist_ok=True)
        dirs = input_sets(out_dir, "len", [(n, {k: v[:1] for k, v in tp.minilm_windows(a, n, 1).items()}) for n in MINILM_LENGTHS])
        pruned = os.path.join(out_dir, "attention_layer2_ratio0.5.onnx")
        tp.prune(a.compactor, src, pruned, "prune-tokens(method=attention,layer=2,ratio=0.5)")
        for name, model in (("MiniLM", src), ("MiniLM, attention layer 2 ratio 0.5", pruned)):
            results[name] = bench(a, model, dirs)
            print(name, json.dumps(results[name]["sets"]), flush=True)
    if "smollm2" in a.models:
        src = os.path.join(a.cache, "smollm2", "prefill_fused.onnx")
        out_dir = os.path.join(a.out, "smollm2")
        os.makedirs(out_dir, exist_ok=True)
        tokens = np.load(os.path.join(a.cache, "smollm2", "text_evaluation.npy")).reshape(-1).astype(np.int64)
        sets = []
        for n in SMOLLM2_LENGTHS:
            ids = tokens[None, :n]
            sets.append((n, {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(n, dtype=np.int64)[None, :]}))
        dirs = input_sets(out_dir, "len", sets)
        pruned = os.path.join(out_dir, "fastv_k2_r0.5.onnx")
        tp.prune(a.compactor, src, pruned, "prune-tokens(method=fastv,layer=2,ratio=0.5)")
        for name, model in (("SmolLM2 (fused ops)", src), ("SmolLM2 (fused ops), FastV K=2 R=0.5", pruned)):
            results[name] = bench(a, model, dirs)
            print(name, json.dumps(results[name]["sets"]), flush=True)
    with open(os.path.join(a.out, "RESULTS.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| model | tokens | Compactor: first run | median | onnxruntime median | ratio (median) | ratio (range) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        for s in r["sets"]:
            length = s["dir"].rsplit("_", 1)[-1]
            lines.append(f"| {name} | {length} | {s['compactor_first_ms']:.1f} ms | {s['compactor_median_ms']:.1f} ms | {s['onnxruntime_median_ms']:.1f} ms | {s['ratio']:.2f} | {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
