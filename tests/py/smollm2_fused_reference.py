"""onnxruntime's logits for the fused SmolLM2 graphs (fixtures/make_smollm2.py), for the runtime's
test: a short prompt through prefill_fused.onnx, and one decode_fused.onnx step after it (its
past made by decode_fused.onnx itself from the prompt, with an empty past).

Usage: smollm2_fused_reference.py CACHE_DIR OUT_DIR

Writes OUT_DIR/prefill.input.<name>.npy, prefill.output.logits.npy, decode.input.<name>.npy and
decode.output.<name>.npy (logits and every present), and cases.json
({"prefill" | "decode": {"model", "inputs", "outputs": {name: file}}}).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PROMPT = "The capital of France is Paris. The capital of Germany is"


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def save(out, case, model, feeds, names, results):
    record = {"model": model, "inputs": {}, "outputs": {}}
    for name, array in feeds.items():
        record["inputs"][name] = os.path.join(out, f"{case}.input.{name}.npy")
        np.save(record["inputs"][name], array)
    for name, array in zip(names, results):
        record["outputs"][name] = os.path.join(out, f"{case}.output.{name}.npy")
        np.save(record["outputs"][name], array)
    return record


def main():
    d, out = os.path.join(sys.argv[1], "smollm2"), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    cfg = json.load(open(os.path.join(d, "config.json")))
    ids = np.array([Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(PROMPT).ids], np.int64)
    n = ids.shape[1]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(n, dtype=np.int64)[None]}
    cases = {}
    prefill = os.path.join(d, "prefill_fused.onnx")
    cases["prefill"] = save(out, "prefill", prefill, feeds, ["logits"], session(prefill).run(["logits"], feeds))

    decode_path = os.path.join(d, "decode_fused.onnx")
    decode = session(decode_path)
    names = [o.name for o in decode.get_outputs()]
    empty = np.zeros((1, cfg["num_key_value_heads"], 0, cfg["head_dim"]), np.float32)
    past = {f"past_key_values.{i}.{k}": empty for i in range(cfg["num_hidden_layers"]) for k in ("key", "value")}
    results = decode.run(None, {**feeds, **past})
    past = {name.replace("present.", "past_key_values."): value for name, value in zip(names[1:], results[1:])}
    step = {"input_ids": np.array([[int(results[0][0, -1].argmax())]], np.int64), "attention_mask": np.ones((1, n + 1), np.int64), "position_ids": np.array([[n]], np.int64), **past}
    cases["decode"] = save(out, "decode", decode_path, step, names, decode.run(None, step))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
    print(f"prompt of {n} tokens, a past of {n}")


if __name__ == "__main__":
    main()
