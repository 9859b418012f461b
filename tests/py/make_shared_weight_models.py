"""Writes regression models whose weights are read by several nodes, made from all-MiniLM-L6-v2.

Usage: make_shared_weight_models.py MINILM.onnx OUT_DIR

- minilm_albert.onnx: ALBERT-style, every encoder layer reads layer 0's parameters (its MatMul
  weights, biases and LayerNorm scales); the other layers' initializers are dropped.
- minilm_albert_tied_head.onnx: the same plus a tied LM head, a second output
  `logits = last_hidden_state @ Transpose(word_embeddings)` over the vocabulary, reading the
  same initializer as the embedding Gather.
- minilm_albert_unshared.onnx, minilm_albert_tied_head_unshared.onnx: the same functions with
  every reader of a shared initializer given its own copy, the reference for what quantizing
  a shared weight once must give.

Each file is written to a temporary name and renamed into place.
"""
import os
import re
import sys

import onnx
from onnx import helper

LAYER = re.compile(r"/layer\.(\d+)/")


def share_layer_zero(model):
    """Points every layer's node at the initializer its layer-0 twin reads, in place."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    rewired = 0
    for node in graph.node:
        m = LAYER.search(node.name)
        if not m or m.group(1) == "0" or not any(name in inits for name in node.input):
            continue
        twin = by_name.get(LAYER.sub("/layer.0/", node.name, count=1))
        if twin is None or twin.op_type != node.op_type:
            raise SystemExit(f"no layer-0 twin for node {node.name}")
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            shared = twin.input[i]
            if shared not in inits or list(inits[shared].dims) != list(inits[name].dims):
                raise SystemExit(f"{node.name} input {i}: layer 0 reads {shared}, not an initializer of {list(inits[name].dims)}")
            node.input[i] = shared
            rewired += 1
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewired


def add_tied_head(model):
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "Gather" and "word_embeddings" in n.name)
    table = gather.input[0]
    hidden = graph.output[0].name
    graph.node.append(helper.make_node("Transpose", [table], ["lm_head.weight_transposed"], name="/lm_head/Transpose", perm=[1, 0]))
    graph.node.append(helper.make_node("MatMul", [hidden, "lm_head.weight_transposed"], ["logits"], name="/lm_head/MatMul"))
    vocab = next(i for i in graph.initializer if i.name == table).dims[0]
    graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", "seq", vocab]))


def unshare(model):
    """A copy of the model where each node input reading a shared initializer reads its own copy."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    seen = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            copy = onnx.TensorProto.FromString(inits[name].SerializeToString())
            copy.name = f"{name}.reader{seen[name]}"
            graph.initializer.append(copy)
            node.input[i] = copy.name
    return model


def save(model, path):
    onnx.checker.check_model(model)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def main():
    source, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    model = onnx.load(source)
    rewired = share_layer_zero(model)
    if rewired < 5 * 16:
        raise SystemExit(f"only {rewired} inputs rewired")
    save(model, os.path.join(out, "minilm_albert.onnx"))
    save(unshare(model), os.path.join(out, "minilm_albert_unshared.onnx"))
    add_tied_head(model)
    save(model, os.path.join(out, "minilm_albert_tied_head.onnx"))
    save(unshare(model), os.path.join(out, "minilm_albert_tied_head_unshared.onnx"))
    print(f"rewired {rewired} inputs of layers 1-5 to layer 0's initializers")


if __name__ == "__main__":
    main()
