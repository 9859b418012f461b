//! `com.microsoft.MatMulNBits` on the fused kernel, registered in place of tract's own.
//!
//! tract 0.23.9's MatMulNBits takes only 2 and 4 bits, packed uint8 zero points and no
//! `g_idx`; it rounds scales to f16 on its block-32 path and builds an f32 weight for every
//! other block size. This one takes what onnxruntime takes (2, 4 and 8 bits, any block size,
//! f32 or f16 scales, packed uint8 or float zero points, `g_idx`, bias) and keeps the weight
//! packed: see [`BlockQuantWeight`].

use super::block_matmul::{BlockQuantWeight, SharedWeight};
use std::sync::Arc;
use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The op builder for tract's ONNX op register.
pub fn build_matmul_nbits(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block_size: usize = node.get_attr("block_size")?;
    ensure!(matches!(bits, 2 | 4 | 8), "MatMulNBits: bits must be 2, 4 or 8 (got {bits})");
    ensure!(block_size > 0 && k > 0 && n > 0, "MatMulNBits: K, N and block_size must be positive");
    let mut optional = optional_inputs(node).skip(3);
    let zero_points = optional.next().flatten();
    let g_idx = optional.next().flatten();
    let bias = optional.next().flatten();
    Ok((expand(MatMulNBits { k, n, bits: bits as u32, block_size, zero_points, g_idx, bias }), vec![]))
}

/// The parsed node; [`Expansion::wire`] reads its constant inputs into a packed weight.
#[derive(Debug, Clone)]
struct MatMulNBits {
    k: usize,
    n: usize,
    bits: u32,
    block_size: usize,
    zero_points: Option<usize>,
    g_idx: Option<usize>,
    bias: Option<usize>,
}

fn constant(model: &TypedModel, outlet: OutletId, what: &str) -> TractResult<Arc<Tensor>> {
    model.outlet_fact(outlet)?.konst.clone().with_context(|| format!("MatMulNBits: {what} must be a constant"))
}

fn f32s(t: &Tensor) -> TractResult<Vec<f32>> {
    Ok(t.cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect())
}

impl MatMulNBits {
    fn weight(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<BlockQuantWeight> {
        let (n, k, bits) = (self.n, self.k, self.bits);
        let k_blocks = k.div_ceil(self.block_size);
        let packed_t = constant(model, inputs[1], "B")?;
        ensure!(packed_t.datum_type() == u8::datum_type(), "MatMulNBits: B must be uint8, got {:?}", packed_t.datum_type());
        let packed: Vec<u8> = packed_t.to_plain_array_view::<u8>()?.iter().copied().collect();
        let scales_t = constant(model, inputs[2], "scales")?;
        let scales = f32s(&scales_t)?;
        let default_zero = (1u32 << (bits - 1)) as f32;
        let zeros = match self.zero_points {
            None => vec![default_zero; n * k_blocks],
            Some(ix) => {
                let zp = constant(model, inputs[ix], "zero_points")?;
                if zp.datum_type() == u8::datum_type() {
                    // Packed like B: each column's zero points padded to whole bytes.
                    let bytes: Vec<u8> = zp.to_plain_array_view::<u8>()?.iter().copied().collect();
                    let per_col = (k_blocks * bits as usize).div_ceil(8);
                    ensure!(bytes.len() == n * per_col, "MatMulNBits: {} packed zero point bytes, need N*ceil(k_blocks*bits/8) = {}", bytes.len(), n * per_col);
                    let mask = ((1u32 << bits) - 1) as u8;
                    let mut zeros = Vec::with_capacity(n * k_blocks);
                    for col in 0..n {
                        for b in 0..k_blocks {
                            let bit = b * bits as usize;
                            zeros.push(((bytes[col * per_col + bit / 8] >> (bit % 8)) & mask) as f32);
                        }
                    }
                    zeros
                } else {
                    f32s(&zp)?
                }
            }
        };
        let g_idx = match self.g_idx {
            None => None,
            Some(ix) => {
                let g = constant(model, inputs[ix], "g_idx")?;
                let g: Vec<i64> = g.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
                ensure!(g.iter().all(|&b| b >= 0), "MatMulNBits: negative g_idx entry");
                let g: Vec<u32> = g.into_iter().map(|b| b as u32).collect();
                // The trivial order is the plain blocked layout: keep the fast path for it.
                let trivial = g.iter().enumerate().all(|(i, &b)| b as usize == i / self.block_size);
                (!trivial).then_some(g)
            }
        };
        let bias = match self.bias {
            None => None,
            Some(ix) => {
                let bias = constant(model, inputs[ix], "bias")?;
                Some(f32s(&bias)?)
            }
        };
        let weight = BlockQuantWeight { n, k, bits, block_size: self.block_size, packed, scales, zeros, g_idx, bias };
        weight.validate().map_err(|e| format_err!("MatMulNBits: {e}"))?;
        Ok(weight)
    }
}

impl Expansion for MatMulNBits {
    fn name(&self) -> StaticName {
        "MatMulNBits".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        let n = self.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let last = rank as usize - 1;
            for axis in 0..last {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[last], n.clone())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let weight = self.weight(model, inputs)?;
        model.wire_node(prefix, BlockQuantMatMul { weight: Arc::new(weight) }, &[inputs[0]])
    }
}

/// The tract op: `A [.., K] -> Y [.., N]`, computed in f32 whatever A's float type.
#[derive(Debug, Clone)]
pub struct BlockQuantMatMul {
    pub weight: SharedWeight,
}

impl PartialEq for BlockQuantMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weight, &other.weight)
    }
}
impl Eq for BlockQuantMatMul {}

impl Op for BlockQuantMatMul {
    fn name(&self) -> StaticName {
        "BlockQuantMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.weight;
        Ok(vec![format!("N={} K={} bits={} block_size={} act_order={}", w.n, w.k, w.bits, w.block_size, w.g_idx.is_some())])
    }

    op_as_typed_op!();
}

impl EvalOp for BlockQuantMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = args_1!(inputs);
        let w = &self.weight;
        let shape = a.shape().to_vec();
        ensure!(shape.last() == Some(&w.k), "BlockQuantMatMul: input shape {shape:?} does not end in K={}", w.k);
        let m = a.len() / w.k;
        let a32 = a.cast_to::<f32>()?;
        let a_plain = a32.try_as_plain_ram()?;
        let a_slice: &[f32] = a_plain.as_slice()?;
        let mut y = vec![0f32; m * w.n];
        w.matmul(a_slice, m, &mut y);
        let mut out_shape = shape;
        *out_shape.last_mut().expect("rank checked above") = w.n;
        let y = Tensor::from_shape(&out_shape, &y)?;
        let y = if a.datum_type() == f32::datum_type() { y } else { y.cast_to_dt(a.datum_type())?.into_owned() };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for BlockQuantMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let a = inputs[0];
        ensure!(a.rank() >= 1, "BlockQuantMatMul: input must have rank >= 1");
        let mut shape: TVec<TDim> = a.shape.iter().cloned().collect();
        *shape.last_mut().expect("rank checked above") = self.weight.n.to_dim();
        Ok(tvec!(a.datum_type.fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), rows * (self.weight.n * self.weight.k))))
    }

    as_op!();
}
