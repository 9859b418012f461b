//! ONNX ops tract 0.23.9 does not have, registered through its op register: `CumProd`,
//! `BitCast` (same-width types), `StringConcat`, `ReverseSequence`, `Det`, `Col2Im`,
//! `ai.onnx.ml.LabelEncoder`, `RegexFullMatch` (on the `regex` crate), `TensorScatter`, and the
//! value-shaped `Unique`, `StringSplit`, `StringNormalizer` and `AffineGrid`. Each is a parsed
//! [`Expansion`] wiring a small typed op.

use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_ndarray::Axis;
use tract_onnx::prelude::tract_num_traits::One;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_cumprod(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let exclusive = node.get_attr_opt::<i64>("exclusive")?.unwrap_or(0) != 0;
    let reverse = node.get_attr_opt::<i64>("reverse")?.unwrap_or(0) != 0;
    Ok((expand(CumProdNode { exclusive, reverse }), vec![]))
}

#[derive(Debug, Clone)]
struct CumProdNode {
    exclusive: bool,
    reverse: bool,
}

impl Expansion for CumProdNode {
    fn name(&self) -> StaticName {
        "CumProd".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let axis = model.outlet_fact(inputs[1])?.konst.clone().context("CumProd: axis must be a constant")?;
        let axis = axis.cast_to_scalar::<i64>()?;
        let rank = model.outlet_fact(inputs[0])?.rank() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        ensure!((0..rank).contains(&axis), "CumProd: axis {axis} out of range for rank {rank}");
        model.wire_node(prefix, CumProd { axis: axis as usize, exclusive: self.exclusive, reverse: self.reverse }, &[inputs[0]])
    }
}

/// Cumulative product along `axis`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CumProd {
    pub axis: usize,
    pub exclusive: bool,
    pub reverse: bool,
}

impl CumProd {
    fn eval_t<T: Datum + Copy + std::ops::Mul<Output = T> + One>(&self, t: &Tensor) -> TractResult<Tensor> {
        let mut a = t.to_plain_array_view::<T>()?.to_owned();
        for mut lane in a.lanes_mut(Axis(self.axis)) {
            let n = lane.len();
            let mut acc = T::one();
            for step in 0..n {
                let i = if self.reverse { n - 1 - step } else { step };
                let v = lane[i];
                if self.exclusive {
                    lane[i] = acc;
                    acc = acc * v;
                } else {
                    acc = acc * v;
                    lane[i] = acc;
                }
            }
        }
        Ok(a.into_tensor())
    }
}

impl Op for CumProd {
    fn name(&self) -> StaticName {
        "CumProd".into()
    }
    op_as_typed_op!();
}

impl EvalOp for CumProd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let y = match x.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(&x)?,
            DatumType::F64 => self.eval_t::<f64>(&x)?,
            DatumType::I32 => self.eval_t::<i32>(&x)?,
            DatumType::I64 => self.eval_t::<i64>(&x)?,
            DatumType::U32 => self.eval_t::<u32>(&x)?,
            DatumType::U64 => self.eval_t::<u64>(&x)?,
            DatumType::F16 => {
                let wide = x.cast_to::<f32>()?.into_owned();
                self.eval_t::<f32>(&wide)?.cast_to_dt(DatumType::F16)?.into_owned()
            }
            other => bail!("CumProd: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for CumProd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

pub fn build_bitcast(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let code: i64 = node.get_attr("to")?;
    let to = compactor_ir::DataType::from_code(code as i32)
        .filter(|dt| crate::value::tract_native(*dt) && *dt != compactor_ir::DataType::String && *dt != compactor_ir::DataType::Bool)
        .and_then(crate::value::carrier_type)
        .with_context(|| format!("BitCast: target type {code} is not supported"))?;
    Ok((expand(BitCastNode { to }), vec![]))
}

#[derive(Debug, Clone)]
struct BitCastNode {
    to: DatumType,
}

impl Expansion for BitCastNode {
    fn name(&self) -> StaticName {
        "BitCast".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.to)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let from = model.outlet_fact(inputs[0])?.datum_type;
        ensure!(from.size_of() == self.to.size_of(), "BitCast: only types of the same width are supported ({from:?} to {:?})", self.to);
        model.wire_node(prefix, BitCast { to: self.to }, inputs)
    }
}

/// Reinterprets the bytes of a tensor as another type of the same width.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BitCast {
    pub to: DatumType,
}

impl Op for BitCast {
    fn name(&self) -> StaticName {
        "BitCast".into()
    }
    op_as_typed_op!();
}

impl EvalOp for BitCast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.datum_type().size_of() == self.to.size_of() && x.datum_type().is_copy(), "BitCast: cannot reinterpret {:?} as {:?}", x.datum_type(), self.to);
        let mut y = x.into_tensor().into_plain_ram()?;
        // SAFETY: same element width, plain storage, and the target is a number type for which
        // every bit pattern is a valid value (bool and strings are refused when parsing).
        unsafe { y.set_datum_type(self.to) };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for BitCast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.to.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

pub fn build_string_concat(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(StringConcatNode), vec![]))
}

#[derive(Debug, Clone)]
struct StringConcatNode;

impl Expansion for StringConcatNode {
    fn name(&self) -> StaticName {
        "StringConcat".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::String)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
            let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[a, b])?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(shape))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, StringConcat, inputs)
    }
}

/// Elementwise string concatenation, with numpy broadcasting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringConcat;

impl Op for StringConcat {
    fn name(&self) -> StaticName {
        "StringConcat".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringConcat {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[a.shape(), b.shape()])?;
        let (a, b) = (a.to_plain_array_view::<String>()?, b.to_plain_array_view::<String>()?);
        let (a, b) = (a.broadcast(&*shape).context("StringConcat: broadcast")?, b.broadcast(&*shape).context("StringConcat: broadcast")?);
        let joined = tract_onnx::prelude::tract_ndarray::Zip::from(&a).and(&b).map_collect(|x, y| format!("{x}{y}"));
        Ok(tvec!(joined.into_tensor().into_tvalue()))
    }
}

impl TypedOp for StringConcat {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[&*inputs[0].shape, &*inputs[1].shape])?;
        Ok(tvec!(DatumType::String.fact(shape)))
    }
    as_op!();
}

pub fn build_reverse_sequence(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let batch_axis = node.get_attr_opt::<i64>("batch_axis")?.unwrap_or(1);
    let time_axis = node.get_attr_opt::<i64>("time_axis")?.unwrap_or(0);
    ensure!(matches!((batch_axis, time_axis), (0, 1) | (1, 0)), "ReverseSequence: batch_axis and time_axis must be 0 and 1");
    Ok((expand(ReverseSequenceNode { batch_axis: batch_axis as usize, time_axis: time_axis as usize }), vec![]))
}

#[derive(Debug, Clone)]
struct ReverseSequenceNode {
    batch_axis: usize,
    time_axis: usize,
}

impl Expansion for ReverseSequenceNode {
    fn name(&self) -> StaticName {
        "ReverseSequence".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, ReverseSequence { batch_axis: self.batch_axis, time_axis: self.time_axis }, inputs)
    }
}

/// Reverses, for each batch entry `b`, the first `lengths[b]` steps along the time axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReverseSequence {
    pub batch_axis: usize,
    pub time_axis: usize,
}

impl ReverseSequence {
    fn eval_t<T: Datum + Clone>(&self, x: &Tensor, lengths: &[i64]) -> TractResult<Tensor> {
        let source = x.to_plain_array_view::<T>()?;
        let mut out = source.to_owned();
        ensure!(lengths.len() == source.shape()[self.batch_axis], "ReverseSequence: {} lengths for a batch of {}", lengths.len(), source.shape()[self.batch_axis]);
        let steps = source.shape()[self.time_axis];
        for (b, &len) in lengths.iter().enumerate() {
            ensure!((0..=steps as i64).contains(&len), "ReverseSequence: length {len} out of [0, {steps}]");
            let len = len as usize;
            for t in 0..len {
                let from = source.index_axis(Axis(self.batch_axis), b);
                let to_time = if self.time_axis > self.batch_axis { self.time_axis - 1 } else { self.time_axis };
                let row = from.index_axis(Axis(to_time), len - 1 - t).to_owned();
                let mut target = out.index_axis_mut(Axis(self.batch_axis), b);
                target.index_axis_mut(Axis(to_time), t).assign(&row);
            }
        }
        Ok(out.into_tensor())
    }
}

impl Op for ReverseSequence {
    fn name(&self) -> StaticName {
        "ReverseSequence".into()
    }
    op_as_typed_op!();
}

impl EvalOp for ReverseSequence {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, lengths) = args_2!(inputs);
        let lengths: Vec<i64> = lengths.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
        let y = match x.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(&x, &lengths)?,
            DatumType::F64 => self.eval_t::<f64>(&x, &lengths)?,
            DatumType::F16 => self.eval_t::<f16>(&x, &lengths)?,
            DatumType::I64 => self.eval_t::<i64>(&x, &lengths)?,
            DatumType::I32 => self.eval_t::<i32>(&x, &lengths)?,
            DatumType::U8 => self.eval_t::<u8>(&x, &lengths)?,
            DatumType::I8 => self.eval_t::<i8>(&x, &lengths)?,
            DatumType::Bool => self.eval_t::<bool>(&x, &lengths)?,
            DatumType::String => self.eval_t::<String>(&x, &lengths)?,
            other => bail!("ReverseSequence: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ReverseSequence {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() >= 2, "ReverseSequence: the input must have rank >= 2");
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

pub fn build_det(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(DetNode), vec![]))
}

#[derive(Debug, Clone)]
struct DetNode;

impl Expansion for DetNode {
    fn name(&self) -> StaticName {
        "Det".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let lead: TVec<TDim> = shape.iter().take(shape.len().saturating_sub(2)).cloned().collect();
            s.equals(&outputs[0].shape, ShapeFactoid::from(lead))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, Det, inputs)
    }
}

/// Determinants of the trailing square matrices, by LU decomposition with partial pivoting (f64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Det;

fn determinant(mut m: Vec<f64>, n: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a * n + col].abs().total_cmp(&m[b * n + col].abs())).unwrap_or(col);
        if m[pivot * n + col] == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for j in 0..n {
                m.swap(pivot * n + j, col * n + j);
            }
            det = -det;
        }
        let p = m[col * n + col];
        det *= p;
        for row in col + 1..n {
            let factor = m[row * n + col] / p;
            for j in col..n {
                m[row * n + j] -= factor * m[col * n + j];
            }
        }
    }
    det
}

impl Op for Det {
    fn name(&self) -> StaticName {
        "Det".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Det {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(shape.len() >= 2 && shape[shape.len() - 1] == shape[shape.len() - 2], "Det: needs square trailing matrices, got {shape:?}");
        let n = shape[shape.len() - 1];
        let values: Vec<f64> = x.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let dets: Vec<f64> = values.chunks(n * n).map(|m| determinant(m.to_vec(), n)).collect();
        let out = Tensor::from_shape(&shape[..shape.len() - 2], &dets)?.cast_to_dt(x.datum_type())?.into_owned();
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Det {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rank = inputs[0].rank();
        ensure!(rank >= 2, "Det: the input must have rank >= 2");
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.iter().take(rank - 2).cloned().collect::<TVec<_>>())))
    }
    as_op!();
}

pub fn build_col2im(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let dilations = node.get_attr_opt_vec::<i64>("dilations")?;
    let pads = node.get_attr_opt_vec::<i64>("pads")?;
    let strides = node.get_attr_opt_vec::<i64>("strides")?;
    Ok((expand(Col2ImNode { dilations, pads, strides }), vec![]))
}

#[derive(Debug, Clone)]
struct Col2ImNode {
    dilations: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
}

impl Expansion for Col2ImNode {
    fn name(&self) -> StaticName {
        "Col2Im".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given_3(&inputs[0].shape, &inputs[1].value, &inputs[2].value, move |s, x, image, block| {
            let image = image.cast_to::<i64>()?;
            let block = block.cast_to::<i64>()?;
            let kernel: i64 = block.to_plain_array_view::<i64>()?.iter().product();
            let mut shape: TVec<TDim> = tvec![x[0].clone(), x[1].clone() / kernel.max(1) as u64];
            shape.extend(image.to_plain_array_view::<i64>()?.iter().map(|&d| d.to_dim()));
            s.equals(&outputs[0].shape, ShapeFactoid::from(shape))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| -> TractResult<Vec<usize>> {
            let t = model.outlet_fact(inputs[i])?.konst.clone().with_context(|| format!("Col2Im: {what} must be a constant"))?;
            let v: Vec<i64> = t.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
            ensure!(v.iter().all(|&d| d > 0), "Col2Im: {what} must be positive, got {v:?}");
            Ok(v.into_iter().map(|d| d as usize).collect())
        };
        let (image, block) = (konst(1, "image_shape")?, konst(2, "block_shape")?);
        let n = image.len();
        ensure!(block.len() == n, "Col2Im: image_shape and block_shape differ in length");
        let or = |v: &Option<Vec<i64>>, len: usize, default: i64| -> TractResult<Vec<usize>> {
            let v = v.clone().unwrap_or_else(|| vec![default; len]);
            ensure!(v.len() == len && v.iter().all(|&x| x >= 0), "Col2Im: attribute of length {} (want {len}) or negative", v.len());
            Ok(v.into_iter().map(|x| x as usize).collect())
        };
        let op = Col2Im { image, block, dilations: or(&self.dilations, n, 1)?, pads: or(&self.pads, 2 * n, 0)?, strides: or(&self.strides, n, 1)? };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// Rearranges column blocks `[N, C·∏block, L]` back into an image `[N, C, *image]`, summing
/// overlapping values (the adjoint of im2col).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Col2Im {
    pub image: Vec<usize>,
    pub block: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub strides: Vec<usize>,
}

impl Col2Im {
    /// Block positions along each spatial axis.
    fn positions(&self) -> Vec<usize> {
        let n = self.image.len();
        (0..n)
            .map(|d| {
                let span = self.dilations[d] * (self.block[d] - 1) + 1;
                (self.image[d] + self.pads[d] + self.pads[d + n]).saturating_sub(span) / self.strides[d] + 1
            })
            .collect()
    }
}

impl Op for Col2Im {
    fn name(&self) -> StaticName {
        "Col2Im".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Col2Im {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let dt = x.datum_type();
        let shape = x.shape().to_vec();
        let kernel: usize = self.block.iter().product();
        let positions = self.positions();
        let blocks: usize = positions.iter().product();
        ensure!(shape.len() == 3 && shape[1] % kernel == 0 && shape[2] == blocks, "Col2Im: input {shape:?} does not fit blocks {:?} over {:?}", self.block, self.image);
        let (batch, channels) = (shape[0], shape[1] / kernel);
        let values: Vec<f64> = x.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let pixels: usize = self.image.iter().product();
        let mut out = vec![0f64; batch * channels * pixels];
        let n = self.image.len();
        let unravel = |mut i: usize, dims: &[usize]| -> Vec<usize> {
            let mut idx = vec![0; dims.len()];
            for d in (0..dims.len()).rev() {
                idx[d] = i % dims[d];
                i /= dims[d];
            }
            idx
        };
        for k in 0..kernel {
            let kk = unravel(k, &self.block);
            for l in 0..blocks {
                let ll = unravel(l, &positions);
                let mut flat = 0usize;
                let mut inside = true;
                for d in 0..n {
                    let p = (ll[d] * self.strides[d] + kk[d] * self.dilations[d]) as isize - self.pads[d] as isize;
                    if p < 0 || p as usize >= self.image[d] {
                        inside = false;
                        break;
                    }
                    flat = flat * self.image[d] + p as usize;
                }
                if !inside {
                    continue;
                }
                for b in 0..batch {
                    for c in 0..channels {
                        out[(b * channels + c) * pixels + flat] += values[(b * shape[1] + c * kernel + k) * blocks + l];
                    }
                }
            }
        }
        let mut out_shape = vec![batch, channels];
        out_shape.extend(&self.image);
        Ok(tvec!(Tensor::from_shape(&out_shape, &out)?.cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

impl TypedOp for Col2Im {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let kernel: usize = self.block.iter().product();
        let mut shape: TVec<TDim> = tvec![inputs[0].shape[0].clone(), inputs[0].shape[1].clone() / kernel as u64];
        shape.extend(self.image.iter().map(|&d| d.to_dim()));
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    as_op!();
}

/// `ai.onnx.ml.LabelEncoder` attributes, loaded into tensors: keys, values, default.
pub fn build_label_encoder(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tensor_attr = |name: &str| -> TractResult<Option<Tensor>> {
        match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
            Some(proto) => Ok(Some(ctx.load_tensor(proto)?)),
            None => Ok(None),
        }
    };
    let list = |prefix: &str| -> TractResult<Option<Tensor>> {
        if let Some(v) = node.get_attr_opt_vec::<String>(&format!("{prefix}_strings"))? {
            return Ok(Some(tract_onnx::prelude::tract_ndarray::arr1(&v).into_tensor()));
        }
        if let Some(v) = node.get_attr_opt_vec::<i64>(&format!("{prefix}_int64s"))? {
            return Ok(Some(tensor1(&v)));
        }
        if let Some(v) = node.get_attr_opt_vec::<f32>(&format!("{prefix}_floats"))? {
            return Ok(Some(tensor1(&v)));
        }
        tensor_attr(&format!("{prefix}_tensor"))
    };
    let keys = list("keys")?.context("LabelEncoder: no keys")?;
    let values = list("values")?.context("LabelEncoder: no values")?;
    ensure!(keys.len() == values.len(), "LabelEncoder: {} keys but {} values", keys.len(), values.len());
    let default = match tensor_attr("default_tensor")? {
        Some(t) => t.cast_to_dt(values.datum_type())?.into_owned().into_shape(&[])?,
        None => match values.datum_type() {
            DatumType::String => tensor0(node.get_attr_opt::<String>("default_string")?.unwrap_or_else(|| "_Unused".into())),
            DatumType::I64 => tensor0(node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1)),
            DatumType::F32 => tensor0(node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0)),
            dt => Tensor::zero_scalar_dt(dt)?,
        },
    };
    Ok((expand(LabelEncoderNode(LabelEncoder { keys: Arc::new(keys), values: Arc::new(values), default: Arc::new(default) })), vec![]))
}

#[derive(Debug, Clone)]
struct LabelEncoderNode(LabelEncoder);

impl Expansion for LabelEncoderNode {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.values.datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Maps each input element to the value of the equal key, or to the default.
#[derive(Debug, Clone)]
pub struct LabelEncoder {
    keys: Arc<Tensor>,
    values: Arc<Tensor>,
    default: Arc<Tensor>,
}

impl PartialEq for LabelEncoder {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys) && Arc::ptr_eq(&self.values, &other.values) && Arc::ptr_eq(&self.default, &other.default)
    }
}
impl Eq for LabelEncoder {}

/// A key as compared: strings by content, numbers by value (floats by bit pattern of f64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Text(String),
    Int(i64),
    Float(u64),
}

fn keys_of(t: &Tensor) -> TractResult<Vec<Key>> {
    Ok(match t.datum_type() {
        DatumType::String => t.to_plain_array_view::<String>()?.iter().cloned().map(Key::Text).collect(),
        dt if dt.is_float() => t.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().map(|v| Key::Float(v.to_bits())).collect(),
        _ => t.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().map(|&v| Key::Int(v)).collect(),
    })
}

impl Op for LabelEncoder {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LabelEncoder {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let index: std::collections::HashMap<Key, usize> = keys_of(&self.keys)?.into_iter().enumerate().map(|(i, k)| (k, i)).rev().collect();
        let picked: Vec<Tensor> = keys_of(&x)?
            .iter()
            .map(|k| match index.get(k) {
                Some(&i) => self.values.nth(i),
                None => Ok((*self.default).clone()),
            })
            .collect::<TractResult<_>>()?;
        let out = if picked.is_empty() {
            Tensor::zero_dt(self.values.datum_type(), x.shape())?
        } else {
            let flat: Vec<Tensor> = picked.into_iter().map(|t| t.into_shape(&[1])).collect::<TractResult<_>>()?;
            Tensor::stack_tensors(0, &flat)?.into_shape(x.shape())?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LabelEncoder {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.values.datum_type().fact(inputs[0].shape.clone())))
    }
    as_op!();
}

pub fn build_regex_full_match(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let pattern: String = node.get_attr("pattern")?;
    // Full match: the whole string, not a substring (ONNX's RE2 semantics).
    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("RegexFullMatch: bad pattern '{pattern}'"))?;
    Ok((expand(RegexFullMatchNode(RegexFullMatch { pattern, regex: Arc::new(regex) })), vec![]))
}

#[derive(Debug, Clone)]
struct RegexFullMatchNode(RegexFullMatch);

impl Expansion for RegexFullMatchNode {
    fn name(&self) -> StaticName {
        "RegexFullMatch".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::Bool)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Whether each string matches the pattern as a whole.
#[derive(Debug, Clone)]
pub struct RegexFullMatch {
    pattern: String,
    regex: Arc<regex::Regex>,
}

impl PartialEq for RegexFullMatch {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}
impl Eq for RegexFullMatch {}

impl Op for RegexFullMatch {
    fn name(&self) -> StaticName {
        "RegexFullMatch".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RegexFullMatch {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let matched = x.to_plain_array_view::<String>()?.map(|s| self.regex.is_match(s));
        Ok(tvec!(matched.into_tensor().into_tvalue()))
    }
}

impl TypedOp for RegexFullMatch {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(DatumType::Bool.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

pub fn build_tensor_scatter(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let circular = match node.get_attr_opt::<String>("mode")?.as_deref().unwrap_or("linear") {
        "linear" => false,
        "circular" => true,
        other => bail!("TensorScatter: unknown mode '{other}'"),
    };
    let axis = node.get_attr_opt::<i64>("axis")?.unwrap_or(-2);
    let has_indices = optional_inputs(node).nth(2).flatten().is_some();
    Ok((expand(TensorScatterNode(TensorScatter { axis, circular, has_indices })), vec![]))
}

#[derive(Debug, Clone)]
struct TensorScatterNode(TensorScatter);

impl Expansion for TensorScatterNode {
    fn name(&self) -> StaticName {
        "TensorScatter".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Writes `update` into a copy of the cache along `axis`, starting at each batch entry's write
/// index (wrapping around the cache length in circular mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorScatter {
    axis: i64,
    circular: bool,
    has_indices: bool,
}

impl TensorScatter {
    fn eval_t<T: Datum + Clone>(&self, cache: &Tensor, update: &Tensor, writes: &[i64]) -> TractResult<Tensor> {
        let shape = cache.shape();
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 { self.axis + rank } else { self.axis };
        ensure!((1..rank).contains(&axis), "TensorScatter: axis {} must fall after the batch axis", self.axis);
        let axis = axis as usize;
        let up = update.shape();
        ensure!(up.len() == shape.len() && (0..shape.len()).all(|d| if d == axis { up[d] <= shape[d] } else { up[d] == shape[d] }), "TensorScatter: update {up:?} does not fit cache {shape:?}");
        let (max_len, len) = (shape[axis], up[axis]);
        let inner: usize = shape[axis + 1..].iter().product();
        let prefix = &shape[..axis];
        let prefixes: usize = prefix.iter().product();
        let source = update.to_plain_array_view::<T>()?;
        let source: Vec<T> = source.iter().cloned().collect();
        let mut out: Vec<T> = cache.to_plain_array_view::<T>()?.iter().cloned().collect();
        let mut index = vec![0usize; prefix.len()];
        for p in 0..prefixes {
            let mut rest = p;
            for d in (0..prefix.len()).rev() {
                index[d] = rest % prefix[d];
                rest /= prefix[d];
            }
            let start = *writes.get(index[0]).context("TensorScatter: no write index for a batch entry")?;
            for step in 0..len {
                let mut position = start + step as i64;
                let mut at = index.clone();
                if self.circular {
                    // As the operator's definition: every coordinate taken modulo the cache length.
                    position = position.rem_euclid(max_len as i64);
                    at.iter_mut().for_each(|i| *i %= max_len);
                }
                ensure!((0..max_len as i64).contains(&position), "TensorScatter: write position {position} outside the cache ({max_len})");
                let flat_prefix = at.iter().zip(prefix).fold(0, |acc, (&i, &d)| acc * d + i);
                let dst = (flat_prefix * max_len + position as usize) * inner;
                let src = (p * len + step) * inner;
                out[dst..dst + inner].clone_from_slice(&source[src..src + inner]);
            }
        }
        Ok(tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, out)?.into_tensor())
    }
}

impl Op for TensorScatter {
    fn name(&self) -> StaticName {
        "TensorScatter".into()
    }
    op_as_typed_op!();
}

impl EvalOp for TensorScatter {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (cache, update) = (&inputs[0], &inputs[1]);
        let writes: Vec<i64> = if self.has_indices {
            inputs.get(2).context("TensorScatter: missing write_indices")?.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect()
        } else {
            vec![0; cache.shape().first().copied().unwrap_or(0)]
        };
        let y = match cache.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(cache, update, &writes)?,
            DatumType::F16 => self.eval_t::<f16>(cache, update, &writes)?,
            DatumType::F64 => self.eval_t::<f64>(cache, update, &writes)?,
            DatumType::I64 => self.eval_t::<i64>(cache, update, &writes)?,
            DatumType::I32 => self.eval_t::<i32>(cache, update, &writes)?,
            DatumType::I8 => self.eval_t::<i8>(cache, update, &writes)?,
            DatumType::U8 => self.eval_t::<u8>(cache, update, &writes)?,
            DatumType::Bool => self.eval_t::<bool>(cache, update, &writes)?,
            other => bail!("TensorScatter: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for TensorScatter {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// Ops whose output shape depends on input values (Unique, StringSplit, AffineGrid's `size`):
/// tract can type them only once those inputs are constants, which the session arranges by
/// planning for the input values. Until then typing fails with this message.
fn needs_value<'a>(fact: &'a TypedFact, op: &str) -> TractResult<&'a Arc<Tensor>> {
    fact.konst.as_ref().with_context(|| format!("{op}: the output shape depends on input values"))
}

/// An op parsed from ONNX whose typed form is `op` itself, on all of the node's inputs.
#[derive(Debug, Clone)]
struct Direct<O: TypedOp + Clone> {
    op: O,
    outputs: usize,
}

impl<O: TypedOp + Clone + std::fmt::Debug> Expansion for Direct<O> {
    fn name(&self) -> StaticName {
        self.op.name()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, _s: &mut Solver<'r>, _inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, self.outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let wired = model.wire_node(prefix, self.op.clone(), inputs)?;
        Ok(wired.into_iter().take(self.outputs).collect())
    }
}

pub fn build_unique(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let sorted = node.get_attr_opt::<i64>("sorted")?.unwrap_or(1) != 0;
    let axis = node.get_attr_opt::<i64>("axis")?;
    let outputs = node.output.len();
    Ok((expand(Direct { op: Unique { sorted, axis }, outputs }), vec![]))
}

/// `Unique`: the distinct values (or slices along `axis`), their first indices, the inverse
/// map and the counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unique {
    sorted: bool,
    axis: Option<i64>,
}

struct UniqueResult {
    /// Index of the first occurrence of each unique slice, in output order.
    firsts: Vec<usize>,
    inverse: Vec<i64>,
    counts: Vec<i64>,
    axis: usize,
    shape: Vec<usize>,
}

impl Unique {
    fn compute(&self, x: &Tensor) -> TractResult<UniqueResult> {
        let (x, axis) = match self.axis {
            None => (x.clone().into_shape(&[x.len()])?, 0usize),
            Some(a) => {
                let rank = x.rank() as i64;
                let a = if a < 0 { a + rank } else { a };
                ensure!((0..rank).contains(&a), "Unique: axis {a} out of range");
                (x.clone(), a as usize)
            }
        };
        let shape = x.shape().to_vec();
        let moved = x.clone().move_axis(axis, 0)?;
        let n = shape[axis];
        let width = moved.len().checked_div(n).unwrap_or(0);
        let keys: Vec<f64> = moved.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let slice = |i: usize| &keys[i * width..(i + 1) * width];
        let compare = |a: usize, b: usize| slice(a).iter().zip(slice(b)).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal);
        let mut firsts: Vec<usize> = Vec::new();
        let mut inverse = vec![0i64; n];
        for (i, slot) in inverse.iter_mut().enumerate() {
            *slot = match firsts.iter().position(|&f| compare(f, i).is_eq()) {
                Some(u) => u as i64,
                None => {
                    firsts.push(i);
                    firsts.len() as i64 - 1
                }
            };
        }
        if self.sorted {
            let mut order: Vec<usize> = (0..firsts.len()).collect();
            order.sort_by(|&a, &b| compare(firsts[a], firsts[b]));
            let mut rank = vec![0i64; order.len()];
            for (new, &old) in order.iter().enumerate() {
                rank[old] = new as i64;
            }
            inverse.iter_mut().for_each(|u| *u = rank[*u as usize]);
            firsts = order.iter().map(|&o| firsts[o]).collect();
        }
        let mut counts = vec![0i64; firsts.len()];
        inverse.iter().for_each(|&u| counts[u as usize] += 1);
        Ok(UniqueResult { firsts, inverse, counts, axis, shape })
    }
}

impl Op for Unique {
    fn name(&self) -> StaticName {
        "Unique".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Unique {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let r = self.compute(x)?;
        let flat = if self.axis.is_none() { x.clone().into_tensor().into_shape(&[x.len()])? } else { x.clone().into_tensor() };
        let picked: Vec<Tensor> = r.firsts.iter().map(|&i| flat.slice(r.axis, i, i + 1)).collect::<TractResult<_>>()?;
        let y = if picked.is_empty() {
            let mut shape = r.shape.clone();
            shape[r.axis] = 0;
            Tensor::zero_dt(x.datum_type(), &shape)?
        } else {
            Tensor::stack_tensors(r.axis, &picked)?
        };
        let indices: Vec<i64> = r.firsts.iter().map(|&i| i as i64).collect();
        Ok(tvec!(y.into_tvalue(), tensor1(&indices).into_tvalue(), tensor1(&r.inverse).into_tvalue(), tensor1(&r.counts).into_tvalue()))
    }
}

impl TypedOp for Unique {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = needs_value(inputs[0], "Unique")?;
        let r = self.compute(x)?;
        let mut shape = r.shape.clone();
        shape[r.axis] = r.firsts.len();
        let count = r.firsts.len();
        Ok(tvec!(inputs[0].datum_type.fact(&shape), i64::fact([count]), i64::fact([r.inverse.len()]), i64::fact([count])))
    }
    as_op!();
}

pub fn build_string_split(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let delimiter = node.get_attr_opt::<String>("delimiter")?.filter(|d| !d.is_empty());
    let maxsplit = node.get_attr_opt::<i64>("maxsplit")?.filter(|&m| m >= 0).map(|m| m as usize);
    Ok((expand(Direct { op: StringSplit { delimiter, maxsplit }, outputs: 2 }), vec![]))
}

/// `StringSplit`: each string split on a delimiter (runs of whitespace when none), at most
/// `maxsplit` times; substrings padded with "" to the longest split, and the split counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringSplit {
    delimiter: Option<String>,
    maxsplit: Option<usize>,
}

impl StringSplit {
    fn split(&self, s: &str) -> Vec<String> {
        let limit = self.maxsplit.map(|m| m + 1).unwrap_or(usize::MAX);
        match &self.delimiter {
            Some(d) => s.splitn(limit, d.as_str()).map(str::to_string).collect(),
            None => {
                // Python's str.split(None, maxsplit): runs of whitespace, leading ones ignored.
                let mut parts = Vec::new();
                let mut rest = s.trim_start();
                while !rest.is_empty() {
                    if parts.len() + 1 == limit {
                        parts.push(rest.to_string());
                        break;
                    }
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    parts.push(rest[..end].to_string());
                    rest = rest[end..].trim_start();
                }
                parts
            }
        }
    }

    fn compute(&self, x: &Tensor) -> TractResult<(Vec<Vec<String>>, usize)> {
        let splits: Vec<Vec<String>> = x.to_plain_array_view::<String>()?.iter().map(|s| self.split(s)).collect();
        let width = splits.iter().map(Vec::len).max().unwrap_or(0);
        Ok((splits, width))
    }
}

impl Op for StringSplit {
    fn name(&self) -> StaticName {
        "StringSplit".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringSplit {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (splits, width) = self.compute(x)?;
        let counts: Vec<i64> = splits.iter().map(|s| s.len() as i64).collect();
        let padded: Vec<String> = splits.into_iter().flat_map(|mut s| {
            s.resize(width, String::new());
            s
        }).collect();
        let mut shape = x.shape().to_vec();
        let counts = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape.clone(), counts)?.into_tensor();
        shape.push(width);
        let y = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, padded)?.into_tensor();
        Ok(tvec!(y.into_tvalue(), counts.into_tvalue()))
    }
}

impl TypedOp for StringSplit {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (_, width) = self.compute(needs_value(inputs[0], "StringSplit")?)?;
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let counts = i64::fact(shape.clone());
        shape.push(width.to_dim());
        Ok(tvec!(DatumType::String.fact(shape), counts))
    }
    as_op!();
}

pub fn build_affine_grid(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let align_corners = node.get_attr_opt::<i64>("align_corners")?.unwrap_or(0) != 0;
    Ok((expand(Direct { op: AffineGrid { align_corners }, outputs: 1 }), vec![]))
}

/// `AffineGrid(theta [N, k, k+1], size [N, C, (D,) H, W])`: the sampling grid
/// `theta[n] · (x, y, (z,) 1)` over normalised coordinates in [-1, 1].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AffineGrid {
    align_corners: bool,
}

impl AffineGrid {
    fn spatial(size: &Tensor) -> TractResult<Vec<usize>> {
        let size: Vec<i64> = size.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
        ensure!(size.len() == 4 || size.len() == 5, "AffineGrid: size must have 4 or 5 entries");
        ensure!(size.iter().all(|&d| d >= 0), "AffineGrid: negative size");
        Ok(size[2..].iter().map(|&d| d as usize).collect())
    }

    fn coordinate(&self, i: usize, n: usize) -> f64 {
        if self.align_corners {
            if n > 1 { -1.0 + 2.0 * i as f64 / (n - 1) as f64 } else { -1.0 }
        } else {
            -1.0 + (2 * i + 1) as f64 / n as f64
        }
    }
}

impl Op for AffineGrid {
    fn name(&self) -> StaticName {
        "AffineGrid".into()
    }
    op_as_typed_op!();
}

impl EvalOp for AffineGrid {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (theta, size) = (&inputs[0], &inputs[1]);
        let dims = Self::spatial(size)?;
        let k = dims.len();
        let batch = theta.shape()[0];
        ensure!(theta.shape() == [batch, k, k + 1], "AffineGrid: theta {:?} does not fit {k}-D sizes", theta.shape());
        let th: Vec<f64> = theta.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let points: usize = dims.iter().product();
        let mut out = Vec::with_capacity(batch * points * k);
        for b in 0..batch {
            let t = &th[b * k * (k + 1)..(b + 1) * k * (k + 1)];
            for p in 0..points {
                // Point index over (D,) H, W, W fastest; homogeneous coordinates (x, y, (z,) 1).
                let mut rest = p;
                let mut coords = vec![0f64; k + 1];
                for d in (0..k).rev() {
                    let i = rest % dims[d];
                    rest /= dims[d];
                    coords[k - 1 - d] = self.coordinate(i, dims[d]);
                }
                coords[k] = 1.0;
                for row in 0..k {
                    out.push((0..=k).map(|c| t[row * (k + 1) + c] * coords[c]).sum::<f64>());
                }
            }
        }
        let mut shape = vec![batch];
        shape.extend(&dims);
        shape.push(k);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.cast_to_dt(theta.datum_type())?.into_owned().into_tvalue()))
    }
}

impl TypedOp for AffineGrid {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dims = Self::spatial(needs_value(inputs[1], "AffineGrid")?)?;
        let mut shape: TVec<TDim> = tvec![inputs[0].shape[0].clone()];
        shape.extend(dims.iter().map(|d| d.to_dim()));
        shape.push(dims.len().to_dim());
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    as_op!();
}

pub fn build_string_normalizer(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let case = node.get_attr_opt::<String>("case_change_action")?.unwrap_or_else(|| "NONE".into());
    ensure!(matches!(case.as_str(), "NONE" | "LOWER" | "UPPER"), "StringNormalizer: unknown case_change_action '{case}'");
    let case_sensitive = node.get_attr_opt::<i64>("is_case_sensitive")?.unwrap_or(0) != 0;
    let stopwords = node.get_attr_opt_vec::<String>("stopwords")?.unwrap_or_default();
    Ok((expand(Direct { op: StringNormalizer { case, case_sensitive, stopwords }, outputs: 1 }), vec![]))
}

/// `StringNormalizer`: drops stop words (compared with or without case) and changes case, on a
/// `[C]` or `[1, C]` string tensor; an all-dropped result is one empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringNormalizer {
    case: String,
    case_sensitive: bool,
    stopwords: Vec<String>,
}

impl StringNormalizer {
    fn compute(&self, x: &Tensor) -> TractResult<(Vec<String>, Vec<usize>)> {
        let shape = x.shape();
        ensure!(shape.len() == 1 || (shape.len() == 2 && shape[0] == 1), "StringNormalizer: input must be [C] or [1, C], got {shape:?}");
        let stop = |w: &str| if self.case_sensitive { self.stopwords.iter().any(|s| s == w) } else { self.stopwords.iter().any(|s| s.to_lowercase() == w.to_lowercase()) };
        let mut kept: Vec<String> = x
            .to_plain_array_view::<String>()?
            .iter()
            .filter(|w| !stop(w))
            .map(|w| match self.case.as_str() {
                "LOWER" => w.to_lowercase(),
                "UPPER" => w.to_uppercase(),
                _ => w.clone(),
            })
            .collect();
        if kept.is_empty() {
            kept.push(String::new());
        }
        let out_shape = if shape.len() == 2 { vec![1, kept.len()] } else { vec![kept.len()] };
        Ok((kept, out_shape))
    }
}

impl Op for StringNormalizer {
    fn name(&self) -> StaticName {
        "StringNormalizer".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringNormalizer {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (kept, shape) = self.compute(&inputs[0])?;
        Ok(tvec!(tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, kept)?.into_tensor().into_tvalue()))
    }
}

impl TypedOp for StringNormalizer {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (_, shape) = self.compute(needs_value(inputs[0], "StringNormalizer")?)?;
        Ok(tvec!(DatumType::String.fact(&shape)))
    }
    as_op!();
}
