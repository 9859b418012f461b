"""How far int4 block-32 symmetric RTN can go on a MiniLM-style model (numpy + onnxruntime).

Usage: rtn_headroom.py MODEL.onnx INPUT_DIR
INPUT_DIR holds the reference inputs as minilm_{input_ids,attention_mask,token_type_ids}.npy.
Prints, as sentence-embedding cosines (all-MiniLM-L6-v2's mean-pooled, normalised embedding;
minimum over the sentences) against the f32 model:
- each weight quantized alone (the others f32): how the loss is spread over the layers;
- all linear weights, plain RTN;
- all linear weights, RTN after AWQ's activation-aware input-channel scaling (s = mean|x|^a,
  a searched per layer on the output error, 1/s folded back into the weight), calibrated on
  random tokens, not the reference inputs.
Weights are replaced by their f32 reconstructions, which computes what the quantized graph does.
"""
import copy
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def embed(model, feeds):
    hidden = session(model).run(None, feeds)[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def rtn(w, block=32):
    """int4 symmetric RTN along K of W [K, N] with onnxruntime's grid (scale = -m/8)."""
    k, n = w.shape
    b = w.reshape(k // block, block, n)
    hi, lo = b.max(1, keepdims=True), b.min(1, keepdims=True)
    scale = np.where(np.abs(lo) >= np.abs(hi), lo, hi) / -8.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(b / scale), -8, 7) * scale).reshape(k, n)


def main():
    path, inputs = sys.argv[1:3]
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    linear = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    feeds = {k: np.load(f"{inputs}/minilm_{k}.npy") for k in ["input_ids", "attention_mask", "token_type_ids"]}
    reference = embed(model, feeds)

    def cosine(replacements):
        m = copy.deepcopy(model)
        for init in m.graph.initializer:
            if init.name in replacements:
                init.CopyFrom(numpy_helper.from_array(replacements[init.name].astype(np.float32), init.name))
        return float((embed(m, feeds) * reference).sum(1).min())

    weights = {n.input[1]: numpy_helper.to_array(inits[n.input[1]]) for n in linear}
    drops = sorted(((1 - cosine({n.input[1]: rtn(weights[n.input[1]])}), n.name) for n in linear), reverse=True)
    print("cosine loss with one weight quantized (largest first):")
    for loss, name in drops:
        print(f"  {loss:.5f}  {name}")
    print(f"  sum {sum(d for d, _ in drops):.5f}")
    print(f"all linear weights, RTN: {cosine({k: rtn(w) for k, w in weights.items()}):.4f}")

    # Calibration activations: 8 x 128 random tokens.
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30522, (8, 128)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    calibration = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    probe = copy.deepcopy(model)
    names = sorted({n.input[0] for n in linear})
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    acts = dict(zip(names, (a.reshape(-1, a.shape[-1]) for a in session(probe).run(names, calibration))))
    scaled = {}
    for n in linear:
        w, x = weights[n.input[1]], acts[n.input[0]]
        mean_abs, y = np.abs(x).mean(0), x @ w
        best = None
        for a in np.arange(0.0, 1.0, 0.05):
            s = mean_abs**a
            s = s / np.sqrt(s.max() * s.min())
            w_hat = rtn(w * s[:, None]) / s[:, None]
            err = float(((x @ w_hat - y) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, w_hat)
        scaled[n.input[1]] = best[1]
    print(f"all linear weights, AWQ-scaled RTN: {cosine(scaled):.4f}")


if __name__ == "__main__":
    main()
