//! Signal processing: `DFT`, `STFT`, window functions and `MelWeightMatrix`.

use super::{InferError, NodeCtx, Rule, dim_div, dim_mul, dim_sub, normalize_axis};
use crate::dtype::DataType;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "DFT" => dft,
        "STFT" => stft,
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => window_function,
        "MelWeightMatrix" => mel_weight_matrix,
        _ => return None,
    })
}

/// The single value of a scalar input, if tracked.
fn scalar(ctx: &NodeCtx<'_>, i: usize) -> Dim {
    match ctx.data(i).as_deref() {
        Some([v]) => v.clone(),
        _ => Dim::Unknown,
    }
}

fn output_datatype(ctx: &NodeCtx<'_>) -> Result<DataType, InferError> {
    Ok(ctx.attr_dtype("output_datatype")?.unwrap_or(DataType::Float))
}

fn window_function(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = output_datatype(ctx)?;
    ctx.set(0, Some(elem), Some(vec![scalar(ctx, 0)]));
    Ok(())
}

fn mel_weight_matrix(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = output_datatype(ctx)?;
    let bins = scalar(ctx, 0);
    let spectrum = match scalar(ctx, 1) {
        Dim::Known(n) => Dim::Known(n / 2 + 1),
        _ => Dim::Unknown,
    };
    ctx.set(0, Some(elem), Some(vec![spectrum, bins]));
    Ok(())
}

/// `[batch, signal..., 1 or 2]` (real or complex) to the transform along one signal axis.
fn dft(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(x) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let rank = x.len();
    if rank < 3 {
        return Err(InferError::Rank { index: 0, rank, expected: "at least 3".into() });
    }
    let inverse = ctx.attr_int_or("inverse", 0) != 0;
    let onesided = ctx.attr_int_or("onesided", 0) != 0;
    // The axis: an attribute before opset 20, an input (default -2) from 20 on.
    let axis = if ctx.opset < 20 {
        Some(ctx.attr_int_or("axis", 1))
    } else if ctx.has_input(2) {
        match ctx.data(2).as_deref() {
            Some([Dim::Known(a)]) => Some(*a),
            _ => None,
        }
    } else {
        Some(-2)
    };
    let length = ctx.has_input(1).then(|| scalar(ctx, 1));
    let mut out = x.to_vec();
    out[rank - 1] = Dim::Known(if inverse && onesided { 1 } else { 2 });
    match axis {
        Some(a) => {
            let a = normalize_axis(a, rank)?;
            if a == 0 || a == rank - 1 {
                return Err(InferError::Axis { axis: a as i64, rank });
            }
            let n = length.clone().unwrap_or_else(|| x[a].clone());
            out[a] = match (onesided, inverse) {
                (true, false) => super::dim_add(&dim_div(&n, &Dim::Known(2)), &Dim::Known(1)),
                // An inverse of a one-sided spectrum restores 2 * (n - 1) points unless told the length.
                (true, true) if length.is_none() => dim_mul(&dim_sub(&n, &Dim::Known(1)), &Dim::Known(2)),
                _ => n,
            };
        }
        // Without the axis only the complex dim is sure, unless no signal axis changes length.
        None if !onesided && length.is_none() => {}
        None => {
            for d in &mut out[1..rank - 1] {
                *d = Dim::Unknown;
            }
        }
    }
    ctx.set(0, elem, Some(out));
    Ok(())
}

fn stft(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let onesided = ctx.attr_int_or("onesided", 1) != 0;
    let frame_length = if ctx.has_input(3) {
        scalar(ctx, 3)
    } else {
        match ctx.dims(2) {
            Some([n]) => n.clone(),
            _ => Dim::Unknown,
        }
    };
    let step = scalar(ctx, 1);
    let (batch, frames) = match ctx.dims(0) {
        Some([b, length, _]) => {
            let frames = match (length, &frame_length, &step) {
                (Dim::Known(l), Dim::Known(f), Dim::Known(s)) if *s > 0 => l.checked_sub(*f).and_then(|v| super::floor_div(v, *s)).and_then(|n| n.checked_add(1)).map_or(Dim::Unknown, Dim::Known),
                _ => Dim::Unknown,
            };
            (b.clone(), frames)
        }
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "3".into() }),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let bins = if onesided { super::dim_add(&dim_div(&frame_length, &Dim::Known(2)), &Dim::Known(1)) } else { frame_length };
    ctx.set(0, elem, Some(vec![batch, frames, bins, Dim::Known(2)]));
    Ok(())
}
