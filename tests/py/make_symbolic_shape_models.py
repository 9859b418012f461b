"""Writes small models whose shape computations read a symbolic input dimension.

Usage: make_symbolic_shape_models.py OUT_DIR

- `resize_sizes.onnx`: x [batch, 3, 8, 8]; Shape -> Gather -> Concat gives the `sizes` of a
  Resize to [batch, 3, 16, 12]; a Reshape to [batch, -1] and a ConstantOfShape [batch, 4]
  built the same way; the Resize output's Shape as an int64 output.
- `resize_sizes_axes.onnx`: the same Resize, then a ReduceSum over an `axes` input (tract
  needs `axes` as a constant, so runs are planned with its value baked in), and value_info
  on intermediates naming `batch`.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resize_nodes():
    return [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["batch"], axis=0),
        helper.make_node("Gather", ["shape", "second"], ["channels"], axis=0),
        helper.make_node("Concat", ["batch", "channels", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["resized"], mode="linear", coordinate_transformation_mode="half_pixel"),
    ]


def constants():
    return [
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.array([1], np.int64), "second"),
        numpy_helper.from_array(np.array([16, 12], np.int64), "hw"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([4], np.int64), "four"),
    ]


def x_input():
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])


def resize_sizes(out):
    nodes = resize_nodes() + [
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["resized", "flat_shape"], ["flat"]),
        helper.make_node("Concat", ["batch", "four"], ["zeros_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["zeros_shape"], ["zeros"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Shape", ["resized"], ["resized_shape"]),
    ]
    outputs = [
        helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["batch", 3, 16, 12]),
        helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch", 576]),
        helper.make_tensor_value_info("zeros", TensorProto.FLOAT, ["batch", 4]),
        helper.make_tensor_value_info("resized_shape", TensorProto.INT64, [4]),
    ]
    graph = helper.make_graph(nodes, "resize_sizes", [x_input()], outputs, constants())
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), os.path.join(out, "resize_sizes.onnx"))


def resize_sizes_axes(out):
    nodes = resize_nodes() + [helper.make_node("ReduceSum", ["resized", "axes"], ["summed"], keepdims=1)]
    inputs = [x_input(), helper.make_tensor_value_info("axes", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["batch", 3, 16, "reduced"])]
    value_info = [
        helper.make_tensor_value_info("resized", TensorProto.FLOAT, ["batch", 3, 16, 12]),
        helper.make_tensor_value_info("batch", TensorProto.INT64, [1]),
    ]
    graph = helper.make_graph(nodes, "resize_sizes_axes", inputs, outputs, constants()[:3], value_info=value_info)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), os.path.join(out, "resize_sizes_axes.onnx"))


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    resize_sizes(sys.argv[1])
    resize_sizes_axes(sys.argv[1])
    for name in ["resize_sizes.onnx", "resize_sizes_axes.onnx"]:
        onnx.checker.check_model(os.path.join(sys.argv[1], name), full_check=True)
