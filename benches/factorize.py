#!/usr/bin/env python3
"""Low-rank and MPO factorization of SmolLM2-135M and MiniLM: accuracy, size, time to factorize
and latency in both runtimes, for each method at 10-40% fewer linear-layer parameters; and
factorize+quantize against quantize alone at comparable bytes.

    .cache/venv/bin/python benches/factorize.py [--compactor target/release/compactor]
        [--cache .cache] [--out DIR] [--only NAME,...] [--eval-tokens N] [--models smollm2,minilm]

SmolLM2: perplexity (onnxruntime, 512-token windows, tests/py/eval_perplexity.py) on the first
--eval-tokens tokens of the evaluation part of the text; calibration on 8 windows of 512 tokens
of the calibration part. MiniLM: sentence-embedding cosine (mean pooling) against the f32 model
on the reference inputs and on 64 paragraphs of the evaluation part of the same text;
calibration on 4 batches of 4 x 128 tokens of its calibration part (MiniLM's own tokenizer).
Latency: `compactor bench runtime` (both runtimes, same run, 2 threads): SmolLM2 prefill of 512
tokens, MiniLM batch 1 x 128 tokens. Prints Markdown tables and writes RESULTS.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py"))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
import eval_perplexity  # noqa: E402
import make_eval_text  # noqa: E402
from llm_quantize import calibration_dir, perplexity, size_of, skipped  # noqa: E402

METHODS = ["svd", "asvd", "svd-llm", "mpo"]
RATIOS = [0.9, 0.8, 0.7, 0.6]
# factorize+quantize against quantize alone (RTN, block 32, symmetric, the linear layers).
COMBINED = [
    ("quantize int8", "quantize(bits=8,block=32)"),
    ("quantize int4", "quantize(bits=4,block=32)"),
    ("quantize int2", "quantize(bits=2,block=32,symmetric=false)"),
    ("svd-llm 0.9 + int4", "factorize(method=svd-llm,ratio=0.9),quantize(bits=4,block=32)"),
    ("svd-llm 0.8 + int4", "factorize(method=svd-llm,ratio=0.8),quantize(bits=4,block=32)"),
    ("svd-llm 0.6 + int4", "factorize(method=svd-llm,ratio=0.6),quantize(bits=4,block=32)"),
]


def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench_runtime(compactor, model, inputs, dims, runs):
    if runs == 0:
        return None
    cmd = [compactor, "bench", "runtime", model, "--threads", "2", "--runs", str(runs), "--warmup", "1", "--json"]
    for name, path in inputs.items():
        cmd += ["--input", f"{name}={path}"]
    for d in dims:
        cmd += ["--dim", d]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out


def factorize(compactor, src, out, spec, calib):
    report = out + ".report.json"
    seconds = run([compactor, "optimize", src, "-o", out, "--passes", spec + ",eliminate-dead-code", "--calibration", calib, "--report", report])
    with open(report) as f:
        passes = json.load(f)["pipeline"]["passes"]
    layers = [l for p in passes if p["pass"] == "factorize" for l in p["details"]["layers"]]
    errors = [l["output_error"] for l in layers if "output_error" in l]
    before = sum(l["params_before"] for l in layers)
    macs = sum(l["macs_per_row"] for l in layers)
    return {"seconds": seconds, "bytes": size_of(out), "layers": len(layers), "mean_output_error": float(np.mean(errors)) if errors else None,
            "macs_share": macs / before if before else None, "params_share": sum(l["params_after"] for l in layers) / before if before else None}


def smollm2_setup(a):
    """SmolLM2's prefill graph, the evaluation tokens, the calibration directory (8 windows of
    512 calibration tokens) and the latency inputs (the first 512 evaluation tokens), under
    `a.out/smollm2`."""
    src = os.path.join(a.cache, "smollm2", "prefill.onnx")
    out_dir = os.path.join(a.out, "smollm2")
    os.makedirs(out_dir, exist_ok=True)
    tokens = np.load(os.path.join(a.cache, "smollm2", "text_evaluation.npy")).reshape(-1).astype(np.int64)[:a.eval_tokens]
    calib = calibration_dir(a.cache, out_dir, 8)
    ids = tokens[:512][None, :]
    inputs = {}
    for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids)), ("position_ids", np.arange(512, dtype=np.int64)[None, :])):
        inputs[name] = os.path.join(out_dir, f"bench_{name}.npy")
        np.save(inputs[name], value)
    return src, out_dir, tokens, calib, inputs


def smollm2(a, results):
    src, out_dir, tokens, calib, inputs = smollm2_setup(a)
    rows = results.setdefault("smollm2", {})
    base = rows.get("f32") if a.only else None
    if base is None:
        lat = bench_runtime(a.compactor, src, inputs, [], a.runs)
        base = rows["f32"] = {"ppl": perplexity(src, tokens, 2), "bytes": size_of(src), "latency": lat}
    print(f"SmolLM2 f32: perplexity {base['ppl']:.3f}", flush=True)
    jobs = [(f"{m} {r}", f"factorize(method={m},ratio={r})") for m in METHODS for r in RATIOS] + COMBINED
    for name, spec in jobs:
        if skipped(a, name):
            continue
        out = os.path.join(out_dir, name.replace(" ", "_").replace("+", "plus") + ".onnx")
        row = factorize(a.compactor, src, out, spec, calib)
        row["ppl"] = perplexity(out, tokens, 2)
        row["latency"] = bench_runtime(a.compactor, out, inputs, [], a.runs)
        rows[name] = row
        print(f"SmolLM2 {name}: {json.dumps(row)}", flush=True)
        save(a, results)


def minilm_texts(a):
    """Calibration batches and evaluation paragraphs of the text, in MiniLM's tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.shared, "minilm_tokenizer.json"))
    text = make_eval_text.clean(make_eval_text.fetch(a.cache))
    cut_cal, cut_eval = int(len(text) * make_eval_text.CALIBRATION), len(text) - int(len(text) * make_eval_text.EVALUATION)
    calibration, evaluation = text[:cut_cal], text[cut_eval:]
    tok.enable_truncation(128)
    tok.enable_padding(length=128)
    paragraphs = [p for p in calibration.split("\n") if len(p) > 200][:16]
    held_out = [p for p in evaluation.split("\n") if len(p) > 200][:64]
    return tok.encode_batch(paragraphs), tok.encode_batch(held_out)


def minilm_feeds(encodings):
    ids = np.array([e.ids for e in encodings], np.int64)
    return {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], np.int64), "token_type_ids": np.zeros_like(ids)}


def minilm_cosines(reference, candidate, feed_sets):
    import sentence_embeddings

    out = []
    for feeds in feed_sets:
        _, a = sentence_embeddings.embeddings(reference, feeds, 2)
        _, b = sentence_embeddings.embeddings(candidate, feeds, 2)
        out.append(float((a * b).sum(1).mean()))
    return out


def minilm_setup(a):
    """MiniLM, its calibration directory (4 batches of 4 calibration paragraphs), the held-out
    paragraphs' feeds and the latency inputs (the first held-out paragraph), under
    `a.out/minilm`."""
    src = os.path.join(a.shared, "minilm-l6-v2.onnx")
    out_dir = os.path.join(a.out, "minilm")
    calib = os.path.join(out_dir, "calibration")
    cal, held_out = minilm_texts(a)
    for b in range(4):
        d = os.path.join(calib, f"{b:03}")
        os.makedirs(d, exist_ok=True)
        for name, value in minilm_feeds(cal[4 * b:4 * b + 4]).items():
            np.save(os.path.join(d, f"{name}.npy"), value)
    inputs = {}
    for name, value in minilm_feeds(held_out[:1]).items():
        inputs[name] = os.path.join(out_dir, f"bench_{name}.npy")
        np.save(inputs[name], value)
    return src, out_dir, calib, minilm_feeds(held_out), inputs


def minilm(a, results):
    src, out_dir, calib, held_out_feeds, inputs = minilm_setup(a)
    reference_feeds = {n: np.load(os.path.join(a.shared, f"minilm_{n}.npy")) for n in ("input_ids", "attention_mask", "token_type_ids")}
    rows = results.setdefault("minilm", {})
    rows["f32"] = {"bytes": size_of(src), "latency": bench_runtime(a.compactor, src, inputs, [], a.runs)}
    jobs = [(f"{m} {r}", f"factorize(method={m},ratio={r})") for m in METHODS for r in RATIOS]
    for name, spec in jobs:
        if skipped(a, name):
            continue
        out = os.path.join(out_dir, name.replace(" ", "_") + ".onnx")
        row = factorize(a.compactor, src, out, spec, calib)
        row["cosine_reference"], row["cosine_held_out"] = minilm_cosines(src, out, [reference_feeds, held_out_feeds])
        row["latency"] = bench_runtime(a.compactor, out, inputs, [], a.runs)
        rows[name] = row
        print(f"MiniLM {name}: {json.dumps(row)}", flush=True)
        save(a, results)


def layers(a, results):
    """One linear layer, dense against its rank-r factors (svd at ratios 0.9 and 0.6), in both
    runtimes: the chain of two products must not be slower than the dense product it replaces."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_dir = os.path.join(a.out, "layers")
    os.makedirs(out_dir, exist_ok=True)
    rows = results.setdefault("layers", {})
    rng = np.random.default_rng(0)
    for k, n in ((384, 1536), (576, 576), (576, 1536)):
        dense = os.path.join(out_dir, f"dense_{k}x{n}.onnx")
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "layer",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [w])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), dense)
        models = {"dense": dense}
        for ratio in (0.9, 0.6):
            models[f"rank ratio {ratio}"] = os.path.join(out_dir, f"svd{ratio}_{k}x{n}.onnx")
            run([a.compactor, "optimize", dense, "-o", models[f"rank ratio {ratio}"], "--passes", f"factorize(method=svd,ratio={ratio},min_elements=0)"])
        for m in (1, 128, 512):
            for name, path in models.items():
                lat = bench_runtime(a.compactor, path, {}, [f"m={m}"], 20)
                rows[f"{k}x{n} m={m} {name}"] = lat
                print(f"layer {k}x{n} m={m} {name}: compactor {ms(lat, 'compactor'):.3f} ms, onnxruntime {ms(lat, 'onnxruntime'):.3f} ms", flush=True)
        save(a, results)


def save(a, results):
    with open(os.path.join(a.out, "RESULTS.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(a.out, "RESULTS.json.tmp"), os.path.join(a.out, "RESULTS.json"))


def ms(lat, which):
    return lat[f"{which}_median_ms"] if lat else float("nan")


def table(results):
    lines = []
    s = results.get("smollm2", {})
    if "f32" in s:
        f = s["f32"]
        lines += ["SmolLM2-135M (perplexity on the evaluation text; latency: prefill of 512 tokens, 2 threads)", "",
                  "| model | linear params kept | multiply-adds | perplexity | MiB | time to factorize | Compactor runtime | onnxruntime |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|",
                  f"| f32 | 100% | 100% | {f['ppl']:.2f} | {f['bytes'] / 2**20:.1f} | | {ms(f['latency'], 'compactor'):.0f} ms | {ms(f['latency'], 'onnxruntime'):.0f} ms |"]
        for name, r in s.items():
            if name == "f32":
                continue
            share = f"{100 * r['params_share']:.0f}%" if r.get("params_share") else ""
            macs = f"{100 * r['macs_share']:.0f}%" if r.get("macs_share") else ""
            lines.append(f"| {name} | {share} | {macs} | {r['ppl']:.2f} | {r['bytes'] / 2**20:.1f} | {r['seconds']:.1f} s | {ms(r['latency'], 'compactor'):.0f} ms | {ms(r['latency'], 'onnxruntime'):.0f} ms |")
        lines.append("")
    m = results.get("minilm", {})
    if "f32" in m:
        f = m["f32"]
        lines += ["MiniLM (sentence cosine against f32; latency: batch 1 x 128 tokens, 2 threads)", "",
                  "| model | linear params kept | multiply-adds | cosine (reference inputs) | cosine (64 held-out paragraphs) | MiB | time to factorize | Compactor runtime | onnxruntime |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| f32 | 100% | 100% | 1 | 1 | {f['bytes'] / 2**20:.1f} | | {ms(f['latency'], 'compactor'):.1f} ms | {ms(f['latency'], 'onnxruntime'):.1f} ms |"]
        for name, r in m.items():
            if name == "f32":
                continue
            lines.append(f"| {name} | {100 * r['params_share']:.0f}% | {100 * r['macs_share']:.0f}% | {r['cosine_reference']:.4f} | {r['cosine_held_out']:.4f} | {r['bytes'] / 2**20:.1f} | {r['seconds']:.1f} s | {ms(r['latency'], 'compactor'):.1f} ms | {ms(r['latency'], 'onnxruntime'):.1f} ms |")
    layer_rows = results.get("layers", {})
    if layer_rows:
        lines += ["", "One linear layer, dense against its factors (svd; the ratio is the share of parameters and multiply-adds kept), 2 threads", "",
                  "| layer | rows | form | Compactor runtime | onnxruntime |", "|---|---:|---|---:|---:|"]
        for name, lat in layer_rows.items():
            shape, m, form = name.split(" ", 2)
            lines.append(f"| {shape} | {m[2:]} | {form} | {ms(lat, 'compactor'):.3f} ms | {ms(lat, 'onnxruntime'):.3f} ms |")
    return "\n".join(lines)


def arguments(out, models):
    """The options the MiniLM/SmolLM2 benches share: the binary, the cache, the shared models,
    the output directory (target/OUT), which models, evaluation tokens and timed runs."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--compactor", default=os.path.join(HERE, "..", "target", "release", "compactor"))
    ap.add_argument("--cache", default=os.path.join(HERE, "..", ".cache"))
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "models"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "target", out))
    ap.add_argument("--models", default=models)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per runtime for the latency columns (0: no latency)")
    return ap


def main():
    ap = arguments("factorize-bench", "layers,minilm,smollm2")
    ap.add_argument("--only", help="comma-separated substrings of row names")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "RESULTS.json")
    results = json.load(open(path)) if a.only and os.path.exists(path) else {}
    if "minilm" in a.models:
        minilm(a, results)
    if "smollm2" in a.models:
        smollm2(a, results)
    if "layers" in a.models:
        layers(a, results)
    print(table(results))


if __name__ == "__main__":
    main()
