"""Width pruning of transformers: MiniLM (sentence cosine) and SmolLM2 (perplexity), each score
against magnitude and random order, with multiply-adds and latency in both runtimes next to the
dense model.

Rows (`--parts`):
- `ffn`: `prune-channels(keep=K,score=S)` cuts every FFN's hidden width to K of its channels (the
  heads and the normalised residual stream are left).
- `heads`: `prune-channels(keep=1,heads=true,groups=["GLOB=K"])` cuts only attention heads, K of
  each block's heads kept (SmolLM2: KV heads, each with its query heads).
- `both` (SmolLM2): `prune-channels(threshold=T,heads=true)` cuts the share T of the FFN and
  KV-head-group parameters where the normalised scores are lowest; random order, which has no
  scores to compare, keeps 1-T of every group instead.
`activation` calibrates on the calibration part of the text and compensates the cut channels'
mean into the next layer's bias; the evaluation part is never calibrated on. Same texts,
windows and calibration as `benches/factorize.py` (whose helpers this reuses). Multiply-adds:
every MatMul's, at the latency input's shapes (onnxruntime's), against the dense model's; each
row's speedup is against the dense model timed right after it.

    .cache/venv/bin/python benches/channels_llm.py [--models minilm,smollm2] [--parts ffn,heads,both] [--runs 3]
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
# A constant of each block's head group, by name: the glob `groups=` selects the heads with.
HEAD_GLOBS = {"minilm": "*attention.self.query.bias", "smollm2": "*q_proj*"}


def prune(compactor, src, out, options, score, calib, feeds):
    spec = f"infer-shapes,prune-channels({options},score={score}),eliminate-dead-code"
    cmd = [compactor, "optimize", src, "-o", out, "--passes", spec]
    if score == "activation":
        cmd += ["--calibration", calib]
    seconds = fb.run(cmd)
    return {"seconds": seconds, "bytes": fb.size_of(out), "macs": macs(out, feeds)}


def part_options(part, model, share, score):
    """The prune-channels options of a row: `share` is the share kept (ffn, heads) or cut (both)."""
    if part == "ffn":
        return f"keep={share}"
    if part == "heads":
        return f'keep=1,heads=true,groups=["{HEAD_GLOBS[model]}={share}"]'
    return f"keep={1 - share:g},heads=true" if score == "random" else f"threshold={share},heads=true"


def macs(path, feeds):
    """Multiply-adds of every MatMul of `path` on `feeds`, from the shapes onnxruntime computes
    (every MatMul's input and output made graph outputs)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    initializers = {t.name for t in m.graph.initializer}
    outputs = {o.name for o in m.graph.output}
    for n in m.graph.node:
        if n.op_type == "MatMul":
            for v in (n.input[0], n.output[0]):
                if v not in initializers and v not in outputs:
                    outputs.add(v)
                    m.graph.output.append(onnx.ValueInfoProto(name=v))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), options)
    shapes = {o.name: v.shape for o, v in zip(session.get_outputs(), session.run(None, feeds))}
    return int(sum(np.prod(shapes[n.output[0]]) * shapes[n.input[0]][-1] for n in m.graph.node if n.op_type == "MatMul"))


def timed_with_dense(a, src, out, inputs):
    """Latency of `out` and of the dense model right after it: this machine's speed drifts over
    a bench, so each row's speedup is taken against the dense model timed next to it."""
    return fb.bench_runtime(a.compactor, out, inputs, [], a.runs), fb.bench_runtime(a.compactor, src, inputs, [], a.runs)


def load_feeds(inputs):
    return {name: np.load(path) for name, path in inputs.items()}


def minilm(a, results):
    src, out_dir, calib, held_out_feeds, inputs = fb.minilm_setup(a)
    rows = results.setdefault("minilm", {})
    feeds = load_feeds(inputs)
    rows["dense"] = {"bytes": fb.size_of(src), "macs": macs(src, feeds), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs)}
    for part in [p for p in a.parts.split(",") if p in ("ffn", "heads")]:
        for keep in KEEPS:
            for score in SCORES:
                out = os.path.join(out_dir, f"{part}_{score}_{keep}.onnx")
                row = prune(a.compactor, src, out, part_options(part, "minilm", keep, score), score, calib, feeds)
                row["cosine"] = fb.minilm_cosines(src, out, [held_out_feeds])[0]
                row["latency"], row["dense_latency"] = timed_with_dense(a, src, out, inputs)
                rows[f"{part} {score} {keep}"] = row
                print(f"MiniLM {part} {score} {keep}: {json.dumps(row)}", flush=True)


def smollm2(a, results):
    src, out_dir, tokens, calib, inputs = fb.smollm2_setup(a)
    rows = results.setdefault("smollm2", {})
    feeds = load_feeds(inputs)
    rows["dense"] = {"ppl": fb.perplexity(src, tokens, 2), "bytes": fb.size_of(src), "macs": macs(src, feeds), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs)}
    print(f"SmolLM2 dense: {json.dumps(rows['dense'])}", flush=True)
    shares = {"ffn": [0.9, 0.8, 0.7], "heads": [0.67, 0.34], "both": [0.1, 0.2, 0.3]}
    for part in a.parts.split(","):
        for share in shares[part]:
            for score in SCORES:
                out = os.path.join(out_dir, f"{part}_{score}_{share}.onnx")
                row = prune(a.compactor, src, out, part_options(part, "smollm2", share, score), score, calib, feeds)
                row["ppl"] = fb.perplexity(out, tokens, 2)
                row["latency"], row["dense_latency"] = timed_with_dense(a, src, out, inputs)
                rows[f"{part} {score} {share}"] = row
                print(f"SmolLM2 {part} {score} {share}: {json.dumps(row)}", flush=True)


def table(results):
    ms = fb.ms
    lines = []
    for model, metric, label in (("minilm", "cosine", "sentence cosine (64 held-out paragraphs)"), ("smollm2", "ppl", "perplexity")):
        rows = results.get(model)
        if not rows:
            continue
        d = rows["dense"]
        lines += [f"{model}:", "",
                  f"| cut | share | score | {label} | MiB | multiply-adds | Compactor runtime (speedup / MAC cut) | onnxruntime (speedup / MAC cut) |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        dense_metric = f"{d[metric]:.3f}" if metric in d else "1"
        lines.append(f"| none | | | {dense_metric} | {d['bytes'] / 2**20:.1f} | 100% | {ms(d['latency'], 'compactor'):.1f} ms | {ms(d['latency'], 'onnxruntime'):.1f} ms |")

        def timing(r, which):
            t = ms(r["latency"], which)
            # Speedup against the dense model timed next to it, over the factor the
            # multiply-adds fell by: 1 when latency tracks the MAC cut exactly.
            tracking = (ms(r["dense_latency"], which) / t) / (d["macs"] / r["macs"])
            return f"{t:.1f} ms ({tracking:.2f})"

        for name, r in rows.items():
            if name == "dense":
                continue
            part, score, share = name.split(" ")
            what = {"ffn": "FFN width kept", "heads": "heads kept", "both": "FFN+head parameters cut"}[part]
            lines.append(f"| {what} | {float(share) * 100:.0f}% | {score} | {r[metric]:.4f} | {r['bytes'] / 2**20:.1f} | {100 * r['macs'] / d['macs']:.1f}% | {timing(r, 'compactor')} | {timing(r, 'onnxruntime')} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = fb.arguments("channels-llm-bench", "minilm,smollm2")
    ap.add_argument("--parts", default="ffn,heads,both", help="which rows: ffn, heads, both (SmolLM2 only)")
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
