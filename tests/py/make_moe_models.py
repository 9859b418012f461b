"""Single-node com.microsoft.MoE models with random weights and inputs, for the runtime's MoE
kernel against onnxruntime's CPU kernel (tests/tests/runtime_moe.rs).

Usage: make_moe_models.py OUT_DIR

Writes into OUT_DIR, per case NAME: `NAME.onnx` and `NAME.input.<input>.npy`, then `cases.json`
({name: {"model", "inputs": {input: file}}}). Deterministic.

The cases cover 3-D and 2-D inputs, several expert counts and k (1, 2, all experts),
normalize_routing_weights 0 and 1, SwiGLU (interleaved gate/up, as onnxruntime's CPU kernel
requires) with default and set alpha/beta and a swiglu_limit, relu/gelu/silu/identity
unfused, with and without fc1/fc2 biases; token counts from one (a decode step) to a few
hundred, and ones where some experts get no token. Router rows are logits (the op takes their
softmax).
"""
import json
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
rng = np.random.default_rng(7)


def normal(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_case(out, name, input_shape, experts, inter, attrs, fc1_bias=False, fc2_bias=False):
    hidden = input_shape[-1]
    tokens = int(np.prod(input_shape[:-1]))
    fusion = 2 if attrs.get("activation_type") == "swiglu" else 1
    x = normal(*input_shape)
    # Spread logits, so that the top-k choice is not a near tie that rounding could flip.
    logits = normal(tokens, experts, scale=3.0)
    inits = [numpy_helper.from_array(normal(experts, fusion * inter, hidden, scale=hidden**-0.5), "fc1")]
    ins = ["input", "router_probs", "fc1", "", "fc2"]
    if fc1_bias:
        inits.append(numpy_helper.from_array(normal(experts, fusion * inter, scale=0.1), "fc1_bias"))
        ins[3] = "fc1_bias"
    inits.append(numpy_helper.from_array(normal(experts, hidden, inter, scale=inter**-0.5), "fc2"))
    if fc2_bias:
        inits.append(numpy_helper.from_array(normal(experts, hidden, scale=0.1), "fc2_bias"))
        ins.append("fc2_bias")
    while ins[-1] == "":
        ins.pop()
    node = helper.make_node("MoE", ins, ["output"], domain=MS, name=name, **attrs)
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape)), helper.make_tensor_value_info("router_probs", TensorProto.FLOAT, [tokens, experts])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(input_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    path = os.path.join(out, f"{name}.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    inputs = {}
    for input_name, array in (("input", x), ("router_probs", logits)):
        inputs[input_name] = os.path.join(out, f"{name}.input.{input_name}.npy")
        np.save(inputs[input_name], array)
    return {"model": path, "inputs": inputs}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    swiglu = dict(activation_type="swiglu", swiglu_fusion=1)
    cases = {
        # SmolLM2-MoE's form: 3-D input, top 2 of 8 renormalised, alpha/beta written out.
        "swiglu_k2_norm": ([2, 9, 16], 8, 12, dict(swiglu, k=2, normalize_routing_weights=1, activation_alpha=1.0, activation_beta=0.0), False, False),
        # alpha/beta left to their defaults, no renormalisation.
        "swiglu_k2_defaults": ([3, 5, 16], 4, 12, dict(swiglu, k=2), False, False),
        # Other alpha/beta, a limit that clamps, biases.
        "swiglu_alpha_beta_limit_bias": ([20, 16], 5, 10, dict(swiglu, k=2, normalize_routing_weights=1, activation_alpha=1.702, activation_beta=1.0, swiglu_limit=0.5), True, True),
        # Three tokens, top 1 of 8: at least five experts get nothing.
        "swiglu_k1_idle_experts": ([3, 16], 8, 12, dict(swiglu, k=1, normalize_routing_weights=0), False, False),
        # A decode step: one token.
        "swiglu_one_token": ([1, 1, 16], 6, 12, dict(swiglu, k=2, normalize_routing_weights=1), False, True),
        # Every expert on every token, as weights and renormalised.
        "swiglu_all_experts": ([2, 4, 16], 3, 8, dict(swiglu, k=3, normalize_routing_weights=0), True, False),
        "swiglu_all_experts_norm": ([7, 16], 3, 8, dict(swiglu, k=3, normalize_routing_weights=1), False, False),
        # Unfused activations.
        "relu_k2": ([2, 6, 12], 4, 20, dict(activation_type="relu", k=2, normalize_routing_weights=1), True, True),
        "relu_default_k1": ([10, 12], 4, 20, dict(), False, False),
        "gelu_k2": ([2, 6, 12], 4, 20, dict(activation_type="gelu", k=2), True, True),
        "silu_k2": ([2, 6, 12], 5, 20, dict(activation_type="silu", k=2, normalize_routing_weights=1), False, True),
        "identity_k1": ([9, 12], 3, 20, dict(activation_type="identity", k=1), True, False),
        # Enough rows per expert for the blocked products, split over threads.
        "swiglu_many_tokens": ([2, 160, 48], 6, 40, dict(swiglu, k=2, normalize_routing_weights=1, activation_alpha=1.0, activation_beta=0.0), False, False),
        "silu_many_tokens": ([300, 40], 4, 64, dict(activation_type="silu", k=2), True, True),
    }
    written = {name: make_case(out, name, *spec) for name, spec in cases.items()}
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(written, f, indent=1)


if __name__ == "__main__":
    main()
