//! Neural-network ops: matrix products, normalisations, recurrent layers, resizing,
//! quantisation, attention, losses and the like (convolutions and pooling: `conv.rs`).

use super::{InferError, NodeCtx, Rule, broadcast, dim_add, dim_mul, normalize_axis, unify};
use crate::dtype::DataType;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "MatMul" => matmul,
        "MatMulInteger" => matmul_integer,
        "QLinearMatMul" => qlinear_matmul,
        "Gemm" => gemm,
        "BatchNormalization" => batch_norm,
        "LayerNormalization" => layer_norm,
        "GroupNormalization" | "RMSNormalization" | "Softmax" | "LogSoftmax" | "Hardmax" => same_type_checked_axis,
        "Dropout" => dropout,
        "LSTM" | "GRU" | "RNN" => recurrent,
        "Resize" => resize,
        "Upsample" => upsample,
        "TopK" => top_k,
        "Einsum" => einsum,
        "QuantizeLinear" => quantize,
        "DequantizeLinear" => dequantize,
        "DynamicQuantizeLinear" => dynamic_quantize,
        "GridSample" => grid_sample,
        "RoiAlign" => roi_align,
        "AffineGrid" => affine_grid,
        "NonMaxSuppression" => non_max_suppression,
        "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => loss,
        "Det" => det,
        "Attention" => attention,
        "LinearAttention" => linear_attention,
        "CausalConvWithState" => causal_conv_with_state,
        "Col2Im" => col2im,
        "ImageDecoder" => image_decoder,
        _ => return None,
    })
}

/// Rules of the `ai.onnx.preview` domain.
pub(super) fn preview_rule(op: &str) -> Option<Rule> {
    Some(match op {
        "FlexAttention" => flex_attention,
        _ => return None,
    })
}

fn to_vec(d: Option<&[Dim]>) -> Option<Vec<Dim>> {
    d.map(<[Dim]>::to_vec)
}

/// Numpy `matmul` shapes: 1-D operands are promoted and the added dim removed again.
pub(crate) fn matmul_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, InferError> {
    if a.is_empty() || b.is_empty() {
        return Err(InferError::Rank { index: if a.is_empty() { 0 } else { 1 }, rank: 0, expected: "at least 1".into() });
    }
    let a2: Vec<Dim> = if a.len() == 1 { vec![Dim::Known(1), a[0].clone()] } else { a.to_vec() };
    let b2: Vec<Dim> = if b.len() == 1 { vec![b[0].clone(), Dim::Known(1)] } else { b.to_vec() };
    let (ar, br) = (a2.len(), b2.len());
    unify("MatMul inner dimension", &a2[ar - 1], &b2[br - 2])?;
    let mut out = broadcast(&[&a2[..ar - 2], &b2[..br - 2]])?;
    if a.len() > 1 {
        out.push(a2[ar - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[br - 1].clone());
    }
    Ok(out)
}

fn matmul_of(ctx: &NodeCtx<'_>, a: usize, b: usize) -> Result<Option<Vec<Dim>>, InferError> {
    match (ctx.dims(a), ctx.dims(b)) {
        (Some(x), Some(y)) => matmul_dims(x, y).map(Some),
        _ => Ok(None),
    }
}

fn matmul(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = matmul_of(ctx, 0, 1)?;
    ctx.set(0, ctx.elem(0).or(ctx.elem(1)), dims);
    Ok(())
}

fn matmul_integer(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = matmul_of(ctx, 0, 1)?;
    ctx.set(0, Some(DataType::Int32), dims);
    Ok(())
}

fn qlinear_matmul(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(3)?;
    let dims = matmul_of(ctx, 0, 3)?;
    ctx.set(0, ctx.elem(7).or(ctx.elem(0)), dims);
    Ok(())
}

fn gemm(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let dims = match (ctx.dims(0), ctx.dims(1)) {
        (Some(a), Some(b)) => {
            for (i, d) in [(0, a), (1, b)] {
                if d.len() != 2 {
                    return Err(InferError::Rank { index: i, rank: d.len(), expected: "2".into() });
                }
            }
            let (m, ka) = if ctx.attr_int_or("transA", 0) != 0 { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
            let (kb, n) = if ctx.attr_int_or("transB", 0) != 0 { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
            unify("Gemm inner dimension", ka, kb)?;
            Some(vec![m.clone(), n.clone()])
        }
        _ => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn batch_norm(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    if ctx.opset >= 14 {
        // Training mode: running mean and variance, typed like the given ones.
        ctx.pass_through(3, 1);
        ctx.pass_through(4, 2);
    } else if ctx.opset >= 9 {
        let channels = ctx.dims(0).and_then(|d| d.get(1).cloned()).unwrap_or(Dim::Unknown);
        for i in 1..5 {
            ctx.set(i, ctx.elem(0), Some(vec![channels.clone()]));
        }
    }
    Ok(())
}

pub(super) fn layer_norm(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    let stash = ctx.attr_dtype("stash_type")?.unwrap_or(DataType::Float);
    let dims = match ctx.dims(0) {
        Some(x) => {
            let axis = normalize_axis(ctx.attr_int_or("axis", -1), x.len())?;
            let mut out = x[..axis].to_vec();
            out.extend(std::iter::repeat_n(Dim::Known(1), x.len() - axis));
            Some(out)
        }
        None => None,
    };
    ctx.set(1, Some(stash), dims.clone());
    ctx.set(2, Some(stash), dims);
    Ok(())
}

fn same_type_checked_axis(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    if let (Some(axis), Some(rank)) = (ctx.attr_int("axis"), ctx.rank(0))
        && rank > 0
    {
        normalize_axis(axis, rank)?;
    }
    ctx.pass_through(0, 0);
    Ok(())
}

fn dropout(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    let mask = if ctx.opset >= 10 { Some(DataType::Bool) } else { ctx.elem(0) };
    ctx.set(1, mask, to_vec(ctx.dims(0)));
    Ok(())
}

fn recurrent(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let gates = match ctx.node.op_type.as_str() {
        "LSTM" => 4,
        "GRU" => 3,
        _ => 1,
    };
    let directions = match ctx.attr_string("direction").unwrap_or("forward") {
        "bidirectional" => 2,
        "forward" | "reverse" => 1,
        other => return Err(InferError::Attribute { name: "direction", reason: format!("unknown value '{other}'") }),
    };
    let hidden = match ctx.attr_int("hidden_size") {
        Some(h) => Dim::Known(h),
        None => ctx.dims(1).and_then(|w| w.get(1)).map_or(Dim::Unknown, |d| super::dim_div(d, &Dim::Known(gates))),
    };
    let batch_major = ctx.opset >= 14 && ctx.attr_int_or("layout", 0) != 0;
    let (seq, batch) = match ctx.dims(0) {
        Some([a, b, _]) => {
            if batch_major {
                (b.clone(), a.clone())
            } else {
                (a.clone(), b.clone())
            }
        }
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "3".into() }),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let dirs = Dim::Known(directions);
    let (y, state) = if batch_major {
        (vec![batch.clone(), seq, dirs.clone(), hidden.clone()], vec![batch, dirs, hidden])
    } else {
        (vec![seq, dirs.clone(), batch.clone(), hidden.clone()], vec![dirs, batch, hidden])
    };
    ctx.set(0, elem, Some(y));
    ctx.set(1, elem, Some(state.clone()));
    if gates == 4 {
        ctx.set(2, elem, Some(state));
    }
    Ok(())
}

fn resize(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(x) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let rank = x.len();
    let (scales_input, sizes_input) = if ctx.opset < 11 { (1, usize::MAX) } else { (2, 3) };
    let axes: Vec<usize> = match ctx.attr_ints("axes").filter(|_| ctx.opset >= 18) {
        Some(a) => super::normalize_axes(a, rank)?,
        None => (0..rank).collect(),
    };
    let sizes = ctx.has_input(sizes_input).then(|| ctx.data(sizes_input)).flatten().filter(|s| !s.is_empty());
    let scales = ctx.has_input(scales_input).then(|| ctx.floats(scales_input)).flatten().filter(|s| !s.is_empty());
    let mut out = x.to_vec();
    if let Some(sizes) = sizes {
        if sizes.len() != axes.len() {
            return Err(InferError::InputValue { index: sizes_input, reason: format!("{} sizes for {} axes", sizes.len(), axes.len()) });
        }
        let policy = if ctx.opset >= 18 { ctx.attr_string("keep_aspect_ratio_policy").unwrap_or("stretch") } else { "stretch" };
        if policy == "stretch" {
            for (k, &a) in axes.iter().enumerate() {
                out[a] = sizes[k].clone();
            }
        } else {
            // One scale for all axes, the smallest (not_larger) or largest (not_smaller) asked for.
            let ratios: Option<Vec<f64>> = axes.iter().enumerate().map(|(k, &a)| Some(sizes[k].known()? as f64 / x[a].known()? as f64)).collect();
            let scale = ratios.map(|r| if policy == "not_larger" { r.into_iter().fold(f64::INFINITY, f64::min) } else { r.into_iter().fold(0.0, f64::max) });
            for &a in &axes {
                out[a] = match (scale, &x[a]) {
                    (Some(s), Dim::Known(d)) => Dim::Known((s * *d as f64 + 0.5).floor() as i64),
                    _ => Dim::Unknown,
                };
            }
        }
    } else if let Some(scales) = scales {
        if scales.len() != axes.len() {
            return Err(InferError::InputValue { index: scales_input, reason: format!("{} scales for {} axes", scales.len(), axes.len()) });
        }
        for (k, &a) in axes.iter().enumerate() {
            out[a] = scaled(&x[a], scales[k]);
        }
    } else {
        for &a in &axes {
            out[a] = Dim::Unknown;
        }
    }
    ctx.set(0, elem, Some(out));
    Ok(())
}

/// `floor(size * scale)`, in single precision as the scales are.
fn scaled(size: &Dim, scale: f64) -> Dim {
    match size {
        _ if scale == 1.0 => size.clone(),
        Dim::Known(d) => {
            let v = (*d as f32 * scale as f32).floor();
            if v.is_finite() && v >= 0.0 { Dim::Known(v as i64) } else { Dim::Unknown }
        }
        _ => Dim::Unknown,
    }
}

fn upsample(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let scales: Option<Vec<f64>> = if ctx.opset < 9 { ctx.attr_floats("scales").map(|s| s.iter().map(|&v| f64::from(v)).collect()) } else { ctx.floats(1) };
    let dims = match (ctx.dims(0), scales) {
        (Some(x), Some(s)) if s.len() == x.len() => Some(x.iter().zip(&s).map(|(d, &f)| scaled(d, f)).collect()),
        (Some(x), Some(s)) => return Err(InferError::InputValue { index: 1, reason: format!("{} scales for rank {}", s.len(), x.len()) }),
        (Some(x), None) => Some(vec![Dim::Unknown; x.len()]),
        _ => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn top_k(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let k = if ctx.opset < 10 {
        ctx.attr_int("k").map_or(Dim::Unknown, Dim::Known)
    } else {
        ctx.require(1)?;
        match ctx.data(1).as_deref() {
            Some([k]) => k.clone(),
            Some(v) => return Err(InferError::InputValue { index: 1, reason: format!("K has {} values", v.len()) }),
            None => Dim::Unknown,
        }
    };
    let dims = match ctx.dims(0) {
        Some(x) => {
            let axis = normalize_axis(ctx.attr_int_or("axis", -1), x.len())?;
            if let (Dim::Known(kv), Dim::Known(n)) = (&k, &x[axis])
                && (*kv < 0 || kv > n)
            {
                return Err(InferError::InputValue { index: 1, reason: format!("K = {kv} for an axis of {n}") });
            }
            let mut out = x.to_vec();
            out[axis] = k;
            Some(out)
        }
        None => None,
    };
    ctx.set(0, elem, dims.clone());
    ctx.set(1, Some(DataType::Int64), dims);
    Ok(())
}

fn einsum(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = (0..ctx.input_count()).find_map(|i| ctx.elem(i));
    let equation: String = ctx.attr_string("equation").ok_or(InferError::Attribute { name: "equation", reason: "missing".into() })?.chars().filter(|c| !c.is_whitespace()).collect();
    let shapes: Option<Vec<&[Dim]>> = (0..ctx.input_count()).map(|i| ctx.dims(i)).collect();
    let dims = match shapes {
        Some(shapes) => einsum_dims(&equation, &shapes)?,
        None => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

/// The output dims of an einsum equation; `None` for forms this does not handle.
fn einsum_dims(equation: &str, shapes: &[&[Dim]]) -> Result<Option<Vec<Dim>>, InferError> {
    let bad = |reason: String| InferError::Attribute { name: "equation", reason };
    let (lhs, rhs) = match equation.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (equation, None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != shapes.len() {
        return Err(bad(format!("{} operands in '{equation}' for {} inputs", terms.len(), shapes.len())));
    }
    let mut letters: std::collections::BTreeMap<char, (Dim, usize)> = std::collections::BTreeMap::new();
    let mut ellipsis: Vec<&[Dim]> = Vec::new();
    for (term, dims) in terms.iter().zip(shapes) {
        let (before, after, has_ellipsis) = match term.split_once("...") {
            Some((b, a)) => (b, a, true),
            None => (*term, "", false),
        };
        let named = before.chars().count() + after.chars().count();
        if named > dims.len() || (!has_ellipsis && named != dims.len()) {
            return Err(bad(format!("term '{term}' for rank {}", dims.len())));
        }
        let ellipsis_rank = dims.len() - named;
        let mut positions: Vec<(char, &Dim)> = before.chars().zip(dims.iter()).collect();
        positions.extend(after.chars().zip(dims[before.chars().count() + ellipsis_rank..].iter()));
        if has_ellipsis {
            ellipsis.push(&dims[before.chars().count()..before.chars().count() + ellipsis_rank]);
        }
        for (c, d) in positions {
            if !c.is_ascii_alphabetic() {
                return Err(bad(format!("'{c}' is not a letter")));
            }
            let entry = letters.entry(c).or_insert((Dim::Known(1), 0));
            // A repeated letter may be broadcast against a 1 in another operand.
            entry.0 = super::broadcast_dims(&[&entry.0, d])?;
            entry.1 += 1;
        }
    }
    let ellipsis_dims = broadcast(&ellipsis)?;
    let mut out = Vec::new();
    match rhs {
        Some(rhs) => {
            let (before, after) = match rhs.split_once("...") {
                Some((b, a)) => (b, Some(a)),
                None => (rhs, None),
            };
            let lookup =
                |s: &str| -> Result<Vec<Dim>, InferError> { s.chars().map(|c| letters.get(&c).map(|e| e.0.clone()).ok_or_else(|| bad(format!("output letter '{c}' is in no input")))).collect() };
            out.extend(lookup(before)?);
            if let Some(after) = after {
                out.extend(ellipsis_dims);
                out.extend(lookup(after)?);
            }
        }
        None => {
            out.extend(ellipsis_dims);
            out.extend(letters.values().filter(|(_, n)| *n == 1).map(|(d, _)| d.clone()));
        }
    }
    Ok(Some(out))
}

fn quantize(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let from_attr = if ctx.opset >= 21 { ctx.attr_dtype("output_dtype")? } else { None };
    let elem = if ctx.has_input(2) { ctx.elem(2) } else { Some(from_attr.unwrap_or(DataType::Uint8)) };
    ctx.set(0, elem, to_vec(ctx.dims(0)));
    Ok(())
}

fn dequantize(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let from_attr = if ctx.opset >= 23 { ctx.attr_dtype("output_dtype")? } else { None };
    let elem = match from_attr {
        Some(t) => Some(t),
        None if ctx.opset >= 19 => ctx.elem(1),
        None => Some(DataType::Float),
    };
    ctx.set(0, elem, to_vec(ctx.dims(0)));
    Ok(())
}

fn dynamic_quantize(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.set(0, Some(DataType::Uint8), to_vec(ctx.dims(0)));
    ctx.set(1, Some(DataType::Float), Some(Vec::new()));
    ctx.set(2, Some(DataType::Uint8), Some(Vec::new()));
    Ok(())
}

fn grid_sample(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let dims = match (ctx.dims(0), ctx.dims(1)) {
        (Some(x), Some(grid)) if x.len() >= 3 && grid.len() == x.len() => {
            let mut out = vec![unify("batch", &x[0], &grid[0])?, x[1].clone()];
            out.extend_from_slice(&grid[1..grid.len() - 1]);
            Some(out)
        }
        (Some(x), Some(grid)) => return Err(InferError::Rank { index: 1, rank: grid.len(), expected: x.len().to_string() }),
        _ => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn roi_align(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    let rois = ctx.dims(1).and_then(|r| r.first().cloned()).unwrap_or(Dim::Unknown);
    let channels = ctx.dims(0).and_then(|x| x.get(1).cloned()).unwrap_or(Dim::Unknown);
    let h = Dim::Known(ctx.attr_int_or("output_height", 1));
    let w = Dim::Known(ctx.attr_int_or("output_width", 1));
    ctx.set(0, ctx.elem(0), Some(vec![rois, channels, h, w]));
    Ok(())
}

fn affine_grid(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let dims = match ctx.data(1) {
        Some(size) if size.len() == 4 || size.len() == 5 => {
            let mut out = vec![size[0].clone()];
            out.extend_from_slice(&size[2..]);
            out.push(Dim::Known(size.len() as i64 - 2));
            Some(out)
        }
        Some(size) => return Err(InferError::InputValue { index: 1, reason: format!("size has {} values", size.len()) }),
        // [N, C, spatial...] of unknown values: the grid is [N, spatial..., number of spatial dims].
        None => match ctx.dims(1) {
            Some([Dim::Known(n @ (4 | 5))]) => {
                let mut out = vec![Dim::Unknown; *n as usize - 1];
                out.push(Dim::Known(n - 2));
                Some(out)
            }
            _ => None,
        },
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn non_max_suppression(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.set(0, Some(DataType::Int64), Some(vec![Dim::Unknown, Dim::Known(3)]));
    Ok(())
}

fn loss(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let dims = match ctx.attr_string("reduction").unwrap_or("mean") {
        "none" => to_vec(ctx.dims(1)),
        "mean" | "sum" => Some(Vec::new()),
        other => return Err(InferError::Attribute { name: "reduction", reason: format!("unknown value '{other}'") }),
    };
    ctx.set(0, elem, dims);
    if ctx.node.op_type == "SoftmaxCrossEntropyLoss" {
        ctx.pass_through(0, 1);
    }
    Ok(())
}

fn det(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let dims = match ctx.dims(0) {
        Some(x) if x.len() >= 2 => {
            unify("Det square matrix", &x[x.len() - 2], &x[x.len() - 1])?;
            Some(x[..x.len() - 2].to_vec())
        }
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "at least 2".into() }),
        None => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

/// Head counts of a 3-D (heads packed in the last dim) attention input.
fn heads(ctx: &NodeCtx<'_>, name: &'static str) -> Result<Dim, InferError> {
    match ctx.attr_int(name) {
        Some(h) if h > 0 => Ok(Dim::Known(h)),
        Some(h) => Err(InferError::Attribute { name, reason: format!("{h} is not positive") }),
        None => Err(InferError::Attribute { name, reason: "required for 3-D inputs".into() }),
    }
}

/// Scaled dot-product attention (opset 23): Q, K, V as `[B, H, L, D]` or `[B, L, H*D]`,
/// optional past key/value `[B, Hkv, Lpast, D]`.
fn attention(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    let (Some(q), Some(k), Some(v)) = (ctx.dims(0), ctx.dims(1), ctx.dims(2)) else {
        ctx.set(0, ctx.elem(0), None);
        return Ok(());
    };
    let div = super::dim_div;
    // (batch, q heads, q length, head size, kv heads, kv length, value head size)
    let (batch, q_heads, q_len, head, kv_heads, kv_len, v_head) = match (q, k, v) {
        ([b, hq, lq, d], [_, hk, lk, _], [_, _, _, dv]) => (b.clone(), hq.clone(), lq.clone(), d.clone(), hk.clone(), lk.clone(), dv.clone()),
        ([b, lq, q_hidden], [_, lk, _], [_, _, v_hidden]) => {
            let (hq, hk) = (heads(ctx, "q_num_heads")?, heads(ctx, "kv_num_heads")?);
            (b.clone(), hq.clone(), lq.clone(), div(q_hidden, &hq), hk.clone(), lk.clone(), div(v_hidden, &hk))
        }
        _ => return Err(InferError::Rank { index: 0, rank: q.len(), expected: "3 or 4, the same for Q, K and V".into() }),
    };
    let total = match ctx.dims(4) {
        Some([_, _, past, _]) => dim_add(past, &kv_len),
        Some(p) => return Err(InferError::Rank { index: 4, rank: p.len(), expected: "4".into() }),
        None if ctx.has_input(4) => Dim::Unknown,
        None => kv_len,
    };
    let y = if q.len() == 4 { vec![batch.clone(), q_heads.clone(), q_len.clone(), v_head.clone()] } else { vec![batch.clone(), q_len.clone(), dim_mul(&q_heads, &v_head)] };
    ctx.set(0, ctx.elem(0), Some(y));
    ctx.set(1, ctx.elem(1), Some(vec![batch.clone(), kv_heads.clone(), total.clone(), head]));
    ctx.set(2, ctx.elem(2), Some(vec![batch.clone(), kv_heads, total.clone(), v_head]));
    ctx.set(3, ctx.elem(0), Some(vec![batch, q_heads, q_len, total]));
    Ok(())
}

fn flex_attention(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    let dims = match (ctx.dims(0), ctx.dims(2)) {
        (Some([b, hq, lq, _]), Some([_, _, _, dv])) => Some(vec![b.clone(), hq.clone(), lq.clone(), dv.clone()]),
        (Some(q), Some(_)) if q.len() != 4 => return Err(InferError::Rank { index: 0, rank: q.len(), expected: "4".into() }),
        _ => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

/// Linear attention (opset 27): Q `[B, L, Hq*Dk]`, K `[B, L, Hkv*Dk]`, V `[B, L, Hkv*Dv]`;
/// the recurrent state is `[B, Hkv, Dk, Dv]`.
fn linear_attention(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    let elem = ctx.elem(0);
    let (Some(q), Some(v)) = (ctx.dims(0), ctx.dims(2)) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let ([b, l, q_hidden], [_, _, v_hidden]) = (q, v) else {
        return Err(InferError::Rank { index: 0, rank: q.len(), expected: "3 for Q and V".into() });
    };
    let (hq, hk) = (heads(ctx, "q_num_heads")?, heads(ctx, "kv_num_heads")?);
    let div = super::dim_div;
    let (dk, dv) = (div(q_hidden, &hq), div(v_hidden, &hk));
    ctx.set(0, elem, Some(vec![b.clone(), l.clone(), dim_mul(&hq, &dv)]));
    if ctx.has_input(3) {
        ctx.pass_through(3, 1);
    } else {
        ctx.set(1, elem, Some(vec![b.clone(), hk, dk, dv]));
    }
    Ok(())
}

/// A depthwise causal 1-D convolution carrying the last `kernel - 1` inputs as state.
fn causal_conv_with_state(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    ctx.pass_through(0, 0);
    let state = match (ctx.dims(0), ctx.dims(1)) {
        (Some([b, c, _]), Some([_, _, k])) => Some(vec![b.clone(), c.clone(), super::dim_sub(k, &Dim::Known(1))]),
        _ => None,
    };
    if ctx.has_input(3) {
        ctx.pass_through(3, 1);
    } else {
        ctx.set(1, ctx.elem(0), state);
    }
    Ok(())
}

fn col2im(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(2)?;
    let elem = ctx.elem(0);
    let image = ctx.data(1).or_else(|| match ctx.dims(1) {
        Some([Dim::Known(n)]) => usize::try_from(*n).ok().filter(|&n| n <= super::MAX_RANK).map(|n| vec![Dim::Unknown; n]),
        _ => None,
    });
    let dims = match (ctx.dims(0), image) {
        (Some([n, cb, _]), Some(image)) => {
            let block = ctx.data(2).map(|b| super::dim_product(&b)).unwrap_or(Dim::Unknown);
            let mut out = vec![n.clone(), super::dim_div(cb, &block)];
            out.extend(image);
            Some(out)
        }
        (Some(x), _) if x.len() != 3 => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "3".into() }),
        _ => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn image_decoder(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let channels = match ctx.attr_string("pixel_format").unwrap_or("RGB") {
        "RGB" | "BGR" => 3,
        "Grayscale" => 1,
        other => return Err(InferError::Attribute { name: "pixel_format", reason: format!("unknown value '{other}'") }),
    };
    ctx.set(0, Some(DataType::Uint8), Some(vec![Dim::Unknown, Dim::Unknown, Dim::Known(channels)]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: i64) -> Dim {
        Dim::Known(n)
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let b = Dim::Sym("b".into());
        assert_eq!(matmul_dims(&[b.clone(), k(1), k(3), k(4)], &[k(5), k(4), k(6)]).unwrap(), vec![b, k(5), k(3), k(6)]);
        assert_eq!(matmul_dims(&[k(4)], &[k(4), k(6)]).unwrap(), vec![k(6)]);
        assert_eq!(matmul_dims(&[k(3), k(4)], &[k(4)]).unwrap(), vec![k(3)]);
        assert_eq!(matmul_dims(&[k(4)], &[k(4)]).unwrap(), Vec::<Dim>::new());
        assert!(matmul_dims(&[k(3), k(4)], &[k(5), k(6)]).is_err());
    }

    #[test]
    fn einsum_explicit_implicit_and_ellipsis() {
        assert_eq!(einsum_dims("ij,jk->ik", &[&[k(2), k(3)], &[k(3), k(4)]]).unwrap(), Some(vec![k(2), k(4)]));
        assert_eq!(einsum_dims("ij,jk", &[&[k(2), k(3)], &[k(3), k(4)]]).unwrap(), Some(vec![k(2), k(4)]));
        assert_eq!(einsum_dims("...ij,...jk->...ik", &[&[k(5), k(2), k(3)], &[k(3), k(4)]]).unwrap(), Some(vec![k(5), k(2), k(4)]));
        assert_eq!(einsum_dims("ii->i", &[&[k(3), k(3)]]).unwrap(), Some(vec![k(3)]));
        assert_eq!(einsum_dims("ij->", &[&[k(3), k(2)]]).unwrap(), Some(vec![]));
    }
}
