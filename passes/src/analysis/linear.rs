//! Finding "linear layers" regardless of how an exporter wrote them.
//!
//! A linear layer computes `y = x·W (+ b)` with a constant `W`. Exporters write it as
//! `MatMul(x, W)`, `MatMul(x, Transpose(W))`, `MatMul(x, DequantizeLinear(Wq, s, z))`,
//! `MatMul(x, Cast(W))`, `Gemm(x, W, b)` with `transB`, a `Conv`, and with the bias either inside
//! (Gemm, Conv) or in a following `Add`. [`linear_layers`] finds them all and says where the
//! weight really lives and how it maps to the effective `[K, N]` matrix. [`weight_readers`]
//! goes the other way: from a constant to every node that reads it (a weight shared by
//! several layers, or tied between an embedding lookup and an output projection).

use super::{Analyses, Analysis, Uses};
use compactor_ir::pattern::{self, BiasAdd, bias_add};
pub use compactor_ir::pattern::{WeightReader, WeightReaders, WeightStep};
use compactor_ir::{Graph, NodeId, Tensor, UseMap, ValueId};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinearOp {
    MatMul,
    Gemm,
    Conv,
}

/// Where a layer's weight comes from.
#[derive(Clone, Debug)]
pub struct WeightSource {
    /// The constant value at the root (an initializer or a Constant node's output).
    pub value: ValueId,
    pub tensor: Tensor,
    /// Nodes between the constant and the layer, nearest the constant first.
    pub chain: Vec<(NodeId, WeightStep)>,
    /// The stored 2-D tensor is `[N, K]` rather than `[K, N]` (Gemm transB, a Transpose, Conv).
    pub transposed: bool,
}

impl WeightSource {
    pub fn is_quantized(&self) -> bool {
        self.chain.iter().any(|(_, s)| *s == WeightStep::Dequantize)
    }
}

#[derive(Clone, Debug)]
pub struct Bias {
    pub value: ValueId,
    pub tensor: Tensor,
    /// The separate `Add` node, when the bias is not inside the layer op.
    pub add: Option<NodeId>,
}

#[derive(Clone, Debug)]
pub struct LinearLayer {
    pub node: NodeId,
    pub op: LinearOp,
    /// The activation input.
    pub input: ValueId,
    pub weight: WeightSource,
    pub bias: Option<Bias>,
    /// The layer's result, after the bias `Add` if there is one.
    pub output: ValueId,
    /// K: the reduction size (for Conv: in_channels/group × kernel area).
    pub in_features: u64,
    /// N: output features (for Conv: out_channels).
    pub out_features: u64,
}

impl LinearLayer {
    /// A name for reports: the op node's name, else the weight's name.
    pub fn label(&self, graph: &Graph) -> String {
        graph.node(self.node).name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| graph.value(self.weight.value).name.clone())
    }
}

/// Walks from the value feeding a layer back to the constant it comes from.
fn trace_weight(graph: &Graph, mut v: ValueId) -> Option<WeightSource> {
    let mut chain = Vec::new();
    let mut transposed = false;
    for _ in 0..8 {
        if let Some(tensor) = graph.constant(v) {
            chain.reverse();
            return Some(WeightSource { value: v, tensor, chain, transposed });
        }
        let (node_id, _) = graph.producer(v)?;
        let step = WeightStep::of(graph, node_id)?;
        if step == WeightStep::Transpose {
            transposed = !transposed;
        }
        chain.push((node_id, step));
        v = graph.node(node_id).input(0)?;
    }
    None
}

/// A constant bias `b` added to `output` by its only consumer, if the shapes make it a bias.
fn trailing_bias(graph: &Graph, uses: &UseMap, output: ValueId, n: u64) -> Option<Bias> {
    let BiasAdd { add, bias, tensor } = bias_add(graph, uses, output)?;
    let dims = tensor.dims();
    // A bias holds one value per output feature, broadcast over everything else.
    let is_bias = dims.last() == Some(&n) && dims[..dims.len() - 1].iter().all(|&d| d == 1);
    is_bias.then(|| Bias { value: bias, tensor, add: Some(add) })
}

/// A linear layer's place in [`LinearLayers`] (execution order).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LayerId(u32);

impl LayerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Every linear layer of a graph (all regions), in execution order: an [`Analysis`].
#[derive(Clone, Debug, Default)]
pub struct LinearLayers {
    layers: Vec<LinearLayer>,
    by_node: HashMap<NodeId, LayerId>,
}

impl LinearLayers {
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers in execution order, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (LayerId, &LinearLayer)> {
        self.layers.iter().enumerate().map(|(i, l)| (LayerId(i as u32), l))
    }

    pub fn as_slice(&self) -> &[LinearLayer] {
        &self.layers
    }

    /// The layer whose op is `node`.
    pub fn of_node(&self, node: NodeId) -> Option<LayerId> {
        self.by_node.get(&node).copied()
    }
}

impl std::ops::Index<LayerId> for LinearLayers {
    type Output = LinearLayer;
    fn index(&self, id: LayerId) -> &LinearLayer {
        &self.layers[id.index()]
    }
}

impl Analysis for LinearLayers {
    fn compute(graph: &Graph, analyses: &mut Analyses) -> Self {
        let uses = analyses.get::<Uses>(graph);
        let layers = find_linear_layers(graph, &uses);
        let by_node = layers.iter().enumerate().map(|(i, l)| (l.node, LayerId(i as u32))).collect();
        LinearLayers { layers, by_node }
    }
}

/// The linear layers of `graph`, computed once (passes get them cached, from
/// [`crate::PassCtx::analyses`]).
pub fn linear_layers(graph: &Graph) -> LinearLayers {
    LinearLayers::compute(graph, &mut Analyses::new())
}

fn find_linear_layers(graph: &Graph, uses: &UseMap) -> Vec<LinearLayer> {
    let mut layers = Vec::new();
    for id in graph.all_nodes() {
        let node = graph.node(id);
        if !node.domain().is_empty() {
            continue;
        }
        let layer = match node.op_type.as_str() {
            "MatMul" => (|| {
                let (x, w, out) = (node.input(0)?, node.input(1)?, node.output(0)?);
                let weight = trace_weight(graph, w)?;
                let &[a, b] = weight.tensor.dims() else { return None };
                let (k, n) = if weight.transposed { (b, a) } else { (a, b) };
                let bias = trailing_bias(graph, uses, out, n);
                let output = bias.as_ref().and_then(|b| b.add).and_then(|a| graph.node(a).output(0)).unwrap_or(out);
                Some(LinearLayer { node: id, op: LinearOp::MatMul, input: x, weight, bias, output, in_features: k, out_features: n })
            })(),
            "Gemm" => (|| {
                if node.attr_int("transA").unwrap_or(0) != 0 {
                    return None;
                }
                let (x, w, out) = (node.input(0)?, node.input(1)?, node.output(0)?);
                let mut weight = trace_weight(graph, w)?;
                if node.attr_int("transB").unwrap_or(0) != 0 {
                    weight.transposed = !weight.transposed;
                }
                let &[a, b] = weight.tensor.dims() else { return None };
                let (k, n) = if weight.transposed { (b, a) } else { (a, b) };
                let bias = node.input(2).and_then(|c| graph.constant(c).map(|t| Bias { value: c, tensor: t, add: None }));
                Some(LinearLayer { node: id, op: LinearOp::Gemm, input: x, weight, bias, output: out, in_features: k, out_features: n })
            })(),
            "Conv" => (|| {
                let (x, w, out) = (node.input(0)?, node.input(1)?, node.output(0)?);
                let mut weight = trace_weight(graph, w)?;
                let dims = weight.tensor.dims();
                if dims.len() < 3 {
                    return None;
                }
                // [O, I/g, k...]: each output channel is a row over its receptive field.
                weight.transposed = true;
                let (n, k) = (dims[0], dims[1..].iter().product());
                let bias = node.input(2).and_then(|c| graph.constant(c).map(|t| Bias { value: c, tensor: t, add: None }));
                Some(LinearLayer { node: id, op: LinearOp::Conv, input: x, weight, bias, output: out, in_features: k, out_features: n })
            })(),
            _ => None,
        };
        layers.extend(layer);
    }
    layers
}

/// The readers of the constant `weight`, through the steps [`linear_layers`] looks through
/// (2-D Transpose, Cast, Identity), so a layer's weight and an embedding table tied to it
/// (`Gather(E)` and `MatMul(x, Transpose(E))`) show up as readers of the same constant.
pub fn weight_readers(graph: &Graph, uses: &UseMap, weight: ValueId) -> WeightReaders {
    pattern::weight_readers(graph, uses, weight, &[WeightStep::Transpose, WeightStep::Cast, WeightStep::Identity])
}
