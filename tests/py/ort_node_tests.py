"""Runs the ONNX backend node tests with onnxruntime and prints one line per case:
`<case>\tpass` or `<case>\tfail\t<reason>`.

Usage: ort_node_tests.py ROOT RTOL ATOL [THREADS]

The comparison is the one the Rust conformance test applies to Compactor's runtime: the output
element type and shape must match, and values must satisfy numpy.allclose(rtol, atol,
equal_nan=True) (strings and bools compared exactly).
"""
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort


def load_pb(path, type_proto):
    data = open(path, "rb").read()
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        t = onnx.TensorProto()
        t.ParseFromString(data)
        return numpy_helper.to_array(t)
    if kind == "sequence_type":
        s = onnx.SequenceProto()
        s.ParseFromString(data)
        return numpy_helper.to_list(s)
    if kind == "optional_type":
        o = onnx.OptionalProto()
        o.ParseFromString(data)
        return numpy_helper.to_optional(o)
    if kind == "map_type":
        m = onnx.MapProto()
        m.ParseFromString(data)
        return numpy_helper.to_dict(m)
    raise ValueError(f"unsupported type {kind}")


def close(expected, actual, rtol, atol):
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return "sequence length differs"
        for e, a in zip(expected, actual):
            r = close(e, a, rtol, atol)
            if r:
                return r
        return None
    if expected is None:
        return None if actual is None else "expected an empty optional"
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} != {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind in "OSUb":
        return None if np.array_equal(expected, actual) else "values differ"
    if expected.dtype.kind in "iu":
        return None if np.array_equal(expected, actual) else "values differ"
    try:
        ok = np.allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    except (TypeError, ValueError) as e:
        return f"cannot compare: {e}"
    return None if ok else "values differ"


def run_case(args):
    case_dir, rtol, atol, threads = args
    name = os.path.basename(case_dir)
    try:
        model = onnx.load(os.path.join(case_dir, "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        sess = ort.InferenceSession(os.path.join(case_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
        data = os.path.join(case_dir, "test_data_set_0")
        initializers = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        feeds = {}
        for k, inp in enumerate(inputs):
            path = os.path.join(data, f"input_{k}.pb")
            if os.path.exists(path):
                feeds[inp.name] = load_pb(path, inp.type)
        outputs = sess.run(None, feeds)
        for k, out in enumerate(model.graph.output):
            expected = load_pb(os.path.join(data, f"output_{k}.pb"), out.type)
            reason = close(expected, outputs[k], rtol, atol)
            if reason:
                return f"{name}\tfail\toutput {k}: {reason}"
        return f"{name}\tpass"
    except Exception as e:  # noqa: BLE001 - every failure is a failed case
        msg = str(e).replace("\n", " ").replace("\t", " ")[:300]
        return f"{name}\tfail\t{type(e).__name__}: {msg}"


def main():
    root, rtol, atol = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    cases = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "model.onnx")))
    with ProcessPoolExecutor(max_workers=2) as pool:
        for line in pool.map(run_case, [(c, rtol, atol, threads) for c in cases], chunksize=8):
            print(line, flush=True)


if __name__ == "__main__":
    main()
