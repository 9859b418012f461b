//! The rule of each op: which axes of its inputs and outputs it ties together, which it pins
//! (with the reason), and which it reduces over. Ops without a rule pin every axis they touch.

use super::{Axes, Role, dims, known};
use compactor_ir::types::Dim;
use compactor_ir::{Graph, Node, NodeId, ValueId};

const ELEMENTWISE: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "FastGelu",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Cast",
    "Identity",
    "Dropout",
    "Clip",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Mish",
    "Where",
    "Max",
    "Min",
    "Equal",
    "Not",
    "And",
    "Or",
    "Less",
    "Greater",
    "Floor",
    "Ceil",
    "Round",
    "Sin",
    "Cos",
    "PRelu",
    "QuickGelu",
    "BiasGelu",
];
const REDUCE: &[&str] = &["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare", "ReduceProd", "ReduceLogSumExp"];
const NORMS: &[&str] = &["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"];

/// Unites the aligned axes of `input` and `output` (numpy broadcasting: aligned from the right;
/// input axes of size 1 broadcast and stay apart).
fn unite_broadcast(graph: &Graph, axes: &mut Axes, input: ValueId, output: ValueId) {
    let (Some(di), Some(dout)) = (dims(graph, input), dims(graph, output)) else { return };
    if di.len() > dout.len() {
        return;
    }
    let offset = dout.len() - di.len();
    for (a, d) in di.iter().enumerate() {
        if known(d) == Some(1) && known(&dout[a + offset]) != Some(1) {
            continue;
        }
        axes.union((input, a), (output, a + offset));
    }
}

fn pin_all(graph: &Graph, axes: &mut Axes, v: ValueId, reason: &str) {
    if let Some(d) = dims(graph, v) {
        for a in 0..d.len() {
            axes.pin(v, a, reason.to_string());
        }
    }
}

/// `axis` as an index into `rank` axes; `None` when out of range (the node gets no rule).
fn axis_of(axis: i64, rank: usize) -> Option<usize> {
    compactor_ir::infer::normalize_axis(axis, rank).ok()
}

fn axes_of(list: &[i64], rank: usize) -> Option<Vec<usize>> {
    list.iter().map(|&a| axis_of(a, rank)).collect()
}

pub(super) fn apply_rule(graph: &Graph, id: NodeId, node: &Node, axes: &mut Axes) {
    let inputs: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
    let output = node.output(0);
    let op = node.op_type.as_str();
    let label = || node.label(id);
    // Every value the node reads or writes has a known rank past the check below.
    let rank = |v: ValueId| dims(graph, v).map_or(0, |d| d.len());
    let unknown = |axes: &mut Axes| {
        let reason = format!("{} (no channel rule)", label());
        for &v in inputs.iter().chain(node.outputs.iter().flatten()) {
            pin_all(graph, axes, v, &reason);
        }
    };
    // A value of unknown rank breaks the chain of axes through this node: nothing is tied
    // across it, so everything it touches stays where it is (a branch's outputs too).
    if inputs.iter().chain(node.outputs.iter().flatten()).any(|&v| dims(graph, v).is_none()) {
        unknown(axes);
        let reason = format!("{}: a value of unknown shape", label());
        for sub in node.subgraphs() {
            for &v in &graph.region(sub).outputs {
                pin_all(graph, axes, v, &reason);
            }
        }
        return;
    }
    match (op, output) {
        (op, Some(out)) if ELEMENTWISE.contains(&op) => {
            for &v in &inputs {
                unite_broadcast(graph, axes, v, out);
                // A constant vector added per channel: a bias.
                if matches!(op, "Add" | "Sub") && rank(v) >= 1 {
                    axes.role(graph, v, rank(v) - 1, Role::Bias);
                }
            }
        }
        ("MatMul", Some(out)) => {
            let (Some(&a), Some(&b)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let (ra, rb, ro) = (rank(a), rank(b), rank(out));
            if ra < 2 || rb < 2 {
                return unknown(axes);
            }
            axes.union((a, ra - 1), (b, rb - 2));
            axes.union((a, ra - 2), (out, ro - 2));
            axes.union((b, rb - 1), (out, ro - 1));
            axes.role(graph, b, rb - 2, Role::Consumer);
            axes.role(graph, b, rb - 1, Role::Producer);
            // Batch axes, aligned from the right.
            for (v, r) in [(a, ra), (b, rb)] {
                for k in 0..r - 2 {
                    let d = dims(graph, v).unwrap();
                    if known(&d[k]) == Some(1) {
                        continue;
                    }
                    axes.union((v, k), (out, k + (ro - r)));
                }
            }
        }
        ("Gemm", Some(out)) => {
            let (Some(&a), Some(&b)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let ta = node.attr_int("transA").unwrap_or(0) != 0;
            let tb = node.attr_int("transB").unwrap_or(0) != 0;
            let (am, ak) = if ta { (1, 0) } else { (0, 1) };
            let (bk, bn) = if tb { (1, 0) } else { (0, 1) };
            axes.union((a, ak), (b, bk));
            axes.union((a, am), (out, 0));
            axes.union((b, bn), (out, 1));
            axes.role(graph, b, bk, Role::Consumer);
            axes.role(graph, b, bn, Role::Producer);
            if let Some(c) = node.input(2) {
                unite_broadcast(graph, axes, c, out);
                axes.role(graph, c, rank(c).saturating_sub(1), Role::Bias);
            }
        }
        ("Conv", Some(out)) => {
            let (Some(&x), Some(&w)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let group = node.attr_int("group").unwrap_or(1);
            let in_channels = dims(graph, x).and_then(|d| d.get(1).and_then(known));
            let out_channels = dims(graph, w).and_then(|d| d.first().and_then(known));
            axes.union((x, 0), (out, 0));
            axes.union((w, 0), (out, 1));
            axes.role(graph, w, 0, Role::Producer);
            axes.role(graph, w, 1, Role::Consumer);
            if let Some(b) = node.input(2) {
                axes.union((b, 0), (out, 1));
                axes.role(graph, b, 0, Role::Bias);
            }
            if group == 1 {
                axes.union((x, 1), (w, 1));
            } else if Some(group) == in_channels && in_channels == out_channels {
                // Depthwise: channel c in gives channel c out.
                axes.union((x, 1), (out, 1));
            } else {
                let reason = format!("{}: grouped convolution ({group} groups)", label());
                axes.pin(x, 1, reason.clone());
                axes.pin(out, 1, reason);
            }
        }
        ("BatchNormalization", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            axes.union((x, 0), (out, 0));
            axes.union((x, 1), (out, 1));
            for (i, &p) in inputs[1..].iter().enumerate() {
                axes.union((p, 0), (out, 1));
                axes.role(graph, p, 0, if i == 0 { Role::BatchNormScale } else { Role::Other });
            }
            for a in 2..rank(x) {
                axes.union((x, a), (out, a));
            }
        }
        (op, Some(out)) if NORMS.contains(&op) || op == "SkipLayerNormalization" || op == "SkipSimplifiedLayerNormalization" => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            if axis_of(node.attr_int("axis").unwrap_or(-1), r) != Some(r - 1) {
                return unknown(axes);
            }
            for a in 0..r {
                axes.union((x, a), (out, a));
            }
            for &p in &inputs[1..] {
                if rank(p) == 1 {
                    axes.union((p, 0), (out, r - 1));
                } else {
                    unite_broadcast(graph, axes, p, out);
                }
            }
            // The skip variants' sum of input and skip (output 3) is the residual stream too.
            if op.starts_with("Skip")
                && let Some(sum) = node.output(3)
            {
                for a in 0..r {
                    axes.union((x, a), (sum, a));
                }
            }
            axes.reducer(out, r - 1, id);
        }
        ("RotaryEmbedding", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            for a in 0..r {
                axes.union((x, a), (out, a));
            }
            // It pairs channels inside each head: heads move whole. [batch, length, hidden]
            // with the head count an attribute (or from the cache's width), or [batch, heads,
            // length, head_size].
            if r == 4 {
                axes.pin(out, 3, format!("{}: inside a head", label()));
            } else {
                let hidden = dims(graph, x).and_then(|d| d.last().and_then(known));
                let from_cache = node.input(2).and_then(|c| dims(graph, c)).and_then(|d| d.get(1).and_then(known)).zip(hidden).map(|(half, h)| h / (2 * half).max(1));
                match node.attr_int("num_heads").filter(|&n| n > 0).or(from_cache) {
                    Some(heads) => axes.whole_blocks(out, r - 1, heads),
                    None => axes.pin(out, r - 1, format!("{}: head count unknown", label())),
                }
            }
        }
        ("GroupQueryAttention", Some(out)) => {
            // Query [batch, length, heads · d], key and value [batch, length, kv_heads · d]:
            // KV head j serves query heads j·rep .. (j+1)·rep, so a KV head moves with its query
            // heads (units divide kv_num_heads); the caches [batch, kv_heads, total, d] follow.
            let (Some(q), Some(k), Some(v)) = (node.input(0), node.input(1), node.input(2)) else { return unknown(axes) };
            let (3, 3, 3, Some(kv_heads)) = (rank(q), rank(k), rank(v), node.attr_int("kv_num_heads")) else { return unknown(axes) };
            for a in 0..3 {
                axes.union((q, a), (out, a));
            }
            for a in 0..2 {
                axes.union((k, a), (q, a));
                axes.union((v, a), (q, a));
            }
            axes.union((q, 2), (k, 2));
            axes.union((q, 2), (v, 2));
            axes.whole_blocks(out, 2, kv_heads);
            for (present, past) in [(node.output(1), node.input(3)), (node.output(2), node.input(4))] {
                for cache in [present, past].into_iter().flatten() {
                    if rank(cache) == 4 {
                        axes.union((cache, 1), (q, 2));
                        axes.pin(cache, 3, format!("{}: inside a head", label()));
                    }
                }
            }
        }
        (op, Some(out)) if REDUCE.contains(&op) || op == "Softmax" || op == "LogSoftmax" => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            let reduced: Option<Vec<usize>> = if op == "Softmax" || op == "LogSoftmax" {
                axis_of(node.attr_int("axis").unwrap_or(-1), r).map(|a| vec![a])
            } else if let Some(list) = node.attr_ints("axes").map(|a| a.to_vec()).or_else(|| node.input(1).and_then(|v| graph.constant(v)).and_then(|t| t.to_i64().ok())) {
                axes_of(&list, r)
            } else {
                Some((0..r).collect())
            };
            let Some(reduced) = reduced else { return unknown(axes) };
            let keep = node.attr_int("keepdims").unwrap_or(1) != 0 || op == "Softmax" || op == "LogSoftmax";
            let mut o = 0;
            for a in 0..r {
                if reduced.contains(&a) {
                    axes.reducer(x, a, id);
                    if op == "Softmax" || op == "LogSoftmax" {
                        axes.union((x, a), (out, a));
                    }
                    if keep {
                        o += 1;
                    }
                } else {
                    axes.union((x, a), (out, o));
                    o += 1;
                }
            }
        }
        ("Transpose", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            let perm: Vec<usize> = node.attr_ints("perm").map(|p| p.iter().map(|&a| a as usize).collect()).unwrap_or_else(|| (0..r).rev().collect());
            for (o, &a) in perm.iter().enumerate() {
                axes.union((x, a), (out, o));
            }
        }
        ("Gather", Some(out)) => {
            // An embedding lookup: the table's rows, indexed; its columns are the output's last axis.
            let (Some(&table), Some(&ids)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let (rt, ri) = (rank(table), rank(ids));
            let Some(axis) = axis_of(node.attr_int("axis").unwrap_or(0), rt) else { return unknown(axes) };
            for a in 0..rt {
                if a < axis {
                    axes.union((table, a), (out, a));
                } else if a > axis {
                    axes.union((table, a), (out, a + ri - 1));
                }
            }
            for a in 0..ri {
                axes.union((ids, a), (out, axis + a));
            }
        }
        ("Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" | "Expand", Some(out)) => reshape(graph, id, node, &inputs, out, axes),
        ("Slice", Some(out)) => {
            // Sliced axes are pinned (their channels change); the others pass through.
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            let sliced: Option<Vec<usize>> = match node.input(3) {
                Some(v) => graph.constant(v).and_then(|t| t.to_i64().ok()).and_then(|a| axes_of(&a, r)),
                None if node.input(1).is_some() => Some((0..graph.constant(node.input(1).unwrap()).map_or(r, |t| t.dims().first().copied().unwrap_or(0) as usize)).collect()),
                None => node.attr_ints("axes").and_then(|a| axes_of(a, r)),
            };
            let Some(sliced) = sliced else { return unknown(axes) };
            axes.unite_except(x, out, r, &sliced, &format!("{}: sliced", label()));
        }
        ("Concat", Some(out)) => {
            // The other axes are shared by every input; the concatenated one is pinned (offsets
            // into a group are not followed yet).
            let r = rank(out);
            let Some(axis) = axis_of(node.attr_int("axis").unwrap_or(0), r) else { return unknown(axes) };
            if inputs.iter().any(|&v| rank(v) != r) {
                return unknown(axes);
            }
            for &v in &inputs {
                axes.unite_except(v, out, r, &[axis], &format!("{}: concatenated", label()));
            }
        }
        // Pooling keeps batch and channels. A window over the spatial axes ties their order (they
        // are pinned); a global pool reduces them whole.
        ("GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" | "MaxPool" | "AveragePool" | "LpPool", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            axes.union((x, 0), (out, 0));
            axes.union((x, 1), (out, 1));
            for a in 2..r {
                if op.starts_with("Global") {
                    axes.reducer(x, a, id);
                } else {
                    axes.pin(x, a, format!("{}: pooled window", label()));
                    axes.pin(out, a, format!("{}: pooled window", label()));
                }
            }
        }
        // Resizing keeps the axes it does not scale (batch and channels, as models use it).
        ("Resize" | "Upsample", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let (Some(di), Some(dout)) = (dims(graph, x), dims(graph, out)) else { return unknown(axes) };
            if di.len() != dout.len() {
                return unknown(axes);
            }
            // Interpolation mixes neighbours: the order along a resized axis is fixed.
            let resized: Vec<usize> = (0..di.len()).filter(|&a| known(&di[a]).is_none() || known(&di[a]) != known(&dout[a])).collect();
            axes.unite_except(x, out, di.len(), &resized, &format!("{}: resized", label()));
        }
        ("ConvTranspose", Some(out)) => {
            // Weight [C_in, C_out / group, k..]: the input's channels are its rows.
            let (Some(&x), Some(&w)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let group = node.attr_int("group").unwrap_or(1);
            let channels = dims(graph, w).and_then(|d| d.first().and_then(known));
            axes.union((x, 0), (out, 0));
            axes.union((x, 1), (w, 0));
            axes.role(graph, w, 0, Role::Consumer);
            if let Some(b) = node.input(2) {
                axes.union((b, 0), (out, 1));
                axes.role(graph, b, 0, Role::Bias);
            }
            if group == 1 {
                axes.union((w, 1), (out, 1));
                axes.role(graph, w, 1, Role::Producer);
            } else if Some(group) == channels && dims(graph, w).and_then(|d| d.get(1).and_then(known)) == Some(1) {
                // Depthwise: channel c in gives channel c out.
                axes.union((x, 1), (out, 1));
            } else {
                let reason = format!("{}: grouped convolution ({group} groups)", label());
                axes.pin(x, 1, reason.clone());
                axes.pin(out, 1, reason);
            }
        }
        // Padding keeps the axes it does not pad.
        ("Pad", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            let pads = node.input(1).and_then(|v| graph.constant(v)).and_then(|t| t.to_i64().ok()).or_else(|| node.attr_ints("pads").map(|p| p.to_vec()));
            let padded: Option<Vec<usize>> = match (pads, node.input(3).and_then(|v| graph.constant(v)).and_then(|t| t.to_i64().ok())) {
                (Some(p), Some(list)) if p.len() == 2 * list.len() => {
                    axes_of(&list, r).map(|a| a.into_iter().enumerate().filter(|&(i, _)| p[i] != 0 || p[i + list.len()] != 0).map(|(_, a)| a).collect())
                }
                (Some(p), None) if p.len() == 2 * r => Some((0..r).filter(|&a| p[a] != 0 || p[a + r] != 0).collect()),
                _ => None,
            };
            let Some(padded) = padded else { return unknown(axes) };
            axes.unite_except(x, out, r, &padded, &format!("{}: padded", label()));
        }
        ("Split", _) => {
            // Like Concat: the split axis is pinned, the others shared by every part.
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let r = rank(x);
            let Some(axis) = axis_of(node.attr_int("axis").unwrap_or(0), r) else { return unknown(axes) };
            if node.outputs.iter().flatten().any(|&o| rank(o) != r) {
                return unknown(axes);
            }
            for &o in node.outputs.iter().flatten() {
                axes.unite_except(x, o, r, &[axis], &format!("{}: split", label()));
            }
        }
        // A Constant node's output is a constant like an initializer (`lift-constants` makes it
        // one, which the transforms need to rewrite it).
        ("Shape" | "Size" | "Constant", _) => {}
        ("If", _) => {
            // Each branch's outputs are the node's outputs: their axes are the same axes.
            for branch in node.subgraphs() {
                for (i, &o) in graph.region(branch).outputs.iter().enumerate() {
                    let Some(out) = node.output(i) else { continue };
                    // A branch's outputs are not among the node's values: their rank may be unknown.
                    match (dims(graph, o).map(|d| d.len()), rank(out)) {
                        (Some(a), b) if a == b => (0..a).for_each(|k| axes.union((o, k), (out, k))),
                        _ => {
                            let reason = format!("{}: branch output {i} of another or unknown rank", label());
                            pin_all(graph, axes, o, &reason);
                            pin_all(graph, axes, out, &reason);
                        }
                    }
                }
            }
        }
        ("Loop" | "Scan", _) => {
            // What a body carries from one iteration to the next is not followed.
            unknown(axes);
            let reason = format!("{}: loop body interface", label());
            for body in node.subgraphs() {
                let region = graph.region(body);
                for &v in region.inputs.iter().chain(&region.outputs) {
                    pin_all(graph, axes, v, &reason);
                }
            }
        }
        _ => unknown(axes),
    }
}

/// Axis correspondences of a shape change, from the input's and output's dims: equal runs map
/// one to one; one axis split in two or two merged into one unite the channel axis with the
/// outer one (the group then moves in whole inner blocks); anything else pins what it touches.
fn reshape(graph: &Graph, id: NodeId, node: &Node, inputs: &[ValueId], out: ValueId, axes: &mut Axes) {
    let Some(&x) = inputs.first() else { return };
    let reason = format!("{}: reshape across channel boundaries", node.label(id));
    // Known: `apply_rule` checks every value a node touches.
    let (Some(di), Some(dout)) = (dims(graph, x), dims(graph, out)) else { return };
    if node.is("Expand") {
        // Broadcast axes of size 1 grow; the others map one to one.
        if di.len() <= dout.len() {
            let offset = dout.len() - di.len();
            for (a, d) in di.iter().enumerate() {
                if known(d) != Some(1) {
                    axes.union((x, a), (out, a + offset));
                }
            }
        }
        return;
    }
    // Walk both shapes, matching runs whose products agree.
    let size = |d: &Dim| known(d);
    let (mut i, mut j) = (0, 0);
    while i < di.len() && j < dout.len() {
        if di[i] == dout[j] {
            axes.union((x, i), (out, j));
            i += 1;
            j += 1;
            continue;
        }
        // Size-1 axes added or removed.
        if size(&di[i]) == Some(1) {
            i += 1;
            continue;
        }
        if size(&dout[j]) == Some(1) {
            j += 1;
            continue;
        }
        let (Some(a), Some(b)) = (size(&di[i]), size(&dout[j])) else {
            axes.pin(x, i, reason.clone());
            axes.pin(out, j, reason.clone());
            i += 1;
            j += 1;
            continue;
        };
        if a > b && j + 1 < dout.len() && size(&dout[j + 1]).is_some_and(|c| b * c == a) {
            // Split: C -> (outer, inner).
            axes.union((x, i), (out, j));
            axes.pin(out, j + 1, format!("{}: inside a block of {} (whole blocks move)", node.label(id), size(&dout[j + 1]).unwrap()));
            i += 1;
            j += 2;
        } else if b > a && i + 1 < di.len() && size(&di[i + 1]).is_some_and(|c| a * c == b) {
            // Merge: (outer, inner) -> C.
            axes.union((x, i), (out, j));
            axes.pin(x, i + 1, format!("{}: inside a block of {} (whole blocks move)", node.label(id), size(&di[i + 1]).unwrap()));
            i += 2;
            j += 1;
        } else {
            axes.pin(x, i, reason.clone());
            axes.pin(out, j, reason.clone());
            i += 1;
            j += 1;
        }
    }
    for (k, d) in di.iter().enumerate().skip(i) {
        if size(d) != Some(1) {
            axes.pin(x, k, reason.clone());
        }
    }
    for (k, d) in dout.iter().enumerate().skip(j) {
        if size(d) != Some(1) {
            axes.pin(out, k, reason.clone());
        }
    }
}
