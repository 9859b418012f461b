"""External-data helpers for the Rust tests, using the onnx package as the reference.

  external_data.py to-external SRC DST LOCATION
      Save SRC as DST with every tensor >= 1 KiB in the side file LOCATION (onnx's own writer).
  external_data.py check ORIGINAL WRITTEN
      WRITTEN (with its external data) must pass onnx.checker, hold the same initializers as
      ORIGINAL, and give the same outputs in onnxruntime on deterministic inputs.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def to_external(src, dst, location):
    model = onnx.load(src)
    onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)


def inputs_for(model):
    rng = np.random.default_rng(0)
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 3 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def check(original, written):
    onnx.checker.check_model(written)
    a = onnx.load(original)
    b = onnx.load(written)
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys(), "initializer names differ"
    for name in ia:
        assert ia[name].dtype == ib[name].dtype and np.array_equal(ia[name], ib[name]), f"initializer {name} differs"
    feeds = inputs_for(a)
    out_a = ort.InferenceSession(original).run(None, feeds)
    out_b = ort.InferenceSession(written).run(None, feeds)
    for x, y in zip(out_a, out_b):
        assert np.array_equal(x, y), "onnxruntime outputs differ"
    print(f"ok: {len(ia)} initializers equal, {len(out_a)} outputs equal")


if __name__ == "__main__":
    if sys.argv[1] == "to-external":
        to_external(*sys.argv[2:5])
    elif sys.argv[1] == "check":
        check(*sys.argv[2:4])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
