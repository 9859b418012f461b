"""Prints the types onnx's own shape inference gives every value of a model, as JSON.

Usage: onnx_shapes.py MODEL [--keep-value-info]
       onnx_shapes.py MODEL --run [BINDING...]

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


def run(path: str, binding_args: list) -> int:
    import onnxruntime as ort

    bindings = dict(arg.split("=", 1) for arg in binding_args)
    model = onnx.load(path)
    declared = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in declared:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                declared.add(name)
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
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    actual = {
        name: {"elem": int(onnx.helper.np_dtype_to_tensor_dtype(value.dtype)), "dims": [int(d) for d in value.shape]}
        for name, value in zip(names, results)
        if hasattr(value, "shape")
    }
    json.dump({"actual": actual}, sys.stdout)
    return 0


def main() -> int:
    path = sys.argv[1]
    if "--run" in sys.argv[2:]:
        return run(path, [a for a in sys.argv[2:] if a != "--run"])
    model = onnx.load(path)
    if "--keep-value-info" not in sys.argv[2:]:
        strip_value_info(model.graph)
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
    json.dump({"values": values, "input_symbols": symbols}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
