//! Channel coupling groups: the tensor axes that must be permuted (or cut) together for a graph
//! to compute the same function, found on the IR by propagating axis identities through every
//! node, as Torch-Pruning's dependency graph does for PyTorch modules.
//!
//! Every axis of every value is an element of a union-find; each node's rule unites the axes
//! it ties together: an elementwise op its inputs' and output's aligned axes (broadcast axes of
//! size 1 excepted), `MatMul` the contracted axes of its operands, `Gemm`/`Conv` the weight's
//! axes with the activations', `Transpose` by its permutation, `Reshape` axes that map one to
//! one and, where one axis splits into two (`C → heads × head_dim`) or two merge, the channel
//! axis with the outer (heads) one: a group whose members have different sizes moves in units
//! of their greatest common divisor (whole heads; under GQA a KV head with its query group).
//! A group is *movable* when some constant (a weight, a bias, a norm's scale) has an axis in it
//! and nothing pins it; a graph input or output, an op the rules do not know, a grouped
//! convolution or a reshape across channel boundaries pins it, with the reason. Reductions and
//! normalisations over a group (LayerNorm, RMSNorm's ReduceMean, Softmax) commute with a
//! permutation but change under a cut; they are listed so a pruning pass can decide.

use super::{Analyses, Analysis};
use crate::calib::RowLayout;
use compactor_ir::graph::UseMap;
use compactor_ir::types::Dim;
use compactor_ir::{Graph, Node, NodeId, ValueId};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What a constant's axis is to the group's channels.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A weight's output channels (a filter per channel: MatMul/Gemm columns, Conv's axis 0).
    Producer,
    /// A weight's input channels (rows the channel multiplies).
    Consumer,
    /// A bias or other constant added per channel.
    Bias,
    /// A BatchNormalization scale (Network Slimming's |γ|).
    BatchNormScale,
    /// A normalisation's scale or bias, or any other constant.
    Other,
}

/// One coupling group.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChannelGroup {
    /// The largest member axis's size (the channels).
    pub width: i64,
    /// How many independently movable units the group has: the greatest common divisor of its
    /// members' sizes (the heads of an attention block, the KV heads under GQA).
    pub units: i64,
    /// Constants with an axis in the group: they are permuted with it.
    pub params: Vec<(ValueId, usize)>,
    /// What each of `params` is to the channels.
    pub roles: Vec<Role>,
    /// The computed values with an axis in the group (their types change with its width).
    #[serde(skip)]
    pub values: Vec<(ValueId, usize)>,
    /// Nodes that reduce or normalise over the group (exact under permutation, not under a cut).
    pub reducers: Vec<NodeId>,
    /// Why the group cannot move (empty when it can).
    pub pinned: Vec<String>,
}

impl ChannelGroup {
    pub fn is_movable(&self) -> bool {
        self.pinned.is_empty() && !self.params.is_empty() && self.units > 1
    }

    /// The layers that read the group's channels as their inputs (a `Consumer` weight of the
    /// group's full width, in a MatMul, a Gemm or an ungrouped Conv), with the activation each
    /// reads: what activation-aware scores and cut compensation measure.
    pub fn consumers(&self, graph: &Graph, uses: &UseMap) -> Vec<Consumer> {
        let mut out = Vec::new();
        for (&(weight, axis), role) in self.params.iter().zip(&self.roles) {
            let size = dims(graph, weight).and_then(|d| d.get(axis).and_then(known));
            if *role != Role::Consumer || size != Some(self.width) {
                continue;
            }
            for id in uses.consumers(weight) {
                let node = graph.node(id);
                let (Some(input), true) = (node.input(0), node.input(1) == Some(weight)) else { continue };
                let rank = dims(graph, weight).map_or(0, |d| d.len());
                let layout = match node.op_type.as_str() {
                    "MatMul" if rank == 2 && axis == 0 => RowLayout::LastAxis,
                    // Rows on the last axis only when A is not transposed.
                    "Gemm" if node.attr_int("transA").unwrap_or(0) == 0 && axis == usize::from(node.attr_int("transB").unwrap_or(0) != 0) => RowLayout::LastAxis,
                    // Every position of the input feeds some output: all of them are rows.
                    "Conv" if node.attr_int("group").unwrap_or(1) == 1 && axis == 1 && rank >= 3 => RowLayout::Channels { strides: vec![1; rank - 2] },
                    _ => continue,
                };
                out.push(Consumer { node: id, weight, axis, input, layout });
            }
        }
        out
    }
}

/// A layer reading a group's channels (see [`ChannelGroup::consumers`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Consumer {
    pub node: NodeId,
    /// The weight, whose `axis` is in the group.
    pub weight: ValueId,
    pub axis: usize,
    /// The activation it multiplies, with the group's channels on its rows.
    pub input: ValueId,
    pub layout: RowLayout,
}

/// Every group with at least one constant axis, in order of first appearance.
#[derive(Clone, Debug, Default)]
pub struct ChannelGroups {
    pub groups: Vec<ChannelGroup>,
}

impl Analysis for ChannelGroups {
    fn compute(graph: &Graph, _: &mut Analyses) -> Self {
        ChannelGroups { groups: find_groups(graph) }
    }
}

/// Union-find over `(value, axis)` with per-set sizes, reducers and pins.
#[derive(Default)]
struct Axes {
    index: HashMap<(ValueId, usize), usize>,
    keys: Vec<(ValueId, usize)>,
    parent: Vec<usize>,
    reducers: Vec<Vec<NodeId>>,
    pins: Vec<Vec<String>>,
    roles: HashMap<(ValueId, usize), Role>,
}

impl Axes {
    fn id(&mut self, v: ValueId, axis: usize) -> usize {
        if let Some(&i) = self.index.get(&(v, axis)) {
            return i;
        }
        let i = self.parent.len();
        self.index.insert((v, axis), i);
        self.keys.push((v, axis));
        self.parent.push(i);
        self.reducers.push(Vec::new());
        self.pins.push(Vec::new());
        i
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: (ValueId, usize), b: (ValueId, usize)) {
        let (x, y) = (self.id(a.0, a.1), self.id(b.0, b.1));
        let (x, y) = (self.find(x), self.find(y));
        if x != y {
            // The earlier element stays the root: groups come out in order of appearance.
            let (root, child) = if x < y { (x, y) } else { (y, x) };
            self.parent[child] = root;
            let reducers = std::mem::take(&mut self.reducers[child]);
            self.reducers[root].extend(reducers);
            let pins = std::mem::take(&mut self.pins[child]);
            self.pins[root].extend(pins);
        }
    }

    fn pin(&mut self, v: ValueId, axis: usize, reason: String) {
        let i = self.id(v, axis);
        let r = self.find(i);
        if !self.pins[r].contains(&reason) {
            self.pins[r].push(reason);
        }
    }

    /// Records what a constant's axis is (the first rule that says wins).
    fn role(&mut self, graph: &Graph, v: ValueId, axis: usize, role: Role) {
        if graph.constant(v).is_some() {
            self.roles.entry((v, axis)).or_insert(role);
        }
    }

    fn reducer(&mut self, v: ValueId, axis: usize, node: NodeId) {
        let i = self.id(v, axis);
        let r = self.find(i);
        if !self.reducers[r].contains(&node) {
            self.reducers[r].push(node);
        }
    }
}

/// The dims of a value, from its constant or its (inferred) type.
fn dims(graph: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    if let Some(t) = graph.constant(v) {
        return Some(t.dims().iter().map(|&d| Dim::Known(d as i64)).collect());
    }
    graph.value(v).shape().map(|s| s.dims.clone())
}

fn known(d: &Dim) -> Option<i64> {
    match d {
        Dim::Known(n) => Some(*n),
        _ => None,
    }
}

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

fn find_groups(graph: &Graph) -> Vec<ChannelGroup> {
    let mut axes = Axes::default();
    let main = graph.main();
    // The interface is fixed: graph inputs and outputs keep their channel order.
    for (list, what) in [(&main.inputs, "graph input"), (&main.outputs, "graph output")] {
        for &v in list.iter() {
            if let Some(d) = dims(graph, v) {
                for axis in 0..d.len() {
                    axes.pin(v, axis, format!("{what} '{}'", graph.value(v).name));
                }
            }
        }
    }
    for &id in &main.nodes {
        let node = graph.node(id);
        apply_rule(graph, id, node, &mut axes);
    }
    // Collect the sets that hold a constant axis.
    let mut sets: BTreeMap<usize, ChannelGroup> = BTreeMap::new();
    for i in 0..axes.keys.len() {
        let (v, axis) = axes.keys[i];
        let root = axes.find(i);
        let size = dims(graph, v).and_then(|d| d.get(axis).and_then(known));
        let entry = sets.entry(root).or_insert_with(|| ChannelGroup { width: 0, units: 0, params: Vec::new(), roles: Vec::new(), values: Vec::new(), reducers: Vec::new(), pinned: Vec::new() });
        if let Some(s) = size {
            entry.width = entry.width.max(s);
            entry.units = gcd(entry.units, s);
        }
        if graph.constant(v).is_none() {
            entry.values.push((v, axis));
        } else if !entry.params.contains(&(v, axis)) {
            entry.params.push((v, axis));
            entry.roles.push(axes.roles.get(&(v, axis)).copied().unwrap_or(Role::Other));
        }
    }
    sets.into_iter()
        .filter(|(_, g)| !g.params.is_empty() && g.width > 1)
        .map(|(root, mut g)| {
            g.reducers = axes.reducers[root].clone();
            g.pinned = axes.pins[root].clone();
            g
        })
        .collect()
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

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

fn apply_rule(graph: &Graph, id: NodeId, node: &Node, axes: &mut Axes) {
    let inputs: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
    let output = node.output(0);
    let op = node.op_type.as_str();
    let label = || node.label(id);
    let rank = |v: ValueId| dims(graph, v).map(|d| d.len());
    let unknown = |axes: &mut Axes| {
        let reason = format!("{} (no channel rule)", label());
        for &v in inputs.iter().chain(node.outputs.iter().flatten()) {
            pin_all(graph, axes, v, &reason);
        }
    };
    match (op, output) {
        (op, Some(out)) if ELEMENTWISE.contains(&op) => {
            for &v in &inputs {
                unite_broadcast(graph, axes, v, out);
                // A constant vector added per channel: a bias.
                if matches!(op, "Add" | "Sub")
                    && let Some(r) = rank(v)
                    && r >= 1
                {
                    axes.role(graph, v, r - 1, Role::Bias);
                }
            }
        }
        ("MatMul", Some(out)) => {
            let (Some(&a), Some(&b)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let (Some(ra), Some(rb), Some(ro)) = (rank(a), rank(b), rank(out)) else { return unknown(axes) };
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
                if let Some(r) = rank(c) {
                    axes.role(graph, c, r.saturating_sub(1), Role::Bias);
                }
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
            if let Some(r) = rank(x) {
                for a in 2..r {
                    axes.union((x, a), (out, a));
                }
            }
        }
        (op, Some(out)) if NORMS.contains(&op) || op == "SkipLayerNormalization" || op == "SkipSimplifiedLayerNormalization" => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let Some(r) = rank(x) else { return unknown(axes) };
            if axis_of(node.attr_int("axis").unwrap_or(-1), r) != Some(r - 1) {
                return unknown(axes);
            }
            for a in 0..r {
                axes.union((x, a), (out, a));
            }
            for &p in &inputs[1..] {
                if rank(p) == Some(1) {
                    axes.union((p, 0), (out, r - 1));
                } else {
                    unite_broadcast(graph, axes, p, out);
                }
            }
            axes.reducer(out, r - 1, id);
        }
        (op, Some(out)) if REDUCE.contains(&op) || op == "Softmax" || op == "LogSoftmax" => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let Some(r) = rank(x) else { return unknown(axes) };
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
            let Some(r) = rank(x) else { return unknown(axes) };
            let perm: Vec<usize> = node.attr_ints("perm").map(|p| p.iter().map(|&a| a as usize).collect()).unwrap_or_else(|| (0..r).rev().collect());
            for (o, &a) in perm.iter().enumerate() {
                axes.union((x, a), (out, o));
            }
        }
        ("Gather", Some(out)) => {
            // An embedding lookup: the table's rows, indexed; its columns are the output's last axis.
            let (Some(&table), Some(&ids)) = (inputs.first(), inputs.get(1)) else { return unknown(axes) };
            let (Some(rt), Some(ri)) = (rank(table), rank(ids)) else { return unknown(axes) };
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
            let Some(r) = rank(x) else { return unknown(axes) };
            let sliced: Option<Vec<usize>> = match node.input(3) {
                Some(v) => graph.constant(v).and_then(|t| t.to_i64().ok()).and_then(|a| axes_of(&a, r)),
                None if node.input(1).is_some() => Some((0..graph.constant(node.input(1).unwrap()).map_or(r, |t| t.dims().first().copied().unwrap_or(0) as usize)).collect()),
                None => node.attr_ints("axes").and_then(|a| axes_of(a, r)),
            };
            let Some(sliced) = sliced else { return unknown(axes) };
            for a in 0..r {
                if sliced.contains(&a) {
                    let reason = format!("{}: sliced", label());
                    axes.pin(x, a, reason.clone());
                    axes.pin(out, a, reason);
                } else {
                    axes.union((x, a), (out, a));
                }
            }
        }
        ("Concat", Some(out)) => {
            // The other axes are shared by every input; the concatenated one is pinned (offsets
            // into a group are not followed yet).
            let Some(r) = rank(out) else { return unknown(axes) };
            let Some(axis) = axis_of(node.attr_int("axis").unwrap_or(0), r) else { return unknown(axes) };
            for &v in &inputs {
                if rank(v) != Some(r) {
                    return unknown(axes);
                }
                for a in 0..r {
                    if a == axis {
                        axes.pin(v, a, format!("{}: concatenated", label()));
                    } else {
                        axes.union((v, a), (out, a));
                    }
                }
            }
            axes.pin(out, axis, format!("{}: concatenated", label()));
        }
        // Pooling keeps batch and channels. A window over the spatial axes ties their order (they
        // are pinned); a global pool reduces them whole.
        ("GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" | "MaxPool" | "AveragePool" | "LpPool", Some(out)) => {
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let Some(r) = rank(x) else { return unknown(axes) };
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
            for a in 0..di.len() {
                if known(&di[a]).is_some() && known(&di[a]) == known(&dout[a]) {
                    axes.union((x, a), (out, a));
                } else {
                    // Interpolation mixes neighbours: the order along a resized axis is fixed.
                    axes.pin(x, a, format!("{}: resized", label()));
                    axes.pin(out, a, format!("{}: resized", label()));
                }
            }
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
            let Some(r) = rank(x) else { return unknown(axes) };
            let pads = node.input(1).and_then(|v| graph.constant(v)).and_then(|t| t.to_i64().ok()).or_else(|| node.attr_ints("pads").map(|p| p.to_vec()));
            let padded: Option<Vec<usize>> = match (pads, node.input(3).and_then(|v| graph.constant(v)).and_then(|t| t.to_i64().ok())) {
                (Some(p), Some(list)) if p.len() == 2 * list.len() => {
                    axes_of(&list, r).map(|a| a.into_iter().enumerate().filter(|&(i, _)| p[i] != 0 || p[i + list.len()] != 0).map(|(_, a)| a).collect())
                }
                (Some(p), None) if p.len() == 2 * r => Some((0..r).filter(|&a| p[a] != 0 || p[a + r] != 0).collect()),
                _ => None,
            };
            let Some(padded) = padded else { return unknown(axes) };
            for a in 0..r {
                if padded.contains(&a) {
                    let reason = format!("{}: padded", label());
                    axes.pin(x, a, reason.clone());
                    axes.pin(out, a, reason);
                } else {
                    axes.union((x, a), (out, a));
                }
            }
        }
        ("Split", _) => {
            // Like Concat: the split axis is pinned, the others shared by every part.
            let Some(&x) = inputs.first() else { return unknown(axes) };
            let Some(r) = rank(x) else { return unknown(axes) };
            let Some(axis) = axis_of(node.attr_int("axis").unwrap_or(0), r) else { return unknown(axes) };
            axes.pin(x, axis, format!("{}: split", label()));
            for &o in node.outputs.iter().flatten() {
                if rank(o) != Some(r) {
                    return unknown(axes);
                }
                for a in 0..r {
                    if a == axis {
                        axes.pin(o, a, format!("{}: split", label()));
                    } else {
                        axes.union((x, a), (o, a));
                    }
                }
            }
        }
        // A Constant node's output is a constant like an initializer (`lift-constants` makes it
        // one, which the transforms need to rewrite it).
        ("Shape" | "Size" | "Constant", _) => {}
        _ => unknown(axes),
    }
}

/// Axis correspondences of a shape change, from the input's and output's dims: equal runs map
/// one to one; one axis split in two or two merged into one unite the channel axis with the
/// outer one (the group then moves in whole inner blocks); anything else pins what it touches.
fn reshape(graph: &Graph, id: NodeId, node: &Node, inputs: &[ValueId], out: ValueId, axes: &mut Axes) {
    let Some(&x) = inputs.first() else { return };
    let reason = format!("{}: reshape across channel boundaries", node.label(id));
    let (Some(di), Some(dout)) = (dims(graph, x), dims(graph, out)) else {
        let reason = format!("{}: shape unknown", node.label(id));
        pin_all(graph, axes, x, &reason);
        pin_all(graph, axes, out, &reason);
        return;
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(text: &str) -> (compactor_ir::Model, Vec<ChannelGroup>) {
        let mut model = compactor_ir::text::parse(text).unwrap();
        compactor_ir::infer_graph_shapes(&mut model.graph, 17, &compactor_ir::InferOptions::default());
        let groups = find_groups(&model.graph);
        (model, groups)
    }

    fn names(model: &compactor_ir::Model, g: &ChannelGroup) -> Vec<String> {
        g.params.iter().map(|&(v, a)| format!("{}[{a}]", model.graph.value(v).name)).collect()
    }

    /// Two linear layers around a residual add: the hidden width couples fc1's columns, its bias
    /// and fc2's rows; the residual couples fc2's columns with the input and output (pinned).
    #[test]
    fn an_mlp_with_a_residual_has_one_movable_hidden_group() {
        let (model, groups) = groups(
            "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[4,8]\n  init %w1 = tensor<f32[8,16]> fill=seeded(1)\n  init %b1 = tensor<f32[16]> fill=seeded(2)\n  init %w2 = tensor<f32[16,8]> fill=seeded(3)\n  %h = MatMul(%x, %w1)\n  %hb = Add(%h, %b1)\n  %a = Relu(%hb)\n  %o = MatMul(%a, %w2)\n  %y = Add(%o, %x)\n  output %y\n}\n",
        );
        let movable: Vec<&ChannelGroup> = groups.iter().filter(|g| g.is_movable()).collect();
        assert_eq!(movable.len(), 1);
        assert_eq!(names(&model, movable[0]), ["w1[1]", "b1[0]", "w2[0]"]);
        assert_eq!((movable[0].width, movable[0].units), (16, 16));
        let residual = groups.iter().find(|g| names(&model, g).contains(&"w2[1]".to_string())).unwrap();
        assert!(residual.pinned.iter().any(|p| p.contains("graph input 'x'")), "{:?}", residual.pinned);
    }

    /// Padding (not of the channels), a transposed convolution, a resize and global pooling pass
    /// channels through: the first conv's filters move with the transposed conv's rows, and its
    /// columns with the last conv's input channels.
    #[test]
    fn pad_conv_transpose_resize_and_pooling_pass_channels_through() {
        let (model, groups) = groups(
            "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[1,3,8,8]\n  init %w1 = tensor<f32[8,3,3,3]> fill=seeded(1)\n  init %pads = tensor<i64[8]>[0, 0, 1, 1, 0, 0, 1, 1]\n  init %wt = tensor<f32[8,4,2,2]> fill=seeded(2)\n  init %bt = tensor<f32[4]> fill=seeded(3)\n  init %scales = tensor<f32[4]>[1, 1, 2, 2]\n  init %w3 = tensor<f32[2,4,1,1]> fill=seeded(4)\n  %a = Conv(%x, %w1) {pads=[1, 1, 1, 1]}\n  %r = Relu(%a)\n  %p = Pad(%r, %pads)\n  %t = ConvTranspose(%p, %wt, %bt) {strides=[2, 2]}\n  %u = Resize(%t, _, %scales)\n  %g = GlobalAveragePool(%u)\n  %y = Conv(%g, %w3)\n  output %y\n}\n",
        );
        let movable: Vec<Vec<String>> = groups.iter().filter(|g| g.is_movable()).map(|g| names(&model, g)).collect();
        assert_eq!(movable, [vec!["w1[0]", "wt[0]"], vec!["bt[0]", "wt[1]", "w3[1]"]], "{groups:#?}");
    }

    /// A depthwise convolution passes its channels through (one group from the first conv's
    /// output to the last conv's input); a grouped one pins them.
    #[test]
    fn depthwise_passes_channels_through_and_grouped_pins_them() {
        let text = |group: i64, dw_in: i64| {
            format!(
                "model ir_version=8 opset=[ai.onnx=17]\ngraph g {{\n  input %x: f32[1,3,8,8]\n  init %w1 = tensor<f32[8,3,1,1]> fill=seeded(1)\n  init %wd = tensor<f32[8,{dw_in},3,3]> fill=seeded(2)\n  init %w2 = tensor<f32[4,8,1,1]> fill=seeded(3)\n  %a = Conv(%x, %w1)\n  %b = Conv(%a, %wd) {{group={group}, pads=[1, 1, 1, 1]}}\n  %c = Relu(%b)\n  %y = Conv(%c, %w2)\n  output %y\n}}\n"
            )
        };
        let (model, groups) = groups(&text(8, 1));
        let movable: Vec<&ChannelGroup> = groups.iter().filter(|g| g.is_movable()).collect();
        assert_eq!(movable.len(), 1);
        assert_eq!(names(&model, movable[0]), ["w1[0]", "wd[0]", "w2[1]"]);
        let (_, groups) = self::groups(&text(2, 4));
        assert!(groups.iter().all(|g| !g.is_movable() || g.params.len() == 1));
        assert!(groups.iter().any(|g| g.pinned.iter().any(|p| p.contains("grouped convolution (2 groups)"))));
    }

    /// Attention heads: the projections' output channels split into heads × head_dim and merge
    /// back before the output projection; the group moves in whole heads.
    #[test]
    fn attention_projections_move_in_whole_heads() {
        let (model, groups) = groups(
            "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,5,16]\n  init %wq = tensor<f32[16,16]> fill=seeded(1)\n  init %wk = tensor<f32[16,16]> fill=seeded(2)\n  init %wv = tensor<f32[16,16]> fill=seeded(3)\n  init %wo = tensor<f32[16,16]> fill=seeded(4)\n  init %split = tensor<i64[4]>[2, 5, 4, 4]\n  init %merge = tensor<i64[3]>[2, 5, 16]\n  %q = MatMul(%x, %wq)\n  %k = MatMul(%x, %wk)\n  %v = MatMul(%x, %wv)\n  %q4 = Reshape(%q, %split)\n  %k4 = Reshape(%k, %split)\n  %v4 = Reshape(%v, %split)\n  %qh = Transpose(%q4) {perm=[0, 2, 1, 3]}\n  %kh = Transpose(%k4) {perm=[0, 2, 3, 1]}\n  %vh = Transpose(%v4) {perm=[0, 2, 1, 3]}\n  %s = MatMul(%qh, %kh)\n  %p = Softmax(%s) {axis=-1}\n  %c = MatMul(%p, %vh)\n  %ct = Transpose(%c) {perm=[0, 2, 1, 3]}\n  %cm = Reshape(%ct, %merge)\n  %y = MatMul(%cm, %wo)\n  output %y\n}\n",
        );
        let heads = groups.iter().find(|g| g.is_movable()).expect("a movable group");
        assert_eq!(names(&model, heads), ["wq[1]", "wk[1]", "wv[1]", "wo[0]"]);
        assert_eq!((heads.width, heads.units), (16, 4), "16 channels in 4 heads");
    }
}
