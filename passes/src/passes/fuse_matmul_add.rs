//! `MatMul(A, W)` followed by `Add(_, b)` becomes `Gemm(A, W, b)` where Gemm means the same:
//! A of rank 2, W a constant matrix, b a constant broadcastable to the [M, N] result, and the
//! MatMul result read only by that Add.

use crate::analysis::Uses;
use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::pattern::{BiasAdd, bias_add};
use compactor_ir::{Anchor, Graph, Patch};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FuseMatMulAdd {}

impl PassDef for FuseMatMulAdd {
    const NAME: &'static str = "fuse-matmul-add";
    const SUMMARY: &'static str = "Fuse MatMul + bias Add into Gemm where the input is a matrix (rank 2)";
    const KIND: PassKind = PassKind::Transform;
}

impl Pass for FuseMatMulAdd {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let uses = ctx.analyses.get::<Uses>(graph);
        let mut patch = Patch::new();
        let mut fused = 0;
        for id in graph.all_nodes() {
            let mm = graph.node(id);
            if !mm.is("MatMul") {
                continue;
            }
            let (Some(a), Some(w), Some(mm_out)) = (mm.input(0), mm.input(1), mm.output(0)) else { continue };
            let a_rank2 = graph.value(a).shape().is_some_and(|s| s.rank() == 2);
            let Some(weight) = graph.constant(w) else { continue };
            if !a_rank2 || weight.dims().len() != 2 {
                continue;
            }
            let Some(BiasAdd { add: add_id, bias, tensor: b }) = bias_add(graph, &uses, mm_out) else { continue };
            let add = graph.node(add_id);
            let n = weight.dims()[1];
            // Gemm broadcasts C to [M, N] one way only: [N], [1, N] or a scalar.
            let broadcastable = matches!(b.dims(), [] | [1]) || b.dims() == [n] || b.dims() == [1, n];
            if !broadcastable || b.dtype() != weight.dtype() || add.output(0).is_none() {
                continue;
            }
            let out = add.output(0).expect("checked");
            let name = mm.name.clone().unwrap_or_else(|| format!("{}_gemm", graph.value(out).name));
            patch.node("Gemm", Anchor::Before(add_id)).name(name).input(a).input(w).input(bias).output(out.into()).add();
            patch.remove_node(id);
            patch.remove_node(add_id);
            fused += 1;
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        Ok(PassOutcome::counted(fused, format!("fused {fused} MatMul+Add pairs into Gemm")))
    }
}
