//! How the scale and zero point of a `DequantizeLinear`/`QuantizeLinear` apply to its input
//! (per tensor, per axis or blocked), and the dequantization of constant tensors: shared by the
//! MatMulNBits fusion, the folding and expansion of quantize/dequantize nodes, and QGemm.

use compactor_ir::graph::Node;
use compactor_ir::{DataType, Tensor};

/// How a quantized weight's codes become values: `(code - zero) * scale`, where codes are
/// unsigned (signed inputs are offset by half their range, zero points with them).
pub(super) struct QuantType {
    pub(super) bits: u32,
    /// Added to a signed value to make its unsigned code.
    pub(super) offset: i64,
}

pub(super) fn quant_type(dtype: DataType) -> Option<QuantType> {
    use DataType::*;
    Some(match dtype {
        Int8 => QuantType { bits: 8, offset: 128 },
        Uint8 => QuantType { bits: 8, offset: 0 },
        Int4 => QuantType { bits: 4, offset: 8 },
        Uint4 => QuantType { bits: 4, offset: 0 },
        Int2 => QuantType { bits: 2, offset: 2 },
        Uint2 => QuantType { bits: 2, offset: 0 },
        _ => return None,
    })
}

/// The scale/zero-point layout of a DequantizeLinear, resolved against its input shape.
#[derive(Clone, Copy, Debug)]
pub(super) enum QuantLayout {
    PerTensor,
    PerAxis { axis: usize },
    Blocked { axis: usize, block: usize },
}

pub(super) fn quant_layout(node: &Node, x_rank: usize, scale_rank: usize) -> Result<QuantLayout, String> {
    let block = node.attr_int("block_size").unwrap_or(0);
    let axis = node.attr_int("axis").unwrap_or(1);
    let axis = if axis < 0 { axis + x_rank as i64 } else { axis };
    if block < 0 {
        return Err(format!("negative block_size {block}"));
    }
    if scale_rank == 0 || (scale_rank == 1 && block == 0 && x_rank == 0) {
        return Ok(QuantLayout::PerTensor);
    }
    if axis < 0 || axis as usize >= x_rank.max(1) {
        return Err(format!("axis {} out of range for rank {x_rank}", node.attr_int("axis").unwrap_or(1)));
    }
    let axis = axis as usize;
    if block > 0 {
        if scale_rank != x_rank {
            return Err(format!("blocked scale must have the input's rank {x_rank}, has rank {scale_rank}"));
        }
        Ok(QuantLayout::Blocked { axis, block: block as usize })
    } else if scale_rank == 1 {
        Ok(QuantLayout::PerAxis { axis })
    } else {
        Err(format!("scale of rank {scale_rank} without block_size"))
    }
}

/// Index into the scale tensor for element `idx` (multi-index) of the input.
pub(super) fn scale_index(layout: QuantLayout, idx: &[usize], scale_dims: &[usize]) -> usize {
    match layout {
        QuantLayout::PerTensor => 0,
        QuantLayout::PerAxis { axis } => idx[axis],
        QuantLayout::Blocked { axis, block } => {
            let mut flat = 0;
            for (d, (&i, &n)) in idx.iter().zip(scale_dims).enumerate() {
                let i = if d == axis { i / block } else { i };
                flat = flat * n + i;
            }
            flat
        }
    }
}

pub(super) fn dims_usize(t: &Tensor) -> Vec<usize> {
    t.dims().iter().map(|&d| d as usize).collect()
}

/// Dequantizes constant tensors in f64 (exact for every input type), as DequantizeLinear does.
pub(super) fn dequantize_constant(x: &Tensor, scale: &Tensor, zero: Option<&Tensor>, layout: QuantLayout) -> Result<Vec<f32>, String> {
    let xs: Vec<f64> =
        if x.dtype().is_float() { x.to_f32().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect() } else { x.to_i64().map_err(|e| e.to_string())?.into_iter().map(|v| v as f64).collect() };
    let scales = scale.to_f32().map_err(|e| e.to_string())?;
    let zeros: Vec<f64> = match zero {
        None => vec![0.0; scales.len()],
        Some(z) if z.dtype().is_float() => z.to_f32().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect(),
        Some(z) => z.to_i64().map_err(|e| e.to_string())?.into_iter().map(|v| v as f64).collect(),
    };
    if zeros.len() != scales.len() {
        return Err(format!("zero point has {} elements, scale {}", zeros.len(), scales.len()));
    }
    let dims = dims_usize(x);
    let scale_dims = dims_usize(scale);
    check_scale_shape(layout, &dims, &scale_dims)?;
    let mut idx = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(xs.len());
    for &v in &xs {
        let s = scale_index(layout, &idx, &scale_dims);
        out.push(((v - zeros[s]) * scales[s] as f64) as f32);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

pub(super) fn check_scale_shape(layout: QuantLayout, dims: &[usize], scale_dims: &[usize]) -> Result<(), String> {
    let ok = match layout {
        QuantLayout::PerTensor => scale_dims.iter().product::<usize>() == 1,
        QuantLayout::PerAxis { axis } => scale_dims == [dims[axis]],
        QuantLayout::Blocked { axis, block } => scale_dims.iter().zip(dims).enumerate().all(|(d, (&s, &n))| if d == axis { s == n.div_ceil(block) } else { s == n }),
    };
    if ok { Ok(()) } else { Err(format!("scale shape {scale_dims:?} does not fit input shape {dims:?} ({layout:?})")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use compactor_ir::Graph;
    use compactor_ir::graph::{AttrValue, Attribute};

    #[test]
    fn blocked_dequantization_of_constants() {
        // x: int4 [2, 4], blocks of 2 along axis 1, scale [2, 2].
        let x = Tensor::from_raw(DataType::Int4, &[2, 4], Bytes::from(compactor_ir::tensor::pack_nibbles(&[1, 2, 0xF, 0x8, 3, 4, 5, 6]))).unwrap();
        let scale = Tensor::from_f32(&[2, 2], &[1.0, 2.0, 0.5, 0.25]).unwrap();
        let node = Node {
            op_type: "DequantizeLinear".into(),
            domain: None,
            name: None,
            overload: None,
            inputs: vec![],
            outputs: vec![],
            attributes: vec![Attribute::new("axis", AttrValue::Int(1)), Attribute::new("block_size", AttrValue::Int(2))],
            doc_string: None,
            metadata_props: vec![],
            device_configurations: vec![],
            region: Graph::MAIN,
        };
        let layout = quant_layout(&node, 2, 2).unwrap();
        let y = dequantize_constant(&x, &scale, None, layout).unwrap();
        assert_eq!(y, vec![1.0, 2.0, -2.0, -16.0, 1.5, 2.0, 1.25, 1.5]);
    }
}
