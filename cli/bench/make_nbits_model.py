"""A single-node com.microsoft.MatMulNBits model for `compactor bench runtime`.

Usage: make_nbits_model.py OUT.onnx K N BITS BLOCK

Input `A` is f32 `[M, K]` (M symbolic: pass `--dim M=rows` to the bench); random uint8 weight
blob, f32 scales, no zero points (onnxruntime then uses 2^(bits-1)), accuracy_level 0.
"""
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

out, k, n, bits, block = sys.argv[1], *map(int, sys.argv[2:6])
rng = np.random.default_rng(0)
k_blocks = (k + block - 1) // block
blob = rng.integers(0, 256, size=(n, k_blocks, block * bits // 8), dtype=np.uint8)
scales = (rng.random(n * k_blocks, dtype=np.float32) * 0.02 + 0.001).astype(np.float32)
node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)
graph = helper.make_graph(
    [node],
    "matmul_nbits",
    [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
    [numpy_helper.from_array(blob, "B"), numpy_helper.from_array(scales, "scales")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
save(model, out)
