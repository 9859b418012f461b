//! Ranks of values the model does not declare, followed forward from its inputs and constants
//! through the common ops: exporters rarely declare intermediate shapes, and some expansions
//! must know a rank (RotaryEmbedding takes a 3-D or a 4-D input).

use compactor_ir::graph::Node;
use compactor_ir::{Graph, ValueId};
use std::collections::HashMap;

/// The rank of a constant or a declared value.
fn declared(g: &Graph, v: ValueId) -> Option<usize> {
    let value = g.value(v);
    if let Some(t) = &value.initializer {
        return Some(t.dims().len());
    }
    value.shape().map(|s| s.rank()).or_else(|| g.constant(v).map(|t| t.dims().len()))
}

/// Ranks of the values a forward pass over the graph (subgraphs after their node) can tell,
/// declared ones excluded; where the rules here cannot tell (a GatherND's rank depends on its
/// index's last size, not only on ranks), full shape inference on a copy of the graph may.
pub(super) fn infer_ranks(g: &Graph, opset: i64) -> HashMap<ValueId, usize> {
    let mut ranks = forward_ranks(g);
    let mut copy = g.clone();
    compactor_ir::infer_graph_shapes(&mut copy, opset, &compactor_ir::InferOptions::default());
    for v in g.value_ids() {
        if declared(g, v).is_none()
            && !ranks.contains_key(&v)
            && let Some(shape) = copy.value(v).shape()
        {
            ranks.insert(v, shape.rank());
        }
    }
    ranks
}

fn forward_ranks(g: &Graph) -> HashMap<ValueId, usize> {
    let mut ranks: HashMap<ValueId, usize> = HashMap::new();
    for id in g.all_nodes() {
        let node = g.node(id);
        let Some(first) = output_rank(g, node, &ranks) else { continue };
        // The other outputs of the ops that have them: the skip norms' statistics (the
        // normalized axis kept as 1) and sum, GroupQueryAttention's present key and value.
        let skip_norm = node.domain() == "com.microsoft" && node.op_type.starts_with("Skip");
        let present = node.domain() == "com.microsoft" && node.op_type == "GroupQueryAttention";
        for (i, o) in node.outputs.iter().enumerate() {
            let r = match i {
                0 => first,
                _ if skip_norm => first,
                1 | 2 if present => 4,
                _ => continue,
            };
            if let Some(o) = *o
                && declared(g, o).is_none()
            {
                ranks.insert(o, r);
            }
        }
    }
    ranks
}

/// The rank of a node's first output, from its inputs' ranks.
fn output_rank(g: &Graph, node: &Node, ranks: &HashMap<ValueId, usize>) -> Option<usize> {
    let rank = |i: usize| node.input(i).and_then(|v| declared(g, v).or_else(|| ranks.get(&v).copied()));
    let ints = |i: usize| node.input(i).and_then(|v| g.constant(v)).and_then(|t| t.to_i64().ok());
    let axes_count = || node.attr_ints("axes").map(<[i64]>::len).or_else(|| ints(1).map(|a| a.len()));
    match (node.domain(), node.op_type.as_str()) {
        (
            "",
            "Identity"
            | "Cast"
            | "CastLike"
            | "Relu"
            | "Sigmoid"
            | "Tanh"
            | "Erf"
            | "Exp"
            | "Log"
            | "Sqrt"
            | "Neg"
            | "Abs"
            | "Reciprocal"
            | "Softmax"
            | "LogSoftmax"
            | "Gelu"
            | "LeakyRelu"
            | "Elu"
            | "Softplus"
            | "Clip"
            | "Dropout"
            | "LayerNormalization"
            | "RMSNormalization"
            | "SimplifiedLayerNormalization"
            | "Not"
            | "Sin"
            | "Cos"
            | "Floor"
            | "Ceil"
            | "Round"
            | "Sign"
            | "Transpose"
            | "Concat"
            | "Slice"
            | "Tile"
            | "CumSum",
        ) => rank(0),
        ("", "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Where" | "Mod") => {
            node.inputs.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(i, _)| rank(i)).collect::<Option<Vec<usize>>>()?.into_iter().max()
        }
        ("", "MatMul") | ("com.microsoft", "FusedMatMul") => match (rank(0)?, rank(1)?) {
            (1, 1) => Some(0),
            (1, r) | (r, 1) => Some(r - 1),
            (a, b) => Some(a.max(b)),
        },
        ("", "Gemm") => Some(2),
        ("", "Shape") => Some(1),
        ("", "Size") => Some(0),
        ("", "Gather") => (rank(0)? + rank(1)?).checked_sub(1),
        ("", "Reshape") => ints(1).map(|s| s.len()),
        ("", "Expand") => Some(rank(0)?.max(ints(1)?.len())),
        ("", "Unsqueeze") => Some(rank(0)? + axes_count()?),
        ("", "Squeeze") => rank(0)?.checked_sub(axes_count()?),
        ("", op) if op.starts_with("Reduce") => match node.attr_int("keepdims").unwrap_or(1) {
            0 => rank(0)?.checked_sub(axes_count()?),
            _ => rank(0),
        },
        (
            "com.microsoft",
            "MatMulNBits"
            | "SkipLayerNormalization"
            | "SkipSimplifiedLayerNormalization"
            | "RotaryEmbedding"
            | "FastGelu"
            | "BiasGelu"
            | "Gelu"
            | "QuickGelu"
            | "GroupQueryAttention"
            | "MoE"
            | "MultiHeadAttention"
            | "Attention",
        ) => rank(0),
        _ => None,
    }
}
