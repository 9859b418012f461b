"""Single-op models of the fused LLM ops onnxruntime-genai's model builder emits
(SimplifiedLayerNormalization, com.microsoft SkipSimplifiedLayerNormalization, RotaryEmbedding
and GroupQueryAttention), with inputs and onnxruntime's outputs, for the runtime's tests.

Usage: make_fused_llm_ops.py OUT_DIR

Writes into OUT_DIR, per case NAME: `NAME.onnx`, `NAME.input.<input>.npy` and
`NAME.output.<k>.npy` (onnxruntime's outputs, graph optimizations off), then `cases.json`
({name: {"model", "inputs", "outputs"}}). Deterministic.

GroupQueryAttention's cases cover its length rules: prefill (batch 2, rows right-padded as
seqlens_k says), decode with a past (rows of different lengths too), a later prompt chunk with a
past, packed QKV, rotary embedding inside the op (both pairings, a partial rotary width, given
position_ids), softcap, local window, smooth softmax, head sinks and an attention bias. Its
padded query rows are compared too: onnxruntime 1.32 defines them (each sees its row's keys).
A few float16 models check the expansions keep the type.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
rng = np.random.default_rng(2024)


def normal(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def tables(max_positions, half, theta=10000.0):
    angles = np.outer(np.arange(max_positions, dtype=np.float32), 1.0 / theta ** (np.arange(half, dtype=np.float32) / half))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def run_ort(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)


class Cases:
    def __init__(self, out):
        self.out = out
        self.cases = {}

    def add(self, name, node, inputs, initializers=(), types=None):
        """`inputs`: [(name, array, declared shape or None for the array's own)]; `types`: the
        element type of outputs that are not float32."""
        declared = []
        for input_name, array, shape in inputs:
            elem = helper.np_dtype_to_tensor_dtype(array.dtype)
            declared.append(helper.make_tensor_value_info(input_name, elem, list(array.shape) if shape is None else shape))
        outputs = [helper.make_tensor_value_info(o, (types or {}).get(o, TensorProto.FLOAT), None) for o in node.output if o]
        graph = helper.make_graph([node], name, declared, outputs,
                                  [numpy_helper.from_array(a, n) for n, a in initializers])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)], producer_name="compactor-tests")
        model.ir_version = 8
        path = os.path.join(self.out, f"{name}.onnx")
        onnx.save(model, path)
        feeds = {n: a for n, a, _ in inputs}
        results = run_ort(path, feeds)
        record = {"model": path, "inputs": {}, "outputs": []}
        for n, a in feeds.items():
            record["inputs"][n] = os.path.join(self.out, f"{name}.input.{n}.npy")
            np.save(record["inputs"][n], a)
        for k, r in enumerate(results):
            record["outputs"].append(os.path.join(self.out, f"{name}.output.{k}.npy"))
            np.save(record["outputs"][-1], r)
        self.cases[name] = record

    def write(self):
        with open(os.path.join(self.out, "cases.json"), "w") as f:
            json.dump(self.cases, f, indent=1, sort_keys=True)


def norms(c):
    x, scale = normal(2, 5, 32), normal(32, scale=0.5) + 1.0
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv_std_var"], epsilon=1e-5, axis=-1, stash_type=1)
    c.add("simplified_norm_last_axis", node, [("x", x, ["batch", "seq", 32])], [("scale", scale)])
    scale2 = normal(5, 32, scale=0.5) + 1.0
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv_std_var"], epsilon=1e-3, axis=1)
    c.add("simplified_norm_from_axis_1", node, [("x", x, None)], [("scale", scale2)])

    skip, gamma, bias = normal(2, 5, 32), normal(32, scale=0.5) + 1.0, normal(32, scale=0.1)
    node = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"], ["y", "mean", "inv_std_var", "sum"], domain=MS, epsilon=1e-6)
    c.add("skip_simplified_norm_all_outputs", node, [("x", x, ["batch", "seq", 32]), ("skip", skip, ["batch", "seq", 32])], [("gamma", gamma), ("bias", bias)])
    node = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], ["y", "", "", "sum"], domain=MS)
    c.add("skip_simplified_norm_default_epsilon", node, [("x", x, None), ("skip", skip, None)], [("gamma", gamma)])


def rotary(c):
    batch, seq, heads, head = 2, 6, 3, 16
    cos, sin = tables(64, head // 2)
    positions = rng.integers(0, 64, (batch, seq)).astype(np.int64)
    x3 = normal(batch, seq, heads * head)
    for interleaved in (0, 1):
        node = helper.make_node("RotaryEmbedding", ["x", "position_ids", "cos", "sin"], ["y"], domain=MS, interleaved=interleaved, num_heads=heads)
        c.add(f"rotary_3d_interleaved_{interleaved}", node, [("x", x3, ["batch", "seq", heads * head]), ("position_ids", positions, ["batch", "seq"])], [("cos", cos), ("sin", sin)])
    # [B, N, S, D] with a one-element offset for positions.
    x4 = normal(batch, heads, seq, head)
    node = helper.make_node("RotaryEmbedding", ["x", "offset", "cos", "sin"], ["y"], domain=MS, interleaved=0)
    c.add("rotary_4d_offset", node, [("x", x4, ["batch", heads, "seq", head]), ("offset", np.array([5], np.int64), None)], [("cos", cos), ("sin", sin)])
    # Partial rotation: the first 8 of 16 channels, tables 4 wide.
    cos8, sin8 = tables(64, 4)
    for interleaved in (0, 1):
        node = helper.make_node("RotaryEmbedding", ["x", "position_ids", "cos", "sin"], ["y"], domain=MS, interleaved=interleaved, num_heads=heads, rotary_embedding_dim=8)
        c.add(f"rotary_partial_interleaved_{interleaved}", node, [("x", x3, None), ("position_ids", positions, None)], [("cos", cos8), ("sin", sin8)])
    node = helper.make_node("RotaryEmbedding", ["x", "offset", "cos", "sin"], ["y"], domain=MS, interleaved=1, num_heads=heads, rotary_embedding_dim=8)
    c.add("rotary_4d_partial_scalar_offset", node, [("x", x4, None), ("offset", np.array(3, np.int64), None)], [("cos", cos8), ("sin", sin8)])


def gqa(c):
    heads, kv_heads = 4, 2

    def case(name, batch, seq, past, lengths, head=16, packed=False, declare=True, rotary_half=None, extra=(), **attrs):
        """`lengths`: each row's real tokens in all (past + new); seqlens_k is that minus one."""
        q, k, v = normal(batch, seq, heads * head), normal(batch, seq, kv_heads * head), normal(batch, seq, kv_heads * head)
        dims = lambda width: ["batch", "seq", width] if declare else [None, None, None]
        if packed:
            inputs = [("qkv", np.concatenate([q, k, v], -1), dims((heads + 2 * kv_heads) * head))]
            names = ["qkv", "", ""]
        else:
            inputs = [("query", q, dims(heads * head)), ("key", k, dims(kv_heads * head)), ("value", v, dims(kv_heads * head))]
            names = ["query", "key", "value"]
        if past is None:
            names += ["", ""]
        else:
            cache = lambda: normal(batch, kv_heads, past, head)
            inputs += [("past_key", cache(), ["batch", kv_heads, "past", head]), ("past_value", cache(), ["batch", kv_heads, "past", head])]
            names += ["past_key", "past_value"]
        total = (past or 0) + seq
        inputs += [("seqlens_k", np.array(lengths, np.int32) - 1, ["batch"]), ("total_sequence_length", np.array(total, np.int32), [])]
        names += ["seqlens_k", "total_sequence_length"]
        initializers = []
        if rotary_half:
            cos, sin = tables(64, rotary_half)
            initializers += [("cos", cos), ("sin", sin)]
            names += ["cos", "sin"]
            attrs["do_rotary"] = 1
        for index, input_name, array in extra:
            names += [""] * (index - len(names))
            if input_name == "position_ids":
                inputs.append((input_name, array, ["batch", "seq"]))
            else:
                initializers.append((input_name, array))
            names.append(input_name)
        node = helper.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"], domain=MS, num_heads=heads, kv_num_heads=kv_heads, **attrs)
        c.add(name, node, inputs, initializers)

    case("gqa_prefill", 1, 7, None, [7])
    case("gqa_prefill_right_padded", 2, 7, None, [7, 4])
    case("gqa_decode", 1, 1, 9, [10])
    case("gqa_decode_rows_of_different_lengths", 2, 1, 9, [10, 6])
    case("gqa_prompt_chunk_after_past", 1, 3, 5, [8])
    case("gqa_prefill_right_padded_empty_past", 2, 5, 0, [5, 2])
    case("gqa_packed_qkv", 2, 6, None, [6, 3], packed=True)
    case("gqa_scale", 2, 1, 4, [5, 3], scale=0.3)
    case("gqa_undeclared_shapes", 2, 6, None, [6, 4], declare=False)
    case("gqa_rotary_prefill", 2, 6, None, [6, 4], rotary_half=8)
    case("gqa_rotary_decode", 2, 1, 7, [8, 5], rotary_half=8)
    case("gqa_rotary_interleaved_prefill", 2, 5, None, [5, 3], rotary_half=8, rotary_interleaved=1)
    case("gqa_rotary_interleaved_decode", 1, 1, 7, [8], rotary_half=8, rotary_interleaved=1)
    case("gqa_rotary_partial", 1, 5, 3, [8], head=32, rotary_half=8)
    case("gqa_rotary_undeclared_shapes", 2, 5, None, [5, 3], declare=False, rotary_half=8, rotary_interleaved=1)
    positions = (np.arange(6)[None] + np.array([[3], [5]])).astype(np.int64)
    case("gqa_rotary_position_ids_prefill", 2, 6, None, [6, 4], rotary_half=8, extra=[(9, "position_ids", positions)])
    case("gqa_rotary_position_ids_decode", 2, 1, 5, [6, 4], rotary_half=8, extra=[(9, "position_ids", np.array([[7], [2]], np.int64))])
    case("gqa_softcap", 2, 7, None, [7, 5], softcap=2.0)
    case("gqa_local_window_prefill", 1, 8, None, [8], local_window_size=2)
    case("gqa_local_window_decode", 2, 1, 8, [9, 6], local_window_size=3)
    case("gqa_smooth_softmax_prefill", 2, 6, None, [6, 3], smooth_softmax=1)
    case("gqa_smooth_softmax_decode", 2, 1, 5, [6, 4], smooth_softmax=1)
    case("gqa_head_sink", 2, 6, None, [6, 3], extra=[(11, "head_sink", normal(heads))])
    case("gqa_attention_bias_per_head", 2, 6, None, [6, 4], extra=[(10, "attention_bias", normal(2, heads, 6, 6))])
    case("gqa_attention_bias_shared", 1, 1, 5, [6], extra=[(10, "attention_bias", normal(1, 1, 1, 6))])


def half(c):
    """float16 models: the norms compute in float32 (their inv_std_var stays float32)."""
    f16 = TensorProto.FLOAT16
    x, skip, scale = normal(2, 5, 32).astype(np.float16), normal(2, 5, 32).astype(np.float16), (normal(32, scale=0.5) + 1.0).astype(np.float16)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv_std_var"], axis=-1, stash_type=1)
    c.add("f16_simplified_norm", node, [("x", x, None)], [("scale", scale)], types={"y": f16})
    node = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], ["y", "", "inv_std_var", "sum"], domain=MS)
    c.add("f16_skip_simplified_norm", node, [("x", x, None), ("skip", skip, None)], [("gamma", scale)], types={"y": f16, "sum": f16})
    cos, sin = tables(64, 8)
    positions = rng.integers(0, 64, (2, 5)).astype(np.int64)
    node = helper.make_node("RotaryEmbedding", ["x", "position_ids", "cos", "sin"], ["y"], domain=MS, num_heads=3)
    c.add("f16_rotary", node, [("x", normal(2, 5, 48).astype(np.float16), None), ("position_ids", positions, None)], [("cos", cos.astype(np.float16)), ("sin", sin.astype(np.float16))],
          types={"y": f16})
    q, k, v = normal(2, 5, 64).astype(np.float16), normal(2, 5, 32).astype(np.float16), normal(2, 5, 32).astype(np.float16)
    node = helper.make_node("GroupQueryAttention", ["query", "key", "value", "", "", "seqlens_k", "total_sequence_length"], ["output", "present_key", "present_value"], domain=MS,
                            num_heads=4, kv_num_heads=2)
    c.add("f16_gqa_prefill_right_padded", node, [("query", q, None), ("key", k, None), ("value", v, None), ("seqlens_k", np.array([4, 2], np.int32), None),
                                                 ("total_sequence_length", np.array(5, np.int32), None)], types={o: f16 for o in ("output", "present_key", "present_value")})


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    c = Cases(out)
    norms(c)
    rotary(c)
    gqa(c)
    half(c)
    c.write()
    print(f"{len(c.cases)} cases in {out}")


if __name__ == "__main__":
    main()
