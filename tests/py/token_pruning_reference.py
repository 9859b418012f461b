"""An independent check of a model rewritten by `prune-tokens`.

    python token_pruning_reference.py ORIGINAL.onnx PRUNED.onnx SPEC.json INPUT_DIR

SPEC.json: the pass's options (method, ratio, protect_first, protect_last, mask, output, fill)
and its report's details (hidden, probs, gathered: [{name, axes}], outputs, caches: the later
blocks' present keys/values, which stay short, and cache_positions: their positions' output).
The reference runs the ORIGINAL model in onnxruntime up to the cut (the hidden state, the
scoring attention probabilities and the values the later blocks read), chooses the kept tokens
in NumPy from the method's definition, gathers those values at the kept positions in NumPy, and
runs the original model's later blocks (cut out with onnx.utils.extract_model) on them. Prints
JSON: the largest absolute and relative difference of each output from the pruned model's, and
whether the pruned model's kept positions (output=gather) are the reference's.
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

ALWAYS, NEVER = 3.0e38, -3.0e38


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def kept_positions(spec, probs, valid):
    """Per row: the protected real tokens and the best-scored share of the others; rows padded
    to one count with their first padding positions; increasing order."""
    B, S = valid.shape
    kind = spec.get("score", "auto")
    if kind == "auto":
        kind = "last-query" if spec["method"] == "fastv" else "received"
    if kind == "received":
        # Attention received: mean over heads, summed over real query rows.
        score = (probs.mean(1) * valid[:, :, None]).sum(1)
    else:
        # FastV: the last query row, mean over heads.
        score = probs[:, :, -1, :].mean(1)
    pf, pl, ratio = spec["protect_first"], spec["protect_last"], spec["ratio"]
    rows, orders = [], []
    for b in range(B):
        real = np.flatnonzero(valid[b])
        n = len(real)
        protected = set(real[:pf].tolist()) | set(real[max(n - pl, 0):].tolist())
        s = np.where(valid[b], score[b], NEVER).astype(np.float32)
        s[list(protected)] = ALWAYS
        span = max(n - pf - pl, 0)
        if spec["method"] == "adaptive":
            # ZipVL: the fewest best span tokens holding tau of the span's attention mass.
            in_span = valid[b].copy()
            in_span[list(protected)] = False
            span_scores = np.where(in_span, score[b], 0).astype(np.float32)
            cumulative = np.cumsum(np.sort(span_scores)[::-1], dtype=np.float32)
            p = 1 + int((cumulative < span_scores.sum(dtype=np.float32) * np.float32(spec["tau"])).sum())
            keep = n - span + min(p, span)
        else:
            keep = n - int(np.floor(np.float32(span) * np.float32(ratio)))
        orders.append(np.argsort(-s, kind="stable"))
        rows.append(orders[-1][:keep])
    k = max(len(r) for r in rows)
    out = []
    for b, r in enumerate(rows):
        padding = np.flatnonzero(~valid[b])
        # Too little padding to fill up to k: the row's next best tokens stay too.
        r = orders[b][: max(len(r), k - len(padding))]
        out.append(np.sort(np.concatenate([r, padding[: k - len(r)]])))
    return np.array(out, np.int64)


def pooled(spec, hidden, valid):
    """LLaVolta pooling of the span [first, S - last) in windows of `stride`: each position's
    window, the masked window means and each window's representative (floored mean real
    position)."""
    B, S = valid.shape
    a, b, stride = spec["protect_first"], spec["protect_last"], spec["stride"]
    end = max(S - b, a)
    windows = -(-(end - a) // stride)
    window_of = np.array([i if i < a else a + (i - a) // stride if i < end else a + windows + i - end for i in range(S)])
    n = a + windows + (S - end)
    member = (window_of[:, None] == np.arange(n)[None, :]).astype(np.float32)  # [S, n]
    out = np.zeros((B, n, hidden.shape[2]), np.float32)
    reps = np.zeros((B, n), np.int64)
    for r in range(B):
        for j in range(n):
            members = np.flatnonzero(member[:, j])
            real = members[valid[r, members]]
            use = real if len(real) else members
            out[r, j] = hidden[r, use].mean(0)
            reps[r, j] = use[0] + (len(real) - 1) // 2 if len(real) else members[0]
    return out, reps, window_of


def interleave(a, b):
    """A-then-B halves back to the current order (A at even positions)."""
    out = np.empty((a.shape[0], a.shape[1] + b.shape[1]) + a.shape[2:], a.dtype)
    out[:, 0::2], out[:, 1::2] = a, b
    return out


def tome_merge(x, keys, heads, r, st):
    """One ToMe merge (bipartite soft matching, size-weighted means), as tokens/tome.rs
    defines it; `st` holds size, valid, protected, representative, holder."""
    B, n = x.shape[:2]
    m = keys.reshape(B, n, heads, -1).mean(2) if heads > 1 else keys
    m = (m / np.sqrt((m * m).sum(-1, keepdims=True))).astype(np.float32)
    ma, mb = m[:, 0::2], m[:, 1::2]
    scores = ma @ mb.transpose(0, 2, 1)
    p, v = st["protected"], st["valid"]
    forbid = p[:, 0::2, None] | p[:, None, 1::2] | (v[:, 0::2, None] ^ v[:, None, 1::2])
    scores = np.where(forbid, np.float32(NEVER), scores)
    best, partner = scores.max(2), scores.argmax(2)
    merged = int(min(r, (best > NEVER / 2).sum(1).min()))
    rank = np.empty(best.shape, np.int64)
    for row in range(B):
        rank[row, np.argsort(-best[row], kind="stable")] = np.arange(best.shape[1])
    source = rank < merged
    xa, xb = x[:, 0::2], x[:, 1::2]
    sa, sb = st["size"][:, 0::2], st["size"][:, 1::2]
    xb_sum, sb_new = xb * sb[..., None], sb.copy()
    for row in range(B):
        for a in np.flatnonzero(source[row]):
            xb_sum[row, partner[row, a]] += xa[row, a] * sa[row, a]
            sb_new[row, partner[row, a]] += sa[row, a]
    xb_new = xb_sum / sb_new[..., None]
    survives = interleave(~source, np.ones(sb.shape, bool))
    kept = np.stack([np.flatnonzero(s) for s in survives])
    pick = lambda t: np.take_along_axis(t, kept.reshape(kept.shape + (1,) * (t.ndim - 2)), 1)  # noqa: E731
    places = np.cumsum(survives, 1) - 1
    new_a = np.where(~source, places[:, 0::2], np.take_along_axis(places[:, 1::2], partner, 1))
    new_of_current = interleave(new_a, places[:, 1::2])
    new = {
        "size": pick(interleave(sa, sb_new)), "valid": pick(v), "protected": pick(p), "representative": pick(st["representative"]),
        "holder": np.take_along_axis(new_of_current, st["holder"], 1),
    }
    return pick(interleave(xa, xb_new)), new


def tome_reference(spec, original, full, feeds, valid, tmp):
    """The original model's blocks between merge points (cut out with extract_model) run on
    NumPy-merged tokens; proportional attention enters through the additive mask."""
    B, S = valid.shape
    pf, pl = spec["protect_first"], spec["protect_last"]
    real_rank = np.cumsum(valid, 1)
    lengths = valid.sum(1, keepdims=True)
    st = {
        "size": np.ones((B, S), np.float32), "valid": valid.copy(),
        "protected": valid & ((real_rank <= pf) | (real_rank > lengths - pl)),
        "representative": np.tile(np.arange(S), (B, 1)), "holder": np.tile(np.arange(S), (B, 1)),
    }
    middles, keys = spec["middles"], spec["keys"]
    x, k = full[middles[0]], full[keys[0]]
    outputs = [spec["restored"]] if spec.get("restored") else spec["all_outputs"]
    for i in range(len(middles)):
        x, st = tome_merge(x, k, spec["heads"][i], spec["r"], st)
        sub_feeds = {middles[i]: x}
        for g in spec["gathered"]:
            value = gather(full[g], [a for a, d in enumerate(full[g].shape) if d == S and a > 0], st["representative"])
            # The mask is added to the logits: log(size) joins it on the key axis.
            sub_feeds[g] = np.ascontiguousarray(value + np.log(st["size"])[:, None, None, :]).astype(np.float32)
        last = i + 1 == len(middles)
        wanted = outputs if last else [middles[i + 1], keys[i + 1]]
        sub = os.path.join(tmp, f"segment{i}.onnx")
        onnx.utils.extract_model(original, sub, list(sub_feeds), wanted)
        got = dict(zip(wanted, session(sub).run(None, sub_feeds)))
        if not last:
            x, k = got[middles[i + 1]], got[keys[i + 1]]
    return got, st


def downstream(model, value):
    """The names of the values computed from `value` (with it)."""
    reached = {value}
    for n in model.graph.node:  # nodes are in topological order
        if any(i in reached for i in n.input):
            reached.update(n.output)
    return reached


def gather(x, axes, idx):
    B = idx.shape[0]
    if x.shape[0] == 1 and B > 1:
        x = np.broadcast_to(x, (B,) + x.shape[1:])
    for a in axes:
        shape = [B] + [1] * (x.ndim - 1)
        shape[a] = idx.shape[1]
        x = np.take_along_axis(x, idx.reshape(shape), a)
    return x


def main():
    original, pruned, spec_path, input_dir = sys.argv[1:5]
    spec = json.load(open(spec_path))
    feeds = {f[:-4]: np.load(os.path.join(input_dir, f)) for f in sorted(os.listdir(input_dir)) if f.endswith(".npy")}
    model = onnx.load(original)
    outputs = [o.name for o in model.graph.output]
    if spec["method"] == "tome":
        taps = [spec["middles"][0], spec["keys"][0]] + spec["gathered"]
    else:
        taps = [spec["hidden"]] + ([spec["probs"]] if spec.get("probs") else []) + [g["name"] for g in spec["gathered"]]
    for t in taps:
        model.graph.output.append(onnx.ValueInfoProto(name=t))
    with tempfile.TemporaryDirectory() as tmp:
        tapped = os.path.join(tmp, "tapped.onnx")
        onnx.save(model, tapped)
        values = session(tapped).run(None, feeds)
        full = dict(zip(outputs + taps, values))
        mask = feeds.get(spec["mask"])
        hidden = full[spec["middles"][0] if spec["method"] == "tome" else spec["hidden"]]
        valid = (mask != 0) if mask is not None else np.ones(hidden.shape[:2], bool)
        if spec["method"] == "tome":
            spec["all_outputs"] = outputs
            expected, st = tome_reference(spec, original, full, feeds, valid, tmp)
            idx = st["representative"]
        elif spec["method"] == "pool":
            reduced, idx, window_of = pooled(spec, hidden, valid)
        else:
            idx = kept_positions(spec, full[spec["probs"]], valid)
            reduced = gather(hidden, [1], idx)
        # The later blocks' present keys/values stay short (kept tokens only).
        caches = spec.get("caches", [])
        later = downstream(model, spec["middles"][0] if spec["method"] == "tome" else spec["hidden"])
        if spec["method"] != "tome":
            sub_feeds = {spec["hidden"]: reduced}
            for g in spec["gathered"]:
                sub_feeds[g["name"]] = np.ascontiguousarray(gather(full[g["name"]], g["axes"], idx))
            sub = os.path.join(tmp, "later_blocks.onnx")
            wanted = [spec["restored"]] if spec.get("restored") else [o for o in outputs if o in later and o not in caches]
            wanted += caches
            onnx.utils.extract_model(original, sub, list(sub_feeds), wanted)
            expected = dict(zip(wanted, session(sub).run(None, sub_feeds)))
        if spec.get("restored"):
            # output=scatter: the last block's output gets its full length back, and the rest of
            # the original model runs on it.
            r = spec["restored"]
            want = expected[r]
            if spec["method"] == "tome":
                want = np.take_along_axis(want, st["holder"][..., None], 1)
            elif spec["method"] == "pool":
                want = np.take(want, window_of, axis=1)
            else:
                base = hidden.copy() if spec["fill"] == "carry" else np.zeros((want.shape[0], hidden.shape[1], want.shape[2]), want.dtype)
                np.put_along_axis(base, np.broadcast_to(idx[..., None], want.shape), want, 1)
                want = base
            kept_caches = {c: expected[c] for c in caches}
            if r in outputs:
                expected = {r: want}
            else:
                sub = os.path.join(tmp, "after_restore.onnx")
                after = [o for o in outputs if o in later and o not in caches]
                onnx.utils.extract_model(original, sub, [r], after)
                expected = dict(zip(after, session(sub).run(None, {r: want})))
            expected.update(kept_caches)
    got_names = [o.name for o in session(pruned).get_outputs()]
    got = dict(zip(got_names, session(pruned).run(None, feeds)))
    report = {"kept_positions": idx.tolist(), "outputs": {}}
    for name in outputs:
        # Outputs computed before the cut (the earlier blocks' caches) are the original's.
        want = expected.get(name, full[name])
        diff = np.abs(got[name].astype(np.float64) - want)
        report["outputs"][name] = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / max(np.abs(want).max(), 1e-30)), "shape": list(got[name].shape)}
    for positions in ("kept_token_positions", spec.get("cache_positions")):
        if positions in got:
            report["positions_equal"] = report.get("positions_equal", True) and bool(np.array_equal(got[positions], idx))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
