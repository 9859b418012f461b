//! `DeformConv` (2-D): a convolution whose every kernel tap reads the input at its regular
//! position moved by a learned offset (per output position, tap and offset group), sampled
//! bilinearly with zeros outside the image, optionally scaled by a mask.

use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_ndarray::{ArrayD, ArrayViewD, IxDyn};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeformConv {
    dilations: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    /// Begin and end padding per spatial axis, as ONNX lists them (`[top, left, bottom, right]`).
    pads: Option<Vec<usize>>,
    group: usize,
    offset_group: usize,
    has_bias: bool,
    has_mask: bool,
}

pub fn build_deform_conv(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let usizes = |name: &str| -> TractResult<Option<Vec<usize>>> {
        node.get_attr_opt_vec::<i64>(name)?.map(|v| v.into_iter().map(|x| usize::try_from(x).map_err(|_| format_err!("DeformConv: negative {name}"))).collect()).transpose()
    };
    let group = node.get_attr_opt::<i64>("group")?.unwrap_or(1).max(1) as usize;
    let offset_group = node.get_attr_opt::<i64>("offset_group")?.unwrap_or(1).max(1) as usize;
    let mut present = optional_inputs(node).skip(3);
    let has_bias = present.next().flatten().is_some();
    let has_mask = present.next().flatten().is_some();
    let op = DeformConv { dilations: usizes("dilations")?, strides: usizes("strides")?, pads: usizes("pads")?, group, offset_group, has_bias, has_mask };
    Ok((expand(DeformConvNode(op)), vec![]))
}

#[derive(Debug, Clone)]
struct DeformConvNode(DeformConv);

impl Expansion for DeformConvNode {
    fn name(&self) -> StaticName {
        "DeformConv".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 3 + self.0.has_bias as usize + self.0.has_mask as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[1].shape[0])?;
        s.equals(&outputs[0].shape[2], &inputs[2].shape[2])?;
        s.equals(&outputs[0].shape[3], &inputs[2].shape[3])
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// The input at fractional position `(y, x)`, bilinearly interpolated; zero outside.
fn bilinear(image: &[f32], height: usize, width: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let mut value = 0.0;
    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
            let (yy, xx) = (y0 as i64 + dy, x0 as i64 + dx);
            if yy >= 0 && xx >= 0 && (yy as usize) < height && (xx as usize) < width && wy * wx != 0.0 {
                value += wy * wx * image[yy as usize * width + xx as usize];
            }
        }
    }
    value
}

impl DeformConv {
    fn compute(&self, x: ArrayViewD<f32>, w: ArrayViewD<f32>, offset: ArrayViewD<f32>, bias: Option<ArrayViewD<f32>>, mask: Option<ArrayViewD<f32>>) -> TractResult<ArrayD<f32>> {
        ensure!(x.ndim() == 4 && w.ndim() == 4 && offset.ndim() == 4, "DeformConv: only 2-D convolutions (rank-4 X, W and offset) are supported");
        let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (oc, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let (oh, ow) = (offset.shape()[2], offset.shape()[3]);
        let (group, og) = (self.group, self.offset_group);
        ensure!(cg * group == c && oc % group == 0, "DeformConv: X has {c} channels, W {cg} per group of {group}, {oc} outputs");
        ensure!(c % og == 0 && offset.shape()[1] == og * kh * kw * 2, "DeformConv: offset has {} channels for {og} offset groups of {kh}x{kw} taps", offset.shape()[1]);
        if let Some(m) = &mask {
            ensure!(m.shape() == [n, og * kh * kw, oh, ow], "DeformConv: mask shape {:?}", m.shape());
        }
        let pair = |v: &Option<Vec<usize>>, default: usize| v.as_ref().map_or([default, default], |v| [v[0], v[1]]);
        let ([sh, sw], [dh, dw]) = (pair(&self.strides, 1), pair(&self.dilations, 1));
        let (pt, pl) = self.pads.as_ref().map_or((0, 0), |p| (p[0], p[1]));
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut out = ArrayD::<f32>::zeros(IxDyn(&[n, oc, oh, ow]));
        let (oc_per_group, c_per_og) = (oc / group, c / og);
        for b in 0..n {
            for o in 0..oc {
                let g = o / oc_per_group;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = bias.as_ref().map_or(0.0, |bias| bias[[o]]);
                        for cl in 0..cg {
                            let ch = g * cg + cl;
                            let og_index = ch / c_per_og;
                            let image = &xs[(b * c + ch) * h * wd..(b * c + ch + 1) * h * wd];
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let tap = ki * kw + kj;
                                    let dy = offset[[b, (og_index * kh * kw + tap) * 2, i, j]];
                                    let dx = offset[[b, (og_index * kh * kw + tap) * 2 + 1, i, j]];
                                    let y = (i * sh + ki * dh) as f32 - pt as f32 + dy;
                                    let xx = (j * sw + kj * dw) as f32 - pl as f32 + dx;
                                    let m = mask.as_ref().map_or(1.0, |m| m[[b, og_index * kh * kw + tap, i, j]]);
                                    acc += w[[o, cl, ki, kj]] * bilinear(image, h, wd, y, xx) * m;
                                }
                            }
                        }
                        out[[b, o, i, j]] = acc;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Op for DeformConv {
    fn name(&self) -> StaticName {
        "DeformConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DeformConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dt = inputs[0].datum_type();
        let f32s: Vec<Tensor> = inputs.iter().map(|t| Ok(t.cast_to::<f32>()?.into_owned())).collect::<TractResult<_>>()?;
        let view = |i: usize| f32s[i].to_plain_array_view::<f32>();
        let mut next = 3;
        let bias = if self.has_bias {
            next += 1;
            Some(view(next - 1)?)
        } else {
            None
        };
        let mask = if self.has_mask { Some(view(next)?) } else { None };
        let out = self.compute(view(0)?, view(1)?, view(2)?, bias, mask)?;
        Ok(tvec!(out.into_tensor().cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

impl TypedOp for DeformConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = tvec![inputs[0].shape[0].clone(), inputs[1].shape[0].clone(), inputs[2].shape[2].clone(), inputs[2].shape[3].clone()];
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_weights_corners_and_drops_what_is_outside() {
        let image = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(bilinear(&image, 2, 2, 0.5, 0.5), 2.5);
        // Half a pixel above the image: half of the first row, the rest is zero padding.
        assert_eq!(bilinear(&image, 2, 2, -0.5, 0.0), 0.5);
        assert_eq!(bilinear(&image, 2, 2, 1.0, 1.0), 4.0);
        assert_eq!(bilinear(&image, 2, 2, 2.0, 0.0), 0.0);
    }
}
