"""Generates small quantized-matmul models and onnxruntime's outputs on them, for checking
the runtime's lowering and fused kernels.

Usage: make_quant_models.py OUT_DIR

Writes OUT_DIR/<case>.onnx, <case>.input.npy, <case>.ort.npy and OUT_DIR/manifest.tsv with
lines `case\tinput_name\tform`. Cases onnxruntime refuses are listed in OUT_DIR/skipped.tsv
with the reason (and not in the manifest).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort

K, N = 256, 48
# Many rows (the runtime's GEMM path) and few rows (its direct dot-product path).
SHAPE_A = [2, 5, K]
SHAPE_A_FEW = [1, 3, K]

TYPES = {
    # name: (onnx type, low, high, signed)
    "int8": (TensorProto.INT8, -128, 127),
    "uint8": (TensorProto.UINT8, 0, 255),
    "int4": (TensorProto.INT4, -8, 7),
    "uint4": (TensorProto.UINT4, 0, 15),
    "int2": (TensorProto.INT2, -2, 1),
    "uint2": (TensorProto.UINT2, 0, 3),
}


def ort_run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def qdq_model(qtype, block, scale_dtype, asym, transposed, rng):
    onnx_type, lo, hi = TYPES[qtype]
    shape_a = SHAPE_A_FEW if asym else SHAPE_A
    float_type = TensorProto.FLOAT16 if scale_dtype == np.float16 else TensorProto.FLOAT
    q = rng.integers(lo, hi + 1, size=(K, N))
    nb = (K + block - 1) // block
    scale = (rng.random((nb, N)) * 0.02 + 0.005).astype(scale_dtype)
    zero = rng.integers(lo, hi + 1, size=(nb, N)) if asym else None
    if transposed:  # weight stored [N, K], blocks along axis 1, fed through Transpose
        q, scale = q.T.copy(), scale.T.copy()
        zero = zero.T.copy() if zero is not None else None
        axis, wshape, sshape = 1, [N, K], [N, nb]
    else:
        axis, wshape, sshape = 0, [K, N], [nb, N]
    inits = [helper.make_tensor("w_q", onnx_type, wshape, q.flatten().tolist())]
    inits.append(numpy_helper.from_array(scale, "w_scale"))
    dq_inputs = ["w_q", "w_scale"]
    if zero is not None:
        inits.append(helper.make_tensor("w_zero", onnx_type, sshape, zero.flatten().tolist()))
        dq_inputs.append("w_zero")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["w"], axis=axis, block_size=block)]
    w = "w"
    if transposed:
        nodes.append(helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0]))
        w = "w_t"
    nodes.append(helper.make_node("MatMul", ["a", w], ["y"]))
    graph = helper.make_graph(nodes, "qdq_matmul", [helper.make_tensor_value_info("a", float_type, shape_a)],
                              [helper.make_tensor_value_info("y", float_type, shape_a[:-1] + [N])], inits)
    opset = 25 if qtype in ("int2", "uint2") else 21
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=11 if opset == 25 else 10)


def nbits_model(bits, block, scale_dtype, zero_points, bias, rng):
    shape_a = SHAPE_A_FEW if zero_points else SHAPE_A
    float_type = TensorProto.FLOAT16 if scale_dtype == np.float16 else TensorProto.FLOAT
    nb = (K + block - 1) // block
    blob = block * bits // 8
    codes = rng.integers(0, 2**bits, size=(N, nb * block))
    packed = np.zeros((N, nb, blob), dtype=np.uint8)
    per_byte = 8 // bits
    for i in range(block):
        packed[:, :, i // per_byte] |= (codes.reshape(N, nb, block)[:, :, i] << (bits * (i % per_byte))).astype(np.uint8)
    scales = (rng.random(N * nb) * 0.02 + 0.005).astype(scale_dtype)
    inits = [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "scales")]
    inputs = ["a", "b", "scales"]
    if zero_points:
        zp_per_col = (nb * bits + 7) // 8
        zcodes = rng.integers(0, 2**bits, size=(N, nb))
        zp = np.zeros((N, zp_per_col), dtype=np.uint8)
        for b in range(nb):
            zp[:, (b * bits) // 8] |= (zcodes[:, b] << ((b * bits) % 8)).astype(np.uint8)
        inits.append(numpy_helper.from_array(zp.flatten(), "zero_points"))
        inputs.append("zero_points")
    else:
        inputs.append("")
    if bias:
        inits.append(numpy_helper.from_array((rng.random(N) - 0.5).astype(scale_dtype), "bias"))
        inputs += ["", "bias"]
    while inputs and inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=K, N=N, bits=bits, block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("a", float_type, shape_a)],
                              [helper.make_tensor_value_info("y", float_type, shape_a[:-1] + [N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)


def gather_model(qtype, block, rng):
    """A blocked DequantizeLinear feeding a Gather (an embedding): not a MatMul, so the runtime
    folds it to f32 instead of fusing."""
    onnx_type, lo, hi = TYPES[qtype]
    vocab, dim = 40, 64
    q = rng.integers(lo, hi + 1, size=(vocab, dim))
    scale = (rng.random((vocab, dim // block)) * 0.1 + 0.01).astype(np.float32)
    inits = [helper.make_tensor("e_q", onnx_type, [vocab, dim], q.flatten().tolist()), numpy_helper.from_array(scale, "e_scale")]
    nodes = [helper.make_node("DequantizeLinear", ["e_q", "e_scale"], ["e"], axis=1, block_size=block),
             helper.make_node("Gather", ["e", "a"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "qdq_gather", [helper.make_tensor_value_info("a", TensorProto.INT64, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1234)
    cases = []
    for qtype in TYPES:
        for block in (16, 32, 64, 128):
            for scale_dtype in (np.float32, np.float16):
                for asym in (False, True):
                    for transposed in (False, True):
                        name = f"qdq_{qtype}_b{block}_{np.dtype(scale_dtype).name}_{'asym' if asym else 'sym'}{'_nk' if transposed else ''}"
                        cases.append((name, "qdq", lambda q=qtype, b=block, s=scale_dtype, a=asym, t=transposed: qdq_model(q, b, s, a, t, rng), scale_dtype))
    for bits in (2, 4, 8):
        for block in (16, 32, 64, 128):
            for scale_dtype in (np.float32, np.float16):
                for zp in (False, True):
                    bias = block == 32
                    name = f"nbits_{bits}b_b{block}_{np.dtype(scale_dtype).name}{'_zp' if zp else ''}{'_bias' if bias else ''}"
                    cases.append((name, "nbits", lambda bt=bits, b=block, s=scale_dtype, z=zp, bi=bias: nbits_model(bt, b, s, z, bi, rng), scale_dtype))
    for qtype in ("int4", "uint4", "int8"):
        for block in (16, 32):
            cases.append((f"gather_{qtype}_b{block}", "fallback", lambda q=qtype, b=block: gather_model(q, b, rng), np.int64))
    manifest, skipped = [], []
    for name, form, make, scale_dtype in cases:
        model = make()
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(model, path)
        if form == "fallback":
            a = rng.integers(0, 40, size=(2, 5)).astype(np.int64)
        else:
            shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            a = (rng.random(shape) * 2 - 1).astype(scale_dtype)
        try:
            y = ort_run(path, {"a": a})
        except Exception as e:  # noqa: BLE001 - onnxruntime refusing a case is recorded, not fatal
            skipped.append(f"{name}\t{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            os.remove(path)
            continue
        np.save(os.path.join(out, f"{name}.input.npy"), a)
        np.save(os.path.join(out, f"{name}.ort.npy"), y)
        manifest.append(f"{name}\ta\t{form}")
    with open(os.path.join(out, "manifest.tsv"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    with open(os.path.join(out, "skipped.tsv"), "w") as f:
        f.write("\n".join(skipped) + ("\n" if skipped else ""))
    print(f"{len(manifest)} cases, {len(skipped)} refused by onnxruntime")


if __name__ == "__main__":
    main()
