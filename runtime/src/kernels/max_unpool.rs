//! `MaxUnpool`: puts each pooled value back where `MaxPool`'s indices say it came from (flat
//! positions in the unpooled tensor), zeros elsewhere. The unpooled shape follows from the
//! kernel, strides and pads; an `output_shape` input (which must be constant) embeds that in a
//! larger zero tensor, at the start of every axis.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn, SliceInfoElem};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxUnpool {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    pads: Vec<usize>,
    /// The output shape when an `output_shape` input gave it.
    output_shape: Option<Vec<usize>>,
}

pub fn build_max_unpool(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let usizes = |name: &str| -> TractResult<Option<Vec<usize>>> {
        node.get_attr_opt_vec::<i64>(name)?.map(|v| v.into_iter().map(|x| usize::try_from(x).map_err(|_| format_err!("MaxUnpool: negative {name}"))).collect()).transpose()
    };
    let kernel = usizes("kernel_shape")?.context("MaxUnpool: kernel_shape is required")?;
    let strides = usizes("strides")?.unwrap_or_else(|| vec![1; kernel.len()]);
    let pads = usizes("pads")?.unwrap_or_else(|| vec![0; kernel.len() * 2]);
    ensure!(strides.len() == kernel.len() && pads.len() == kernel.len() * 2, "MaxUnpool: strides or pads do not match kernel_shape");
    let with_shape = node.input.get(2).is_some_and(|s| !s.is_empty());
    Ok((expand(MaxUnpoolNode { op: MaxUnpool { kernel, strides, pads, output_shape: None }, with_shape }), vec![]))
}

impl MaxUnpool {
    /// The unpooled shape for an input of shape `x`.
    fn inferred_shape(&self, x: &[usize]) -> TractResult<Vec<usize>> {
        let spatial = self.kernel.len();
        ensure!(x.len() == spatial + 2, "MaxUnpool: X of rank {} for a {spatial}-D kernel", x.len());
        let mut shape = x[..2].to_vec();
        for d in 0..spatial {
            let size = (x[d + 2].max(1) - 1) * self.strides[d] + self.kernel[d];
            let cut = self.pads[d] + self.pads[spatial + d];
            ensure!(size >= cut, "MaxUnpool: pads larger than the unpooled size");
            shape.push(size - cut);
        }
        Ok(shape)
    }
}

#[derive(Debug, Clone)]
struct MaxUnpoolNode {
    op: MaxUnpool,
    with_shape: bool,
}

impl Expansion for MaxUnpoolNode {
    fn name(&self) -> StaticName {
        "MaxUnpool".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2 + self.with_shape as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        if self.with_shape {
            s.given(&inputs[2].value, move |s, shape| {
                let dims: TVec<TDim> = shape.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().map(|&d| d.into()).collect();
                s.equals(&outputs[0].shape, ShapeFactoid::from(dims))
            })
        } else {
            let op = self.op.clone();
            s.given(&inputs[0].shape, move |s, shape| {
                let Some(x) = shape.iter().map(|d| d.to_usize().ok()).collect::<Option<Vec<usize>>>() else { return Ok(()) };
                let dims: TVec<TDim> = op.inferred_shape(&x)?.into_iter().map(TDim::from).collect();
                s.equals(&outputs[0].shape, ShapeFactoid::from(dims))
            })
        }
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let mut op = self.op.clone();
        if self.with_shape {
            let shape = model.outlet_fact(inputs[2])?.konst.clone().context("MaxUnpool: output_shape must be a constant")?;
            op.output_shape = Some(
                shape.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().map(|&d| usize::try_from(d).map_err(|_| format_err!("MaxUnpool: negative output_shape"))).collect::<TractResult<_>>()?,
            );
        }
        model.wire_node(prefix, op, &inputs[..2])
    }
}

impl Op for MaxUnpool {
    fn name(&self) -> StaticName {
        "MaxUnpool".into()
    }
    op_as_typed_op!();
}

impl EvalOp for MaxUnpool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, indices) = args_2!(inputs);
        let dt = x.datum_type();
        let values: Vec<f64> = x.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let indices: Vec<i64> = indices.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
        ensure!(indices.len() == values.len(), "MaxUnpool: {} indices for {} values", indices.len(), values.len());
        let inferred = self.inferred_shape(x.shape())?;
        let mut unpooled = ArrayD::<f64>::zeros(IxDyn(&inferred));
        let flat = unpooled.as_slice_mut().expect("a fresh array is contiguous");
        let len = flat.len();
        for (&i, &v) in indices.iter().zip(&values) {
            let slot = usize::try_from(i).ok().and_then(|i| flat.get_mut(i)).with_context(|| format!("MaxUnpool: index {i} is outside {len} elements"))?;
            *slot = v;
        }
        let out = match &self.output_shape {
            Some(shape) if shape[..] != inferred[..] => {
                ensure!(shape.len() == inferred.len() && shape.iter().zip(&inferred).all(|(o, i)| o >= i), "MaxUnpool: output_shape {shape:?} is smaller than the unpooled {inferred:?}");
                let mut out = ArrayD::<f64>::zeros(IxDyn(shape));
                let corner: Vec<SliceInfoElem> = inferred.iter().map(|&n| SliceInfoElem::Slice { start: 0, end: Some(n as isize), step: 1 }).collect();
                out.slice_mut(corner.as_slice()).assign(&unpooled);
                out
            }
            _ => unpooled,
        };
        Ok(tvec!(out.into_tensor().cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

impl TypedOp for MaxUnpool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: TVec<TDim> = match &self.output_shape {
            Some(shape) => shape.iter().map(|&d| d.into()).collect(),
            None => {
                let x: Vec<usize> = inputs[0].shape.iter().map(|d| d.to_usize().map_err(|e| format_err!("MaxUnpool: {e:?}"))).collect::<TractResult<_>>()?;
                self.inferred_shape(&x)?.into_iter().map(TDim::from).collect()
            }
        };
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    as_op!();
}
