"""onnxruntime's side of `compactor bench runtime`: runs MODEL on the given .npy inputs with
THREADS intra-op threads and prints one JSON object: median latency over RUNS timed runs
(after WARMUP untimed ones), and where it wrote its outputs.

Usage: ort_bench.py MODEL THREADS RUNS WARMUP OUT_DIR [SET:]NAME=FILE.npy ...

Inputs prefixed with a set number (`0:input_ids=...`, `1:input_ids=...`) are several input
sets: each round of runs goes through every set in turn, and the median of each set is
reported too (`median_ms_per_set`); outputs are those of set 0.
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, threads, runs, warmup, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    sets = {}
    for spec in sys.argv[6:]:
        name, path = spec.split("=", 1)
        index, _, name = name.rpartition(":")
        sets.setdefault(int(index or 0), {})[name] = np.load(path)
    feeds = [sets[k] for k in sorted(sets)] or [{}]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    outputs = None
    for _ in range(warmup):
        for i, f in enumerate(feeds):
            result = session.run(None, f)
            if i == 0:
                outputs = result
    times = [[] for _ in feeds]
    for _ in range(runs):
        for f, t in zip(feeds, times):
            start = time.perf_counter()
            session.run(None, f)
            t.append((time.perf_counter() - start) * 1e3)
    files = []
    for meta, value in zip(session.get_outputs(), outputs):
        path = os.path.join(out_dir, f"ort_output_{len(files)}.npy")
        np.save(path, np.ascontiguousarray(value))
        files.append({"name": meta.name, "file": path})
    print(json.dumps({"median_ms": float(np.median(sum(times, []))), "median_ms_per_set": [float(np.median(t)) for t in times], "runs": runs, "threads": threads, "onnxruntime": ort.__version__, "outputs": files}))


if __name__ == "__main__":
    main()
