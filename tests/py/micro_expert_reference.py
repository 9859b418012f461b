"""Micro-expert scores computed independently with onnxruntime and NumPy, to check the
`micro-expert-scores` pass against: CAMERA's score and the magnitude, activation and wanda
baselines, written from their definitions (CAMERA: arXiv 2508.02322 and its code).

    python micro_expert_reference.py MODEL SPEC.json CALIBRATION_DIR RHO

SPEC.json lists the FFN layers: [{"input": <FFN input value>, "experts": [{"hidden": <down
projection's input value>, "gate": <initializer or null>, "up": <initializer>, "down":
<initializer>, "transposed": [gate, up, down], "routing": <routing weight value or null>}]}] (a
weight stored [out, in] is transposed; a routed expert's phi is its activation times its
routing weight, one per token). CALIBRATION_DIR holds
one subdirectory of <input>.npy per batch. The captured activations are exposed as extra graph
outputs; every token of every batch counts. Prints JSON: per layer, each score's vector.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def main():
    model_path, spec_path, calib, rho = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    spec = json.load(open(spec_path))
    model = onnx.load(model_path)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    experts = [e for l in spec for e in l["experts"]]
    wanted = sorted({e["hidden"] for e in experts} | {l["input"] for l in spec} | {e["routing"] for e in experts if e["routing"]})
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rows = {name: [] for name in wanted}
    for batch in sorted(os.listdir(calib)):
        feeds = {f[:-4]: np.load(os.path.join(calib, batch, f)) for f in os.listdir(os.path.join(calib, batch)) if f.endswith(".npy")}
        outs = session.run(wanted, feeds)
        for name, value in zip(wanted, outs):
            rows[name].append(value.astype(np.float64))
    result = []
    for layer in spec:
        x = np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows[layer["input"]]])
        scores = []
        for e in layer["experts"]:
            phi = np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows[e["hidden"]]])
            if e["routing"]:
                phi = phi * np.concatenate([r.reshape(-1, 1) for r in rows[e["routing"]]])
            gate_t, up_t, down_t = e["transposed"]

            def kn(name, transposed):
                w = weights[name]
                return w.T if transposed else w

            up = kn(e["up"], up_t)
            down = kn(e["down"], down_t)
            gate = kn(e["gate"], gate_t) if e["gate"] else None
            e2 = (phi**2).sum(axis=0)
            einf = (phi**2).max(axis=0)
            b = (down**2).sum(axis=1)
            camera = b * ((1 - rho) * e2 + rho * einf)
            magnitude = np.abs(up).sum(axis=0) + np.abs(down).sum(axis=1) + (np.abs(gate).sum(axis=0) if gate is not None else 0)
            xnorm = np.sqrt((x**2).sum(axis=0))
            wanda = (np.abs(up) * xnorm[:, None]).sum(axis=0) + np.sqrt(e2) * np.abs(down).sum(axis=1)
            if gate is not None:
                wanda += (np.abs(gate) * xnorm[:, None]).sum(axis=0)
            scores.append({"camera": camera.tolist(), "activation": e2.tolist(), "magnitude": magnitude.tolist(), "wanda": wanda.tolist(), "tokens": int(phi.shape[0])})
        result.append(scores)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
