"""Prints the types onnx's own shape inference gives every value of a model, as JSON.

Usage: onnx_shapes.py MODEL [--keep-value-info]
       onnx_shapes.py MODEL --run [BINDING...]
       onnx_shapes.py --list FILE

The model's value_info entries (declared intermediate types) are removed first, in every
graph, so the reference infers from the graph inputs and initializers alone, as Compactor's
test does. Inference runs with data_prop=True (partial data propagation for shape
computations).

Output: {"values": [{"key", "elem", "dims"}...], "input_symbols": [...]} where `key` is
"<scope>/<value name>" (scope: "" for the main graph, "<scope>/<node index>.<attribute>" or
"<scope>/<node index>.<attribute>[<k>]" for subgraphs), `elem` the ONNX element type code
(null when unset), and `dims` null for an unknown rank, else a list whose items are an int, a
symbol string, or null for an unknown dimension. Only tensor-typed values are listed.
`input_symbols` are the dim_param names of the main graph's inputs.

With --run, the model is instead run with onnxruntime on random inputs, every node output
of the main graph made a graph output, and the actual shapes are printed:
{"actual": {name: {"elem": code, "dims": [int...]}}}. BINDINGs choose the input sizes:
`SYMBOL=N` for a dim_param, `INPUT.K=N` for dimension K of an input, `INPUT.value=N` to fill
an integer input with N (default 0); other unknown dims are 1.

With --list FILE, each line of FILE names a model (an ONNX node test's model.onnx) and one
JSON object is printed per line: {"model": path, "values", "input_symbols"} as above (the
declared graph output types are removed too before inferring), plus
"actual" (as with --run) from running the model with onnxruntime on the node test's own
inputs (test_data_set_0), or "run_error" when it cannot be run, or "error" when onnx's
inference fails.
"""
import json
import sys

import onnx
from onnx import shape_inference


def strip_value_info(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                strip_value_info(attr.g)
            for sub in attr.graphs:
                strip_value_info(sub)


def tensor_entry(key: str, vi: onnx.ValueInfoProto):
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    elem = tt.elem_type if tt.elem_type != 0 else None
    dims = None
    if tt.HasField("shape"):
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return {"key": key, "elem": elem, "dims": dims}


def collect(graph: onnx.GraphProto, scope: str, out: list) -> None:
    initializers = {t.name for t in graph.initializer}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name in initializers:
            continue
        entry = tensor_entry(f"{scope}/{vi.name}", vi)
        if entry is not None:
            out.append(entry)
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                collect(attr.g, f"{scope}/{index}.{attr.name}", out)
            for k, sub in enumerate(attr.graphs):
                collect(sub, f"{scope}/{index}.{attr.name}[{k}]", out)


def random_input(name: str, elem: int, dims: list, bindings: dict) -> "numpy.ndarray":
    import numpy as np

    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).random(dims).astype(dtype)
    return np.full(dims, int(bindings.get(f"{name}.value", 0)), dtype=dtype)


def infer(path: str, keep_value_info: bool = False, clear_outputs: bool = False) -> dict:
    model = onnx.load(path)
    if not keep_value_info:
        strip_value_info(model.graph)
    if clear_outputs:
        initializers = {t.name for t in model.graph.initializer}
        inputs = {i.name for i in model.graph.input}
        for output in model.graph.output:
            if output.name not in initializers and output.name not in inputs:
                output.ClearField("type")
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    values: list = []
    collect(inferred.graph, "", values)
    symbols = sorted(
        {
            d.dim_param
            for vi in model.graph.input
            if vi.type.HasField("tensor_type")
            for d in vi.type.tensor_type.shape.dim
            if d.HasField("dim_param")
        }
    )
    return {"values": values, "input_symbols": symbols}


def actual_shapes(model: onnx.ModelProto, feeds: dict) -> dict:
    """Runs the model with every main-graph node output made a graph output."""
    import onnxruntime as ort

    declared = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in declared:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                declared.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.get_outputs()
    results = session.run([o.name for o in outputs], feeds)
    actual = {}
    for output, value in zip(outputs, results):
        if not hasattr(value, "shape") or not output.type.startswith("tensor("):
            continue
        # numpy has no float8/4-bit types (their arrays read as uint8), so the element type is
        # the one onnxruntime reports, e.g. "tensor(float8e4m3fn)".
        elem = onnx.TensorProto.DataType.Value(output.type[len("tensor(") : -1].upper())
        actual[output.name] = {"elem": elem, "dims": [int(d) for d in value.shape]}
    return actual


def run(path: str, binding_args: list) -> dict:
    bindings = dict(arg.split("=", 1) for arg in binding_args)
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dims = []
        for k, d in enumerate(tt.shape.dim):
            override = bindings.get(f"{vi.name}.{k}")
            if override is not None:
                dims.append(int(override))
            elif d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param in bindings:
                dims.append(int(bindings[d.dim_param]))
            else:
                dims.append(1)
        feeds[vi.name] = random_input(vi.name, tt.elem_type, dims, bindings)
    return {"actual": actual_shapes(model, feeds)}


def run_test_data(path: str) -> dict:
    """Runs a node test's model on its first data set's inputs (tensor inputs only)."""
    import os

    from onnx import numpy_helper

    model = onnx.load(path)
    data_dir = os.path.join(os.path.dirname(path), "test_data_set_0")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    feeds = {}
    for k, vi in enumerate(inputs):
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"input '{vi.name}' is not a tensor")
        tensor = onnx.TensorProto()
        with open(os.path.join(data_dir, f"input_{k}.pb"), "rb") as f:
            tensor.ParseFromString(f.read())
        feeds[vi.name] = numpy_helper.to_array(tensor)
    return {"actual": actual_shapes(model, feeds)}


def run_list(list_file: str) -> int:
    for line in open(list_file):
        path = line.strip()
        if not path:
            continue
        out: dict = {"model": path}
        try:
            out.update(infer(path, clear_outputs=True))
        except Exception as e:  # the comparison skips models onnx cannot infer
            out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        try:
            out.update(run_test_data(path))
        except Exception as e:  # onnxruntime lacks some ops and opsets
            out["run_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    if sys.argv[1] == "--list":
        return run_list(sys.argv[2])
    path = sys.argv[1]
    if "--run" in sys.argv[2:]:
        result = run(path, [a for a in sys.argv[2:] if a != "--run"])
    else:
        result = infer(path, keep_value_info="--keep-value-info" in sys.argv[2:])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
