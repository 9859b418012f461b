//! Token reduction as graph rewrites: the pieces every token-pruning method shares.
//!
//! From block `layer` on a transformer sees fewer tokens. [`TokenCut`] finds where the
//! sequence gets shorter: the hidden state entering that block, every node computed from it
//! (the *pruned region*), and the values computed before it that the region reads — the
//! attention mask, rotary tables, position-derived tensors. Each of those is gathered along its
//! sequence axes (found by shape inference: the axes whose size is the hidden state's sequence
//! symbol) with the same kept indices, so masks, positions and rotary angles stay those of the
//! kept tokens. [`select_kept`] builds the selection: per batch row, the best-scored share of
//! the row's real tokens plus its protected ones, padded to one count for the batch with the
//! row's own padding positions (which its gathered mask keeps masked; a row without enough
//! padding keeps its next best tokens instead), in original order.

pub(crate) mod cache;
pub(crate) mod emit;
pub(crate) mod fused;
pub(crate) mod tome;

use crate::analysis::TransformerBlock;
use compactor_ir::{AttrValue, DataType, Dim, Graph, NodeId, PValue, Tensor, ValueDef, ValueId};
use emit::Emitter;
use std::collections::{HashMap, HashSet, VecDeque};

/// Scores standing in for "always keep" and "never keep" (finite, so arithmetic stays exact).
const ALWAYS: f32 = 3.0e38;
const NEVER: f32 = -3.0e38;

/// A value computed before the pruned region and read inside it.
#[derive(Clone, Debug)]
pub struct Crossing {
    pub value: ValueId,
    /// The axes whose size is the sequence length (gathered); empty: read as it is.
    pub token_axes: Vec<usize>,
    /// The (node, input index) uses inside the region.
    pub readers: Vec<(NodeId, usize)>,
}

/// A gathered crossing, as reports name it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GatheredValue {
    pub name: String,
    pub axes: Vec<usize>,
}

/// Where the sequence gets shorter; see the module documentation.
#[derive(Clone, Debug)]
pub struct TokenCut {
    /// The hidden state entering the first block that sees fewer tokens, `[batch, seq, C]`.
    pub hidden: ValueId,
    /// The sequence symbol of the hidden state's axis 1.
    pub seq: Dim,
    /// Nodes computed from the hidden state, and the values they produce (with it).
    pub region: HashSet<NodeId>,
    pub produced: HashSet<ValueId>,
    /// The first region node in graph order (new nodes computing the selection go before it).
    pub first: NodeId,
    pub crossings: Vec<Crossing>,
    /// GroupQueryAttention nodes of the region: their `seqlens_k` and `total_sequence_length`
    /// inputs (computed before the cut from the unpruned length) are recomputed for the kept
    /// tokens rather than gathered.
    pub fused_attention: Vec<NodeId>,
    /// With residuals added inside a fused norm: the norm's other summed input, which is
    /// reduced as the hidden state is (gathered alike, or pooled alike).
    pub stream_partner: Option<ValueId>,
}

/// onnxruntime's grouped-query attention, whose inputs 5 and 6 are lengths.
pub(crate) fn is_group_query_attention(node: &compactor_ir::Node) -> bool {
    node.op_type == "GroupQueryAttention" && node.domain() == "com.microsoft"
}

pub(crate) fn is_constant(graph: &Graph, v: ValueId) -> bool {
    match graph.value(v).def {
        ValueDef::Initializer => true,
        ValueDef::Node { node, .. } => graph.node(node).is("Constant"),
        _ => false,
    }
}

fn dims(graph: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    graph.value(v).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims.clone())
}

/// `ty` with the size `from` renamed `to` (a fresh symbol: a reduced length).
pub(crate) fn renamed(ty: &compactor_ir::ValueType, from: &Dim, to: &str) -> compactor_ir::ValueType {
    let shape = ty.shape().map(|s| compactor_ir::Shape::new(s.dims.iter().map(|d| if d == from { Dim::Sym(to.to_string()) } else { d.clone() }).collect()));
    compactor_ir::ValueType::tensor(ty.elem().unwrap_or(DataType::Float), shape)
}

/// An output `name` (`[batch, length]` int64) holding the original positions of the tokens
/// that remain.
pub(crate) fn positions_output(e: &mut Emitter<'_>, label: &str, name: &str, positions: PValue, batch: Option<Dim>, length: Dim) {
    let ty = compactor_ir::ValueType::tensor(DataType::Int64, Some(compactor_ir::Shape::new(vec![batch.unwrap_or(Dim::Unknown), length])));
    let out = e.patch.new_value(Graph::MAIN, name, Some(ty));
    e.patch.node("Identity", compactor_ir::Anchor::End(Graph::MAIN)).name(format!("{label}/{name}")).input(positions).output(out).add();
    e.patch.add_output(Graph::MAIN, out);
}

pub(crate) fn token_axes(graph: &Graph, v: ValueId, seq: &Dim) -> Vec<usize> {
    dims(graph, v).unwrap_or_default().iter().enumerate().filter(|(_, d)| *d == seq).map(|(i, _)| i).collect()
}

/// The hidden state entering `block`: the input of its first residual Add that the block's
/// query projection reads (post-norm) or normalizes (pre-norm).
pub fn block_input(graph: &Graph, layers: &crate::analysis::LinearLayers, block: &TransformerBlock) -> Option<ValueId> {
    match block.residual_adds.first() {
        Some(&add) => stream_read_by(graph, add, layers[block.attention.q].input),
        // onnxruntime's fused form: the block's first norm adds the residual itself
        // (Skip(Simplified)LayerNormalization of the stream so far and the previous sub-layer's
        // output). Its first input stands for the hidden state; the second is read in the
        // region too, so it is gathered alike.
        None => fused_norm_inputs(graph, *block.norms.first()?).map(|(first, _)| first),
    }
}

/// With fused residuals, the second summed input of `block`'s first norm (see [`block_input`]).
fn block_input_partner(graph: &Graph, block: &TransformerBlock) -> Option<ValueId> {
    if !has_fused_residuals(block) {
        return None;
    }
    fused_norm_inputs(graph, *block.norms.first()?).map(|(_, second)| second)
}

/// The two summed inputs of a norm that adds the residual stream itself, if `norm` is one.
fn fused_norm_inputs(graph: &Graph, norm: NodeId) -> Option<(ValueId, ValueId)> {
    let n = graph.node(norm);
    if !matches!(n.op_type.as_str(), "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization") {
        return None;
    }
    Some((n.input(0)?, n.input(1)?))
}

/// Whether `block` adds its residuals in fused norms (onnxruntime's fused form) rather than in
/// Adds.
pub fn has_fused_residuals(block: &TransformerBlock) -> bool {
    block.residual_adds.is_empty()
}

/// The hidden state between `block`'s attention and its FFN (where ToMe merges): the input of
/// its second residual Add that the FFN's first projection reads or normalizes.
pub fn block_middle(graph: &Graph, layers: &crate::analysis::LinearLayers, block: &TransformerBlock) -> Option<ValueId> {
    let ffn = block.ffn.as_ref()?;
    stream_read_by(graph, *block.residual_adds.get(1)?, layers[ffn.gate.unwrap_or(ffn.up)].input)
}

/// The hidden state leaving `block`: its last residual Add's output, or the norm after it
/// (post-norm); with fused residuals, the output of the norm that adds it.
pub fn block_output(graph: &Graph, layers: &crate::analysis::LinearLayers, block: &TransformerBlock) -> Option<ValueId> {
    let Some(&add) = block.residual_adds.last() else {
        // Fused residuals: the norm that adds the block's last sub-layer output, normalized.
        let last = block.ffn.as_ref().map_or(block.attention.o, |f| f.down);
        let uses = graph.uses();
        let out = layers[last].output;
        let norm = uses.consumers(out).into_iter().find(|&n| fused_norm_inputs(graph, n).is_some_and(|(a, b)| a == out || b == out))?;
        return graph.node(norm).output(0);
    };
    let add = graph.node(add).output(0)?;
    let after = block.norms.iter().find(|&&n| graph.node(n).input(0) == Some(add));
    Some(after.and_then(|&n| graph.node(n).output(0)).unwrap_or(add))
}

/// The input of the residual `add` that `reader` is computed from within a few ops (itself, or
/// through a norm).
fn stream_read_by(graph: &Graph, add: NodeId, reader: ValueId) -> Option<ValueId> {
    let add = graph.node(add);
    let mut behind = HashSet::from([reader]);
    let mut frontier = vec![reader];
    for _ in 0..8 {
        let mut next = Vec::new();
        for v in frontier {
            if let Some((n, _)) = graph.producer(v) {
                for i in graph.node(n).inputs.iter().flatten() {
                    if !is_constant(graph, *i) && behind.insert(*i) {
                        next.push(*i);
                    }
                }
            }
        }
        frontier = next;
    }
    add.inputs.iter().flatten().copied().find(|v| behind.contains(v))
}

/// The nodes computed from `value` and the values they produce (with `value`).
pub fn downstream(graph: &Graph, uses: &compactor_ir::UseMap, value: ValueId) -> (HashSet<NodeId>, HashSet<ValueId>) {
    let mut nodes = HashSet::new();
    let mut values = HashSet::from([value]);
    let mut queue = VecDeque::from([value]);
    while let Some(v) = queue.pop_front() {
        for n in uses.consumers(v) {
            if nodes.insert(n) {
                for o in graph.node(n).outputs.iter().flatten() {
                    if values.insert(*o) {
                        queue.push_back(*o);
                    }
                }
            }
        }
    }
    (nodes, values)
}

impl TokenCut {
    /// The crossings read along the reduced axes (gathered).
    pub fn reduced_crossings(&self) -> impl Iterator<Item = &Crossing> {
        self.crossings.iter().filter(|c| !c.token_axes.is_empty())
    }

    /// The reduced crossings as reports name them.
    pub fn gathered(&self, graph: &Graph) -> Vec<GatheredValue> {
        self.reduced_crossings().map(|c| GatheredValue { name: graph.value(c.value).name.clone(), axes: c.token_axes.clone() }).collect()
    }

    /// The batch size of the hidden state at the cut.
    pub fn batch(&self, graph: &Graph) -> Option<Dim> {
        dims(graph, self.hidden).and_then(|d| d.first().cloned())
    }

    /// The cut before `block` (an index into `blocks`).
    pub fn find(graph: &Graph, layers: &crate::analysis::LinearLayers, blocks: &[TransformerBlock], block: usize) -> Result<TokenCut, String> {
        Self::find_along(graph, layers, blocks, block, None)
    }

    /// The cut before `block` whose crossings are reduced along the axes of size `along` (the
    /// keys' length, in a decode graph) rather than the hidden state's sequence length.
    pub fn find_along(graph: &Graph, layers: &crate::analysis::LinearLayers, blocks: &[TransformerBlock], block: usize, along: Option<&Dim>) -> Result<TokenCut, String> {
        let b = blocks.get(block).ok_or_else(|| format!("the model has {} transformer blocks; there is no block {block}", blocks.len()))?;
        let hidden = block_input(graph, layers, b).ok_or_else(|| "its input (the residual stream read by its first residual Add) was not found".to_string())?;
        let hidden_dims = dims(graph, hidden).ok_or_else(|| format!("the shape of its input '{}' is unknown", graph.value(hidden).name))?;
        let seq = match hidden_dims.as_slice() {
            [_, d @ Dim::Sym(_), _] => d.clone(),
            [_, Dim::Known(n), _] if *n > 1 => Dim::Known(*n),
            d => {
                return Err(format!(
                    "its input '{}' has shape [{}]; token pruning needs [batch, sequence, hidden]",
                    graph.value(hidden).name,
                    d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
        };
        let uses = graph.uses();
        let (region, produced) = downstream(graph, &uses, hidden);
        let order = graph.all_nodes();
        let first = *order.iter().find(|n| region.contains(n)).ok_or("the hidden state is read by no node")?;
        if region.iter().any(|&n| graph.node(n).region != Graph::MAIN) {
            return Err("the pruned region reaches into a subgraph (If/Loop/Scan); not supported".into());
        }
        let mut crossing: HashMap<ValueId, Vec<(NodeId, usize)>> = HashMap::new();
        let mut crossing_order = Vec::new();
        let mut fused_attention = Vec::new();
        for &n in order.iter().filter(|n| region.contains(n)) {
            let fused = is_group_query_attention(graph.node(n));
            if fused {
                fused_attention.push(n);
            }
            for (i, v) in graph.node(n).inputs.iter().enumerate() {
                let Some(v) = *v else { continue };
                if produced.contains(&v) || is_constant(graph, v) || (fused && (i == 5 || i == 6)) {
                    continue;
                }
                if !crossing.contains_key(&v) {
                    crossing_order.push(v);
                }
                crossing.entry(v).or_default().push((n, i));
            }
        }
        let mut crossings = Vec::new();
        let along = along.unwrap_or(&seq);
        for v in crossing_order {
            let axes = token_axes(graph, v, along);
            if axes.is_empty() && carries_length(graph, v, along) {
                return Err(format!(
                    "value '{}' (computed before block {block} and read after it) is computed from the sequence length; the pruned blocks would read the unpruned length",
                    graph.value(v).name
                ));
            }
            crossings.push(Crossing { value: v, token_axes: axes, readers: crossing.remove(&v).unwrap_or_default() });
        }
        Ok(TokenCut { hidden, seq, region, produced, first, crossings, fused_attention, stream_partner: block_input_partner(graph, b) })
    }
}

/// Whether `v`, a value without a sequence axis, is computed (through small integer tensors)
/// from the shape of a tensor that has one: a length that pruning would make stale.
pub(crate) fn carries_length(graph: &Graph, v: ValueId, seq: &Dim) -> bool {
    let small_int = |v: ValueId| {
        let ty = graph.value(v).ty.as_ref();
        let int = ty.and_then(|t| t.elem()).is_some_and(|e| matches!(e, DataType::Int64 | DataType::Int32));
        let rank = ty.and_then(|t| t.shape()).map(|s| s.rank());
        int && rank.is_some_and(|r| r <= 1)
    };
    if !small_int(v) {
        return false;
    }
    let mut work = vec![v];
    let mut seen = HashSet::new();
    while let Some(v) = work.pop() {
        if !seen.insert(v) {
            continue;
        }
        let Some((n, _)) = graph.producer(v) else { continue };
        let node = graph.node(n);
        if node.is("Shape") || node.is("Size") {
            if node.input(0).is_some_and(|x| !token_axes(graph, x, seq).is_empty()) {
                return true;
            }
            continue;
        }
        work.extend(node.inputs.iter().flatten().copied().filter(|&i| !is_constant(graph, i) && small_int(i)));
    }
    false
}

/// How tokens are scored from the attention probabilities `[B, H, Sq, Sk]` of the block
/// before the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// Attention received: the mean over heads and real query rows (encoders).
    Received,
    /// FastV: the last query row's attention, averaged over heads (decoders).
    LastQuery,
}

/// How many of a row's span tokens stay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeepCount {
    /// All but this share (rounded down) of the span.
    Ratio(f64),
    /// ZipVL: the fewest best-scored tokens whose scores sum to this share of the span's total.
    Mass(f64),
}

/// The token selection's inputs.
pub struct Selection {
    /// Attention probabilities `[B, H, Sq, S]` of the block before the cut.
    pub probs: PValue,
    pub hidden: ValueId,
    /// The `[B, S]` attention mask input (nonzero: a real token); none: every token is real.
    pub mask: Option<ValueId>,
    pub scoring: Scoring,
    /// How many of each row's span (its real tokens but the protected ones) stay.
    pub count: KeepCount,
    /// The first and last real tokens of a row always kept.
    pub protect_first: usize,
    pub protect_last: usize,
}

/// Each row's real tokens, `[B, S]` as bool and as f32 (every token when there is no mask).
pub(crate) fn real_tokens(e: &mut Emitter<'_>, hidden: PValue, mask: Option<ValueId>) -> (PValue, PValue) {
    match mask {
        Some(m) => {
            let b = e.cast(m.into(), DataType::Bool);
            (b, e.cast(b, DataType::Float))
        }
        None => {
            let bs = e.dims(hidden, 0, 2);
            let ones = e.op("ConstantOfShape", &[bs], &[("value", AttrValue::Tensor(Tensor::from_f32(&[1], &[1.0]).expect("one")))]);
            (e.cast(ones, DataType::Bool), ones)
        }
    }
}

/// The first `first` and last `last` real tokens of each row (`[B, S]` bool), each row's real
/// token count (`[B, 1]` f32) and the axis-1 constant the counting used.
pub(crate) fn protected_ends(e: &mut Emitter<'_>, valid_b: PValue, valid_f: PValue, first: usize, last: usize) -> (PValue, PValue, PValue) {
    let len = e.reduce("ReduceSum", valid_f, &[1], true);
    let axis1 = e.i64_scalar(1);
    let rank_real = e.op("CumSum", &[valid_f, axis1], &[]);
    let first = e.f32_scalar(first as f32);
    let last = e.f32_scalar(last as f32);
    let head = e.op("LessOrEqual", &[rank_real, first], &[]);
    let tail_start = e.op("Sub", &[len, last], &[]);
    let tail = e.op("Greater", &[rank_real, tail_start], &[]);
    let ends = e.op("Or", &[head, tail], &[]);
    (e.op("And", &[valid_b, ends], &[]), len, axis1)
}

/// Emits the kept token positions, `[B, k]` int64 in increasing order; see the module
/// documentation for how rows of different lengths share `k`.
pub(crate) fn select_kept(e: &mut Emitter<'_>, s: &Selection) -> PValue {
    let hidden: PValue = s.hidden.into();
    let (valid_b, valid_f) = real_tokens(e, hidden, s.mask);
    let probs = s.probs;
    let score = match s.scoring {
        Scoring::Received => {
            // Σ_i w_i · mean_h P[b, h, i, j] over real query rows i.
            let per_query = e.reduce("ReduceMean", probs, &[1], false);
            let weights = e.unsqueeze(valid_f, &[1]);
            let received = e.op("MatMul", &[weights, per_query], &[]);
            e.squeeze(received, &[1])
        }
        Scoring::LastQuery => {
            let last = e.slice(probs, &[-1], &[i64::MAX], &[2]);
            e.reduce("ReduceMean", last, &[1, 2], false)
        }
    };
    let (protected, len, axis1) = protected_ends(e, valid_b, valid_f, s.protect_first, s.protect_last);
    let reserved = e.f32_scalar((s.protect_first + s.protect_last) as f32);
    let span = e.op("Sub", &[len, reserved], &[]);
    let zero = e.f32_scalar(0.0);
    let span = e.op("Max", &[span, zero], &[]);
    let seq_len = e.dims(hidden, 1, 2);
    let keep = match s.count {
        KeepCount::Ratio(ratio) => {
            let ratio = e.f32_scalar(ratio as f32);
            let removed = e.op("Mul", &[span, ratio], &[]);
            let removed = e.op("Floor", &[removed], &[]);
            e.op("Sub", &[len, removed], &[])
        }
        KeepCount::Mass(tau) => {
            // p = 1 + #{j : Σ_{i≤j} sorted_i < τ·Σ}, at most the span.
            let not_protected = e.op("Not", &[protected], &[]);
            let in_span = e.op("And", &[valid_b, not_protected], &[]);
            let span_score = e.op("Where", &[in_span, score, zero], &[]);
            let (sorted, _) = e.top_k(span_score, seq_len, 1);
            let cumulative = e.op("CumSum", &[sorted, axis1], &[]);
            let total = e.reduce("ReduceSum", span_score, &[1], true);
            let tau = e.f32_scalar(tau as f32);
            let target = e.op("Mul", &[total, tau], &[]);
            let short = e.op("Less", &[cumulative, target], &[]);
            let short = e.cast(short, DataType::Float);
            let below = e.reduce("ReduceSum", short, &[1], true);
            let one = e.f32_scalar(1.0);
            let p = e.op("Add", &[below, one], &[]);
            let p = e.op("Min", &[p, span], &[]);
            let fixed = e.op("Sub", &[len, span], &[]);
            e.op("Add", &[fixed, p], &[])
        }
    };
    let (always, never) = (e.f32_scalar(ALWAYS), e.f32_scalar(NEVER));
    let real_score = e.op("Where", &[valid_b, score, never], &[]);
    let score = e.op("Where", &[protected, always, real_score], &[]);
    // Each token's rank in its row (0: best), from a full sort.
    let (_, order) = e.top_k(score, seq_len, 1);
    let limit = e.squeeze(seq_len, &[0]);
    let (start, step) = (e.i64_scalar(0), e.i64_scalar(1));
    let positions = e.op("Range", &[start, limit, step], &[]);
    let positions = e.cast(positions, DataType::Float);
    let positions = e.unsqueeze(positions, &[0]);
    let score_shape = e.op("Shape", &[score], &[]);
    let positions = e.op("Expand", &[positions, score_shape], &[]);
    let rank = e.op("ScatterElements", &[positions, order, positions], &[("axis", AttrValue::Int(1))]);
    // One count k for the batch: a row with fewer fills up with its first padding positions,
    // and where it has too little padding (counts need not grow with length) keeps its next
    // best tokens too.
    let k = e.reduce("ReduceMax", keep, &[0, 1], false);
    let seq_f = e.cast(seq_len, DataType::Float);
    let padding_count = e.op("Sub", &[seq_f, len], &[]);
    let least = e.op("Sub", &[k, padding_count], &[]);
    let keep = e.op("Max", &[keep, least], &[]);
    let selected = e.op("Less", &[rank, keep], &[]);
    let spare = e.op("Sub", &[k, keep], &[]);
    let one = e.f32_scalar(1.0);
    let padding_f = e.op("Sub", &[one, valid_f], &[]);
    let rank_padding = e.op("CumSum", &[padding_f, axis1], &[]);
    let within = e.op("LessOrEqual", &[rank_padding, spare], &[]);
    let padding_b = e.op("Not", &[valid_b], &[]);
    let fill = e.op("And", &[padding_b, within], &[]);
    let chosen = e.op("Or", &[selected, fill], &[]);
    // The chosen positions in increasing order: the largest of -position.
    let negated = e.op("Neg", &[positions], &[]);
    let key = e.op("Where", &[chosen, negated, never], &[]);
    let k = e.cast(k, DataType::Int64);
    let k = e.unsqueeze(k, &[0]);
    let (_, kept) = e.top_k(key, k, 1);
    kept
}

/// `v`, a value computed before the cut, gathered along `axes` at the kept positions `[B, k]`;
/// a batch-1 value read by a batch of `batch` rows is broadcast first.
pub(crate) fn gather_value(e: &mut Emitter<'_>, graph: &Graph, v: ValueId, batch: Option<&Dim>, axes: &[usize], kept: PValue) -> PValue {
    let d = dims(graph, v).unwrap_or_default();
    let batch_is_one = d.first() != batch && d.first() == Some(&Dim::Known(1));
    gather_tokens(e, v.into(), d.len(), batch_is_one, axes, kept)
}

/// `x` gathered along each of `axes` at the kept positions `[B, k]` (a batch-1 tensor is
/// broadcast to the batch first).
pub(crate) fn gather_tokens(e: &mut Emitter<'_>, x: PValue, rank: usize, batch_is_one: bool, axes: &[usize], kept: PValue) -> PValue {
    let mut x = x;
    if batch_is_one {
        let batch = e.dims(kept, 0, 1);
        let ones = e.i64s(&vec![1; rank - 1]);
        let shape = e.op("Concat", &[batch, ones], &[("axis", AttrValue::Int(0))]);
        x = e.op("Expand", &[x, shape], &[]);
    }
    for &axis in axes {
        x = if axis == 1 {
            // Whole rows: GatherND over the batch reads each row once, with a [B, k, 1] index.
            let index = e.unsqueeze(kept, &[2]);
            e.op("GatherND", &[x, index], &[("batch_dims", AttrValue::Int(1))])
        } else {
            let index = broadcast_index(e, x, rank, axis, kept);
            e.op("GatherElements", &[x, index], &[("axis", AttrValue::Int(axis as i64))])
        };
    }
    x
}

/// The kept positions `[B, k]` laid along `axis` of a rank-`rank` tensor shaped like `like`
/// (all of its sizes but `k` on `axis`), for GatherElements/ScatterElements.
fn broadcast_index(e: &mut Emitter<'_>, like: PValue, rank: usize, axis: usize, kept: PValue) -> PValue {
    let layout: Vec<i64> = (0..rank)
        .map(|i| {
            if i == 0 {
                0
            } else if i == axis {
                -1
            } else {
                1
            }
        })
        .collect();
    let layout = e.i64s(&layout);
    let index = e.op("Reshape", &[kept, layout], &[]);
    // Shape(like) with 1 on `axis`: Expand keeps k there.
    let shape = shape_with_axis(e, like, rank, axis, None);
    e.op("Expand", &[index, shape], &[])
}

/// `Shape(like)` (rank `rank`) with its `axis` entry replaced by `length` (a `[1]` int64), or
/// by 1 when none.
pub(crate) fn shape_with_axis(e: &mut Emitter<'_>, like: PValue, rank: usize, axis: usize, length: Option<PValue>) -> PValue {
    let keep_mask: Vec<i64> = (0..rank).map(|i| (i != axis) as i64).collect();
    let one_hot: Vec<i64> = (0..rank).map(|i| (i == axis) as i64).collect();
    let shape = e.op("Shape", &[like], &[]);
    let keep_mask = e.i64s(&keep_mask);
    let one_hot = e.i64s(&one_hot);
    let shape = e.op("Mul", &[shape, keep_mask], &[]);
    let along = match length {
        Some(length) => e.op("Mul", &[length, one_hot], &[]),
        None => one_hot,
    };
    e.op("Add", &[shape, along], &[])
}

/// `pruned` (the kept tokens along `axis`) written back at their positions into `base`, a
/// tensor of the original length.
pub(crate) fn scatter_tokens(e: &mut Emitter<'_>, base: PValue, pruned: PValue, rank: usize, axis: usize, kept: PValue) -> PValue {
    let index = broadcast_index(e, pruned, rank, axis, kept);
    e.op("ScatterElements", &[base, index, pruned], &[("axis", AttrValue::Int(axis as i64))])
}

/// LLaVolta's pooling: the span `[first, S - last)` of every row (padded positions, alike for
/// the batch) averaged in windows of `stride` (the last one may be shorter; padding tokens left
/// out of the average unless a window has only padding), the tokens outside it kept. Returns
/// the pooled hidden state `[B, n, C]`, each pooled token's representative position `[B, n]`
/// (the window's floored mean real position; masks, positions and rotary tables are gathered
/// there), each position's pooled token `[S]` (to spread outputs back) and the averaging
/// matrix `[B, n, S]` (which pools any other `[B, S, C]` value alike).
pub(crate) fn pool_tokens(e: &mut Emitter<'_>, hidden: PValue, mask: Option<ValueId>, stride: usize, first: usize, last: usize) -> (PValue, PValue, PValue, PValue) {
    let seq_len = e.dims(hidden, 1, 2);
    let s = e.squeeze(seq_len, &[0]);
    let (zero, one) = (e.i64_scalar(0), e.i64_scalar(1));
    let positions = e.op("Range", &[zero, s, one], &[]);
    let (a, b, stride_v) = (e.i64_scalar(first as i64), e.i64_scalar(last as i64), e.i64_scalar(stride as i64));
    let span_end = e.op("Sub", &[s, b], &[]);
    let span_end = e.op("Max", &[span_end, a], &[]);
    let span = e.op("Sub", &[span_end, a], &[]);
    // Windows of the span: ceil(span / stride).
    let stride_less_one = e.i64_scalar(stride as i64 - 1);
    let windows = e.op("Add", &[span, stride_less_one], &[]);
    let windows = e.op("Div", &[windows, stride_v], &[]);
    let offset = e.op("Sub", &[positions, a], &[]);
    let in_window = e.op("Div", &[offset, stride_v], &[]);
    let in_window = e.op("Add", &[in_window, a], &[]);
    let after = e.op("Sub", &[positions, span_end], &[]);
    let after = e.op("Add", &[after, a], &[]);
    let after = e.op("Add", &[after, windows], &[]);
    let before_end = e.op("Less", &[positions, span_end], &[]);
    let window_of = e.op("Where", &[before_end, in_window, after], &[]);
    let before_start = e.op("Less", &[positions, a], &[]);
    let window_of = e.op("Where", &[before_start, positions, window_of], &[]);
    let tail = e.op("Sub", &[s, span_end], &[]);
    let count = e.op("Add", &[a, windows], &[]);
    let count = e.op("Add", &[count, tail], &[]);
    let pooled_index = e.op("Range", &[zero, count, one], &[]);
    // One-hot [S, n]: position i belongs to pooled token j.
    let column = e.unsqueeze(window_of, &[1]);
    let member = e.op("Equal", &[column, pooled_index], &[]);
    let member = e.cast(member, DataType::Float);
    let (_, valid) = real_tokens(e, hidden, mask);
    let valid_col = e.unsqueeze(valid, &[2]);
    let real = e.op("Mul", &[member, valid_col], &[]); // [B, S, n]
    let real_count = e.reduce("ReduceSum", real, &[1], true); // [B, 1, n]
    let zero_f = e.f32_scalar(0.0);
    let empty = e.op("Equal", &[real_count, zero_f], &[]);
    let weights = e.op("Where", &[empty, member, real], &[]);
    let total = e.reduce("ReduceSum", weights, &[1], true);
    let weights = e.op("Div", &[weights, total], &[]);
    let weights_t = e.op("Transpose", &[weights], &[("perm", AttrValue::Ints(vec![0, 2, 1]))]);
    let pooled = e.op("MatMul", &[weights_t, hidden], &[]);
    // Representative: the first real member (else the first member), moved on by
    // floor((real members - 1) / 2).
    let two = e.f32_scalar(2.0);
    let one_f = e.f32_scalar(1.0);
    let preference = e.op("Add", &[real, member], &[]);
    let first_member = e.op("ArgMax", &[preference], &[("axis", AttrValue::Int(1)), ("keepdims", AttrValue::Int(0))]);
    let half = e.op("Sub", &[real_count, one_f], &[]);
    let half = e.op("Div", &[half, two], &[]);
    let half = e.op("Floor", &[half], &[]);
    let half = e.op("Max", &[half, zero_f], &[]);
    let half = e.squeeze(half, &[1]);
    let half = e.cast(half, DataType::Int64);
    let representative = e.op("Add", &[first_member, half], &[]);
    (pooled, representative, window_of, weights_t)
}

/// Each original position reads its pooled token's value: `pooled` (pooled tokens along `axis`)
/// spread back to `seq_len` positions by `window_of` (`[S]`).
pub(crate) fn spread_tokens(e: &mut Emitter<'_>, pooled: PValue, rank: usize, axis: usize, window_of: PValue, seq_len: PValue) -> PValue {
    let layout: Vec<i64> = (0..rank).map(|i| if i == axis { -1 } else { 1 }).collect();
    let layout = e.i64s(&layout);
    let index = e.op("Reshape", &[window_of, layout], &[]);
    let shape = shape_with_axis(e, pooled, rank, axis, Some(seq_len));
    let index = e.op("Expand", &[index, shape], &[]);
    e.op("GatherElements", &[pooled, index], &[("axis", AttrValue::Int(axis as i64))])
}
