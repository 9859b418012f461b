"""onnxruntime's outputs for one corpus model and its rewritten forms, in one process.

Usage: corpus_reference.py INPUTS_DIR OUT_DIR LABEL=MODEL.onnx ...

INPUTS_DIR holds inputs.json (input name -> .npy file) as tests/py/corpus_fetch.py writes it.
The first model (the original) runs at onnxruntime's default optimization level, as users run
it; the others (cleanup, quantized) at the basic level, whose rewrites keep exact semantics
(the extended fusions swap DequantizeLinear + MatMul for int8-activation kernels).
Writes OUT_DIR/<label>.<k>.npy per output and prints JSON:
{label: {"outputs": [[name, file], ...]} or {"error": text}}.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    inputs_dir, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    index = json.load(open(os.path.join(inputs_dir, "inputs.json")))
    feeds = {name: np.load(os.path.join(inputs_dir, file)) for name, file in index.items()}
    report = {}
    for k, spec in enumerate(sys.argv[3:]):
        label, path = spec.split("=", 1)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = 1
        if k > 0:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            results = sess.run(None, feeds)
        except Exception as e:  # the test reports it as this model's failure
            report[label] = {"error": f"{type(e).__name__}: {str(e)[:600]}"}
            continue
        outputs = []
        for j, (meta, value) in enumerate(zip(sess.get_outputs(), results)):
            file = os.path.join(out, f"{label}.{j}.npy")
            np.save(file, np.asarray(value, order="C"))
            outputs.append([meta.name, file])
        report[label] = {"outputs": outputs}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
