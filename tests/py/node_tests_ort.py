"""Runs models in onnxruntime on ONNX backend node-test data and checks the expected outputs.

Usage: node_tests_ort.py LISTFILE
LISTFILE lines: "MODEL<TAB>CASE_DIR" (CASE_DIR holds test_data_set_*/input_*.pb, output_*.pb).
Prints "PASS MODEL", "FAIL MODEL: why" or "ERROR MODEL: why" per line; tolerance as onnx's
backend tests (rtol 1e-3, atol 1e-7). Every model must pass onnx.checker. Where onnxruntime
has no kernel for a (valid) node, the onnx package's ReferenceEvaluator is the reference
instead, and the line says "PASS(reference)".
"""
import glob
import os
import sys

import onnx
import onnxruntime as ort

# The same loading and comparison as the runtime conformance suite.
from ort_node_tests import close, load_pb

RTOL, ATOL = 1e-3, 1e-7


def check(model_path, case_dir, use_reference=False):
    model = onnx.load(model_path)
    onnx.checker.check_model(model)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if use_reference:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        run = lambda feeds: evaluator.run(None, feeds)
    else:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(None, feeds)
    for data_set in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
        feeds = {}
        for i, inp in enumerate(inputs):
            path = os.path.join(data_set, f"input_{i}.pb")
            if os.path.exists(path):
                feeds[inp.name] = load_pb(path, inp.type)
        outputs = run(feeds)
        for i, (out, got) in enumerate(zip(model.graph.output, outputs)):
            expected = load_pb(os.path.join(data_set, f"output_{i}.pb"), out.type)
            problem = close(expected, got, RTOL, ATOL)
            assert problem is None, f"output {i}: {problem}"


def main():
    for line in open(sys.argv[1]):
        model_path, case_dir = line.rstrip("\n").split("\t")
        try:
            try:
                check(model_path, case_dir)
                print(f"PASS {model_path}")
            except ort.capi.onnxruntime_pybind11_state.NotImplemented:
                check(model_path, case_dir, use_reference=True)
                print(f"PASS(reference) {model_path}")
        except AssertionError as e:
            print(f"FAIL {model_path}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else 'mismatch'}")
        except Exception as e:
            print(f"ERROR {model_path}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
