"""A prompt graph written by fixtures/make_smollm2.py's builder (no past inputs, logits only),
also outputting each block's keys and values as `present.{i}.key` / `present.{i}.value`
([batch, kv_heads, sequence_length, head_size]), as optimum's prompt graphs (decoder_model.onnx)
do: the cache a decode graph (make_smollm2.py's with_past form) then reads.

    python with_presents.py IN.onnx OUT.onnx

Plain form: the keys/values are the inputs of the Unsqueeze before each grouped-query repeat
(Unsqueeze -> Expand -> Reshape), after the rotary embedding; fused form: GroupQueryAttention's
present outputs. External data stays where it is (OUT next to IN reads IN's data file).
"""
import sys

import onnx
from onnx import TensorProto, helper


def add_presents(model):
    g = model.graph
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    caches = []  # (key, value) per block, in graph order
    pending = []
    for n in g.node:
        if n.op_type == "GroupQueryAttention":
            caches.append((n, 1, 2))
        elif n.op_type == "Unsqueeze" and any(c.op_type == "Expand" for c in consumers.get(n.output[0], [])):
            pending.append(n.input[0])
            if len(pending) == 2:
                caches.append(tuple(pending))
                pending = []
    dims = lambda kv: ["batch_size", kv, "sequence_length", None]  # noqa: E731
    for i, c in enumerate(caches):
        for kind, j in (("key", 0), ("value", 1)):
            name = f"present.{i}.{kind}"
            if isinstance(c[0], onnx.NodeProto):
                node, slot = c[0], c[1 + j]
                old = node.output[slot]
                for other in g.node:
                    other.input[:] = [name if x == old else x for x in other.input]
                while len(node.output) <= slot:
                    node.output.append("")
                node.output[slot] = name
                kv = next(a.i for a in node.attribute if a.name == "kv_num_heads")
            else:
                g.node.append(helper.make_node("Identity", [c[j]], [name], name=name + "_node"))
                kv = None
            g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims(kv)))
    return model


def main():
    src, dst = sys.argv[1:3]
    model = onnx.load(src, load_external_data=False)
    onnx.save(add_presents(model), dst)


if __name__ == "__main__":
    main()
