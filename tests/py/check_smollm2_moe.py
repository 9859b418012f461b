#!/usr/bin/env python3
"""Checks the MoEfied SmolLM2 graphs of fixtures/make_smollm2_moe.py, and onnxruntime's
com.microsoft.MoE layout they rely on.

    python tests/py/check_smollm2_moe.py --probe
    python tests/py/check_smollm2_moe.py CACHE_DIR

--probe: small random MoE layers (distinct sizes: hidden 10, inter 6, 4 experts, 7 tokens)
    through onnxruntime's CPU MoE kernel against a numpy reference, for every candidate layout:
    fc1 [E, 2I, H] ([out, in]) vs [E, H, 2I], gate/up interleaved (swiglu_fusion=1) vs
    concatenated (2) vs separate fc3 (0), fc2 [E, H, I] vs [E, I, H], router_probs as logits vs
    probabilities, normalize_routing_weights 0/1, k 2/E, activation alpha/beta. Prints one line
    per case (relative error, or onnxruntime's error) and fails unless the layout
    make_smollm2_moe.py writes matches to 1e-5.
CACHE_DIR: structure of every model in CACHE_DIR/smollm2-moe (30 MoE layers of the expected
    form, external data next to the model), exact variants == CACHE_DIR/smollm2/prefill.onnx
    and hf_k* == ort_k* on 2 x 64 calibration tokens (within 1e-4 of the logit scale), the
    routing of hf_k2 checked token by token against numpy on the router's input. Ends with one
    JSON line; exits non-zero when a check fails.
"""
import itertools
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TOL = 1e-4


def session(model, threads=1):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def probe():
    rng = np.random.default_rng(0)
    T, H, I, E = 7, 10, 6, 4
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    Wg, Wu = (rng.standard_normal((E, I, H)).astype(np.float32) * 0.5 for _ in range(2))  # [out, in]
    Wd = rng.standard_normal((E, H, I)).astype(np.float32) * 0.5

    def ref(probs, k, norm, alpha=1.0, beta=0.0):
        out = np.zeros((T, H))
        for t in range(T):
            top = np.argsort(-probs[t], kind="stable")[:k]
            w = probs[t, top] / (probs[t, top].sum() if norm else 1.0)
            for e, we in zip(top, w):
                g, u = Wg[e] @ x[t], Wu[e] @ x[t]
                out[t] += we * (Wd[e] @ (g / (1 + np.exp(-alpha * g)) * (u + beta)))
        return out

    def run(fc1, fc2, fc3, router, attrs):
        inits = [numpy_helper.from_array(fc1, "fc1"), numpy_helper.from_array(fc2, "fc2")]
        ins = ["input", "router_probs", "fc1", "", "fc2"]
        if fc3 is not None:
            inits.append(numpy_helper.from_array(fc3, "fc3"))
            ins += ["", "fc3"]
        node = helper.make_node("MoE", ins, ["output"], domain="com.microsoft", **attrs)
        g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [T, H]),
                                                helper.make_tensor_value_info("router_probs", TensorProto.FLOAT, [T, E])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        return session(m.SerializeToString()).run(None, {"input": x, "router_probs": router})[0]

    inter = np.stack([Wg, Wu], 2).reshape(E, 2 * I, H)
    fc1s = {"[E,2I,H] interleaved": (inter, 1, None), "[E,2I,H] concat": (np.concatenate([Wg, Wu], 1), 2, None),
            "[E,H,2I] interleaved": (inter.transpose(0, 2, 1).copy(), 1, None),
            "[E,I,H] gate + fc3 up": (Wg, 0, Wu)}
    fc2s = {"[E,H,I]": Wd, "[E,I,H]": Wd.transpose(0, 2, 1).copy()}
    ok = None
    print(f"onnxruntime {ort.__version__}: com.microsoft.MoE on CPU, T={T} H={H} I={I} E={E}")
    for (n1, (fc1, fusion, fc3)), (n2, fc2), (k, norm), alpha_beta in itertools.product(
            fc1s.items(), fc2s.items(), ((2, 1), (2, 0), (E, 1)), ((1.0, 0.0), None)):
        attrs = dict(k=k, normalize_routing_weights=norm, activation_type="swiglu", swiglu_fusion=fusion)
        if alpha_beta:
            attrs.update(activation_alpha=alpha_beta[0], activation_beta=alpha_beta[1])
        case = f"fc1 {n1:22s} fc2 {n2:8s} k={k} norm={norm} alpha/beta={'set 1/0' if alpha_beta else 'unset'}"
        try:
            y = run(fc1, fc2, fc3, logits, attrs)
        except Exception as ex:  # noqa: BLE001 - the message is the evidence
            msg = str(ex).replace("\n", " ")
            print(f"{case}: onnxruntime error: {msg[msg.find('Status Message') if 'Status Message' in msg else max(0, len(msg) - 160):][:160]}")
            continue
        r_log = ref(softmax(logits), k, norm)  # router_probs read as logits
        r_prob = ref(logits, k, norm)  # router_probs read as weights
        e_log = float(np.abs(y - r_log).max() / np.abs(r_log).max())
        e_prob = float(np.abs(y - r_prob).max() / np.abs(r_prob).max())
        print(f"{case}: rel err as logits {e_log:.1e}, as probabilities {e_prob:.1e}")
        if n1 == "[E,2I,H] interleaved" and n2 == "[E,H,I]" and alpha_beta and (k, norm) == (2, 1):
            ok = e_log < 1e-5
    # the form make_smollm2_moe.py writes: 3D input, router logits [B*S, E]
    print("probe:", "layout of make_smollm2_moe.py confirmed" if ok else "LAYOUT MISMATCH")
    return bool(ok)


def check(cache):
    d = os.path.join(cache, "smollm2-moe")
    src = os.path.join(cache, "smollm2")
    calib = np.load(os.path.join(src, "text_calibration.npy")).reshape(-1).astype(np.int64)
    ids = np.stack([calib[-192:-128], calib[-64:]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(ids.shape[1]), (2, 1))}
    dense = session(os.path.join(src, "prefill.onnx")).run(["logits"], feeds)[0].astype(np.float64)
    failures, result = [], {"structure": {}, "deviation": {}}
    names = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".onnx"))
    expected = {"hf_exact", "ort_exact", "hf_k2", "ort_k2", "hf_k4", "ort_k4", "hf_shared_k2"}
    if not expected <= set(names):
        failures.append(f"missing models: {sorted(expected - set(names))}")
    logits = {}
    for name in names:
        path = os.path.join(d, f"{name}.onnx")
        m = onnx.load(path, load_external_data=False)
        ops = {}
        for n in m.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        if locs != {f"{name}.onnx.data"}:
            failures.append(f"{name}: external data {locs}")
        if [i.name for i in m.graph.input] != ["input_ids", "attention_mask", "position_ids"] or [o.name for o in m.graph.output] != ["logits"]:
            failures.append(f"{name}: inputs/outputs")
        L = 30
        if name.startswith("ort_"):
            moe = [n for n in m.graph.node if n.op_type == "MoE"]
            shapes = {t.name: list(t.dims) for t in m.graph.initializer}
            good = len(moe) == L and all(
                n.domain == "com.microsoft" and shapes[n.input[2]][1:] == [384, 576] and shapes[n.input[4]][1:] == [576, 192]
                and {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("swiglu_fusion") == 1 for n in moe)
            result["structure"][name] = {"MoE": len(moe), "experts": shapes[moe[0].input[2]][0] if moe else None}
        else:
            good = ops.get("TopK") == L and ops.get("ScatterElements") == L and ops.get("Softmax") == 2 * L
            n_exp = sum(1 for t in m.graph.initializer if t.name.startswith("model.layers.0.mlp.experts.") and t.name.endswith("down_proj.weight"))
            shared = any(t.name.startswith("model.layers.0.mlp.shared_experts.") for t in m.graph.initializer)
            result["structure"][name] = {"TopK": ops.get("TopK"), "experts": n_exp, "shared": shared}
        if not good:
            failures.append(f"{name}: unexpected structure {ops}")
        logits[name] = session(path).run(["logits"], feeds)[0].astype(np.float64)

    def dev(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    for name in ("hf_exact", "ort_exact"):
        if name in logits:
            result["deviation"][f"{name} vs dense"] = dev(logits[name], dense)
    for k in (2, 4):
        if f"hf_k{k}" in logits and f"ort_k{k}" in logits:
            result["deviation"][f"ort_k{k} vs hf_k{k}"] = dev(logits[f"ort_k{k}"], logits[f"hf_k{k}"])
    for key, v in result["deviation"].items():
        if not v < TOL:
            failures.append(f"{key}: {v:.3g}")
    for key in logits:
        if key.startswith(("hf_k", "ort_k", "hf_shared")):
            result["deviation"][f"{key} vs dense (lossy)"] = dev(logits[key], dense)
    # routing of hf_k2's first layer vs numpy: expose the router input and the routing weights
    m = onnx.load(os.path.join(d, "hf_k2.onnx"))
    g = m.graph
    scatter = next(n for n in g.node if n.op_type == "ScatterElements")
    router = next(n for n in g.node if n.op_type == "MatMul" and n.input[1] == "model.layers.0.mlp.gate.weight")
    R = next(numpy_helper.to_array(t) for t in g.initializer if t.name == "model.layers.0.mlp.gate.weight")
    for t in (router.input[0], scatter.output[0]):
        g.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    x, w = session(m.SerializeToString()).run([router.input[0], scatter.output[0]], feeds)
    p = softmax((x @ R).astype(np.float64))
    top = np.argsort(-p, -1, kind="stable")[..., :2]
    want = np.zeros_like(p)
    v = np.take_along_axis(p, top, -1)
    np.put_along_axis(want, top, v / v.sum(-1, keepdims=True), -1)
    result["deviation"]["hf_k2 layer-0 routing weights vs numpy"] = float(np.abs(w - want).max())
    if not np.abs(w - want).max() < 1e-5:
        failures.append("hf_k2 routing weights")
    result["mean_selected_weight_spread"] = float(np.abs(w[w > 0] - 0.5).mean())
    result["failures"] = failures
    print(json.dumps(result, indent=1))
    return not failures


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    ok = probe() if sys.argv[1] == "--probe" else check(os.path.abspath(sys.argv[1]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
