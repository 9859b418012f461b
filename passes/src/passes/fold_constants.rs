//! Nodes whose inputs are all constant are evaluated once, here, and replaced by initializers.
//!
//! Evaluation goes through the runtime's evaluator (the same kernels that run models), never
//! kernels of this crate. A size cap keeps folding from bloating the file (an `Expand` of a
//! scalar to a large tensor stays an `Expand`).

use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, Patch, Tensor, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FoldConstants {
    /// Largest folded output in bytes; bigger results stay computed at run time.
    pub max_bytes: u64,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants { max_bytes: 1 << 20 }
    }
}

impl PassDef for FoldConstants {
    const NAME: &'static str = "fold-constants";
    const SUMMARY: &'static str = "Evaluate nodes whose inputs are all constant and store their results as initializers";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if self.max_bytes == 0 {
            return Err(OptionError::new("max_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

/// Ops that must not be folded: their result is not a function of their inputs, or (for
/// DequantizeLinear) folding would store a quantized weight in full precision, undoing the
/// compression and the runtimes' quantized kernels that match `DequantizeLinear -> op`.
const NOT_FOLDABLE: &[&str] =
    &["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "Constant", "If", "Loop", "Scan", "SequenceMap", "DequantizeLinear"];

impl Pass for FoldConstants {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let Some(evaluator) = ctx.evaluator else {
            return Err(PassError::Missing { pass: Self::NAME.into(), what: "a constant evaluator (the runtime)".into() });
        };
        // Constants known so far, including the results of nodes folded earlier in this run.
        let mut known: HashMap<ValueId, Tensor> = HashMap::new();
        let mut patch = Patch::new();
        let mut folded = 0;
        let mut skipped_large = 0;
        for id in graph.all_nodes() {
            let node = graph.node(id);
            if !node.domain().is_empty() || NOT_FOLDABLE.contains(&node.op_type.as_str()) || node.subgraphs().next().is_some() || node.inputs.iter().flatten().next().is_none() {
                continue;
            }
            let mut inputs = Vec::with_capacity(node.inputs.len());
            for input in &node.inputs {
                match input {
                    None => inputs.push(None),
                    Some(v) => match known.get(v).cloned().or_else(|| graph.constant(*v)) {
                        Some(t) => inputs.push(Some(t)),
                        None => break,
                    },
                }
            }
            if inputs.len() != node.inputs.len() {
                continue;
            }
            let outputs = match evaluator.evaluate(node, &inputs, ctx.opsets) {
                Ok(outputs) => outputs,
                // Not every op can be evaluated in isolation; such a node simply stays.
                Err(_) => continue,
            };
            if outputs.len() < node.outputs.iter().flatten().count() {
                continue;
            }
            if outputs.iter().any(|t| t.data_bytes() > self.max_bytes) {
                skipped_large += 1;
                continue;
            }
            for (out, tensor) in node.outputs.iter().zip(outputs) {
                let Some(out) = out else { continue };
                let name = graph.value(*out).name.clone();
                let constant = patch.new_initializer(node.region, &name, tensor.clone());
                patch.replace_uses(*out, constant);
                patch.rename(constant, name);
                known.insert(*out, tensor);
            }
            patch.remove_node(id);
            folded += 1;
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        Ok(PassOutcome::counted(folded, format!("folded {folded} nodes into initializers ({skipped_large} left: output over {} bytes)", self.max_bytes)))
    }
}
