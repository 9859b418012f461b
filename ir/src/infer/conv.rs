//! Convolutions and pooling: the window geometry they share (kernel, strides, dilations, pads,
//! auto_pad) and the output sizes it gives.

use super::{InferError, NodeCtx, Rule, ceil_div, dim_mul, floor_div, unify};
use crate::dtype::DataType;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Conv" => conv,
        "ConvInteger" => conv_integer,
        "QLinearConv" => qlinear_conv,
        "ConvTranspose" => conv_transpose,
        "DeformConv" => deform_conv,
        "MaxPool" | "AveragePool" | "LpPool" => pool,
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => global_pool,
        "MaxUnpool" => max_unpool,
        _ => return None,
    })
}

/// Window geometry shared by convolution and pooling.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    /// Begin pads then end pads, as ONNX lists them.
    pads: Vec<i64>,
    auto_pad: AutoPad,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AutoPad {
    NotSet,
    Same,
    Valid,
}

fn window(ctx: &NodeCtx<'_>, kernel: Vec<i64>, with_dilations: bool) -> Result<Window, InferError> {
    let n = kernel.len();
    let list = |name: &'static str, default: i64, len: usize| -> Result<Vec<i64>, InferError> {
        match ctx.attr_ints(name) {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len => Ok(v.to_vec()),
            Some(v) => Err(InferError::Attribute { name, reason: format!("{} values for {len}", v.len()) }),
        }
    };
    let strides = list("strides", 1, n)?;
    let dilations = if with_dilations { list("dilations", 1, n)? } else { vec![1; n] };
    let auto_pad = match ctx.attr_string("auto_pad").unwrap_or("NOTSET") {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" | "SAME_LOWER" => AutoPad::Same,
        "VALID" => AutoPad::Valid,
        other => return Err(InferError::Attribute { name: "auto_pad", reason: format!("unknown value '{other}'") }),
    };
    let pads = if auto_pad == AutoPad::NotSet { list("pads", 0, 2 * n)? } else { vec![0; 2 * n] };
    if strides.iter().chain(&dilations).any(|&v| v <= 0) || kernel.iter().any(|&k| k <= 0) {
        return Err(InferError::Invalid("kernel, strides and dilations must be positive".into()));
    }
    Ok(Window { kernel, strides, dilations, pads, auto_pad })
}

impl Window {
    /// Output size of spatial axis `i` for input size `input` (convolution, or pooling with `ceil_mode`).
    fn output(&self, i: usize, input: &Dim, ceil_mode: bool) -> Result<Dim, InferError> {
        let n = self.kernel.len();
        let (k, s, d) = (self.kernel[i], self.strides[i], self.dilations[i]);
        let (pb, pe) = (self.pads[i], self.pads[i + n]);
        let effective = (k - 1).saturating_mul(d).saturating_add(1);
        let Dim::Known(size) = input else {
            // A symbolic size survives windows that keep the size.
            let keeps =
                s == 1 && (self.auto_pad == AutoPad::Same || (self.auto_pad == AutoPad::NotSet && pb.saturating_add(pe) == effective - 1) || (self.auto_pad == AutoPad::Valid && effective == 1));
            return Ok(if keeps { input.clone() } else { Dim::Unknown });
        };
        let size = *size;
        let out = match self.auto_pad {
            AutoPad::Same => ceil_div(size, s),
            AutoPad::Valid => size.checked_sub(effective).and_then(|v| v.checked_add(1)).and_then(|v| ceil_div(v, s)),
            AutoPad::NotSet => {
                let span = size.checked_add(pb).and_then(|v| v.checked_add(pe)).and_then(|v| v.checked_sub(effective));
                match span {
                    // The last window must start inside the input or its left padding.
                    Some(span) if ceil_mode => ceil_div(span, s).and_then(|o| o.checked_add(1)).map(|o| if (o - 1).saturating_mul(s) >= size.saturating_add(pb) { o - 1 } else { o }),
                    Some(span) => floor_div(span, s).and_then(|o| o.checked_add(1)),
                    None => None,
                }
            }
        };
        match out {
            Some(o) if o >= 0 => Ok(Dim::Known(o)),
            _ => Err(InferError::Invalid(format!("window of {effective} over size {size} gives no output"))),
        }
    }
}

/// `[N, C, spatial...]` output of a convolution of `x` with weights `w` (`[M, C/group, k...]`).
fn conv_dims(ctx: &NodeCtx<'_>, x: usize, w: usize, transposed: bool) -> Result<Option<Vec<Dim>>, InferError> {
    let (Some(xd), Some(wd)) = (ctx.dims(x), ctx.dims(w)) else {
        return Ok(None);
    };
    if xd.len() < 3 {
        return Err(InferError::Rank { index: x, rank: xd.len(), expected: "at least 3".into() });
    }
    if wd.len() != xd.len() {
        return Err(InferError::Rank { index: w, rank: wd.len(), expected: xd.len().to_string() });
    }
    let n = xd.len() - 2;
    let group = ctx.attr_int_or("group", 1);
    if group <= 0 {
        return Err(InferError::Attribute { name: "group", reason: format!("{group} is not positive") });
    }
    let kernel: Vec<i64> = match ctx.attr_ints("kernel_shape") {
        Some(k) => k.to_vec(),
        None => match wd[2..].iter().map(Dim::known).collect::<Option<Vec<_>>>() {
            Some(k) => k,
            None => {
                let mut out = vec![xd[0].clone(), Dim::Unknown];
                out.extend(std::iter::repeat_n(Dim::Unknown, n));
                return Ok(Some(out));
            }
        },
    };
    if kernel.len() != n {
        return Err(InferError::Attribute { name: "kernel_shape", reason: format!("{} values for {n} spatial axes", kernel.len()) });
    }
    let channels = if transposed { dim_mul(&wd[1], &Dim::Known(group)) } else { wd[0].clone() };
    let in_channels = if transposed { wd[0].clone() } else { dim_mul(&wd[1], &Dim::Known(group)) };
    unify("input channels", &xd[1], &in_channels)?;
    let geometry = window(ctx, kernel, true)?;
    let mut out = vec![xd[0].clone(), channels];
    if !transposed {
        for i in 0..n {
            out.push(geometry.output(i, &xd[2 + i], false)?);
        }
        return Ok(Some(out));
    }
    if let Some(shape) = ctx.attr_ints("output_shape") {
        // Either the spatial sizes, or the whole shape.
        let spatial = if shape.len() == n + 2 { &shape[2..] } else { shape };
        if spatial.len() != n {
            return Err(InferError::Attribute { name: "output_shape", reason: format!("{} values for {n} spatial axes", shape.len()) });
        }
        out.extend(spatial.iter().map(|&v| Dim::Known(v)));
        return Ok(Some(out));
    }
    let output_padding = ctx.attr_ints("output_padding").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; n]);
    if output_padding.len() != n {
        return Err(InferError::Attribute { name: "output_padding", reason: format!("{} values for {n} spatial axes", output_padding.len()) });
    }
    for i in 0..n {
        let s = geometry.strides[i];
        out.push(match (&xd[2 + i], geometry.auto_pad) {
            (input, AutoPad::Same) => dim_mul(input, &Dim::Known(s)),
            (Dim::Known(size), _) => {
                // stride * (size - 1) + output_padding + effective kernel - pads
                let effective = (geometry.kernel[i] - 1).checked_mul(geometry.dilations[i]).and_then(|e| e.checked_add(1));
                let o = size
                    .checked_sub(1)
                    .and_then(|v| v.checked_mul(s))
                    .and_then(|v| v.checked_add(output_padding[i]))
                    .zip(effective)
                    .and_then(|(v, e)| v.checked_add(e))
                    .and_then(|v| v.checked_sub(geometry.pads[i]))
                    .and_then(|v| v.checked_sub(geometry.pads[i + n]));
                o.map_or(Dim::Unknown, Dim::Known)
            }
            _ => Dim::Unknown,
        });
    }
    Ok(Some(out))
}

fn conv(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = conv_dims(ctx, 0, 1, false)?;
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn conv_integer(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = conv_dims(ctx, 0, 1, false)?;
    ctx.set(0, Some(DataType::Int32), dims);
    Ok(())
}

fn qlinear_conv(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(3)?;
    let dims = conv_dims(ctx, 0, 3, false)?;
    ctx.set(0, ctx.elem(7).or(ctx.elem(0)), dims);
    Ok(())
}

fn conv_transpose(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = conv_dims(ctx, 0, 1, true)?;
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn deform_conv(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    // The offsets input has the output's spatial shape.
    let dims = match (ctx.dims(0), ctx.dims(1), ctx.dims(2)) {
        (Some(x), Some(w), Some(offset)) if offset.len() == x.len() && x.len() >= 3 && !w.is_empty() => {
            let mut out = vec![x[0].clone(), w[0].clone()];
            out.extend_from_slice(&offset[2..]);
            Some(out)
        }
        _ => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn pool(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let op = ctx.node.op_type.as_str();
    let kernel = ctx.attr_ints("kernel_shape").ok_or(InferError::Attribute { name: "kernel_shape", reason: "missing".into() })?.to_vec();
    let dims = match ctx.dims(0) {
        Some(x) => {
            if x.len() != kernel.len() + 2 {
                return Err(InferError::Rank { index: 0, rank: x.len(), expected: (kernel.len() + 2).to_string() });
            }
            let with_dilations = match op {
                "MaxPool" => ctx.opset >= 10,
                "AveragePool" => ctx.opset >= 19,
                _ => ctx.opset >= 18,
            };
            let geometry = window(ctx, kernel, with_dilations)?;
            let ceil_mode = ctx.attr_int_or("ceil_mode", 0) != 0;
            let mut out = vec![x[0].clone(), x[1].clone()];
            for (i, d) in x[2..].iter().enumerate() {
                out.push(geometry.output(i, d, ceil_mode)?);
            }
            Some(out)
        }
        None => None,
    };
    ctx.set(0, elem, dims.clone());
    if op == "MaxPool" {
        ctx.set(1, Some(DataType::Int64), dims);
    }
    Ok(())
}

fn global_pool(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let dims = match ctx.dims(0) {
        Some(x) if x.len() >= 2 => {
            let mut out = x[..2].to_vec();
            out.extend(std::iter::repeat_n(Dim::Known(1), x.len() - 2));
            Some(out)
        }
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "at least 2".into() }),
        None => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn max_unpool(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    if ctx.has_input(2) {
        let dims = ctx.data(2).or_else(|| ctx.rank(0).map(|r| vec![Dim::Unknown; r]));
        ctx.set(0, elem, dims);
        return Ok(());
    }
    let kernel = ctx.attr_ints("kernel_shape").ok_or(InferError::Attribute { name: "kernel_shape", reason: "missing".into() })?.to_vec();
    let dims = match ctx.dims(0) {
        Some(x) if x.len() == kernel.len() + 2 => {
            let geometry = window(ctx, kernel, false)?;
            let n = geometry.kernel.len();
            let mut out = x[..2].to_vec();
            for (i, d) in x[2..].iter().enumerate() {
                out.push(match d {
                    Dim::Known(size) => size
                        .checked_sub(1)
                        .and_then(|v| v.checked_mul(geometry.strides[i]))
                        .and_then(|v| v.checked_add(geometry.kernel[i]))
                        .and_then(|v| v.checked_sub(geometry.pads[i]))
                        .and_then(|v| v.checked_sub(geometry.pads[i + n]))
                        .map_or(Dim::Unknown, Dim::Known),
                    _ => Dim::Unknown,
                });
            }
            Some(out)
        }
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: (kernel.len() + 2).to_string() }),
        None => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: i64) -> Dim {
        Dim::Known(n)
    }

    fn geometry(kernel: i64, stride: i64, dilation: i64, pads: (i64, i64), auto_pad: AutoPad) -> Window {
        Window { kernel: vec![kernel], strides: vec![stride], dilations: vec![dilation], pads: vec![pads.0, pads.1], auto_pad }
    }

    #[test]
    fn convolution_output_sizes() {
        // 224 with a 7x7 kernel, stride 2, pads 3: 112 (ResNet stem).
        assert_eq!(geometry(7, 2, 1, (3, 3), AutoPad::NotSet).output(0, &k(224), false).unwrap(), k(112));
        // Dilation 2 makes a 3-kernel span 5.
        assert_eq!(geometry(3, 1, 2, (0, 0), AutoPad::NotSet).output(0, &k(10), false).unwrap(), k(6));
        assert_eq!(geometry(3, 2, 1, (0, 0), AutoPad::Same).output(0, &k(7), false).unwrap(), k(4));
        assert_eq!(geometry(3, 2, 1, (0, 0), AutoPad::Valid).output(0, &k(7), false).unwrap(), k(3));
        // Same padding at stride 1 keeps a symbolic size.
        let h = Dim::Sym("h".into());
        assert_eq!(geometry(3, 1, 1, (1, 1), AutoPad::NotSet).output(0, &h, false).unwrap(), h);
        assert_eq!(geometry(3, 2, 1, (1, 1), AutoPad::NotSet).output(0, &h, false).unwrap(), Dim::Unknown);
        assert!(geometry(5, 1, 1, (0, 0), AutoPad::NotSet).output(0, &k(3), false).is_err());
    }

    #[test]
    fn pooling_ceil_mode_drops_windows_starting_in_the_padding() {
        // 32 with kernel 3, stride 2: floor gives 15, ceil 16.
        assert_eq!(geometry(3, 2, 1, (0, 0), AutoPad::NotSet).output(0, &k(32), false).unwrap(), k(15));
        assert_eq!(geometry(3, 2, 1, (0, 0), AutoPad::NotSet).output(0, &k(32), true).unwrap(), k(16));
        // 4 with kernel 3, stride 2, pads 1/1: windows start at -1, 1 and 3, all inside the input.
        assert_eq!(geometry(3, 2, 1, (1, 1), AutoPad::NotSet).output(0, &k(4), true).unwrap(), k(3));
        // 4 with kernel 2, stride 2, end pad 1: a third window would start at 4, in the padding.
        assert_eq!(geometry(2, 2, 1, (0, 1), AutoPad::NotSet).output(0, &k(4), true).unwrap(), k(2));
    }
}
