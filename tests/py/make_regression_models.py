"""Makes models the way onnxruntime's own tools write them, for regression tests.

Usage: make_regression_models.py MINILM_ONNX OUT_DIR

Writes into OUT_DIR (then OUT_DIR/done):
- minilm_ort_extended.onnx: MiniLM optimized offline by onnxruntime at ORT_ENABLE_EXTENDED
  (com.microsoft fused ops such as Attention, SkipLayerNormalization, BiasGelu/FastGelu,
  EmbedLayerNormalization, and the extra opset imports that onnxruntime writes).
- minilm_ort_fused.onnx: MiniLM through onnxruntime's transformer optimizer
  (onnxruntime.transformers.optimizer, model_type bert): com.microsoft Attention,
  SkipLayerNormalization, EmbedLayerNormalization, BiasGelu.
- minilm_ort_fused_int8.onnx: that model through quantize_dynamic (QAttention, MatMulInteger,
  DynamicQuantizeLinear), intermediates annotated with symbolic dims.
- minilm_ort_dynamic_int8.onnx: minilm_ort_extended.onnx through quantize_dynamic (int8 MatMulInteger,
  DynamicQuantizeLinear, QAttention, ...), with the intermediates' value_info annotated with
  symbolic dims by onnx's shape inference.
- minilm_ort_qdq_int8.onnx: plain MiniLM through quantize_static in the QDQ format
  (QuantizeLinear/DequantizeLinear pairs with int8 activations), calibrated on a few token
  sequences; the feed-forward MatMuls stay f32.
- conv_ort_dynamic_int8.onnx: a small convolutional model through quantize_dynamic
  (ConvInteger), with a symbolic batch dim and annotated intermediates; conv_input.npy is an
  input for it (batch 2).
- manifest.txt: each model's op histogram and opset imports, for messages.
"""
import collections
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
from onnxruntime.transformers.optimizer import optimize_model
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static


def optimize_extended(src, dst):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = dst
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def annotate_intermediates(path):
    """onnx's shape inference writes value_info for intermediates, with the inputs' symbolic
    dims (`batch_size`, `sequence_length`) where it can follow them."""
    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model)
    onnx.save(inferred, path)
    return len(inferred.graph.value_info)


class TokenReader(CalibrationDataReader):
    """A few token sequences of MiniLM's vocabulary, padded, with their attention masks."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.batches = []
        for length in (6, 9, 12, 16):
            ids = rng.integers(1000, 20000, size=(2, length)).astype(np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            mask = np.ones_like(ids)
            mask[1, length // 2 :] = 0
            ids[1, length // 2 :] = 0
            self.batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        self.it = iter(self.batches)

    def get_next(self):
        return next(self.it, None)


def conv_model(path):
    """Conv -> Relu -> Conv -> global average -> MatMul, batch symbolic: what
    quantize_dynamic turns into ConvInteger and MatMulInteger."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    w3 = (rng.standard_normal((16, 10)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def describe(path):
    model = onnx.load(path, load_external_data=False)
    ops = collections.Counter((n.domain or "ai.onnx") + "." + n.op_type for n in model.graph.node)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in model.opset_import)
    hist = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
    return f"{os.path.basename(path)}: opsets [{opsets}]; value_info {len(model.graph.value_info)}; {hist}"


def main():
    minilm, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    extended = os.path.join(out, "minilm_ort_extended.onnx")
    dynamic = os.path.join(out, "minilm_ort_dynamic_int8.onnx")
    fused = os.path.join(out, "minilm_ort_fused.onnx")
    fused_int8 = os.path.join(out, "minilm_ort_fused_int8.onnx")
    qdq = os.path.join(out, "minilm_ort_qdq_int8.onnx")
    conv = os.path.join(out, "conv_ort_dynamic_int8.onnx")

    optimize_extended(minilm, extended)

    optimize_model(minilm, model_type="bert", num_heads=12, hidden_size=384, opt_level=0, use_gpu=False).save_model_to_file(fused)
    quantize_dynamic(fused, fused_int8, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT})
    annotate_intermediates(fused_int8)

    quantize_dynamic(extended, dynamic, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT})
    annotate_intermediates(dynamic)

    # int8 activations (onnxruntime's QInt8), the attention projections quantized and the
    # feed-forward MatMuls left in f32, for Compactor's quantize pass to take.
    feed_forward = [n.name for n in onnx.load(minilm, load_external_data=False).graph.node if n.op_type == "MatMul" and ("intermediate" in n.name or "output/dense" in n.name)]
    quantize_static(
        minilm,
        qdq,
        TokenReader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=feed_forward,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )

    with tempfile.TemporaryDirectory() as tmp:
        float_conv = os.path.join(tmp, "conv.onnx")
        conv_model(float_conv)
        quantize_dynamic(float_conv, conv, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul"])
    annotate_intermediates(conv)
    np.save(os.path.join(out, "conv_input.npy"), np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32))

    lines = [describe(p) for p in (extended, dynamic, fused, fused_int8, qdq, conv)]
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    open(os.path.join(out, "done"), "w").close()


if __name__ == "__main__":
    main()
