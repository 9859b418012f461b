//! FFN experts: the layers whose intermediate neurons are micro-experts.
//!
//! A micro-expert is one intermediate neuron `j` of an FFN expert: column `j` of the gate and
//! up projections (in the `[in, out]` sense of [`LinearLayer`]) and row `j` of the down
//! projection. A dense FFN is one expert with no routing weight; a mixture of experts (the
//! exported Hugging Face form) has one per FFN, each with the routing weight its output is
//! multiplied by. A `com.microsoft.MoE` node is a layer too: its experts are slices of its fc1
//! and fc2 tensors rather than linear layers ([`MoeOp`]). Every pass that scores, prunes or
//! re-quantizes neurons reads its layers from here.
//!
//! [`LinearLayer`]: super::LinearLayer

use super::linear::{LayerId, LinearLayers};
use super::transformer::{Ffn, TransformerBlocks};
use super::{Analyses, Analysis};
use compactor_ir::moe::MoeAttributes;
use compactor_ir::{DataType, Graph, NodeId, ValueId};
use std::collections::HashMap;

/// One FFN expert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expert {
    /// The gate projection of a gated (SwiGLU-style) expert.
    pub gate: Option<LayerId>,
    pub up: LayerId,
    pub down: LayerId,
    /// Intermediate neurons (the down projection's input width).
    pub width: usize,
    /// The activation the down projection reads: `act(gate x) * (up x)`, or `act(up x)`.
    pub hidden: ValueId,
    /// The expert's routing weight (one per token), which its output is multiplied by; none
    /// for a dense FFN or a shared expert.
    pub routing: Option<ValueId>,
}

/// The experts that read one FFN input (one transformer block's FFN: a dense FFN, or a mixture
/// of experts with its shared experts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertLayer {
    /// The index of the transformer block the FFN belongs to.
    pub block: usize,
    /// The FFN input every expert reads.
    pub input: ValueId,
    /// The input width (the model's hidden size).
    pub input_width: usize,
    /// Experts that are linear layers (a dense FFN, a mixture's experts, the shared experts
    /// beside a MoE node).
    pub experts: Vec<Expert>,
    /// The `com.microsoft.MoE` node reading the input, if any.
    pub moe_op: Option<MoeOp>,
}

impl ExpertLayer {
    /// The constant that names this layer across edits (ids of linear layers change as the
    /// graph does): its first expert's down weight, or the MoE node's fc2 weights.
    pub fn key(&self, layers: &LinearLayers) -> ValueId {
        match (self.experts.first(), &self.moe_op) {
            (Some(e), _) => layers[e.down].weight.value,
            (None, Some(op)) => op.fc2,
            (None, None) => unreachable!("a layer has experts or a MoE node"),
        }
    }

    /// Every expert of the layer: the linear ones, then the MoE node's.
    pub fn expert_count(&self) -> usize {
        self.experts.len() + self.moe_op.as_ref().map_or(0, |op| op.experts)
    }
}

/// A `com.microsoft.MoE` node whose expert weights are f32 initializers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoeOp {
    pub node: NodeId,
    /// The tokens' features (`input`, `[..., H]`).
    pub input: ValueId,
    /// The router's logits (`router_probs`, `[tokens, experts]`).
    pub router: ValueId,
    /// `[E, f·I, H]` (`f` = 2 for a fused SwiGLU), each expert's rows its outputs.
    pub fc1: ValueId,
    pub fc1_bias: Option<ValueId>,
    /// `[E, H, I]`.
    pub fc2: ValueId,
    pub attrs: MoeAttributes,
    pub experts: usize,
    /// Intermediate neurons per expert (`I`).
    pub width: usize,
    /// Input features (`H`).
    pub hidden: usize,
}

/// The FFN layers of a graph in execution order: an [`Analysis`] built on
/// [`TransformerBlocks`]. A dense FFN is a layer with one expert.
#[derive(Clone, Debug, Default)]
pub struct FfnExperts {
    pub layers: Vec<ExpertLayer>,
    /// MoE nodes that are not layers here (block, node), and why (weights not f32
    /// initializers, attributes the op's semantics do not cover).
    pub refused: Vec<(usize, NodeId, String)>,
}

impl std::ops::Deref for FfnExperts {
    type Target = [ExpertLayer];
    fn deref(&self) -> &[ExpertLayer] {
        &self.layers
    }
}

/// The MoE node `node` as a layer's [`MoeOp`], or why it is not one.
fn moe_op(graph: &Graph, node: NodeId) -> Result<MoeOp, String> {
    let n = graph.node(node);
    let attrs = MoeAttributes::of_node(n)?;
    let input = |i: usize| n.inputs.get(i).copied().flatten();
    let (Some(x), Some(router), Some(fc1), Some(fc2)) = (input(0), input(1), input(2), input(4)) else {
        return Err("input, router_probs, fc1 or fc2 weights missing".into());
    };
    if (6..n.inputs.len()).any(|i| input(i).is_some()) {
        return Err("fc3 weights are not supported".into());
    }
    let dims = |v: ValueId| -> Result<Vec<usize>, String> {
        let value = graph.value(v);
        match &value.initializer {
            Some(t) if t.dtype() == DataType::Float => Ok(t.dims().iter().map(|&d| d as usize).collect()),
            _ => Err(format!("'{}' is not an f32 initializer", value.name)),
        }
    };
    let (fc1_dims, fc2_dims) = (dims(fc1)?, dims(fc2)?);
    let fusion = attrs.activation.fusion();
    let [experts, wide, hidden] = fc1_dims[..] else { return Err(format!("fc1 weights are {fc1_dims:?}, not [experts, rows, hidden]")) };
    let width = wide / fusion;
    if wide % fusion != 0 || fc2_dims != [experts, hidden, width] {
        return Err(format!("fc1 weights {fc1_dims:?} and fc2 weights {fc2_dims:?} do not fit together"));
    }
    let fc1_bias = input(3);
    if let Some(b) = fc1_bias
        && dims(b)? != [experts, wide]
    {
        return Err("fc1 bias is not [experts, rows]".into());
    }
    Ok(MoeOp { node, input: x, router, fc1, fc1_bias, fc2, attrs, experts, width, hidden })
}

impl Analysis for FfnExperts {
    fn compute(graph: &Graph, analyses: &mut Analyses) -> Self {
        let layers = analyses.get::<LinearLayers>(graph);
        let blocks = analyses.get::<TransformerBlocks>(graph);
        let mut out = Vec::new();
        for (block, b) in blocks.iter().enumerate() {
            let Some(first) = &b.ffn else { continue };
            let ffns: Vec<(&Ffn, Option<ValueId>)> = match &b.moe {
                Some(moe) => moe.experts.iter().zip(moe.weights.iter().copied()).collect(),
                None => vec![(first, None)],
            };
            // Only plain layers: the neuron axis of a quantized or convolutional weight is not
            // one axis of one constant.
            let plain = |f: &Ffn| {
                [Some(f.up), f.gate, Some(f.down)].into_iter().flatten().all(|l| layers[l].op != super::LinearOp::Conv && !layers[l].weight.is_quantized())
                    && layers[f.down].in_features == layers[f.up].out_features
            };
            if !ffns.iter().all(|(f, _)| plain(f)) {
                continue;
            }
            let up = &layers[first.up];
            let experts =
                ffns.into_iter().map(|(f, routing)| Expert { gate: f.gate, up: f.up, down: f.down, width: layers[f.down].in_features as usize, hidden: layers[f.down].input, routing }).collect();
            out.push(ExpertLayer { block, input: up.input, input_width: up.in_features as usize, experts, moe_op: None });
        }
        // MoE nodes join the layer of the linear experts reading the same input (shared
        // experts), or make their own in the block whose attention they follow.
        let position: HashMap<NodeId, usize> = graph.nodes_of(Graph::MAIN).enumerate().map(|(i, (id, _))| (id, i)).collect();
        let mut refused = Vec::new();
        for (node, n) in graph.nodes_of(Graph::MAIN) {
            if !(n.op_type == "MoE" && n.domain() == "com.microsoft") {
                continue;
            }
            let block = blocks.iter().rposition(|b| position.get(&b.attention.context) < position.get(&node)).unwrap_or(0);
            match moe_op(graph, node) {
                Err(why) => refused.push((block, node, why)),
                Ok(op) => match out.iter_mut().find(|l| l.input == op.input && l.moe_op.is_none()) {
                    Some(layer) => layer.moe_op = Some(op),
                    None => out.push(ExpertLayer { block, input: op.input, input_width: op.hidden, experts: Vec::new(), moe_op: Some(op) }),
                },
            }
        }
        out.sort_by_key(|l| l.block);
        FfnExperts { layers: out, refused }
    }
}
