"""Cross-checks Compactor's blockwise weight quantization against onnxruntime.

Usage: quant_crosscheck.py DIR
DIR/manifest.json lists cases written by passes/tests/quant_onnxruntime.rs. For each case:
1. QDQ form: DequantizeLinear(q, scale[, zp], axis=0, block_size) [-> Cast] -> MatMul(x, .)
   built from the packed tensors, run in onnxruntime; the DQ output must equal Compactor's
   dequantize() (bit-exact for f32 scales) and y must equal x @ dequantize() within an f32
   dot-product bound (plus f16 rounding when the scales are f16).
2. MatMulNBits form: com.microsoft.MatMulNBits(x, B, scales[, zp]) with attributes K, N, bits,
   block_size; x = I_K must give dequantize() back, x = X must give X @ dequantize().
3. When "compare_ort_quantizer" is set: onnxruntime's own MatMulNBitsQuantizer RTN
   (DefaultWeightOnlyQuantizer.qbits_block_quant, QOperator format) on the original W must give
   the same codes (rows < K), scales (bitwise) and zero points as Compactor's RTN.
Prints one line per case and a summary; exits 1 on any failure.
"""
import json
import os
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

try:  # the quantizer module imports onnx_ir at load time; the RTN path does not use it
    import onnx_ir  # noqa: F401
except ImportError:
    sys.modules["onnx_ir"] = types.ModuleType("onnx_ir")
import logging

from onnxruntime.quantization.matmul_nbits_quantizer import (  # noqa: E402
    DefaultWeightOnlyQuantConfig,
    DefaultWeightOnlyQuantizer,
)

logging.getLogger().setLevel(logging.WARNING)
F32_EPS = 2.0**-24
F16_EPS = 2.0**-11


def load(d, name, dtype, shape=None):
    a = np.fromfile(os.path.join(d, name), dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def session(graph, opsets):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(dom, v) for dom, v in opsets])
    model.ir_version = 11
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def unpack(raw, bits, count):
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    per = 8 // bits
    out = np.stack([(raw >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=-1).reshape(-1)
    return out[:count]


def bound(x, deq):
    """|x| @ |deq| in f64: the scale of the rounding error of x @ deq."""
    return np.abs(x.astype(np.float64)) @ np.abs(deq.astype(np.float64))


def check_output(label, y, x, deq, k, f16, problems, stats):
    ref = x.astype(np.float64) @ deq.astype(np.float64)
    scale = bound(x, deq) + 1e-30
    rel = np.abs(y.astype(np.float64) - ref) / scale
    # f32 dot product of length K: |error| <= ~K eps sum|x w|; f16 adds a few roundings of
    # x, the weights and y, each relative 2^-11 of the same sum.
    tol = (2 * k + 8) * F32_EPS + (6 * F16_EPS if f16 else 0.0)
    worst = float(rel.max())
    stats.append(f"{label} {worst:.2e}")
    if not worst <= tol:
        problems.append(f"{label}: max |y - x@deq| / (|x|@|deq|) = {worst:.3e} > {tol:.3e}")


def run_case(d, c):
    k, n, m = c["k"], c["n"], c["m"]
    bits = c["bits"]
    f16 = c["scale_dtype"] == "f16"
    scale_np = np.float16 if f16 else np.float32
    scale_tp = TensorProto.FLOAT16 if f16 else TensorProto.FLOAT
    x = load(d, "x.bin", np.float32, (m, k))
    deq = load(d, "deq.bin", np.float32, (k, n))
    problems, stats = [], []

    # 1. QDQ
    q = c["qdq"]
    inits = [
        helper.make_tensor("q", q["dtype"], [k, n], load(d, "qdq_q.bin", np.uint8).tobytes(), raw=True),
        helper.make_tensor("scale", scale_tp, q["scale_shape"], load(d, "qdq_scales.bin", np.uint8).tobytes(), raw=True),
    ]
    dq_inputs = ["q", "scale"]
    if q["has_zero_points"]:
        inits.append(helper.make_tensor("zp", q["dtype"], q["scale_shape"], load(d, "qdq_zp.bin", np.uint8).tobytes(), raw=True))
        dq_inputs.append("zp")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["w_dq"], axis=q["axis"], block_size=q["block_size"])]
    w_name = "w_dq"
    if f16:
        nodes.append(helper.make_node("Cast", ["w_dq"], ["w_f32"], to=TensorProto.FLOAT))
        w_name = "w_f32"
    nodes.append(helper.make_node("MatMul", ["x", w_name], ["y"]))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n]), helper.make_tensor_value_info(w_name, TensorProto.FLOAT, [k, n])],
        inits,
    )
    y, w_dq = session(graph, [("", q["opset"])]).run(None, {"x": x})
    w_err = np.abs(w_dq.astype(np.float64) - deq) / (np.abs(deq).max() + 1e-30)
    if f16:
        if not (np.abs(w_dq.astype(np.float64) - deq) <= F16_EPS * np.abs(deq) + 1e-7 * np.abs(deq).max()).all():
            problems.append(f"qdq weight: f16 DQ output differs from dequantize() beyond f16 rounding (max rel {w_err.max():.2e})")
    elif not np.array_equal(w_dq, deq):
        problems.append(f"qdq weight: DQ output != dequantize() at {int((w_dq != deq).sum())} elements (max rel {w_err.max():.2e})")
    check_output("qdq", y, x, deq, k, f16, problems, stats)

    # 2. MatMulNBits
    nb = c["nbits"]
    a_tp = TensorProto.FLOAT16 if f16 else TensorProto.FLOAT
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, nb["b_shape"], load(d, "nb_b.bin", np.uint8).tobytes(), raw=True),
        helper.make_tensor("scales", scale_tp, [n * nb["b_shape"][1]], load(d, "nb_scales.bin", np.uint8).tobytes(), raw=True),
    ]
    mm_inputs = ["a", "B", "scales"]
    if nb["has_zero_points"]:
        zp = load(d, "nb_zp.bin", np.uint8)
        inits.append(helper.make_tensor("zp", TensorProto.UINT8, [zp.size], zp.tobytes(), raw=True))
        mm_inputs.append("zp")
    nodes = [
        helper.make_node("Cast", ["x"], ["a"], to=a_tp),
        helper.make_node("MatMulNBits", mm_inputs, ["y_a"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=nb["block_size"]),
        helper.make_node("Cast", ["y_a"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    s = session(graph, [("", 21), ("com.microsoft", 1)])
    (y,) = s.run(None, {"x": x})
    check_output("nbits", y, x, deq, k, f16, problems, stats)
    (w_nb,) = s.run(None, {"x": np.eye(k, dtype=np.float32)})
    tol = (F16_EPS * 2 if f16 else 4 * F32_EPS) * np.abs(deq) + 1e-30
    if not (np.abs(w_nb.astype(np.float64) - deq) <= tol).all():
        bad = int((np.abs(w_nb.astype(np.float64) - deq) > tol).sum())
        problems.append(f"nbits weight: I_K @ W_hat differs from dequantize() at {bad} elements")
    exact = int((w_nb == deq).sum())
    stats.append(f"I@W exact {exact}/{k * n}")

    # 3. onnxruntime's own RTN quantizer on the same W
    if c.get("compare_ort_quantizer"):
        w = load(d, "w.bin", np.float32, (k, n))
        ort_q = DefaultWeightOnlyQuantizer(
            DefaultWeightOnlyQuantConfig(block_size=nb["block_size"], is_symmetric=c["symmetric"], bits=bits)
        )
        packed, scales, zps = ort_q.qbits_block_quant(w)
        kb = nb["b_shape"][1]
        ours_b = load(d, "nb_b.bin", np.uint8).reshape(n, -1)
        ort_codes = np.stack([unpack(packed[col].reshape(-1), bits, kb * nb["block_size"])[:k] for col in range(n)])
        our_codes = np.stack([unpack(ours_b[col], bits, kb * nb["block_size"])[:k] for col in range(n)])
        ours_s = load(d, "nb_scales.bin", np.float32).reshape(n, kb)
        code_diff = int((ort_codes != our_codes).sum())
        scale_diff = int((scales.view(np.uint32) != ours_s.view(np.uint32)).sum())
        zp_diff = 0
        if nb["has_zero_points"]:
            ours_zp = load(d, "nb_zp.bin", np.uint8).reshape(n, -1)
            zp_diff = int(sum((unpack(zps[col], bits, kb) != unpack(ours_zp[col], bits, kb)).sum() for col in range(n)))
        pad_diff = int((packed.reshape(n, -1) != ours_b).sum()) if code_diff == 0 else -1
        stats.append(f"vs ORT quantizer: codes {code_diff} scales {scale_diff} zps {zp_diff} differ (padding bytes differing: {pad_diff})")
        if code_diff or scale_diff or zp_diff:
            problems.append(f"ORT MatMulNBitsQuantizer differs: {code_diff} codes, {scale_diff} scales, {zp_diff} zero points")
    return problems, stats


def main():
    root = sys.argv[1]
    cases = json.load(open(os.path.join(root, "manifest.json")))
    failures = 0
    for c in cases:
        try:
            problems, stats = run_case(os.path.join(root, c["dir"]), c)
        except Exception as e:  # report every case, not only the first failure
            problems, stats = [f"{type(e).__name__}: {str(e)[:400]}"], []
        status = "FAIL" if problems else "ok"
        print(f"{status} {c['dir']}: {'; '.join(stats)}")
        for p in problems:
            print(f"    {p}")
        failures += bool(problems)
    print(f"{len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
