//! Analyses: facts about a graph that several passes need, computed once and cached.
//!
//! An [`Analysis`] is computed from a graph (and other analyses) and kept in [`Analyses`], the
//! cache a pipeline hands every pass through [`crate::PassCtx`]. A cached result is reused
//! while the graph's [`Graph::generation`] is the one it was computed at; any change to the
//! graph (an applied patch, or any other `&mut` access) makes every cached result stale, and
//! the next request recomputes it. As Cranelift's `Context` keeps its CFG and dominator tree
//! until the function changes.
//!
//! - [`linear`]: linear layers (`MatMul`, `Gemm`, `Conv` with a constant weight, however the
//!   exporter wrote it), the readers of a weight, trailing bias `Add`s.
//! - [`transformer`]: attention, FFN, norms and residual adds, found structurally.
//! - [`experts`]: FFN experts, whose intermediate neurons are micro-experts (a dense FFN is
//!   one expert).
//! - [`Uses`]: who reads each value.
//!
//! Analyses that later passes need (channel coupling groups for width pruning, MoE/FFN expert
//! structure) belong here too, next to the ones they build on.

pub mod channels;
pub mod experts;
pub mod linear;
pub mod transformer;

pub use channels::{ChannelGroup, ChannelGroups};
pub use linear::{LayerId, LinearLayer, LinearLayers, LinearOp};
pub use transformer::{TransformerBlock, TransformerBlocks};

use compactor_ir::{Graph, InferReport, UseMap};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// A fact about a graph, computed from the graph alone (and other analyses).
pub trait Analysis: Any + Send + Sync + Sized {
    fn compute(graph: &Graph, analyses: &mut Analyses) -> Self;
}

/// The cache of analyses of one graph.
#[derive(Default)]
pub struct Analyses {
    /// The graph generation the cached results belong to.
    generation: Option<u64>,
    cached: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// How many results were computed (rather than reused), for tests and logs.
    computed: usize,
    /// The graph generation right after the last shape inference, its opset and report.
    /// Inference writes types into the graph, so it is tracked apart from the cached results.
    inferred: Option<(u64, i64, InferReport)>,
}

impl Analyses {
    pub fn new() -> Self {
        Self::default()
    }

    /// `A` of `graph`: the cached result if the graph has not changed since it was computed,
    /// else computed now (and cached).
    pub fn get<A: Analysis>(&mut self, graph: &Graph) -> Arc<A> {
        if self.generation != Some(graph.generation()) {
            self.cached.clear();
            self.generation = Some(graph.generation());
        }
        if let Some(hit) = self.cached.get(&TypeId::of::<A>()) {
            return Arc::clone(hit).downcast::<A>().expect("cached under its own type id");
        }
        let result = Arc::new(A::compute(graph, self));
        self.computed += 1;
        // Computing reads the graph only, so the generation still holds.
        self.cached.insert(TypeId::of::<A>(), result.clone());
        result
    }

    /// How many analysis results were computed so far.
    pub fn computed(&self) -> usize {
        self.computed
    }

    /// If `graph` has not changed since shapes were last inferred at `opset`: what inferring
    /// again would report (nothing newly typed or refined; the same conflicts and failures).
    pub fn inferred_shapes(&self, graph: &Graph, opset: i64) -> Option<InferReport> {
        let (_, _, last) = self.inferred.as_ref().filter(|(g, o, _)| *g == graph.generation() && *o == opset)?;
        Some(InferReport { typed: Vec::new(), refined: Vec::new(), ..last.clone() })
    }

    /// Notes that shapes of `graph` (as it is now) were inferred at `opset`.
    pub fn record_inferred_shapes(&mut self, graph: &Graph, opset: i64, report: InferReport) {
        self.inferred = Some((graph.generation(), opset, report));
    }
}

/// Every use of every value ([`Graph::uses`]).
pub struct Uses(pub UseMap);

impl Analysis for Uses {
    fn compute(graph: &Graph, _: &mut Analyses) -> Self {
        Uses(graph.uses())
    }
}

impl std::ops::Deref for Uses {
    type Target = UseMap;
    fn deref(&self) -> &UseMap {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_reused_until_the_graph_changes() {
        let mut model = compactor_ir::text::parse(
            "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,4]\n  init %w = tensor<f32[4,3]>[1,2,3,4,5,6,7,8,9,10,11,12]\n  %y = MatMul(%x, %w)\n  %z = Relu(%y)\n  output %z\n}\n",
        )
        .unwrap();
        let mut analyses = Analyses::new();
        let first = analyses.get::<LinearLayers>(&model.graph);
        assert_eq!(first.len(), 1);
        // LinearLayers asks for Uses, so two results were computed; asking again computes none.
        let computed = analyses.computed();
        let again = analyses.get::<LinearLayers>(&model.graph);
        assert!(Arc::ptr_eq(&first, &again));
        analyses.get::<Uses>(&model.graph);
        assert_eq!(analyses.computed(), computed);
        // A change to the graph makes every result stale.
        let relu = model.graph.all_nodes()[1];
        let mut patch = compactor_ir::Patch::new();
        patch.set_attr(relu, "unused", compactor_ir::AttrValue::Int(1));
        model.graph.apply(patch).unwrap();
        let recomputed = analyses.get::<LinearLayers>(&model.graph);
        assert!(!Arc::ptr_eq(&first, &recomputed));
        assert!(analyses.computed() > computed);
    }
}
