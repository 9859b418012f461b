"""Runs a model with onnxruntime on .npy inputs, optionally exposing intermediate values as
extra outputs, and saves every output.

Usage: ort_run.py MODEL OUT_DIR EXTRA_OUTPUTS NAME=FILE.npy ...
EXTRA_OUTPUTS is a comma-separated list of value names ('' for none). Prints a JSON object
{output name: file}.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import helper
import onnxruntime as ort


def main():
    model_path, out, extra = sys.argv[1], sys.argv[2], [e for e in sys.argv[3].split(",") if e]
    feeds = {}
    for spec in sys.argv[4:]:
        name, path = spec.split("=", 1)
        feeds[name] = np.load(path)
    model = onnx.load(model_path)
    for name in extra:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = sess.run(None, feeds)
    os.makedirs(out, exist_ok=True)
    files = {}
    for k, (meta, value) in enumerate(zip(sess.get_outputs(), results)):
        file = os.path.join(out, f"ort_{k}.npy")
        np.save(file, np.ascontiguousarray(value))
        files[meta.name] = file
    print(json.dumps(files))


if __name__ == "__main__":
    main()
