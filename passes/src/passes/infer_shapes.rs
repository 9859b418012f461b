//! Infers the types and shapes of intermediate values, optionally recording them in the
//! model's `value_info` so the written file carries them.

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::Graph;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InferShapes {
    /// Also write the inferred types into value_info (otherwise they only guide later passes).
    pub record: bool,
}

impl PassDef for InferShapes {
    const NAME: &'static str = "infer-shapes";
    const SUMMARY: &'static str = "Infer types and symbolic shapes of every value (optionally recorded in value_info)";
    const KIND: PassKind = PassKind::Transform;
}

impl Pass for InferShapes {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let report = ctx.infer_shapes(graph);
        if self.record {
            compactor_ir::record_value_info(graph);
        }
        let summary = format!("typed {} values, refined {}, {} conflicts with declared types", report.typed.len(), report.refined.len(), report.conflicts.len());
        let details = serde_json::json!({
            "conflicts": report.conflicts.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "failures": report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "ops_without_rule": report.unsupported_ops,
        });
        Ok(PassOutcome::counted(report.typed.len() + report.refined.len(), summary).with_details(details))
    }
}
