"""A tiny two-block decoder whose FFNs are mixtures of experts in the exported Hugging Face form
that fixtures/make_smollm2_moe.py writes for SmolLM2 (its `hf_layer`: router MatMul -> Softmax
-> TopK -> renormalized -> ScatterElements; per-expert SwiGLU MatMuls; each output times its
routing weight; a Sum), one of them with a shared expert. Random weights (seed 0).
With `--form ort`, the same network with each layer's routed experts in one com.microsoft.MoE
node (the fixture's `ort_layer`; the shared expert's MatMuls added to its output).
`--variant exact`: every FFN split into 4 experts of 8 neurons, all selected with uniform
routing weights (a zero router, k = 4) and each down projection scaled by 4, which computes
exactly the FFN of `--variant dense` (the same weights as one SwiGLU FFN).

    python make_tiny_moe.py OUT.onnx [--form hf|ort] [--variant routed|exact|dense]

Inputs: input_ids [batch, seq] (int64 below 64). Output: logits [batch, seq, 64].
"""
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures"))
from make_smollm2_moe import MS, Sub, hf_layer, ort_layer, swiglu_expert  # noqa: E402

VOCAB, HIDDEN, FFN, EXPERTS, K = 64, 16, 32, 4, 2


def main():
    option = lambda name, default: sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default  # noqa: E731
    form, kind = option("--form", "hf"), option("--variant", "routed")
    rng = np.random.default_rng(0)
    w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)  # noqa: E731
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    h = node("Gather", [init("embed", w(VOCAB, HIDDEN)), "input_ids"], "embed_out")
    for layer in range(2):
        p = f"model.layers.{layer}"
        q = node("MatMul", [h, init(f"{p}.self_attn.q_proj.weight", w(HIDDEN, HIDDEN))], f"{p}/q")
        k = node("MatMul", [h, init(f"{p}.self_attn.k_proj.weight", w(HIDDEN, HIDDEN))], f"{p}/k")
        v = node("MatMul", [h, init(f"{p}.self_attn.v_proj.weight", w(HIDDEN, HIDDEN))], f"{p}/v")
        kt = node("Transpose", [k], f"{p}/kt", perm=[0, 2, 1])
        scores = node("Mul", [node("MatMul", [q, kt], f"{p}/qk"), init(f"{p}/scale", np.array(0.25, np.float32))], f"{p}/scores")
        probs = node("Softmax", [scores], f"{p}/probs", axis=-1)
        ctx = node("MatMul", [probs, v], f"{p}/ctx")
        o = node("MatMul", [ctx, init(f"{p}.self_attn.o_proj.weight", w(HIDDEN, HIDDEN))], f"{p}/o")
        x = node("Add", [h, o], f"{p}/attn_residual")
        weights = {"gate": w(HIDDEN, FFN), "up": w(HIDDEN, FFN), "down": w(FFN, HIDDEN)}
        shared = layer == 1
        size = FFN // (EXPERTS + int(shared))
        order = rng.permutation(FFN)
        groups = [order[(i + int(shared)) * size:(i + 1 + int(shared)) * size] for i in range(EXPERTS)]
        variant = {"groups": groups, "shared": order[:size] if shared else None, "R": w(HIDDEN, EXPERTS), "k": K, "c": float(K)}
        if kind == "exact":
            even = FFN // EXPERTS
            variant = {"groups": [order[i * even:(i + 1) * even] for i in range(EXPERTS)], "shared": None, "R": np.zeros((HIDDEN, EXPERTS), np.float32), "k": EXPERTS, "c": float(EXPERTS)}
        if kind == "dense":
            sub = Sub(f"{p}.mlp")
            y = swiglu_expert(sub, f"{p}.mlp", x, (weights["gate"], weights["up"], weights["down"]), np.arange(FFN), None)
            sub.op("Identity", [y], "out", out=f"{p}/ffn_out")
        else:
            sub = (hf_layer if form == "hf" else ort_layer)(layer, {"x": x, "gate": "gate", "up": "up", "down": "down", "out": f"{p}/ffn_out"}, variant, weights)
        nodes.extend(sub.nodes)
        inits.extend(sub.inits)
        h = node("Add", [x, f"{p}/ffn_out"], f"{p}/ffn_residual")
    node("MatMul", [h, init("lm_head", w(HIDDEN, VOCAB))], "logits")
    graph = helper.make_graph(
        nodes,
        "tiny_moe",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)] + ([helper.make_opsetid(MS, 1)] if form == "ort" else []), producer_name="compactor-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])


if __name__ == "__main__":
    main()
