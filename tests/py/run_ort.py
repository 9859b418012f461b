"""Runs a model in onnxruntime and writes its outputs as output_<i>.npy into OUT_DIR.

Usage: run_ort.py MODEL OUT_DIR [--input NAME=FILE.npy ...] [--opt none|basic|all]
"""
import argparse
import os

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out_dir")
    p.add_argument("--input", action="append", default=[])
    p.add_argument("--opt", choices=["none", "basic", "all"], default="all")
    args = p.parse_args()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[args.opt]
    feeds = {k: np.load(v) for k, v in (s.split("=", 1) for s in args.input)}
    outputs = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    for i, o in enumerate(outputs):
        np.save(os.path.join(args.out_dir, f"output_{i}.npy"), o)


if __name__ == "__main__":
    main()
