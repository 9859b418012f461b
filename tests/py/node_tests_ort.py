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

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def read_value(path, type_proto):
    data = open(path, "rb").read()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


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
                feeds[inp.name] = read_value(path, inp.type)
        outputs = run(feeds)
        for i, (out, got) in enumerate(zip(model.graph.output, outputs)):
            expected = read_value(os.path.join(data_set, f"output_{i}.pb"), out.type)
            if isinstance(expected, list):
                for e, g in zip(expected, got):
                    np.testing.assert_allclose(e, g, rtol=1e-3, atol=1e-7)
            elif expected is None or got is None:
                assert expected is None and got is None, "optional presence differs"
            elif expected.dtype.kind in "OUS":
                assert np.array_equal(expected, got), "strings differ"
            else:
                np.testing.assert_allclose(expected, got, rtol=1e-3, atol=1e-7)


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
