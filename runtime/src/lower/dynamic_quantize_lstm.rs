//! onnxruntime's `com.microsoft.DynamicQuantizeLSTM` (what `quantize_dynamic` makes of an
//! LSTM): an LSTM whose weights W `[D, input, 4H]` and R `[D, H, 4H]` are 8-bit, with a scale
//! and zero point per direction or per direction and gate column. Written as the standard
//! `LSTM` on the dequantized weights, transposed to ONNX's `[D, 4H, input]` / `[D, 4H, H]`.
//!
//! onnxruntime itself also quantizes the activations (the input and each step's hidden state,
//! 8 bits over their range) before its integer matmuls; the float LSTM computes on the exact
//! activations, so the two differ by that rounding.

use super::{Lowering, label};
use crate::error::RuntimeError;
use compactor_ir::{NodeId, Tensor, ValueId};

/// `[D, rows, cols]` 8-bit weights dequantized with `scale`/`zero` of `[D]` or `[D, cols]`,
/// transposed to `[D, cols, rows]`.
fn dequantize_transposed(w: &Tensor, scale: &Tensor, zero: Option<&Tensor>) -> Result<Tensor, String> {
    let dims: Vec<usize> = w.dims().iter().map(|&d| d as usize).collect();
    let [d, rows, cols] = dims[..] else { return Err(format!("weights of shape {dims:?}, expected [directions, rows, 4 * hidden]")) };
    let codes = w.to_i64().map_err(|e| e.to_string())?;
    let scales = scale.to_f32().map_err(|e| e.to_string())?;
    let zeros = match zero {
        Some(z) => z.to_i64().map_err(|e| e.to_string())?,
        None => vec![0; scales.len()],
    };
    let per_column = match scales.len() {
        n if n == d => false,
        n if n == d * cols => true,
        n => return Err(format!("{n} scales for weights of shape {dims:?} (expected {d} or {})", d * cols)),
    };
    if zeros.len() != scales.len() {
        return Err(format!("{} zero points for {} scales", zeros.len(), scales.len()));
    }
    let mut out = vec![0f32; codes.len()];
    for k in 0..d {
        for r in 0..rows {
            for c in 0..cols {
                let q = if per_column { k * cols + c } else { k };
                out[(k * cols + c) * rows + r] = ((codes[(k * rows + r) * cols + c] - zeros[q]) as f64 * scales[q] as f64) as f32;
            }
        }
    }
    Tensor::from_f32(&[d as u64, cols as u64, rows as u64], &out).map_err(|e| e.to_string())
}

impl Lowering {
    pub(super) fn expand_dynamic_quantize_lstms(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> =
            self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).domain() == "com.microsoft" && self.graph().node(id).op_type == "DynamicQuantizeLSTM").collect();
        for id in nodes {
            let lbl = label(self.graph(), id);
            let node = self.graph().node(id).clone();
            let constant = |l: &Lowering, i: usize, what: &str| node.input(i).and_then(|v| l.graph().constant(v)).ok_or_else(|| l.err(lbl.clone(), format!("{what} (input {i}) must be a constant")));
            let (w, r) = (constant(self, 1, "W")?, constant(self, 2, "R")?);
            let (w_scale, r_scale) = (constant(self, 8, "W_scale")?, constant(self, 10, "R_scale")?);
            let w_zero = node.input(9).map(|_| constant(self, 9, "W_zero_point")).transpose()?;
            let r_zero = node.input(11).map(|_| constant(self, 11, "R_zero_point")).transpose()?;
            let w_f = dequantize_transposed(&w, &w_scale, w_zero.as_ref()).map_err(|e| self.err(lbl.clone(), format!("W: {e}")))?;
            let r_f = dequantize_transposed(&r, &r_scale, r_zero.as_ref()).map_err(|e| self.err(lbl.clone(), format!("R: {e}")))?;
            let region = node.region;
            let prefix = node.name.clone().unwrap_or_else(|| "DynamicQuantizeLSTM".into());
            let w_v = self.add_initializer(region, &format!("{prefix}.W"), w_f);
            let r_v = self.add_initializer(region, &format!("{prefix}.R"), r_f);
            let inputs: Vec<Option<ValueId>> = vec![node.input(0), Some(w_v), Some(r_v), node.input(3), node.input(4), node.input(5), node.input(6), node.input(7)];
            let n = self.model.graph.node_mut(id);
            n.op_type = "LSTM".into();
            n.domain = None;
            n.inputs = inputs;
            while n.inputs.last() == Some(&None) {
                n.inputs.pop();
            }
            self.report.expanded_functions += 1;
        }
        Ok(())
    }
}
