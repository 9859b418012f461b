"""Width pruning of transformer FFNs: MiniLM (sentence cosine) and SmolLM2 (perplexity), each
score against magnitude and random order, with latency in both runtimes next to the dense model.

`prune-channels(keep=K,score=S)` cuts every FFN's hidden width (the groups it can cut: heads and
the normalised residual stream are left) to K of its channels. `activation` calibrates on the
calibration part of the text and compensates the cut channels' mean into the next layer's bias;
the evaluation part is never calibrated on. Same texts, windows and calibration as
`benches/factorize.py` (whose helpers this reuses).

    .cache/venv/bin/python benches/channels_llm.py [--models minilm,smollm2] [--runs 3]
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import factorize as fb  # noqa: E402

KEEPS = [0.9, 0.75, 0.5]
SCORES = ["magnitude", "random", "activation"]


def prune(compactor, src, out, keep, score, calib):
    spec = f"infer-shapes,prune-channels(keep={keep},score={score}),eliminate-dead-code"
    cmd = [compactor, "optimize", src, "-o", out, "--passes", spec]
    if score == "activation":
        cmd += ["--calibration", calib]
    seconds = fb.run(cmd)
    return {"seconds": seconds, "bytes": fb.size_of(out)}


def minilm(a, results):
    src, out_dir, calib, held_out_feeds, inputs = fb.minilm_setup(a)
    rows = results.setdefault("minilm", {})
    rows["dense"] = {"bytes": fb.size_of(src), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs)}
    for keep in KEEPS:
        for score in SCORES:
            out = os.path.join(out_dir, f"{score}_{keep}.onnx")
            row = prune(a.compactor, src, out, keep, score, calib)
            row["cosine"] = fb.minilm_cosines(src, out, [held_out_feeds])[0]
            row["latency"] = fb.bench_runtime(a.compactor, out, inputs, [], a.runs)
            rows[f"{score} {keep}"] = row
            print(f"MiniLM {score} {keep}: {json.dumps(row)}", flush=True)


def smollm2(a, results):
    src, out_dir, tokens, calib, inputs = fb.smollm2_setup(a)
    rows = results.setdefault("smollm2", {})
    rows["dense"] = {"ppl": fb.perplexity(src, tokens, 2), "bytes": fb.size_of(src), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs)}
    print(f"SmolLM2 dense: {json.dumps(rows['dense'])}", flush=True)
    for keep in [0.9, 0.8, 0.7]:
        for score in SCORES:
            out = os.path.join(out_dir, f"{score}_{keep}.onnx")
            row = prune(a.compactor, src, out, keep, score, calib)
            row["ppl"] = fb.perplexity(out, tokens, 2)
            row["latency"] = fb.bench_runtime(a.compactor, out, inputs, [], a.runs)
            rows[f"{score} {keep}"] = row
            print(f"SmolLM2 {score} {keep}: {json.dumps(row)}", flush=True)


def table(results):
    ms = fb.ms
    lines = []
    for model, metric, label in (("minilm", "cosine", "sentence cosine (64 held-out paragraphs)"), ("smollm2", "ppl", "perplexity")):
        rows = results.get(model)
        if not rows:
            continue
        d = rows["dense"]
        lines += [f"{model}:", "", f"| FFN width kept | score | {label} | MiB | Compactor runtime | onnxruntime |", "|---|---|---:|---:|---:|---:|"]
        dense_metric = f"{d[metric]:.3f}" if metric in d else "1"
        lines.append(f"| 100% | | {dense_metric} | {d['bytes'] / 2**20:.1f} | {ms(d['latency'], 'compactor'):.1f} ms | {ms(d['latency'], 'onnxruntime'):.1f} ms |")
        for name, r in rows.items():
            if name == "dense":
                continue
            score, keep = name.split(" ")
            lines.append(f"| {float(keep) * 100:.0f}% | {score} | {r[metric]:.4f} | {r['bytes'] / 2**20:.1f} | {ms(r['latency'], 'compactor'):.1f} ms | {ms(r['latency'], 'onnxruntime'):.1f} ms |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = fb.arguments("channels-llm-bench", "minilm,smollm2")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = {}
    if "minilm" in a.models:
        minilm(a, results)
    if "smollm2" in a.models:
        smollm2(a, results)
    with open(os.path.join(a.out, "RESULTS.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
