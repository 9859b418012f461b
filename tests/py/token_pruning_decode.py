"""Generation with the caches a pruned prompt graph leaves: runs PREFILL on the prompt in
INPUT_DIR, then STEPS decode steps with DECODE, each fed the previous outputs (every `present.X`
output as the `past_key_values.X` input, the kept positions included), one new token per row
(fixed ids, so two model pairs see the same text), the attention mask grown by one column and
each row's next original position as its position id. Writes each step's inputs and outputs as
.npy under OUT_DIR/step_{i}/{inputs,outputs}/.

    python token_pruning_decode.py PREFILL DECODE INPUT_DIR STEPS OUT_DIR [ORIGINAL_DECODE SPEC.json]

With ORIGINAL_DECODE and SPEC.json (the decode pass's report details and its `mask` option),
each step is also computed independently: the original decode graph runs up to the cut (the
blocks before it read their full caches), the values the later blocks read along the keys' axis
are gathered in NumPy at the kept positions (the past ones, then the new tokens' mask columns),
and the original graph's later blocks (cut out with onnx.utils.extract_model) run on them and on
the kept caches. Prints JSON: per step, the largest relative difference of the logits and of each
later block's present from the reference, and whether the positions output is the reference's.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from token_pruning_reference import gather, session


def run(sess, feeds):
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def as_past(name):
    return "past_key_values." + name[len("present."):] if name.startswith("present.") else None


def rel(got, want):
    d = np.abs(got.astype(np.float64) - want)
    return float(d.max() / max(np.abs(want).max(), 1e-30)) if d.size else 0.0


def save(dir_, values):
    os.makedirs(dir_, exist_ok=True)
    for k, v in values.items():
        np.save(os.path.join(dir_, k + ".npy"), v)


def main():
    tmp = tempfile.mkdtemp()
    try:
        generate(tmp)
    finally:
        shutil.rmtree(tmp)


def generate(tmp):
    prefill, decode, input_dir, steps, out_dir = sys.argv[1:6]
    reference = sys.argv[6:8]
    feeds = {f[:-4]: np.load(os.path.join(input_dir, f)) for f in sorted(os.listdir(input_dir)) if f.endswith(".npy")}
    outputs = run(session(prefill), feeds)
    dec = session(decode)
    mask = feeds["attention_mask"]
    batch = mask.shape[0]
    if reference:
        original, spec = reference[0], json.load(open(reference[1]))
        orig = onnx.load(original)
        inputs = [i.name for i in orig.graph.input]
        gathered = {g["name"]: g["axes"] for g in spec["gathered"]}
        later_past = set(spec["past"])
        before = os.path.join(tmp, "before.onnx")
        onnx.utils.extract_model(original, before, [i for i in inputs if i not in later_past], [spec["hidden"]] + list(gathered))
        after = os.path.join(tmp, "after.onnx")
        later_outputs = [o.name for o in orig.graph.output if o.name == "logits" or as_past(o.name) in later_past]
        onnx.utils.extract_model(original, after, [spec["hidden"]] + list(gathered) + sorted(later_past) + ["input_ids", "position_ids"], later_outputs)
        before, after = session(before), session(after)
    report = []
    for step in range(int(steps)):
        new_ids = np.full((batch, 1), step * 7 % 90 + 3, np.int64)
        real = mask.sum(1, keepdims=True).astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), mask.dtype)], 1)
        step_feeds = {"input_ids": new_ids, "attention_mask": mask, "position_ids": real}
        for name, v in outputs.items():
            if as_past(name):
                step_feeds[as_past(name)] = v
        outputs = run(dec, step_feeds)
        save(os.path.join(out_dir, f"step_{step}", "inputs"), {k: v for k, v in step_feeds.items() if k in {i.name for i in dec.get_inputs()}})
        save(os.path.join(out_dir, f"step_{step}", "outputs"), outputs)
        if reference:
            full = run(before, step_feeds)
            positions = np.concatenate([step_feeds[spec["positions_input"]], np.broadcast_to(np.arange(mask.shape[1] - 1, mask.shape[1]), (batch, 1))], 1)
            sub = dict(step_feeds)
            sub[spec["hidden"]] = full[spec["hidden"]]
            for name, axes in gathered.items():
                sub[name] = np.ascontiguousarray(gather(full[name], axes, positions))
            want = run(after, sub)
            entry = {name: rel(outputs[name], w) for name, w in want.items()}
            entry["positions_equal"] = bool(np.array_equal(outputs[spec["positions_output"]], positions))
            entry["kept_length"] = int(positions.shape[1])
            report.append(entry)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
