//! FFN experts: the layers whose intermediate neurons are micro-experts.
//!
//! A micro-expert is one intermediate neuron `j` of an FFN expert: column `j` of the gate and
//! up projections (in the `[in, out]` sense of [`LinearLayer`]) and row `j` of the down
//! projection. A dense FFN is one expert with no routing weight. Every pass that scores,
//! prunes or re-quantizes neurons reads its layers from here.
//!
//! [`LinearLayer`]: super::LinearLayer

use super::linear::{LayerId, LinearLayers};
use super::transformer::TransformerBlocks;
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
}

/// The experts that read one FFN input (one transformer block's FFN).
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
            let Some(ffn) = &b.ffn else { continue };
            let (up, down) = (&layers[ffn.up], &layers[ffn.down]);
            // Only plain layers: the neuron axis of a quantized or convolutional weight is not
            // one axis of one constant.
            let plain = [Some(ffn.up), ffn.gate, Some(ffn.down)].into_iter().flatten().all(|l| layers[l].op != super::LinearOp::Conv && !layers[l].weight.is_quantized());
            if !plain || down.in_features != up.out_features {
                continue;
            }
            out.push(ExpertLayer {
                block,
                input: up.input,
                input_width: up.in_features as usize,
                experts: vec![Expert { gate: ffn.gate, up: ffn.up, down: ffn.down, width: down.in_features as usize, hidden: down.input }],
            });
        }
        FfnExperts(out)
    }
}
