//! Weights this pass leaves to the op that reads them: constant weights of integer and
//! fused ops (onnxruntime's dynamic quantizer writes MatMulInteger, ConvInteger, QAttention,
//! QEmbedLayerNormalization and DynamicQuantizeLSTM; its optimizer writes Attention and
//! EmbedLayerNormalization with f32 weights). Requantizing integer weights would need their
//! op rewritten around a new scale layout, and the fused ops take f32 weights only; each is
//! listed in the report with the reason.

use compactor_ir::{Graph, NodeId};

/// `(domain, op, weight inputs, why)`.
const LEFT_TO_THEIR_OP: &[(&str, &str, &[usize], &str)] = &[
    ("", "MatMulInteger", &[1], "already int8/uint8 for MatMulInteger, which reads its weight with one zero point per tensor or column and no scale"),
    ("", "ConvInteger", &[1], "already int8/uint8 for ConvInteger, which reads its weight with one zero point per tensor or output channel and no scale"),
    ("", "QLinearMatMul", &[3], "already quantized for QLinearMatMul"),
    ("", "QLinearConv", &[3], "already quantized for QLinearConv"),
    ("com.microsoft", "QAttention", &[1], "already int8 for com.microsoft.QAttention (per-tensor or per-column scale)"),
    ("com.microsoft", "DynamicQuantizeLSTM", &[1, 2], "already int8 for com.microsoft.DynamicQuantizeLSTM"),
    ("com.microsoft", "QEmbedLayerNormalization", &[2, 3, 4], "already 8-bit for com.microsoft.QEmbedLayerNormalization"),
    ("com.microsoft", "MatMulNBits", &[1], "already quantized (com.microsoft.MatMulNBits)"),
    ("com.microsoft", "Attention", &[1], "read by com.microsoft.Attention, which takes f32 Q/K/V weights only"),
    ("com.microsoft", "EmbedLayerNormalization", &[2, 3, 4], "read by com.microsoft.EmbedLayerNormalization, which takes f32 tables only"),
];

/// Every constant weight of those ops, as `(label, reason)`.
pub(super) fn weights_left_to_their_op(graph: &Graph) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for id in graph.all_nodes() {
        let node = graph.node(id);
        let Some(&(_, _, inputs, why)) = LEFT_TO_THEIR_OP.iter().find(|(d, op, _, _)| node.domain() == *d && node.op_type == *op) else { continue };
        for &i in inputs {
            if let Some(w) = node.input(i).filter(|&w| graph.constant(w).is_some()) {
                out.push((weight_label(graph, id, &graph.value(w).name), format!("{why}; left as it is")));
            }
        }
    }
    out
}

fn weight_label(graph: &Graph, node: NodeId, weight: &str) -> String {
    format!("{} weight '{weight}'", graph.node(node).label(node))
}
