"""Runs two models in onnxruntime on the same deterministic inputs and compares every output.

Usage: compare_ort.py A.onnx B.onnx [--atol X] [--rtol Y] [--min-cosine C] [--input NAME=FILE.npy ...] [--opt none|basic|all]
--opt sets onnxruntime's graph optimization level (default all); its extended fusions change
numerics (e.g. DequantizeLinear+MatMul becomes an int8-activation kernel), so comparisons of
exact semantics use basic.
Inputs not given are random (ints in [0, 10), symbolic dims 3). Prints the max abs difference
and the cosine similarity per output; exits 1 if any output differs beyond the tolerance
(default: exact equality), its cosine with A's is below --min-cosine (default: not checked;
a zero or unrelated output has a cosine far from 1 whatever its magnitude), or the output
names/shapes differ.
"""
import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort


def inputs_for(path, given, seed=0):
    model = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits or inp.name in given:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 3 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dtype == np.bool_:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--min-cosine", type=float, default=None)
    parser.add_argument("--input", action="append", default=[])
    parser.add_argument("--opt", choices=["none", "basic", "all"], default="all")
    args = parser.parse_args()
    a, b, atol, rtol = args.a, args.b, args.atol, args.rtol
    given = {}
    for spec in args.input:
        name, path = spec.split("=", 1)
        given[name] = np.load(path)
    feeds = inputs_for(a, given)
    feeds.update(given)
    so = ort.SessionOptions()
    so.graph_optimization_level = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[args.opt]
    sa, sb = ort.InferenceSession(a, so), ort.InferenceSession(b, so)
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    if names_a != names_b:
        print(f"output names differ: {names_a} vs {names_b}")
        return 1
    failed = 0
    for name, x, y in zip(names_a, sa.run(None, feeds), sb.run(None, feeds)):
        if x.shape != y.shape:
            print(f"{name}: shape {x.shape} vs {y.shape}")
            failed += 1
            continue
        xf, yf = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        diff = float(np.max(np.abs(xf - yf))) if x.size else 0.0
        norms = float(np.linalg.norm(xf) * np.linalg.norm(yf))
        cosine = float(np.dot(xf, yf) / norms) if norms > 0 else (1.0 if not xf.any() and not yf.any() else 0.0)
        ok = np.allclose(x, y, atol=atol, rtol=rtol) and (args.min_cosine is None or cosine >= args.min_cosine)
        print(f"{name}: max abs diff {diff:.3g} cosine {cosine:.6f} {'ok' if ok else 'FAIL'}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
