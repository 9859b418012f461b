//! ONNX `AffineGrid`, which tract lacks: the sampling grid of affine matrices over normalised
//! coordinates. Its output shape depends on the `size` input's values.

use super::{Direct, needs_value};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

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
        if self.align_corners { if n > 1 { -1.0 + 2.0 * i as f64 / (n - 1) as f64 } else { -1.0 } } else { -1.0 + (2 * i + 1) as f64 / n as f64 }
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
