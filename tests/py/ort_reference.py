"""onnxruntime references for real models: plausible deterministic inputs and outputs.

Usage: ort_reference.py OUT_DIR MODEL.onnx ...

For each model writes OUT_DIR/<k>.<input>.npy and OUT_DIR/<k>.out<j>.npy, and prints a JSON
list: [{"model": path, "inputs": [[name, file], ...], "outputs": [[name, file], ...]}].
Input shapes are chosen per model family (silero-vad audio chunks and state, magika byte
windows, rapidocr images); other inputs take 1 for unnamed batch-like dims.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

ELEM = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16}

# Shapes of the symbolic or unknown dims, per model file name (everything else is as declared).
SHAPES = {
    "ch_PP-OCRv4_det_infer.onnx": {"x": [1, 3, 96, 128]},
    "ch_PP-OCRv4_rec_infer.onnx": {"x": [1, 3, 48, 160]},
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": [1, 3, 48, 192]},
    "silero_vad.onnx": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_16k_op15.onnx": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_op18_ifless.onnx": {"input": [1, 512], "state": [2, 1, 128]},
    "silero_vad_half.onnx": {"input": [1, 576], "state": [2, 1, 128]},
    "silero_vad_16k_sequence.onnx": {"input": [3, 576]},
    "model.onnx": {"bytes": [2, 2048]},
}


def make_input(model_name, inp, rng):
    t = inp.type.tensor_type
    dtype = ELEM[t.elem_type]
    shape = SHAPES.get(model_name, {}).get(inp.name)
    if shape is None:
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
    if inp.name == "sr":
        return np.array(16000, dtype=dtype)
    if inp.name == "bytes":
        return rng.integers(0, 257, size=shape).astype(dtype)
    if inp.name in ("state", "h", "c"):
        return (rng.standard_normal(shape) * 0.1).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 4, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 0.5).astype(dtype)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    report = []
    for k, path in enumerate(sys.argv[2:]):
        rng = np.random.default_rng(42 + k)
        model = onnx.load(path, load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        name = os.path.basename(path)
        feeds, inputs = {}, []
        for inp in model.graph.input:
            if inp.name in inits:
                continue
            value = make_input(name, inp, rng)
            file = os.path.join(out, f"{k}.in{len(inputs)}.npy")
            np.save(file, value)
            feeds[inp.name] = value
            inputs.append([inp.name, file])
        options = ort.SessionOptions()
        options.log_severity_level = 4
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        results = sess.run(None, feeds)
        outputs = []
        for meta, value in zip(sess.get_outputs(), results):
            file = os.path.join(out, f"{k}.out{len(outputs)}.npy")
            np.save(file, np.ascontiguousarray(value))
            outputs.append([meta.name, file])
        report.append({"model": path, "inputs": inputs, "outputs": outputs})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
