//! Reports the linear layers and transformer blocks the analyses find (for checking what a
//! compression pass will see).

use crate::analysis::{LayerId, LinearLayers, LinearOp, TransformerBlocks};
use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::Graph;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindLayers {}

impl PassDef for FindLayers {
    const NAME: &'static str = "find-layers";
    const SUMMARY: &'static str = "Report linear layers (MatMul/Gemm/Conv with constant weights) and transformer blocks";
    const KIND: PassKind = PassKind::Analysis;
}

#[derive(Serialize)]
struct LayerReport {
    name: String,
    op: LinearOp,
    weight: String,
    in_features: u64,
    out_features: u64,
    transposed: bool,
    quantized: bool,
    bias: Option<String>,
}

#[derive(Serialize)]
struct BlockReport {
    q: String,
    k: String,
    v: String,
    o: String,
    ffn_up: Option<String>,
    ffn_gate: Option<String>,
    ffn_down: Option<String>,
    norms: usize,
    residual_adds: usize,
}

impl Pass for FindLayers {
    fn analyze(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let layers = ctx.analyses.get::<LinearLayers>(graph);
        let blocks = ctx.analyses.get::<TransformerBlocks>(graph);
        let name = |i: LayerId| layers[i].label(graph);
        let details = serde_json::json!({
            "layers": layers.iter().map(|(_, l)| LayerReport {
                name: l.label(graph),
                op: l.op,
                weight: graph.value(l.weight.value).name.clone(),
                in_features: l.in_features,
                out_features: l.out_features,
                transposed: l.weight.transposed,
                quantized: l.weight.is_quantized(),
                bias: l.bias.as_ref().map(|b| graph.value(b.value).name.clone()),
            }).collect::<Vec<_>>(),
            "blocks": blocks.iter().map(|b| BlockReport {
                q: name(b.attention.q),
                k: name(b.attention.k),
                v: name(b.attention.v),
                o: name(b.attention.o),
                ffn_up: b.ffn.as_ref().map(|f| name(f.up)),
                ffn_gate: b.ffn.as_ref().and_then(|f| f.gate).map(name),
                ffn_down: b.ffn.as_ref().map(|f| name(f.down)),
                norms: b.norms.len(),
                residual_adds: b.residual_adds.len(),
            }).collect::<Vec<_>>(),
        });
        Ok(PassOutcome::unchanged(format!("{} linear layers, {} transformer blocks", layers.len(), blocks.len())).with_details(details))
    }
}
