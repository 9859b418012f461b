#!/usr/bin/env python3
"""Quantizing a model larger than the machine's memory: peak resident memory, time, throughput.

    .cache/venv/bin/python benches/out_of_core.py [--gb 32] [--dir DIR] [--compactor PATH]
        [--calibrated-layers 2] [--keep]

Synthesizes a llama-shaped decoder (hidden 4096, 32 heads, SwiGLU FFN 11008, vocabulary 32000,
untied LM head, as many layers as `--gb` gigabytes of f32 weights need) with random weights in
one external data file, written once and deleted at the end (unless --keep). Then runs, under
/usr/bin/time (peak resident set size: anonymous memory and mapped file pages):

  1. compactor optimize BIG.onnx -o q.onnx --passes 'quantize(bits=4)'          (every layer, RTN)
  2. compactor optimize BIG.onnx -o g.onnx --passes 'quantize(bits=4,method=gptq,include=[...])'
     --calibration random:4       (GPTQ on the attention projections of the first layers: the
                                   calibration runs only the part of the model they need)

and checks that each output passes onnx.checker and Compactor's verifier (`compactor inspect`),
and that onnxruntime runs the fully quantized model. Prints a Markdown table.
DIR must be on a disk with room for the model and its outputs (about 1.2x --gb); the scratch
file of the streaming quantizer goes to DIR too (TMPDIR).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN, HEADS, FFN, VOCAB, SEQ = 4096, 32, 11008, 32000, 64


def layer_params():
    return 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN


def synthesize(path, layers, seed=0):
    """Writes the model and its data file tensor by tensor (never more than one in memory)."""
    data_name = os.path.basename(path) + ".data"
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    with open(os.path.join(os.path.dirname(path), data_name), "wb") as data:
        def weight(name, shape, std=0.02):
            offset = data.tell()
            rows = shape[0]
            step = max(1, (64 << 20) // (4 * int(np.prod(shape[1:]))))
            for r in range(0, rows, step):
                block = rng.standard_normal((min(step, rows - r),) + tuple(shape[1:]), dtype=np.float32)
                block *= std
                data.write(block.tobytes())
            pad = (-data.tell()) % 4096
            data.write(b"\0" * pad)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(4 * int(np.prod(shape))))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            return name

        def ones(name, n):
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [n], np.ones(n, np.float32)))
            return name

        def const(name, values):
            inits.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
            return name

        count = [0]

        def op(kind, ins, **attrs):
            count[0] += 1
            out = f"{kind.lower()}_{count[0]}"
            nodes.append(helper.make_node(kind, ins, [out], name=f"n{count[0]}_{kind}", **attrs))
            return out

        def rms_norm(x, w):
            var = op("ReduceMean", [op("Mul", [x, x]), const(f"axes_{count[0]}", [-1])])
            return op("Mul", [op("Div", [x, op("Sqrt", [op("Add", [var, eps])])]), w])

        inits.append(helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5]))
        eps = "eps"
        hd = HIDDEN // HEADS
        heads_shape = const("heads_shape", [1, SEQ, HEADS, hd])
        merged_shape = const("merged_shape", [1, SEQ, HIDDEN])
        causal = np.triu(np.full((SEQ, SEQ), -1e9, np.float32), 1)
        inits.append(helper.make_tensor("causal_mask", TensorProto.FLOAT, [SEQ, SEQ], causal.reshape(-1)))
        inits.append(helper.make_tensor("attn_scale", TensorProto.FLOAT, [], [1.0 / np.sqrt(hd)]))
        h = op("Gather", [weight("model.embed_tokens.weight", [VOCAB, HIDDEN], 1.0), "input_ids"], axis=0)
        for i in range(layers):
            p = f"model.layers.{i}"
            x = rms_norm(h, ones(f"{p}.input_layernorm.weight", HIDDEN))
            q, k, v = (op("MatMul", [x, weight(f"{p}.self_attn.{n}_proj.weight", [HIDDEN, HIDDEN])]) for n in "qkv")
            q, k, v = (op("Transpose", [op("Reshape", [t, heads_shape])], perm=[0, 2, 1, 3]) for t in (q, k, v))
            scores = op("Add", [op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), "attn_scale"]), "causal_mask"])
            ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
            ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
            h = op("Add", [h, op("MatMul", [ctx, weight(f"{p}.self_attn.o_proj.weight", [HIDDEN, HIDDEN])])])
            x = rms_norm(h, ones(f"{p}.post_attention_layernorm.weight", HIDDEN))
            gate = op("MatMul", [x, weight(f"{p}.mlp.gate_proj.weight", [HIDDEN, FFN])])
            up = op("MatMul", [x, weight(f"{p}.mlp.up_proj.weight", [HIDDEN, FFN])])
            act = op("Mul", [op("Mul", [gate, op("Sigmoid", [gate])]), up])
            h = op("Add", [h, op("MatMul", [act, weight(f"{p}.mlp.down_proj.weight", [FFN, HIDDEN])])])
            print(f"  layer {i + 1}/{layers} written ({data.tell() / 1e9:.1f} GB)", file=sys.stderr, flush=True)
        x = rms_norm(h, ones("model.norm.weight", HIDDEN))
        nodes.append(helper.make_node("MatMul", [x, weight("lm_head.weight", [HIDDEN, VOCAB])], ["logits"], name="lm_head"))
    graph = helper.make_graph(nodes, "llama_shaped", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, SEQ])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, SEQ, VOCAB])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def timed(cmd, env):
    """Runs cmd under /usr/bin/time -v: (seconds, peak RSS bytes, stderr)."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return seconds, rss_kb * 1024, r.stderr


def files_size(model):
    d, base = os.path.dirname(model), os.path.basename(model)
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f == base or f.startswith(base + "."))


def check(compactor, model, run_ort):
    onnx.checker.check_model(model)
    r = subprocess.run([compactor, "inspect", model, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compactor inspect {model}: {r.stderr}")
    problems = json.loads(r.stdout).get("problems", [])
    if problems:
        raise SystemExit(f"{model}: verifier problems {problems[:5]}")
    if run_ort:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        ids = np.arange(SEQ, dtype=np.int64)[None, :] * 7 % VOCAB
        logits = s.run(None, {"input_ids": ids})[0]
        if not np.isfinite(logits).all():
            raise SystemExit(f"{model}: onnxruntime gives non-finite logits")
        return "checker, verifier, onnxruntime runs it"
    return "checker, verifier"


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--gb", type=float, default=32.0, help="gigabytes (1e9) of f32 weights")
    ap.add_argument("--dir", default=os.path.join(here, "..", "target", "out-of-core"))
    ap.add_argument("--compactor", default=os.path.join(here, "..", "target", "release", "compactor"))
    ap.add_argument("--calibrated-layers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the synthesized model")
    ap.add_argument("--only", choices=["rtn", "gptq"], help="one of the two runs")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    layers = max(1, round((a.gb * 1e9 / 4 - 2 * VOCAB * HIDDEN) / layer_params()))
    big = os.path.join(a.dir, "llama_shaped.onnx")
    params = layers * layer_params() + 2 * VOCAB * HIDDEN
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"model: {layers} layers, {params / 1e9:.2f}B params, {4 * params / 1e9:.1f} GB f32; machine memory {mem / 1e9:.1f} GB", flush=True)
    if not os.path.exists(big):
        t = time.perf_counter()
        synthesize(big, layers)
        print(f"synthesized in {time.perf_counter() - t:.0f} s", flush=True)
    in_bytes = files_size(big)
    env = dict(os.environ, TMPDIR=a.dir)
    rows = []
    try:
        runs = [
            ("int4 RTN, every layer", "quantize(bits=4)", [], True),
            (f"int4 GPTQ, attention of the first {a.calibrated_layers} layers", "quantize(bits=4,method=gptq,include=[" + ",".join(f"model.layers.{i}.self_attn.*" for i in range(a.calibrated_layers)) + "])",
             ["--calibration", "random:4"], False),
        ]
        if a.only:
            runs = [r for r in runs if (a.only == "rtn") == r[3]]
        for label, spec, extra, run_ort in runs:
            out = os.path.join(a.dir, "out.onnx")
            cmd = [a.compactor, "optimize", big, "-o", out, "--passes", spec, "--external-data-threshold", "1024", *extra]
            print(f"running: {' '.join(cmd)}", flush=True)
            seconds, rss, log = timed(cmd, env)
            out_bytes = files_size(out)
            checked = check(a.compactor, out, run_ort)
            rows.append((label, seconds, rss, in_bytes, out_bytes, checked))
            print(f"  {seconds:.0f} s, peak RSS {rss / 2**30:.2f} GiB, {in_bytes / 1e9 / seconds:.2f} GB/s, output {out_bytes / 1e9:.2f} GB ({checked})", flush=True)
            for f in os.listdir(a.dir):
                if f.startswith("out.onnx"):
                    os.remove(os.path.join(a.dir, f))
    finally:
        if not a.keep:
            for f in os.listdir(a.dir):
                if f.startswith("llama_shaped.onnx"):
                    os.remove(os.path.join(a.dir, f))
    print()
    print(f"Model: llama-shaped, {layers} layers, {params / 1e9:.2f}B params, {in_bytes / 1e9:.1f} GB f32 (machine: {mem / 1e9:.1f} GB of memory, {os.cpu_count()} cores)")
    print()
    print("| run | time | peak RSS | throughput | output | checked |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, seconds, rss, ib, ob, checked in rows:
        print(f"| {label} | {seconds:.0f} s | {rss / 2**30:.2f} GiB | {ib / 1e9 / seconds:.2f} GB/s | {ob / 1e9:.2f} GB | {checked} |")
    if any(r[2] >= 4 * 2**30 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
