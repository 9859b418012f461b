//! Writing a quantized weight into the graph: `DequantizeLinear` (with outlier corrections) or
//! `com.microsoft.MatMulNBits` for every reader, AWQ's `1/s` in front of scaled layers, and the
//! original weight's removal.

use super::*;

pub(super) fn scale_tensor(values: &[f32], dtype: ScaleDtype, dims: &[usize]) -> Result<Tensor, PassError> {
    let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    let data_type = match dtype {
        ScaleDtype::F32 => DataType::Float,
        ScaleDtype::F16 => DataType::Float16,
    };
    Tensor::from_raw(data_type, &dims, quant::scales_raw(values, dtype).into()).map_err(ir)
}

/// The sparse f16 correction of a weight's outliers, laid out like the op reads the weight.
pub(super) fn outlier_tensor(q: &QuantizedWeight, layout: &QdqLayout) -> Result<Option<SparseTensor>, PassError> {
    if q.outliers.is_empty() {
        return Ok(None);
    }
    let shape: Vec<i64> = match layout {
        QdqLayout::KN => vec![q.k as i64, q.n as i64],
        QdqLayout::NK => vec![q.n as i64, q.k as i64],
        QdqLayout::ConvPerChannel { dims } => dims.iter().map(|&d| d as i64).collect(),
        QdqLayout::Conv { out_channels, spatial } => [*out_channels, q.k].iter().chain(spatial).map(|&d| d as i64).collect(),
    };
    // The outlier's position in the tensor as the op reads it: [K, N]; [N, K] flattened; or
    // [O, C, spatial] with K = C and column n = o·S + s.
    let flat = |row: usize, col: usize| match layout {
        QdqLayout::KN => row * q.n + col,
        QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => col * q.k + row,
        QdqLayout::Conv { spatial, .. } => {
            let s: usize = spatial.iter().product();
            ((col / s) * q.k + row) * s + col % s
        }
    };
    let mut entries: Vec<(i64, half::f16)> = q.outliers.iter().map(|o| (flat(o.row as usize, o.col as usize) as i64, o.delta)).collect();
    entries.sort_by_key(|e| e.0);
    let count = entries.len() as u64;
    let values = Tensor::from_raw(DataType::Float16, &[count], entries.iter().flat_map(|e| e.1.to_le_bytes()).collect::<Vec<u8>>().into()).map_err(ir)?;
    let indices = Tensor::from_i64(&[count], &entries.iter().map(|e| e.0).collect::<Vec<_>>()).map_err(ir)?;
    Ok(Some(SparseTensor { values: Some(values), indices: Some(indices), dims: shape }))
}

/// Emits `DequantizeLinear` for the weight (plus a Cast from f16 scales and the outlier
/// correction) and returns the value that now feeds the op.
pub(super) fn emit_dequantize(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, layout: &QdqLayout, packed: QdqTensors, stored: Stored) -> Result<PValue, PassError> {
    let region = graph.node(t.node).region;
    let base = graph.value(t.weight).name.clone();
    let dims: Vec<u64> = packed.shape.iter().map(|&d| d as u64).collect();
    let codes = match stored {
        Some(tensor) => tensor,
        None => Tensor::from_raw(packed.dtype, &dims, packed.quantized.into()).map_err(ir)?,
    };
    let qv = patch.new_initializer(region, &format!("{base}_q"), codes);
    let sv = patch.new_initializer(region, &format!("{base}_scale"), scale_tensor(&packed.scales, packed.scale_dtype, &packed.scale_shape)?);
    let scale_dims: Vec<u64> = packed.scale_shape.iter().map(|&d| d as u64).collect();
    let zv = match packed.zero_points {
        Some(zp) => Some(patch.new_initializer(region, &format!("{base}_zero_point"), Tensor::from_raw(packed.dtype, &scale_dims, zp.into()).map_err(ir)?)),
        None => None,
    };
    let mut out = patch.new_value(region, &format!("{base}_dequantized"), None);
    let mut dq = patch.node("DequantizeLinear", Anchor::Before(t.node)).name(format!("{}/DequantizeLinear", t.label)).input(qv).input(sv);
    if let Some(z) = zv {
        dq = dq.input(z);
    }
    dq.output(out).attr("axis", AttrValue::Int(packed.axis)).attr("block_size", AttrValue::Int(packed.block_size as i64)).add();
    // The op gets the weight in the element type it read before (the end of the old chain).
    let index = if t.op == "Gather" { 0 } else { 1 };
    let wanted = graph.node(t.node).input(index).and_then(|v| graph.value(v).elem()).unwrap_or(t.tensor.dtype());
    let scale_type = match packed.scale_dtype {
        ScaleDtype::F32 => DataType::Float,
        ScaleDtype::F16 => DataType::Float16,
    };
    if scale_type != wanted {
        let cast = patch.new_value(region, &format!("{base}_dequantized_{wanted}"), None);
        patch.node("Cast", Anchor::Before(t.node)).input(out).output(cast).attr("to", AttrValue::Int(wanted.code() as i64)).add();
        out = cast;
    }
    if let Some(sparse) = outlier_tensor(q, layout)? {
        let delta = patch.new_sparse_initializer(region, &format!("{base}_outliers"), sparse);
        let delta_cast = patch.new_value(region, &format!("{base}_outliers_{wanted}"), None);
        patch.node("Cast", Anchor::Before(t.node)).input(delta).output(delta_cast).attr("to", AttrValue::Int(wanted.code() as i64)).add();
        let corrected = patch.new_value(region, &format!("{base}_corrected"), None);
        patch.node("Add", Anchor::Before(t.node)).input(out).input(delta_cast).output(corrected).add();
        out = corrected;
    }
    Ok(out)
}

/// The initializers of a weight in `MatMulNBits` form, which every reader of the weight uses.
pub(super) struct NBitsWeight {
    pub(super) b: PValue,
    pub(super) scales: PValue,
    pub(super) zero_points: Option<PValue>,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) bits: u8,
    pub(super) block_size: usize,
    /// The sparse outlier correction, until the first reader makes it a dense f32 value.
    pub(super) outliers: Option<SparseTensor>,
    pub(super) outliers_f32: Option<PValue>,
}

pub(super) fn nbits_initializers(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, packed: MatMulNBitsTensors, stored: Stored) -> Result<NBitsWeight, PassError> {
    let region = graph.node(t.node).region;
    let base = graph.value(t.weight).name.clone();
    let codes = match stored {
        Some(tensor) => tensor,
        None => Tensor::from_raw(DataType::Uint8, &packed.b_shape.map(|d| d as u64), packed.b.into()).map_err(ir)?,
    };
    let b = patch.new_initializer(region, &format!("{base}_nbits"), codes);
    let scales = patch.new_initializer(region, &format!("{base}_scales"), scale_tensor(&packed.scales, packed.scale_dtype, &[packed.scales.len()])?);
    let zero_points = match packed.zero_points {
        Some(z) => {
            let len = z.len() as u64;
            Some(patch.new_initializer(region, &format!("{base}_zero_points"), Tensor::from_raw(DataType::Uint8, &[len], z.into()).map_err(ir)?))
        }
        None => None,
    };
    let outliers = outlier_tensor(q, &QdqLayout::KN)?;
    Ok(NBitsWeight { b, scales, zero_points, k: packed.k, n: packed.n, bits: packed.bits, block_size: packed.block_size, outliers, outliers_f32: None })
}

/// Replaces a MatMul / Gemm by `MatMulNBits` reading `w` (plus the bias Add of a Gemm and the outlier branch).
pub(super) fn emit_matmul_nbits(graph: &Graph, patch: &mut Patch, t: &Target, w: &mut NBitsWeight, activation: Option<PValue>) -> Result<(), PassError> {
    let node = graph.node(t.node);
    let region = node.region;
    let base = graph.value(t.weight).name.clone();
    let x = activation.unwrap_or_else(|| PValue::Existing(t.input.expect("linear layers have an input")));
    let y = node.output(0).ok_or_else(|| PassError::failed(Quantize::NAME, t.label.clone(), "has no output"))?;
    let bias = if t.op == "Gemm" { node.input(2) } else { None };
    let has_outliers = w.outliers.is_some() || w.outliers_f32.is_some();
    // The last node of the replacement produces the op's output value (keeping its name).
    let direct = bias.is_none() && !has_outliers;
    let mm_out = if direct { PValue::Existing(y) } else { patch.new_value(region, &format!("{base}_matmul"), None) };
    let mut mm = patch.node("MatMulNBits", Anchor::Before(t.node)).domain("com.microsoft").name(t.label.clone()).input(x).input(w.b).input(w.scales);
    if let Some(z) = w.zero_points {
        mm = mm.input(z);
    }
    mm.output(mm_out)
        .attr("K", AttrValue::Int(w.k as i64))
        .attr("N", AttrValue::Int(w.n as i64))
        .attr("bits", AttrValue::Int(w.bits as i64))
        .attr("block_size", AttrValue::Int(w.block_size as i64))
        .add();
    let mut acc = mm_out;
    if has_outliers {
        let delta_f32 = match (w.outliers_f32, w.outliers.take()) {
            (Some(v), _) => v,
            (None, Some(sparse)) => {
                let delta = patch.new_sparse_initializer(region, &format!("{base}_outliers"), sparse);
                let delta_f32 = patch.new_value(region, &format!("{base}_outliers_f32"), None);
                patch.node("Cast", Anchor::Before(t.node)).input(delta).output(delta_f32).attr("to", AttrValue::Int(DataType::Float as i64)).add();
                w.outliers_f32 = Some(delta_f32);
                delta_f32
            }
            (None, None) => unreachable!("has_outliers"),
        };
        let extra = patch.new_value(region, &format!("{base}_outlier_product"), None);
        patch.node("MatMul", Anchor::Before(t.node)).input(x).input(delta_f32).output(extra).add();
        let sum = if bias.is_none() { PValue::Existing(y) } else { patch.new_value(region, &format!("{base}_with_outliers"), None) };
        patch.node("Add", Anchor::Before(t.node)).input(acc).input(extra).output(sum).add();
        acc = sum;
    }
    if let Some(c) = bias {
        patch.node("Add", Anchor::Before(t.node)).input(acc).input(c).output(PValue::Existing(y)).add();
    }
    patch.remove_node(t.node);
    Ok(())
}

/// A weight's quantized tensors in the form its layer takes.
pub(super) enum Packed {
    NBits(MatMulNBitsTensors, Stored),
    /// The chain (Transpose, Cast) goes away: the op reads the dequantized weight in the layout
    /// it expects itself: `[K, N]` for MatMul, per transB for Gemm, the original layout for
    /// Conv and Gather.
    Qdq(QdqTensors, QdqLayout, Stored),
}

/// The packed codes (by far the largest tensor of a quantized weight) when they were already
/// written to the pass's scratch file; their in-memory copy is then empty.
pub(super) type Stored = Option<Tensor>;

impl Packed {
    /// Moves the packed codes to `scratch` (a pass streaming a model larger than memory).
    pub(super) fn store_codes(&mut self, scratch: &ScratchFile) -> Result<(), PassError> {
        let fail = |e: compactor_ir::IrError| PassError::ir(Quantize::NAME, e);
        match self {
            Packed::NBits(tensors, stored) => {
                let codes = std::mem::take(&mut tensors.b);
                *stored = Some(scratch.store(DataType::Uint8, &tensors.b_shape.map(|d| d as u64), &codes).map_err(fail)?);
            }
            Packed::Qdq(tensors, _, stored) => {
                let codes = std::mem::take(&mut tensors.quantized);
                let dims: Vec<u64> = tensors.shape.iter().map(|&d| d as u64).collect();
                *stored = Some(scratch.store(tensors.dtype, &dims, &codes).map_err(fail)?);
            }
        }
        Ok(())
    }
}

/// Packs a quantized weight (independent of the other layers, so it runs in parallel).
pub(super) fn pack(graph: &Graph, t: &Target, q: &QuantizedWeight, as_nbits: bool) -> Result<Packed, PassError> {
    let fail = |e: quant::QuantError| PassError::failed(Quantize::NAME, t.label.clone(), e.to_string());
    if as_nbits {
        return Ok(Packed::NBits(quant::pack_matmul_nbits(q).map_err(fail)?, None));
    }
    let layout = if t.also.is_empty() { reads_layout(graph, t) } else { shared::stored_layout(graph, t) };
    Ok(Packed::Qdq(quant::pack_qdq_as(q, &layout).map_err(fail)?, layout, None))
}

/// The layout in which a reader reads the dequantized weight: `[K, N]` for MatMul, per transB
/// for Gemm, the original layout for Conv and Gather.
pub(super) fn reads_layout(graph: &Graph, t: &Target) -> QdqLayout {
    match t.op {
        "MatMul" => QdqLayout::KN,
        "Gemm" if graph.node(t.node).attr_int("transB").unwrap_or(0) != 0 => QdqLayout::NK,
        "Gemm" => QdqLayout::KN,
        _ => t.layout.clone(),
    }
}

/// AWQ: the `1/s` vector of a layer's input channels, as an initializer of the activation's type.
pub(super) fn awq_inverse_scales(graph: &Graph, patch: &mut Patch, t: &Target, scaling: &Scaling) -> Result<Option<PValue>, PassError> {
    let Some(x) = t.input else { return Ok(None) };
    let region = graph.node(t.node).region;
    let elem = graph.value(x).elem().unwrap_or(DataType::Float);
    // Per input channel: the last axis of a matmul's activation, axis 1 of a 1x1 Conv's.
    let spatial = if t.op == "Conv" { t.tensor.dims().len() - 2 } else { 0 };
    let dims: Vec<u64> = std::iter::once(t.k as u64).chain(std::iter::repeat_n(1, spatial)).collect();
    let tensor = match elem {
        DataType::Float => Tensor::from_f32(&dims, &scaling.inverse_scales).map_err(ir)?,
        DataType::Float16 => {
            let raw: Vec<u8> = scaling.inverse_scales.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            Tensor::from_raw(DataType::Float16, &dims, raw.into()).map_err(ir)?
        }
        other => return Err(PassError::failed(Quantize::NAME, t.label.clone(), format!("awq scales a float or float16 activation, not {other}"))),
    };
    let base = graph.value(t.weight).name.clone();
    Ok(Some(patch.new_initializer(region, &format!("{base}_awq_inverse_scale"), tensor)))
}

/// AWQ: `x * (1/s)` in front of a layer, for it to read instead of `x`.
pub(super) fn awq_scaled_input(graph: &Graph, patch: &mut Patch, t: &Target, inverse: PValue) -> Option<PValue> {
    let x = t.input?;
    let region = graph.node(t.node).region;
    let scaled = patch.new_value(region, &format!("{}_awq_scaled", graph.value(x).name), None);
    patch.node("Mul", Anchor::Before(t.node)).name(format!("{}/AwqScale", t.label)).input(x).input(inverse).output(scaled).add();
    Some(scaled)
}

/// Removes the weight, and the chain between it and its readers.
pub(super) fn remove_weight(graph: &Graph, patch: &mut Patch, t: &Target) {
    crate::passes::remove_weight(graph, patch, &t.chain, t.weight);
}

/// Replaces the weight by its quantized form in the layer, removing the old chain and weight.
pub(super) fn emit(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, packed: Packed, scaling: Option<&Scaling>) -> Result<(), PassError> {
    if !t.also.is_empty() {
        return shared::emit(graph, patch, t, q, packed, scaling);
    }
    // AWQ: the layer reads `x * (1/s)` instead of `x`.
    let activation = match scaling {
        Some(scaling) => awq_inverse_scales(graph, patch, t, scaling)?.and_then(|inverse| awq_scaled_input(graph, patch, t, inverse)),
        None => None,
    };
    match packed {
        Packed::NBits(tensors, stored) => {
            let mut weight = nbits_initializers(graph, patch, t, q, tensors, stored)?;
            emit_matmul_nbits(graph, patch, t, &mut weight, activation)?
        }
        Packed::Qdq(tensors, layout, stored) => {
            if let Some(scaled) = activation {
                patch.set_input(t.node, 0, Some(scaled));
            }
            let dequantized = emit_dequantize(graph, patch, t, q, &layout, tensors, stored)?;
            let index = if t.op == "Gather" { 0 } else { 1 };
            patch.set_input(t.node, index, Some(dequantized));
        }
    }
    remove_weight(graph, patch, t);
    Ok(())
}
