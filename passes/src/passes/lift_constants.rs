//! `Constant` nodes become initializers of their graph.

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::Graph;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftConstants {}

impl PassDef for LiftConstants {
    const NAME: &'static str = "lift-constants";
    const SUMMARY: &'static str = "Turn Constant nodes into initializers (weights stored in Constant nodes become ordinary weights)";
    const KIND: PassKind = PassKind::Transform;
}

impl Pass for LiftConstants {
    fn run(&self, graph: &mut Graph, _ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let lifted = compactor_ir::onnx::lift_constants(graph);
        Ok(PassOutcome::counted(lifted, format!("lifted {lifted} Constant nodes to initializers")))
    }
}
