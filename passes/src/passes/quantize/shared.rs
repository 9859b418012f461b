//! Weights read by several nodes: layers that share weights (ALBERT-style encoders applying
//! one layer several times) and embedding tables tied to the output projection (`Gather(E)`
//! and `MatMul(h, Transpose(E))`, or a Gemm with transB).
//!
//! Such a weight is quantized once and every reader uses the compressed form: one
//! `DequantizeLinear` feeding them all (a reader that wants the other orientation reads a
//! `Transpose` of it), or one set of `MatMulNBits` initializers that each reader's
//! `MatMulNBits` references. The blocks must run along every layer's reduction axis; an
//! embedding lookup reads whole rows, so it takes whatever layout the layers need.
//! Calibrated methods see the weight's uses together: GPTQ and the mixed-precision budget
//! get the sum of the readers' Hessians, AWQ the mean of their channel magnitudes and a `Mul`
//! by `1/s` in front of every reader.

use super::emit::{awq_inverse_scales, awq_scaled_input, emit_dequantize, emit_matmul_nbits, nbits_initializers, reads_layout, remove_weight};
use super::{Calibration, OPS, Packed, Scaling, Target};
use crate::analysis::linear::WeightReaders;
use crate::pass::PassDef;
use crate::pass::PassError;
use crate::passes::quantize::Quantize;
use crate::quant::{Hessian, QdqLayout, QuantizedWeight};
use compactor_ir::{Anchor, AttrValue, Graph, Patch};

/// How one reader would read the weight on its own.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReaderLayout<'a> {
    pub op: &'a str,
    pub label: &'a str,
    pub layout: &'a QdqLayout,
    pub k: usize,
    pub n: usize,
}

fn blocked_axis(layout: &QdqLayout) -> &'static str {
    match layout {
        QdqLayout::KN => "along axis 0 of the stored weight",
        QdqLayout::NK => "along axis 1 of the stored weight",
        QdqLayout::Conv { .. } => "along the input channels",
        QdqLayout::ConvPerChannel { .. } => "per output channel",
    }
}

/// The one layout (with its `[K, N]` reading) that serves every reader of a shared weight.
/// A layer needs the blocks along its reduction axis, so the layers must agree on it; an
/// embedding lookup dequantizes whole rows, which any blocking of a 2-D table gives, so it
/// takes theirs.
pub(super) fn shared_layout(readers: &[ReaderLayout<'_>]) -> Result<(QdqLayout, usize, usize), String> {
    let Some(fixed) = readers.iter().find(|r| r.op != "Gather").or(readers.first()) else {
        return Err("the weight has no readers".into());
    };
    for r in readers {
        let same = r.layout == fixed.layout && (r.k, r.n) == (fixed.k, fixed.n);
        let adapts = r.op == "Gather" && matches!(fixed.layout, QdqLayout::KN | QdqLayout::NK);
        if !same && !adapts {
            return Err(format!(
                "shared weight: '{}' needs blocks {} (K = {}), '{}' blocks {} (K = {}); no one layout serves both",
                fixed.label,
                blocked_axis(fixed.layout),
                fixed.k,
                r.label,
                blocked_axis(r.layout),
                r.k
            ));
        }
    }
    Ok((fixed.layout.clone(), fixed.k, fixed.n))
}

/// Which input of a reader the weight is.
fn weight_input(t: &Target) -> usize {
    if t.op == "Gather" { 0 } else { 1 }
}

/// One target for a weight read by several nodes (`targets`: the readers this pass can rewrite,
/// in execution order), or why it cannot be quantized.
pub(super) fn group(graph: &Graph, readers: &WeightReaders, mut targets: Vec<Target>, ops: &[String]) -> Result<Target, String> {
    if readers.is_output {
        return Err("shared weight: it is also a graph output".into());
    }
    for r in &readers.readers {
        if targets.iter().any(|t| t.node == r.node && weight_input(t) == r.input) {
            continue;
        }
        let node = graph.node(r.node);
        let why = if OPS.contains(&node.op_type.as_str()) && !ops.contains(&node.op_type) {
            "which ops does not select".to_string()
        } else {
            format!("which reads it as input {} and is not rewritten by quantize", r.input)
        };
        return Err(format!("shared weight: also read by {}, {why}", node.label(r.node)));
    }
    let region = graph.node(targets[0].node).region;
    if let Some(t) = targets.iter().find(|t| graph.node(t.node).region != region) {
        return Err(format!("shared weight: read in more than one graph ('{}' is in another)", t.label));
    }
    let elem = |t: &Target| graph.node(t.node).input(weight_input(t)).and_then(|v| graph.value(v).elem());
    if let Some(t) = targets.iter().find(|t| elem(t) != elem(&targets[0])) {
        return Err(format!("shared weight: '{}' and '{}' read it as different element types", targets[0].label, t.label));
    }
    let layouts: Vec<ReaderLayout<'_>> = targets.iter().map(|t| ReaderLayout { op: t.op, label: &t.label, layout: &t.layout, k: t.k, n: t.n }).collect();
    let (layout, k, n) = shared_layout(&layouts)?;
    let mut first = targets.remove(0);
    first.layout = layout;
    (first.k, first.n) = (k, n);
    first.chain = readers.chain_nodes();
    first.also = targets;
    Ok(first)
}

/// The orientation a shared weight's `DequantizeLinear` output takes: the stored one when an
/// embedding lookup or a Conv reads it, else the one most layers read (ties: `[K, N]`). The
/// other layers read a `Transpose` of it.
pub(super) fn stored_layout(graph: &Graph, t: &Target) -> QdqLayout {
    if t.readers().any(|r| matches!(r.op, "Gather" | "Conv")) {
        return t.layout.clone();
    }
    let nk = t.readers().filter(|r| reads_layout(graph, r) == QdqLayout::NK).count();
    if 2 * nk > t.readers().count() { QdqLayout::NK } else { QdqLayout::KN }
}

/// A shared weight's statistics from its readers': the sum of the Hessians of the readers that
/// multiply an activation (all of them need one, else the weight gets none), and for AWQ,
/// when every reader multiplies an activation, the mean of their per-channel mean |x|.
pub(super) fn combine_calibration(calibration: &mut Calibration, targets: &[&Target]) -> Result<(), PassError> {
    for t in targets.iter().filter(|t| !t.also.is_empty()) {
        let products: Vec<&Target> = t.readers().filter(|r| r.rows.is_some()).collect();
        let hessians: Option<Vec<&Hessian>> = products.iter().map(|r| r.input.and_then(|x| calibration.hessians.get(&x)).filter(|h| h.k() == t.k)).collect();
        let Some(hessians) = hessians.filter(|h| !h.is_empty()) else { continue };
        let k = t.k;
        let mut sum = vec![0.0f64; k * k];
        for h in &hessians {
            for (i, s) in sum.iter_mut().enumerate() {
                *s += h.get(i / k, i % k);
            }
        }
        let hessian = Hessian::from_matrix(k, sum).map_err(|e| PassError::failed(Quantize::NAME, t.label.clone(), e.to_string()))?;
        calibration.shared_hessians.insert(t.weight, hessian);
        if products.len() == t.readers().count() {
            let means: Option<Vec<&Vec<f32>>> = products.iter().map(|r| r.input.and_then(|x| calibration.mean_abs.get(&x))).collect();
            if let Some(means) = means.filter(|m| !m.is_empty() && m.iter().all(|v| v.len() == k)) {
                let mean = (0..k).map(|c| means.iter().map(|m| m[c]).sum::<f32>() / means.len() as f32).collect();
                calibration.shared_mean_abs.insert(t.weight, mean);
            }
        }
    }
    Ok(())
}

/// Why a shared weight got less than the options asked for, for its report.
pub(super) fn notes(graph: &Graph, t: &Target, awq: bool, matmulnbits: bool, scaled: bool, as_nbits: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if t.also.is_empty() {
        return notes;
    }
    let lookup = t.readers().find(|r| r.rows.is_none());
    if awq
        && !scaled
        && let Some(r) = lookup
    {
        notes.push(format!("not AWQ-scaled: '{}' ({}) has no activation to divide by the scales", r.label, r.op));
    }
    if matmulnbits
        && !as_nbits
        && let Some(r) =
            t.readers().find(|r| !matches!(r.op, "MatMul" | "Gemm") || graph.node(r.node).attr_float("alpha").unwrap_or(1.0) != 1.0 || graph.node(r.node).attr_float("beta").unwrap_or(1.0) != 1.0)
    {
        notes.push(format!("DequantizeLinear form for every reader: '{}' ({}) cannot read MatMulNBits, and the readers share one form", r.label, r.op));
    }
    notes
}

/// Replaces a shared weight by its quantized form in every reader.
pub(super) fn emit(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, packed: Packed, scaling: Option<&Scaling>) -> Result<(), PassError> {
    // AWQ: one `1/s` vector, a Mul in front of every reader.
    let inverse = match scaling {
        Some(scaling) => awq_inverse_scales(graph, patch, t, scaling)?,
        None => None,
    };
    match packed {
        Packed::NBits(tensors, stored) => {
            let mut weight = nbits_initializers(graph, patch, t, q, tensors, stored)?;
            for r in t.readers() {
                let activation = inverse.and_then(|inv| awq_scaled_input(graph, patch, r, inv));
                emit_matmul_nbits(graph, patch, r, &mut weight, activation)?;
            }
        }
        Packed::Qdq(tensors, layout, stored) => {
            let dequantized = emit_dequantize(graph, patch, t, q, &layout, tensors, stored)?;
            let region = graph.node(t.node).region;
            let mut transposed = None;
            for r in t.readers() {
                if let Some(scaled) = inverse.and_then(|inv| awq_scaled_input(graph, patch, r, inv)) {
                    patch.set_input(r.node, 0, Some(scaled));
                }
                let value = if matches!(r.op, "Gather" | "Conv") || reads_layout(graph, r) == layout {
                    dequantized
                } else {
                    *transposed.get_or_insert_with(|| {
                        let out = patch.new_value(region, &format!("{}_transposed", graph.value(t.weight).name), None);
                        patch.node("Transpose", Anchor::Before(t.node)).name(format!("{}/Transpose", t.label)).input(dequantized).output(out).attr("perm", AttrValue::Ints(vec![1, 0])).add();
                        out
                    })
                };
                patch.set_input(r.node, weight_input(r), Some(value));
            }
        }
    }
    remove_weight(graph, patch, t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader<'a>(op: &'a str, label: &'a str, layout: &'a QdqLayout, k: usize, n: usize) -> ReaderLayout<'a> {
        ReaderLayout { op, label, layout, k, n }
    }

    /// Layers applying one weight several times read it the same way: that layout.
    #[test]
    fn layers_sharing_a_weight_keep_its_layout() {
        let kn = QdqLayout::KN;
        let readers: Vec<ReaderLayout<'_>> = (0..6).map(|_| reader("MatMul", "layer", &kn, 384, 1536)).collect();
        assert_eq!(shared_layout(&readers).unwrap(), (QdqLayout::KN, 384, 1536));
    }

    /// A tied embedding `E [vocab, hidden]`: the lookup reads rows, the LM head `h · Eᵀ` (a
    /// MatMul through a Transpose, or a Gemm with transB) reduces along hidden. Blocks along
    /// hidden (axis 1 of the table) serve both, in the order the readers come.
    #[test]
    fn a_tied_embedding_is_blocked_along_hidden_for_the_lookup_and_the_head() {
        let (nk, vocab, hidden) = (QdqLayout::NK, 1000, 64);
        for readers in [
            vec![reader("Gather", "embed", &nk, hidden, vocab), reader("MatMul", "lm_head", &nk, hidden, vocab)],
            vec![reader("Gemm", "lm_head", &nk, hidden, vocab), reader("Gather", "embed", &nk, hidden, vocab)],
        ] {
            assert_eq!(shared_layout(&readers).unwrap(), (QdqLayout::NK, hidden, vocab));
        }
        // A table whose layer reduces along its first axis (x [.., vocab] · E): the lookup
        // takes blocks along axis 0 as well.
        let kn = QdqLayout::KN;
        let readers = [reader("Gather", "embed", &nk, hidden, vocab), reader("MatMul", "unembed", &kn, vocab, hidden)];
        assert_eq!(shared_layout(&readers).unwrap(), (QdqLayout::KN, vocab, hidden));
        // Only lookups: the table's own layout.
        assert_eq!(shared_layout(&[reader("Gather", "a", &nk, hidden, vocab), reader("Gather", "b", &nk, hidden, vocab)]).unwrap(), (QdqLayout::NK, hidden, vocab));
    }

    /// Layers that reduce along different axes of one stored weight (`x · W` and `y · Wᵀ`)
    /// cannot share a blocked layout: the reason names both.
    #[test]
    fn layers_reducing_along_different_axes_have_no_shared_layout() {
        let (kn, nk) = (QdqLayout::KN, QdqLayout::NK);
        let e = shared_layout(&[reader("MatMul", "up", &kn, 64, 128), reader("MatMul", "down", &nk, 128, 64)]).unwrap_err();
        assert!(e.contains("'up'") && e.contains("'down'") && e.contains("axis 0") && e.contains("axis 1"), "{e}");
        let conv = QdqLayout::Conv { out_channels: 8, spatial: vec![3, 3] };
        let per_channel = QdqLayout::ConvPerChannel { dims: vec![8, 16, 3, 3] };
        assert!(shared_layout(&[reader("Conv", "a", &conv, 16, 72), reader("Conv", "b", &conv, 16, 72)]).is_ok());
        assert!(shared_layout(&[reader("Conv", "a", &conv, 16, 72), reader("Conv", "b", &per_channel, 144, 8)]).is_err());
    }
}
