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
//! permutation but change under a cut; they are listed so a pruning pass can decide. The
//! nodes of If branches take part (a branch's outputs are the If's outputs); a loop body's
//! interface, and every node touching a value of unknown shape, pin what they touch (no axis is
//! followed through them).

use super::{Analyses, Analysis};
use crate::calib::RowLayout;
use compactor_ir::graph::UseMap;
use compactor_ir::types::Dim;
use compactor_ir::{Graph, NodeId, ValueId};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

mod rules;
use rules::apply_rule;

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
    /// Whether the group moves in whole heads (units of several channels) rather than
    /// channel by channel.
    pub fn moves_in_heads(&self) -> bool {
        self.units < self.width
    }

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
    /// Block counts a set must move in whole blocks of (an op that works inside each of n
    /// heads): its units divide each.
    blocks: Vec<Vec<i64>>,
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
        self.blocks.push(Vec::new());
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
            let blocks = std::mem::take(&mut self.blocks[child]);
            self.blocks[root].extend(blocks);
        }
    }

    /// The set of `(v, axis)` moves only in whole blocks of `n` equal blocks (heads).
    fn whole_blocks(&mut self, v: ValueId, axis: usize, n: i64) {
        let i = self.id(v, axis);
        let r = self.find(i);
        self.blocks[r].push(n);
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

    /// Unites the axes of `a` and `b` (both of `rank` axes) position by position, except the
    /// `fixed` ones, which are pinned in both with `reason` (sliced, padded, resized,
    /// concatenated or split axes: their channels do not pass through one to one).
    fn unite_except(&mut self, a: ValueId, b: ValueId, rank: usize, fixed: &[usize], reason: &str) {
        for axis in 0..rank {
            if fixed.contains(&axis) {
                self.pin(a, axis, reason.to_string());
                self.pin(b, axis, reason.to_string());
            } else {
                self.union((a, axis), (b, axis));
            }
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
    // Every node, those of If branches and loop bodies too (a branch reads the weights of the
    // graph around it by the same values).
    for id in graph.all_nodes() {
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
            g.units = axes.blocks[root].iter().fold(g.units, |u, &n| gcd(u, n));
            g
        })
        .collect()
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
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
