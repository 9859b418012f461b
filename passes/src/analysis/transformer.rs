//! Finding transformer blocks (attention, FFN, norms, residual adds) in exported graphs.
//!
//! Structural, not name-based: attention is found from its Softmax — back to the `Q·Kᵀ` MatMul
//! and through the head reshapes, rotary embedding and repeated KV heads to the Q and K
//! projections, forward to `P·V` and to the output projection — or from a fused attention op
//! (onnxruntime's GroupQueryAttention, MultiHeadAttention) back to its projections. An FFN is a linear layer whose output reaches another linear layer of matching
//! width through activation arithmetic only (GELU as Erf arithmetic, Gelu, Relu, SiLU, and the
//! gated `act(gate) * up` form).

use super::linear::{LayerId, LinearLayers};
use super::{Analyses, Analysis, Uses};
use compactor_ir::{Graph, NodeId, ValueId};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// An attention sub-block: its projections (layers of the graph's [`LinearLayers`]) and the
/// nodes of `softmax(Q·Kᵀ)·V` (all three the same node when one op computes the attention).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Attention {
    pub q: LayerId,
    pub k: LayerId,
    pub v: LayerId,
    pub o: LayerId,
    pub scores: NodeId,
    pub softmax: NodeId,
    pub context: NodeId,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ffn {
    pub up: LayerId,
    /// The gate projection of a gated FFN (`act(gate) * up`).
    pub gate: Option<LayerId>,
    pub down: LayerId,
}

/// A mixture-of-experts FFN as exported Hugging Face models write it: a router layer whose
/// probabilities go through TopK, and several FFNs reading the same input, each one's output
/// multiplied by its routing weight (an always-on shared expert's is not).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Moe {
    pub router: LayerId,
    /// Every FFN reading the layer's input, in graph order (the block's `ffn` is the first).
    pub experts: Vec<Ffn>,
    /// Per expert, the value its output is multiplied by (computed from the router's output),
    /// or none for a shared expert.
    #[serde(skip)]
    pub weights: Vec<Option<ValueId>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TransformerBlock {
    pub attention: Attention,
    pub ffn: Option<Ffn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe: Option<Moe>,
    /// LayerNormalization-style nodes of the block, in order.
    pub norms: Vec<NodeId>,
    /// Adds that close residual connections, in order.
    pub residual_adds: Vec<NodeId>,
}

const NORM_OPS: &[&str] = &["LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"];
/// Ops on the path from Softmax back to Q·Kᵀ (scale, mask, casts).
const SCORE_OPS: &[&str] = &["Add", "Sub", "Div", "Mul", "Where", "Cast"];
/// Ops between a projection and the attention matmuls (head split/merge, scaling).
const HEAD_OPS: &[&str] = &["Transpose", "Reshape", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze"];
/// Ops crossed going back from `Q·Kᵀ` or `P·V` to a projection: the head ops, the rotary
/// embedding's `x·cos + rotate_half(x)·sin` (its first term leads back to x), the KV heads
/// repeated for grouped-query attention and a KV cache's concatenation.
const BACK_OPS: &[&str] = &["Transpose", "Reshape", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze", "Add", "Expand", "RotaryEmbedding", "Concat"];
/// Attention as one op (onnxruntime's contrib ops) taking separate query, key and value.
const FUSED_ATTENTION_OPS: &[&str] = &["GroupQueryAttention", "MultiHeadAttention"];
const ACTIVATION_OPS: &[&str] =
    &["Erf", "Div", "Mul", "Add", "Sub", "Pow", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu", "QuickGelu", "Softplus", "HardSigmoid", "HardSwish", "Clip", "Cast", "BiasGelu"];

struct Finder<'a> {
    graph: &'a Graph,
    layers: &'a LinearLayers,
    by_output: HashMap<ValueId, LayerId>,
    by_input: HashMap<ValueId, Vec<LayerId>>,
    uses: &'a compactor_ir::UseMap,
    position: HashMap<NodeId, usize>,
}

impl Finder<'_> {
    fn op(&self, v: ValueId) -> Option<(NodeId, &str)> {
        let (n, _) = self.graph.producer(v)?;
        let node = self.graph.node(n);
        node.domain().is_empty().then_some((n, node.op_type.as_str())).or(Some((n, node.op_type.as_str())))
    }

    fn non_constant_inputs(&self, n: NodeId) -> Vec<ValueId> {
        self.graph.node(n).inputs.iter().flatten().copied().filter(|&v| self.graph.constant(v).is_none()).collect()
    }

    /// The linear layer whose output `v` is, following `ops` backwards along non-constant inputs.
    fn layer_behind(&self, v: ValueId, ops: &[&str]) -> Option<LayerId> {
        let mut v = v;
        for _ in 0..12 {
            if let Some(&i) = self.by_output.get(&v) {
                return Some(i);
            }
            let (n, op) = self.op(v)?;
            if !ops.contains(&op) {
                return None;
            }
            let inputs = self.non_constant_inputs(n);
            // Follow the data, not the shape arguments of Reshape; a KV cache's Concat appends
            // this step's keys or values to the past ones.
            v = if op == "Concat" { *inputs.last()? } else { *inputs.first()? };
        }
        None
    }

    /// The `Q·Kᵀ` MatMul feeding a Softmax: a MatMul of two computed values, reached backwards
    /// through scale and mask arithmetic.
    fn scores_matmul(&self, softmax_input: ValueId) -> Option<NodeId> {
        let mut work = vec![(softmax_input, 0)];
        let mut seen = HashSet::new();
        while let Some((v, depth)) = work.pop() {
            if depth > 6 || !seen.insert(v) {
                continue;
            }
            let Some((n, op)) = self.op(v) else { continue };
            if op == "MatMul" && self.non_constant_inputs(n).len() == 2 && !self.by_output.contains_key(&v) {
                return Some(n);
            }
            if SCORE_OPS.contains(&op) {
                work.extend(self.non_constant_inputs(n).into_iter().map(|x| (x, depth + 1)));
            }
        }
        None
    }

    /// Follows chains of `ops` forward from `v`; returns the node reached first whose op is
    /// `target` (reading the chain at input 0), or the first linear layer taking it.
    fn forward(&self, v: ValueId, ops: &[&str], target: Target) -> Option<Reached> {
        let mut frontier = vec![v];
        for _ in 0..8 {
            let mut next = Vec::new();
            for value in frontier {
                if let Target::LayerInput = target
                    && let Some(layers) = self.by_input.get(&value)
                    && let Some(&i) = layers.first()
                {
                    return Some(Reached::Layer(i));
                }
                for n in self.uses.consumers(value) {
                    let node = self.graph.node(n);
                    if let Target::Node(op) = target
                        && node.op_type == op
                        && node.input(0) == Some(value)
                    {
                        return Some(Reached::Node(n));
                    }
                    if ops.contains(&node.op_type.as_str()) {
                        next.extend(node.outputs.iter().flatten().copied());
                    }
                }
            }
            if next.is_empty() {
                return None;
            }
            frontier = next;
        }
        None
    }

    fn attention(&self, softmax: NodeId) -> Option<Attention> {
        let s = self.graph.node(softmax);
        let scores = self.scores_matmul(s.input(0)?)?;
        let qk = self.graph.node(scores);
        let q = self.layer_behind(qk.input(0)?, BACK_OPS)?;
        let k = self.layer_behind(qk.input(1)?, BACK_OPS)?;
        let Reached::Node(context) = self.forward(s.output(0)?, &["Cast", "Dropout", "Identity", "Where"], Target::Node("MatMul"))? else { return None };
        let v = self.layer_behind(self.graph.node(context).input(1)?, BACK_OPS)?;
        let Reached::Layer(o) = self.forward(self.graph.node(context).output(0)?, HEAD_OPS, Target::LayerInput)? else { return None };
        let distinct: HashSet<LayerId> = [q, k, v, o].into_iter().collect();
        (distinct.len() == 4).then_some(Attention { q, k, v, o, scores, softmax, context })
    }

    /// A fused attention op with separate query, key and value inputs (scores, softmax and
    /// context are all the op itself).
    fn fused_attention(&self, n: NodeId) -> Option<Attention> {
        let node = self.graph.node(n);
        let q = self.layer_behind(node.input(0)?, BACK_OPS)?;
        let k = self.layer_behind(node.input(1)?, BACK_OPS)?;
        let v = self.layer_behind(node.input(2)?, BACK_OPS)?;
        let Reached::Layer(o) = self.forward(node.output(0)?, HEAD_OPS, Target::LayerInput)? else { return None };
        let distinct: HashSet<LayerId> = [q, k, v, o].into_iter().collect();
        (distinct.len() == 4).then_some(Attention { q, k, v, o, scores: n, softmax: n, context: n })
    }

    /// Linear layers reached from `up`'s output through activation arithmetic only.
    fn ffn_down(&self, up: LayerId) -> Option<LayerId> {
        let width = self.layers[up].out_features;
        let mut frontier = vec![self.layers[up].output];
        let mut seen = HashSet::new();
        for _ in 0..10 {
            let mut next = Vec::new();
            for value in frontier {
                if !seen.insert(value) {
                    continue;
                }
                if let Some(layers) = self.by_input.get(&value) {
                    // The first activation op must have been crossed: a direct layer-to-layer
                    // link is not an FFN.
                    if value != self.layers[up].output
                        && let Some(&down) = layers.iter().find(|&&d| d != up && self.layers[d].in_features == width)
                    {
                        return Some(down);
                    }
                }
                for n in self.uses.consumers(value) {
                    if ACTIVATION_OPS.contains(&self.graph.node(n).op_type.as_str()) {
                        next.extend(self.graph.node(n).outputs.iter().flatten().copied());
                    }
                }
            }
            frontier = next;
        }
        None
    }

    fn ffn(&self, first: LayerId, taken: &HashSet<LayerId>) -> Option<Ffn> {
        let candidate = self.layers[first].clone();
        if taken.contains(&first) {
            return None;
        }
        let down = self.ffn_down(first)?;
        if taken.contains(&down) || self.layers[down].out_features != candidate.in_features {
            return None;
        }
        // A gated FFN has a second projection of the same input and width feeding the same down.
        let siblings: Vec<LayerId> =
            self.by_input.get(&candidate.input).into_iter().flatten().copied().filter(|&s| s != first && !taken.contains(&s) && self.layers[s].out_features == candidate.out_features).collect();
        for s in siblings {
            if self.ffn_down(s) == Some(down) {
                // The gate is the one that goes through a nonlinearity before the product;
                // with `first` earlier in the graph we call the later one `up`.
                let (gate, up) = if self.passes_activation(first) { (first, s) } else { (s, first) };
                return Some(Ffn { up, gate: Some(gate), down });
            }
        }
        Some(Ffn { up: first, gate: None, down })
    }

    /// The mixture of experts `first` belongs to, if it is one: the other FFNs reading its
    /// input (taken from here on) and a router whose output reaches a TopK.
    fn moe(&self, first: &Ffn, taken: &mut HashSet<LayerId>) -> Option<Moe> {
        let input = self.layers[first.up].input;
        let mut readers: Vec<LayerId> = self.by_input.get(&input)?.clone();
        readers.sort_by_key(|&l| self.position[&self.layers[l].node]);
        let router = readers
            .iter()
            .copied()
            .find(|&l| !taken.contains(&l) && matches!(self.forward(self.layers[l].output, &["Softmax", "Sigmoid", "Reshape", "Cast"], Target::Node("TopK")), Some(Reached::Node(_))))?;
        let mut experts = vec![first.clone()];
        for l in readers {
            if l == router || taken.contains(&l) {
                continue;
            }
            if let Some(f) = self.ffn(l, taken) {
                taken.extend([Some(f.up), f.gate, Some(f.down)].into_iter().flatten());
                experts.push(f);
            }
        }
        // Values computed from the router's output: the routing weights are among them.
        let mut routed = HashSet::new();
        let mut frontier = vec![self.layers[router].output];
        for _ in 0..16 {
            let mut next = Vec::new();
            for v in frontier {
                if routed.insert(v) {
                    for n in self.uses.consumers(v) {
                        next.extend(self.graph.node(n).outputs.iter().flatten().copied());
                    }
                }
            }
            frontier = next;
        }
        let weights = experts
            .iter()
            .map(|e| {
                let out = self.layers[e.down].output;
                self.uses.consumers(out).into_iter().filter(|&n| self.graph.node(n).is("Mul")).find_map(|n| self.non_constant_inputs(n).into_iter().find(|&w| w != out && routed.contains(&w)))
            })
            .collect();
        Some(Moe { router, experts, weights })
    }

    /// Whether the layer's output goes through a nonlinear op before anything else.
    fn passes_activation(&self, layer: LayerId) -> bool {
        self.uses
            .consumers(self.layers[layer].output)
            .iter()
            .any(|&n| ["Sigmoid", "Relu", "Gelu", "Erf", "Tanh", "Softplus", "HardSwish", "QuickGelu", "FastGelu"].contains(&self.graph.node(n).op_type.as_str()))
    }

    /// The Add closing a residual: it reads `v` (or `v` times a constant, as LayerScale
    /// writes it) and a computed value, not a constant.
    fn residual_add(&self, v: ValueId) -> Option<NodeId> {
        let closes = |n: NodeId| self.graph.node(n).is("Add") && self.non_constant_inputs(n).len() == 2;
        let consumers = self.uses.consumers(v);
        consumers.iter().copied().find(|&n| closes(n)).or_else(|| {
            let scale = consumers.into_iter().find(|&n| self.graph.node(n).is("Mul") && self.non_constant_inputs(n).len() == 1)?;
            self.uses.consumers(self.graph.node(scale).output(0)?).into_iter().find(|&n| closes(n))
        })
    }

    fn norm_consuming(&self, v: ValueId) -> Option<NodeId> {
        self.uses.consumers(v).into_iter().find(|&n| NORM_OPS.contains(&self.graph.node(n).op_type.as_str()))
    }

    fn norm_producing(&self, v: ValueId) -> Option<NodeId> {
        let (n, op) = self.op(v)?;
        NORM_OPS.contains(&op).then_some(n)
    }
}

#[derive(Clone, Copy)]
enum Target {
    Node(&'static str),
    LayerInput,
}

/// What [`Finder::forward`] reached.
enum Reached {
    Node(NodeId),
    Layer(LayerId),
}

/// The transformer blocks of a graph, in execution order: an [`Analysis`] (built on
/// [`LinearLayers`]).
#[derive(Clone, Debug, Default)]
pub struct TransformerBlocks(pub Vec<TransformerBlock>);

impl Analysis for TransformerBlocks {
    fn compute(graph: &Graph, analyses: &mut Analyses) -> Self {
        let layers = analyses.get::<LinearLayers>(graph);
        let uses = analyses.get::<Uses>(graph);
        TransformerBlocks(find_blocks(graph, &layers, &uses))
    }
}

impl std::ops::Deref for TransformerBlocks {
    type Target = [TransformerBlock];
    fn deref(&self) -> &[TransformerBlock] {
        &self.0
    }
}

/// The transformer blocks of `graph`, computed once (passes get them cached, from
/// [`crate::PassCtx::analyses`]).
pub fn transformer_blocks(graph: &Graph) -> TransformerBlocks {
    TransformerBlocks::compute(graph, &mut Analyses::new())
}

fn find_blocks(graph: &Graph, layers: &LinearLayers, uses: &compactor_ir::UseMap) -> Vec<TransformerBlock> {
    let mut by_output = HashMap::new();
    let mut by_input: HashMap<ValueId, Vec<LayerId>> = HashMap::new();
    for (i, l) in layers.iter() {
        by_output.insert(l.output, i);
        by_input.entry(l.input).or_default().push(i);
    }
    let all = graph.all_nodes();
    let position: HashMap<NodeId, usize> = all.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let finder = Finder { graph, layers, by_output, by_input, uses, position };

    let mut attentions: Vec<Attention> = all
        .iter()
        .filter_map(|&n| match graph.node(n).op_type.as_str() {
            "Softmax" => finder.attention(n),
            op if FUSED_ATTENTION_OPS.contains(&op) => finder.fused_attention(n),
            _ => None,
        })
        .collect();
    attentions.sort_by_key(|a| finder.position[&a.softmax]);
    let mut taken: HashSet<LayerId> = attentions.iter().flat_map(|a| [a.q, a.k, a.v, a.o]).collect();

    let mut blocks = Vec::with_capacity(attentions.len());
    for (i, attention) in attentions.iter().enumerate() {
        let o_pos = finder.position[&layers[attention.o].node];
        let next_q_pos = attentions.get(i + 1).map(|a| finder.position[&layers[a.q].node]).unwrap_or(usize::MAX);
        // The block's FFN starts after its attention output and before the next attention.
        let ffn = layers
            .iter()
            .filter(|(_, l)| {
                let p = finder.position[&l.node];
                p > o_pos && p < next_q_pos
            })
            .find_map(|(l, _)| finder.ffn(l, &taken));
        if let Some(f) = &ffn {
            taken.extend([Some(f.up), f.gate, Some(f.down)].into_iter().flatten());
        }
        let moe = ffn.as_ref().and_then(|f| finder.moe(f, &mut taken));
        let mut residual_adds = Vec::new();
        let mut norms = Vec::new();
        let ends = [Some(attention.o), ffn.as_ref().map(|f| f.down)];
        let starts = [Some(attention.q), ffn.as_ref().map(|f| f.gate.unwrap_or(f.up))];
        for (end, start) in ends.into_iter().zip(starts) {
            let Some(end) = end else { continue };
            if let Some(add) = finder.residual_add(layers[end].output) {
                residual_adds.push(add);
                // Post-norm (BERT): the norm follows the residual add.
                if let Some(norm) = graph.node(add).output(0).and_then(|v| finder.norm_consuming(v)) {
                    norms.push(norm);
                    continue;
                }
            }
            // Pre-norm (GPT, Llama): the norm feeds the sub-block.
            if let Some(norm) = start.and_then(|s| finder.norm_producing(layers[s].input)) {
                norms.push(norm);
            }
        }
        norms.sort_by_key(|n| finder.position[n]);
        norms.dedup();
        blocks.push(TransformerBlock { attention: attention.clone(), ffn, moe, norms, residual_adds });
    }
    blocks
}
