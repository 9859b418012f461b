//! Int8 activation Q/DQ pairs become uint8 ones when the opset reaches 21.
//!
//! From opset 21 on, onnxruntime's QDQ propagation copies a Q/DQ pair across a Transpose or
//! Reshape as a new QuantizeLinear with an explicit `output_dtype`, and its S8-to-U8
//! transformer then turns the int8 zero points into uint8 ones without updating that
//! attribute: the session refuses to load ("output_dtype INT8 does not match y_zero_point type
//! UINT8"). onnxruntime's quantizer writes int8 activations when asked for QInt8, so raising
//! such a model's opset broke it. The same rewrite onnxruntime does, done in the file, avoids
//! that and is exact: `q' = q + 128` and `zp' = zp + 128` give the same `(q - zp)·scale`.
//!
//! A pair is rewritten only when every reader of the quantized value is a DequantizeLinear
//! with the same scale and zero point as the QuantizeLinear, and both are constants.

use compactor_ir::{AttrValue, DataType, Graph, Patch, Tensor, UseMap, ValueId};

fn same_constant(g: &Graph, a: Option<ValueId>, b: Option<ValueId>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) if a == b => g.constant(a).is_some(),
        (Some(a), Some(b)) => match (g.constant(a), g.constant(b)) {
            (Some(x), Some(y)) => x.dtype() == y.dtype() && x.dims() == y.dims() && x.raw_data().ok() == y.raw_data().ok(),
            _ => false,
        },
        _ => false,
    }
}

/// Adds the rewrite of every eligible int8 Q -> DQ group to `patch`; returns how many.
pub(super) fn unsigned_activation_qdq(g: &Graph, uses: &UseMap, patch: &mut Patch) -> usize {
    let mut pairs = 0;
    for id in g.all_nodes() {
        let q = g.node(id);
        if !q.is("QuantizeLinear") || q.attr_int("output_dtype").is_some_and(|t| t != 0 && t != DataType::Int8.code() as i64) {
            continue;
        }
        let (Some(quantized), Some(zero)) = (q.output(0), q.input(2)) else { continue };
        let Some(zero_t) = g.constant(zero).filter(|t| t.dtype() == DataType::Int8) else { continue };
        let readers = uses.of(quantized);
        let all_dequantize = !readers.is_empty()
            && readers.iter().all(|u| match u {
                compactor_ir::Use::Node { node, input: 0 } => {
                    let dq = g.node(*node);
                    dq.is("DequantizeLinear") && dq.attr_int("axis") == q.attr_int("axis") && same_constant(g, dq.input(1), q.input(1)) && same_constant(g, dq.input(2), Some(zero))
                }
                _ => false,
            });
        if !all_dequantize {
            continue;
        }
        let Ok(codes) = zero_t.to_i64() else { continue };
        let shifted: Vec<u8> = codes.iter().map(|&c| (c + 128) as u8).collect();
        let Ok(unsigned) = Tensor::from_raw(DataType::Uint8, zero_t.dims(), shifted.into()) else { continue };
        let hint = format!("{}_u8", g.value(zero).name);
        let new_zero = patch.new_initializer(q.region, &hint, unsigned);
        patch.set_input(id, 2, Some(new_zero));
        for u in readers {
            if let compactor_ir::Use::Node { node, .. } = u {
                patch.set_input(*node, 2, Some(new_zero));
            }
        }
        if q.attr_int("output_dtype").is_some() {
            patch.set_attr(id, "output_dtype", AttrValue::Int(DataType::Uint8.code() as i64));
        }
        if let Some(mut ty) = g.value(quantized).ty.clone()
            && let compactor_ir::TypeKind::Tensor { elem, .. } = &mut ty.kind
        {
            *elem = Some(DataType::Uint8);
            patch.set_type(quantized, Some(ty));
        }
        pairs += 1;
    }
    pairs
}
