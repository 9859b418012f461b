//! The constant operand of `Add` and `Mul` put second, so that tract fuses a linear layer's bias
//! into its matmul.

use compactor_ir::pattern::constant_operand;
use compactor_ir::{Graph, NodeId};

/// Puts the constant operand of `Add` and `Mul` second (both commute, broadcasting included).
/// PyTorch exports a linear layer's bias as `Add(bias, MatMul(..))`; tract fuses a bias into
/// its matmul only when it comes second, and otherwise runs a separate broadcasting add (a
/// fifth of MiniLM's time at batch 8).
pub(super) fn constants_second(g: &mut Graph) -> usize {
    let swaps: Vec<NodeId> = g
        .all_nodes()
        .into_iter()
        .filter(|&id| {
            let n = g.node(id);
            (n.is("Add") || n.is("Mul")) && matches!(constant_operand(g, id), Some((0, _)))
        })
        .collect();
    for &id in &swaps {
        g.node_mut(id).inputs.swap(0, 1);
    }
    swaps.len()
}
