//! `com.microsoft.MoE` (mixture of experts) is left in place for the runtime's kernel
//! (`kernels/moe.rs`), which runs it in f32; written as standard ops, every expert would run on
//! every token. Other element types are refused here with a message naming the node, rather
//! than by tract's typing.

use super::Lowering;
use crate::error::RuntimeError;
use compactor_ir::{DataType, NodeId};

impl Lowering {
    /// Checks a MoE node the kernel can take; never expands it (returns `false`).
    pub(super) fn keep_moe(&mut self, id: NodeId) -> Result<bool, RuntimeError> {
        match self.input_type(id, 0) {
            Some(DataType::Float) | None => Ok(false),
            Some(other) => Err(self.node_err(id, format!("MoE on {other:?} is not supported: the runtime's kernel takes float32 only"))),
        }
    }
}
