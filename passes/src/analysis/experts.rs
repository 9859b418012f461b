//! FFN experts: the layers whose intermediate neurons are micro-experts.
//!
//! A micro-expert is one intermediate neuron `j` of an FFN expert: column `j` of the gate and
//! up projections (in the `[in, out]` sense of [`LinearLayer`]) and row `j` of the down
//! projection. A dense FFN is one expert with no routing weight; a mixture of experts (the
//! exported Hugging Face form) has one per FFN, each with the routing weight its output is
//! multiplied by. Every pass that scores,
//! prunes or re-quantizes neurons reads its layers from here.
//!
//! [`LinearLayer`]: super::LinearLayer

use super::linear::{LayerId, LinearLayers};
use super::transformer::{Ffn, TransformerBlocks};
use super::{Analyses, Analysis};
use compactor_ir::{Graph, ValueId};

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
    pub experts: Vec<Expert>,
}

/// The FFN layers of a graph in execution order: an [`Analysis`] built on
/// [`TransformerBlocks`]. A dense FFN is a layer with one expert.
#[derive(Clone, Debug, Default)]
pub struct FfnExperts(pub Vec<ExpertLayer>);

impl std::ops::Deref for FfnExperts {
    type Target = [ExpertLayer];
    fn deref(&self) -> &[ExpertLayer] {
        &self.0
    }
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
            out.push(ExpertLayer { block, input: up.input, input_width: up.in_features as usize, experts });
        }
        FfnExperts(out)
    }
}
