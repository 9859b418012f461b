"""Micro-expert pruning (CAMERA-P) of transformer FFNs: SmolLM2 (perplexity) and MiniLM's GELU
FFNs (sentence cosine), CAMERA's score against magnitude (NIRVANA), activation (sum of
squares) and wanda, at 10, 20 and 30% of each layer's neurons removed, with size and latency in
both runtimes next to the dense model.

Every score runs one-shot (`sequential=false`: every layer scored on the unpruned model, one
calibration pass); CAMERA also runs as its code does (`sequential=true`: each layer scored on
activations that went through the layers pruned before it), and with `compensate=true` (the
removed neurons' calibration mean contribution added to the down projection's bias; not in
CAMERA). Calibration on the calibration part
of the text, evaluation on the held-out part; same texts, windows and calibration as
`benches/factorize.py` (whose helpers this reuses).

    .cache/venv/bin/python benches/micro_experts.py [--models minilm,smollm2,moe,moe-op] [--runs 3]

`moe` (exported Hugging Face form) and `moe-op` (the same network with com.microsoft.MoE nodes;
rows for both of the node's widths: pooled and padded, and `per_expert=true`, "uniform") need
the MoE fixtures: `.cache/venv/bin/python fixtures/make_smollm2_moe.py .cache`.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import factorize as fb  # noqa: E402

RATIOS = [0.1, 0.2, 0.3]
ROWS = [("camera", "false", False), ("magnitude", "false", False), ("activation", "false", False), ("wanda", "false", False), ("camera", "true", False), ("camera", "false", True)]
# CAMERA-Q (bit tiers by CAMERA rank) against uniform RTN of the same FFN weights, all block 32
# symmetric MatMulNBits (3-bit grids in 4-bit containers, so a 3-bit file is a 4-bit file's size).
# (name, spec; FFN weight globs filled in per model)
QUANT = [
    ("camera-q 2.6 bits (8/4/2 on 5/15/80%)", "quantize-micro-experts(bits=[8,4,2],shares=[0.05,0.15,0.8])"),
    ("camera-q 3.0 bits (8/4/2 on 10/20/70%)", "quantize-micro-experts(bits=[8,4,2],shares=[0.1,0.2,0.7])"),
    ("camera-q 3.2 bits (8/4/2 on 10/30/60%)", "quantize-micro-experts(bits=[8,4,2],shares=[0.1,0.3,0.6])"),
    ("camera-q 3.0 bits (4/3/2 on 25/50/25%)", "quantize-micro-experts(bits=[4,3,2],shares=[0.25,0.5,0.25])"),
    ("uniform 2 bits", "quantize(bits=2,format=matmulnbits,min_elements=0,include={ffn})"),
    ("uniform 3 bits", "quantize(bits=3,format=matmulnbits,min_elements=0,include={ffn})"),
    ("uniform 4 bits", "quantize(bits=4,format=matmulnbits,min_elements=0,include={ffn})"),
    ("uniform 8 bits", "quantize(bits=8,format=matmulnbits,min_elements=0,include={ffn})"),
    ("camera-q 3.0 bits (4/3/2 on 25/50/25%), GPTQ tiers", "quantize-micro-experts(bits=[4,3,2],shares=[0.25,0.5,0.25],method=gptq)"),
    ("uniform 3 bits, GPTQ", "quantize(bits=3,format=matmulnbits,min_elements=0,include={ffn},method=gptq)"),
]
FFN_WEIGHTS = {"minilm": '["*/intermediate/dense/MatMul","*layer.?/output/dense/MatMul"]', "smollm2": "[*mlp*]"}


def prune(compactor, src, out, ratio, score, sequential, compensate, calib, per_expert=False):
    spec = f"infer-shapes,prune-micro-experts(ratio={ratio},score={score},sequential={sequential},compensate={str(compensate).lower()},per_expert={str(per_expert).lower()}),eliminate-dead-code"
    cmd = [compactor, "optimize", src, "-o", out, "--passes", spec]
    if score != "magnitude":
        cmd += ["--calibration", calib]
    seconds = fb.run(cmd)
    return {"seconds": seconds, "bytes": fb.size_of(out)}


def label(score, sequential, compensate):
    return f"{score}{' sequential' if sequential == 'true' else ''}{' + compensate' if compensate else ''}"


def sweep(a, model, src, out_dir, calib, inputs, metric):
    rows = a.results.setdefault(model, {})
    if "dense" not in rows:
        rows["dense"] = {"bytes": fb.size_of(src), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs), **metric(src)}
        print(f"{model} dense: {json.dumps(rows['dense'])}", flush=True)
    for ratio in RATIOS:
        for score, sequential, compensate in ROWS:
            name = f"{label(score, sequential, compensate)} {ratio}"
            if fb.skipped(a, name):
                continue
            out = os.path.join(out_dir, f"{score}_{sequential}_{compensate}_{ratio}.onnx")
            row = prune(a.compactor, src, out, ratio, score, sequential, compensate, calib)
            row.update(metric(out))
            row["latency"] = fb.bench_runtime(a.compactor, out, inputs, [], a.runs) if ratio == RATIOS[-1] else None
            rows[name] = row
            print(f"{model} {name}: {json.dumps(row)}", flush=True)
            save(a)


def quant_sweep(a, model, src, out_dir, calib, inputs, metric):
    rows = a.results.setdefault(model, {})
    for i, (name, spec) in enumerate(QUANT):
        if fb.skipped(a, name):
            continue
        out = os.path.join(out_dir, f"quant_{i}.onnx")
        spec = "infer-shapes," + spec.replace("{ffn}", FFN_WEIGHTS[model]) + ",eliminate-dead-code"
        cmd = [a.compactor, "optimize", src, "-o", out, "--passes", spec, "--report", out + ".json"]
        if "micro-experts" in spec or "gptq" in spec:
            cmd += ["--calibration", calib]
        row = {"seconds": fb.run(cmd), "bytes": fb.size_of(out)}
        details = [p["details"] for p in json.load(open(out + ".json"))["pipeline"]["passes"] if p["pass"] == "quantize-micro-experts"]
        if details:
            row["average_bits"] = details[0]["average_bits"]
        row.update(metric(out))
        row["latency"] = fb.bench_runtime(a.compactor, out, inputs, [], a.runs)
        rows[name] = row
        print(f"{model} {name}: {json.dumps(row)}", flush=True)
        save(a)


def minilm(a):
    src, out_dir, calib, held_out_feeds, inputs = fb.minilm_setup(a)
    metric = lambda m: {} if m == src else {"cosine": fb.minilm_cosines(src, m, [held_out_feeds])[0]}  # noqa: E731
    sweep(a, "minilm", src, out_dir, calib, inputs, metric)
    quant_sweep(a, "minilm", src, out_dir, calib, inputs, metric)


def smollm2(a):
    src, out_dir, tokens, calib, inputs = fb.smollm2_setup(a)
    metric = lambda m: {"ppl": fb.perplexity(m, tokens, 2)}  # noqa: E731
    sweep(a, "smollm2", src, out_dir, calib, inputs, metric)
    quant_sweep(a, "smollm2", src, out_dir, calib, inputs, metric)


def moe(a, form):
    """The MoEfied SmolLM2 of fixtures/make_smollm2_moe.py (a shared expert and top-2 of 7
    routed experts per layer), in the exported Hugging Face form (`hf`) or with com.microsoft.MoE
    nodes (`ort`): micro-experts pooled across each layer's experts, routed ones scored with
    their routing weights; on the MoE node also `per_expert=true` (every expert keeps one
    width). One-shot scores only; latency of the 30% rows."""
    key, file = {"hf": ("smollm2-moe", "hf_shared_k2.onnx"), "ort": ("smollm2-moe-op", "ort_shared_k2.onnx")}[form]
    src = os.path.join(a.cache, "smollm2-moe", file)
    _, dense_dir, tokens, calib, inputs = fb.smollm2_setup(a)
    out_dir = os.path.join(a.out, key)
    os.makedirs(out_dir, exist_ok=True)
    rows = a.results.setdefault(key, {})
    if "dense" not in rows:
        rows["dense"] = {"bytes": fb.size_of(src), "latency": fb.bench_runtime(a.compactor, src, inputs, [], a.runs) if a.runs else None, "ppl": fb.perplexity(src, tokens, 2)}
    for ratio in RATIOS:
        for per_expert in [False, True] if form == "ort" else [False]:
            for score, sequential, compensate in ROWS:
                if sequential == "true" or compensate:
                    continue
                name = f"{label(score, sequential, compensate)}{' uniform' if per_expert else ''} {ratio}"
                if fb.skipped(a, name):
                    continue
                out = os.path.join(out_dir, f"{score}_{per_expert}_{ratio}.onnx")
                row = prune(a.compactor, src, out, ratio, score, sequential, compensate, calib, per_expert)
                row["ppl"] = fb.perplexity(out, tokens, 2)
                if ratio == RATIOS[-1] and score == "camera" and a.runs:
                    row["latency"] = fb.bench_runtime(a.compactor, out, inputs, [], a.runs)
                rows[name] = row
                print(f"{key} {name}: {json.dumps(row)}", flush=True)
                save(a)


def save(a):
    with open(os.path.join(a.out, "RESULTS.json"), "w") as f:
        json.dump(a.results, f, indent=1)


def table(results):
    ms = fb.ms
    lines = []
    for model, metric, name in (("minilm", "cosine", "sentence cosine (64 held-out paragraphs)"), ("smollm2", "ppl", "perplexity (4096 evaluation tokens)"), ("smollm2-moe", "ppl", "perplexity (4096 evaluation tokens)")):
        rows = results.get(model)
        if not rows:
            continue
        d = rows["dense"]
        lines += [f"{model}: {name}", "", "| score | " + " | ".join(f"{r * 100:.0f}% removed" for r in RATIOS) + " |", "|---|" + "---:|" * len(RATIOS)]
        lines.append(f"| dense | {d.get(metric, 1.0):.4f} (all ratios) |" + " |" * (len(RATIOS) - 1))
        for score, sequential, compensate in ROWS:
            cells = [rows.get(f"{label(score, sequential, compensate)} {r}", {}).get(metric) for r in RATIOS]
            lines.append(f"| {label(score, sequential, compensate)} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
        lines += ["", f"| model | MiB | pruning time | Compactor runtime | onnxruntime |", "|---|---:|---:|---:|---:|"]
        if d.get("latency"):
            lines.append(f"| dense | {d['bytes'] / 2**20:.1f} | | {ms(d['latency'], 'compactor'):.1f} ms | {ms(d['latency'], 'onnxruntime'):.1f} ms |")
        for score, sequential, compensate in ROWS:
            r = rows.get(f"{label(score, sequential, compensate)} {RATIOS[-1]}")
            if r and r.get("latency"):
                lines.append(f"| {label(score, sequential, compensate)} {RATIOS[-1] * 100:.0f}% | {r['bytes'] / 2**20:.1f} | {r['seconds']:.1f} s | {ms(r['latency'], 'compactor'):.1f} ms | {ms(r['latency'], 'onnxruntime'):.1f} ms |")
        lines += ["", f"| FFN weights | average bits | {metric} | MiB | time | Compactor runtime | onnxruntime |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, _ in QUANT:
            r = rows.get(name)
            if r:
                lat = r.get("latency")
                lines.append(f"| {name} | {r.get('average_bits', '')} | {r[metric]:.4f} | {r['bytes'] / 2**20:.1f} | {r['seconds']:.1f} s | {ms(lat, 'compactor') if lat else 0:.1f} ms | {ms(lat, 'onnxruntime') if lat else 0:.1f} ms |")
        lines.append("")
    rows = results.get("smollm2-moe-op")
    if rows:
        lines += ["smollm2-moe-op: perplexity (4096 evaluation tokens); pooled (experts padded to the widest) / uniform (per_expert=true)", "",
                  "| score | " + " | ".join(f"{r * 100:.0f}% removed" for r in RATIOS) + " |", "|---|" + "---:|" * len(RATIOS)]
        lines.append(f"| unpruned | {rows['dense']['ppl']:.2f} |" + " |" * (len(RATIOS) - 1))
        for score in ("camera", "activation", "wanda", "magnitude"):
            cells = [(rows.get(f"{score} {r}", {}).get("ppl"), rows.get(f"{score} uniform {r}", {}).get("ppl")) for r in RATIOS]
            lines.append(f"| {score} | " + " | ".join(f"{p:.1f} / {u:.1f}" if p and u else "" for p, u in cells) + " |")
        lines += ["", "| model | MiB | Compactor runtime | onnxruntime |", "|---|---:|---:|---:|"]
        for name in ["dense", f"camera {RATIOS[-1]}", f"camera uniform {RATIOS[-1]}"]:
            r = rows.get(name)
            if r and r.get("latency"):
                lines.append(f"| {name} | {r['bytes'] / 2**20:.1f} | {ms(r['latency'], 'compactor'):.1f} ms | {ms(r['latency'], 'onnxruntime'):.1f} ms |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = fb.arguments("micro-experts-bench", "minilm,smollm2")
    ap.add_argument("--only", help="comma-separated substrings of row names (keeps the other rows of RESULTS.json)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "RESULTS.json")
    a.results = json.load(open(path)) if os.path.exists(path) else {}
    if "minilm" in a.models:
        minilm(a)
    if "smollm2" in a.models.split(","):
        smollm2(a)
    if "moe" in a.models.split(","):
        moe(a, "hf")
    if "moe-op" in a.models.split(","):
        moe(a, "ort")
    save(a)
    print(table(a.results))


if __name__ == "__main__":
    main()
