//! ONNX `Col2Im`, which tract lacks: column blocks rearranged back into an image, overlapping
//! values summed (the adjoint of im2col).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

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
