//! Sparse initializers, which tract lacks, made dense.

use super::Lowering;
use crate::error::RuntimeError;

impl Lowering {
    /// tract has no sparse initializers: they become dense ones (as onnxruntime does at load).
    pub(super) fn densify_sparse_initializers(&mut self) -> Result<(), RuntimeError> {
        let graph = &mut self.model.graph;
        for r in graph.region_ids().collect::<Vec<_>>() {
            for v in std::mem::take(&mut graph.region_mut(r).sparse_initializers) {
                let sparse = graph.value_mut(v).sparse_initializer.take().expect("listed sparse initializers hold data");
                let dense = sparse.to_dense().map_err(|e| RuntimeError::Lowering {
                    model: self.name.clone(),
                    node: graph.value(v).name.clone(),
                    reason: format!("sparse initializer '{}': {e}", graph.value(v).name),
                })?;
                let value = graph.value_mut(v);
                value.def = compactor_ir::ValueDef::Initializer;
                value.initializer = Some(dense);
                graph.region_mut(r).initializers.push(v);
            }
        }
        Ok(())
    }
}
