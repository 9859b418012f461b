//! Graph patterns that the passes' analyses and the runtime's lowering both look for, written
//! once: a constant operand of a binary op, a bias `Add` after a value, and the readers of a
//! weight through the steps exporters put between a constant and its layer.

use crate::graph::{Graph, NodeId, Use, UseMap, ValueId};
use crate::tensor::Tensor;

/// The one constant input of a two-input node (`Add(bias, x)`, `Mul(x, scale)`): its index and
/// tensor. `None` when neither or both inputs are constants.
pub fn constant_operand(graph: &Graph, node: NodeId) -> Option<(usize, Tensor)> {
    let n = graph.node(node);
    let [Some(a), Some(b)] = n.inputs[..] else { return None };
    match (graph.constant(a), graph.constant(b)) {
        (Some(t), None) => Some((0, t)),
        (None, Some(t)) => Some((1, t)),
        _ => None,
    }
}

/// An `Add` of a constant to a value (a bias, if its shape says so).
#[derive(Clone, Debug)]
pub struct BiasAdd {
    pub add: NodeId,
    /// The constant operand.
    pub bias: ValueId,
    pub tensor: Tensor,
}

/// The `Add` that is the only reader of `value`, in the same region, when its other operand is a
/// constant. Whether the constant's shape makes it a bias of the producer is the caller's call.
pub fn bias_add(graph: &Graph, uses: &UseMap, value: ValueId) -> Option<BiasAdd> {
    let [Use::Node { node: add, .. }] = uses.of(value)[..] else { return None };
    let n = graph.node(add);
    if !n.is("Add") || n.region != graph.value(value).region {
        return None;
    }
    let bias = n.inputs.iter().flatten().copied().find(|&v| v != value)?;
    let tensor = graph.constant(bias)?;
    Some(BiasAdd { add, bias, tensor })
}

/// A node between a weight and the layer that reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightStep {
    /// A 2-D `Transpose` (`perm` absent or `[1, 0]`): the layer reads the weight's transpose.
    Transpose,
    Cast,
    Dequantize,
    Identity,
}

impl WeightStep {
    /// The step `node` is, reading the weight at input 0, if it is one (default domain).
    pub fn of(graph: &Graph, node: NodeId) -> Option<WeightStep> {
        let n = graph.node(node);
        if !n.domain().is_empty() {
            return None;
        }
        match n.op_type.as_str() {
            // Only a 2-D swap keeps a matrix weight a matrix.
            "Transpose" if n.attr_ints("perm").is_none_or(|p| p == [1, 0]) => Some(WeightStep::Transpose),
            "Cast" => Some(WeightStep::Cast),
            "DequantizeLinear" => Some(WeightStep::Dequantize),
            "Identity" => Some(WeightStep::Identity),
            _ => None,
        }
    }
}

/// A node that reads a weight, directly or through [`WeightStep`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightReader {
    pub node: NodeId,
    /// Which input of `node` the weight arrives at.
    pub input: usize,
    /// Nodes between the weight and the reader, nearest the weight first.
    pub chain: Vec<NodeId>,
}

impl WeightReader {
    /// Whether the reader sees the weight transposed (an odd number of Transposes on the way).
    pub fn transposed(&self, graph: &Graph) -> bool {
        self.chain.iter().filter(|&&n| graph.node(n).is("Transpose")).count() % 2 == 1
    }
}

/// Everything that reads a weight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightReaders {
    /// In node-id order along each chain, deduplicated: a node reading the weight at two
    /// inputs is two readers.
    pub readers: Vec<WeightReader>,
    /// The weight, or a value of its chain, is also a graph (or subgraph) output.
    pub is_output: bool,
}

impl WeightReaders {
    /// Every chain node, each once, in the order first met.
    pub fn chain_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for n in self.readers.iter().flat_map(|r| &r.chain) {
            if !nodes.contains(n) {
                nodes.push(*n);
            }
        }
        nodes
    }
}

/// The readers of `weight` (a constant, or a value computed from one), following the steps in
/// `through` at input 0 for at most eight nodes, so a layer's weight and an embedding table tied
/// to it (`Gather(E)` and `MatMul(x, Transpose(E))`) show up as readers of the same constant.
pub fn weight_readers(graph: &Graph, uses: &UseMap, weight: ValueId, through: &[WeightStep]) -> WeightReaders {
    let mut out = WeightReaders::default();
    let mut pending = vec![(weight, Vec::new())];
    while let Some((v, chain)) = pending.pop() {
        for u in uses.of(v) {
            let Use::Node { node, input } = *u else {
                out.is_output = true;
                continue;
            };
            let step = input == 0 && chain.len() < 8 && WeightStep::of(graph, node).is_some_and(|s| through.contains(&s));
            match graph.node(node).output(0).filter(|_| step) {
                Some(next) => {
                    let mut longer = chain.clone();
                    longer.push(node);
                    pending.push((next, longer));
                }
                None => out.readers.push(WeightReader { node, input: input as usize, chain: chain.clone() }),
            }
        }
    }
    out.readers.sort_by_key(|r| (r.node, r.input));
    out.readers.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> crate::Model {
        crate::text::parse(&format!("model ir_version=8 opset=[ai.onnx=17]\ngraph g {{\n{body}}}\n")).unwrap()
    }

    fn node(m: &crate::Model, op: &str) -> NodeId {
        m.graph.all_nodes().into_iter().find(|&n| m.graph.node(n).is(op)).unwrap()
    }

    #[test]
    fn a_bias_is_the_constant_of_the_only_add_reading_a_value() {
        let m = parse("  input %x: f32[2,4]\n  init %w = tensor<f32[4,3]>[1,2,3,4,5,6,7,8,9,10,11,12]\n  init %b = tensor<f32[3]>[1,2,3]\n  %y = MatMul(%x, %w)\n  %z = Add(%b, %y)\n  output %z\n");
        let uses = m.graph.uses();
        let y = m.graph.node(node(&m, "MatMul")).output(0).unwrap();
        let found = bias_add(&m.graph, &uses, y).unwrap();
        assert_eq!((found.add, m.graph.value(found.bias).name.as_str(), found.tensor.dims()), (node(&m, "Add"), "b", &[3u64][..]));
        assert_eq!(constant_operand(&m.graph, node(&m, "Add")).map(|(i, _)| i), Some(0));
        assert!(constant_operand(&m.graph, node(&m, "MatMul")).is_some(), "MatMul's weight is its one constant input");
        // A second reader, or an Add of two computed values, is no bias.
        let m2 = parse("  input %x: f32[2,4]\n  init %w = tensor<f32[4,3]>[1,2,3,4,5,6,7,8,9,10,11,12]\n  %y = MatMul(%x, %w)\n  %z = Add(%y, %y)\n  output %z\n");
        let y2 = m2.graph.node(node(&m2, "MatMul")).output(0).unwrap();
        assert!(bias_add(&m2.graph, &m2.graph.uses(), y2).is_none());
        assert!(constant_operand(&m2.graph, node(&m2, "Add")).is_none());
    }

    #[test]
    fn readers_are_found_through_the_chosen_steps() {
        let m = parse(
            "  input %x: f32[2,4]\n  input %i: i64[2]\n  init %e = tensor<f32[3,4]>[1,2,3,4,5,6,7,8,9,10,11,12]\n  %t = Transpose(%e) {perm=[1,0]}\n  %y = MatMul(%x, %t)\n  %g = Gather(%e, %i)\n  output %y, %g\n",
        );
        let uses = m.graph.uses();
        let e = m.graph.main().initializers[0];
        let all = weight_readers(&m.graph, &uses, e, &[WeightStep::Transpose]);
        assert_eq!(all.readers.len(), 2);
        assert!(!all.is_output);
        let matmul = all.readers.iter().find(|r| r.node == node(&m, "MatMul")).unwrap();
        assert_eq!((matmul.input, matmul.chain.clone(), matmul.transposed(&m.graph)), (1, vec![node(&m, "Transpose")], true));
        let gather = all.readers.iter().find(|r| r.node == node(&m, "Gather")).unwrap();
        assert!(gather.chain.is_empty() && !gather.transposed(&m.graph));
        // Not following Transpose: the Transpose itself is the reader.
        let direct = weight_readers(&m.graph, &uses, e, &[]);
        assert!(direct.readers.iter().any(|r| r.node == node(&m, "Transpose")));
    }
}
