"""onnxruntime's side of `compactor bench runtime`: runs MODEL on the given .npy inputs with
THREADS intra-op threads and prints one JSON object: median latency over RUNS timed runs
(after WARMUP untimed ones), and where it wrote its outputs.

Usage: ort_bench.py MODEL THREADS RUNS WARMUP OUT_DIR NAME=FILE.npy ...
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, threads, runs, warmup, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    feeds = {}
    for spec in sys.argv[6:]:
        name, path = spec.split("=", 1)
        feeds[name] = np.load(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    outputs = None
    for _ in range(warmup):
        outputs = session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    files = []
    for meta, value in zip(session.get_outputs(), outputs):
        path = os.path.join(out_dir, f"ort_output_{len(files)}.npy")
        np.save(path, np.ascontiguousarray(value))
        files.append({"name": meta.name, "file": path})
    print(json.dumps({"median_ms": float(np.median(times)), "runs": runs, "threads": threads, "onnxruntime": ort.__version__, "outputs": files}))


if __name__ == "__main__":
    main()
