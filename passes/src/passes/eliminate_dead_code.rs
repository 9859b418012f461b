//! Removes nodes whose results nothing uses, and initializers nothing reads.
//!
//! Mark and sweep from the main graph's outputs: a node is live when one of its outputs is
//! read by a live node or is an output of a live graph; a subgraph is live with its owner, and
//! what its nodes read from enclosing graphs is live too (uses are ids, not names). Graph
//! inputs are never removed: they are the model's interface.

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, NodeId, Patch, PatchError, ValueDef, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EliminateDeadCode {}

impl PassDef for EliminateDeadCode {
    const NAME: &'static str = "eliminate-dead-code";
    const SUMMARY: &'static str = "Remove nodes whose outputs are unused, and unused initializers";
    const KIND: PassKind = PassKind::Transform;
}

/// Nodes and values reachable backwards from the main graph's outputs.
fn live_set(graph: &Graph) -> (HashSet<NodeId>, HashSet<ValueId>) {
    let mut live_nodes = HashSet::new();
    let mut live_values: HashSet<ValueId> = HashSet::new();
    let mut work: Vec<ValueId> = graph.main().outputs.clone();
    while let Some(v) = work.pop() {
        if !live_values.insert(v) {
            continue;
        }
        let Some((node, _)) = graph.producer(v) else { continue };
        if !live_nodes.insert(node) {
            continue;
        }
        let n = graph.node(node);
        work.extend(n.inputs.iter().flatten());
        // A live node's subgraphs run in full: their outputs and everything they read are live.
        for region in n.subgraphs() {
            work.extend(graph.region(region).outputs.iter());
        }
    }
    (live_nodes, live_values)
}

/// Removes what the main graph's outputs do not need (see the module doc): returns the numbers
/// of nodes and initializers removed. Also used to cut a model down to the part that computes
/// chosen values (make them the outputs first).
pub fn remove_dead(graph: &mut Graph) -> Result<(usize, usize), PatchError> {
    let (live_nodes, live_values) = live_set(graph);
    let mut patch = Patch::new();
    let mut dead_nodes = 0;
    for region in graph.region_ids().collect::<Vec<_>>() {
        // Nodes of removed subgraphs go with their owner.
        if graph.region(region).owner.is_some_and(|o| !live_nodes.contains(&o)) {
            continue;
        }
        for &n in &graph.region(region).nodes {
            if !live_nodes.contains(&n) {
                patch.remove_node(n);
                dead_nodes += 1;
            }
        }
    }
    let mut dead_initializers = 0;
    for region in graph.region_ids().collect::<Vec<_>>() {
        if graph.region(region).owner.is_some_and(|o| !live_nodes.contains(&o)) {
            continue;
        }
        let r = graph.region(region);
        for &v in r.initializers.iter().chain(&r.sparse_initializers) {
            if graph.value(v).def != ValueDef::Input && !live_values.contains(&v) {
                patch.remove_value(v);
                dead_initializers += 1;
            }
        }
    }
    graph.apply(patch)?;
    Ok((dead_nodes, dead_initializers))
}

impl Pass for EliminateDeadCode {
    fn run(&self, graph: &mut Graph, _ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let (dead_nodes, dead_initializers) = remove_dead(graph).map_err(|e| PassError::patch(Self::NAME, e))?;
        Ok(PassOutcome::counted(dead_nodes + dead_initializers, format!("removed {dead_nodes} dead nodes and {dead_initializers} unused initializers")))
    }
}
