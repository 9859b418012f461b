//! Ops that move, select or describe data without computing on it: `Shape`, `Reshape`,
//! `Transpose`, `Gather`, `Concat`, `Slice`, `Unsqueeze`, `Squeeze`, `Expand`, `Range`, ...
//! Most of them also carry tracked values through (shape computations).

use super::{InferError, NodeCtx, Rule, broadcast, dim_add, dim_mul, dim_product, normalize_axes, normalize_axis, slice_len, unify};
use crate::dtype::DataType;
use crate::graph::AttrValue;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Identity" => identity,
        "Shape" => shape,
        "Size" => size,
        "Reshape" => reshape,
        "Transpose" => transpose,
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "Concat" => concat,
        "Slice" => slice,
        "Unsqueeze" => unsqueeze,
        "Squeeze" => squeeze,
        "Expand" => expand,
        "ConstantOfShape" => constant_of_shape,
        "Constant" => constant,
        "Range" => range,
        "Flatten" => flatten,
        "Split" => split,
        "Tile" => tile,
        "Pad" => pad,
        "DepthToSpace" | "SpaceToDepth" => depth_space,
        "OneHot" => one_hot,
        "NonZero" => non_zero,
        "Compress" => compress,
        "Unique" => unique,
        "CenterCropPad" => center_crop_pad,
        _ => return None,
    })
}

fn to_vec(d: Option<&[Dim]>) -> Option<Vec<Dim>> {
    d.map(<[Dim]>::to_vec)
}

/// The number of elements of a 1-D input, from its type, when it can be a rank.
fn length_of(ctx: &NodeCtx<'_>, i: usize) -> Option<usize> {
    match ctx.dims(i)? {
        [Dim::Known(n)] => usize::try_from(*n).ok().filter(|&n| n <= super::MAX_RANK),
        _ => None,
    }
}

fn identity(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    if let Some(d) = ctx.data(0) {
        ctx.set_data(0, d);
    }
    Ok(())
}

fn shape(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, Some(DataType::Int64), Some(vec![Dim::Unknown]));
        return Ok(());
    };
    let rank = dims.len() as i64;
    // Shape-15 selects dims [start, end), clamped like Slice.
    let clamp = |v: i64| if v < 0 { v + rank } else { v }.clamp(0, rank) as usize;
    let start = clamp(ctx.attr_int_or("start", 0));
    let end = clamp(ctx.attr_int_or("end", rank));
    let selected = if start < end { dims[start..end].to_vec() } else { Vec::new() };
    ctx.set(0, Some(DataType::Int64), Some(vec![Dim::Known(selected.len() as i64)]));
    // Some exporters declare a dynamic dim as -1; as a value it would read as "infer this".
    let sizes = selected.into_iter().map(|d| if d.known().is_some_and(|n| n < 0) { Dim::Unknown } else { d }).collect();
    ctx.set_data(0, sizes);
    Ok(())
}

fn size(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.set(0, Some(DataType::Int64), Some(Vec::new()));
    if let Some(dims) = ctx.dims(0) {
        ctx.set_data(0, vec![dim_product(dims)]);
    }
    Ok(())
}

fn reshape(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = ctx.elem(0);
    let target: Option<Vec<Dim>> = if ctx.opset < 5 {
        ctx.attr_ints("shape").map(|s| s.iter().map(|&v| Dim::Known(v)).collect())
    } else {
        ctx.require(1)?;
        ctx.data(1)
    };
    let Some(target) = target else {
        let dims = if ctx.opset < 5 { None } else { length_of(ctx, 1).map(|n| vec![Dim::Unknown; n]) };
        ctx.set(0, elem, dims);
        return Ok(());
    };
    let allow_zero = ctx.attr_int_or("allowzero", 0) != 0;
    let dims = reshaped(ctx.dims(0), &target, allow_zero)?;
    ctx.set(0, elem, Some(dims));
    if target.len() <= 1
        && let Some(d) = ctx.data(0)
    {
        ctx.set_data(0, d);
    }
    Ok(())
}

/// The output dims of Reshape: 0 copies the input dim (unless `allow_zero`), one -1 takes
/// what is left of the element count.
pub(crate) fn reshaped(input: Option<&[Dim]>, target: &[Dim], allow_zero: bool) -> Result<Vec<Dim>, InferError> {
    let mut out = Vec::with_capacity(target.len());
    let mut inferred_at = None;
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            Dim::Known(-1) => {
                if inferred_at.replace(i).is_some() {
                    return Err(InferError::InputValue { index: 1, reason: "more than one -1".into() });
                }
                Dim::Unknown
            }
            Dim::Known(0) if !allow_zero => match input {
                Some(dims) => dims.get(i).cloned().ok_or(InferError::InputValue { index: 1, reason: format!("0 at position {i} copies a dimension the input (rank {}) lacks", dims.len()) })?,
                None => Dim::Unknown,
            },
            Dim::Known(n) if *n < -1 => return Err(InferError::InputValue { index: 1, reason: format!("invalid dimension {n}") }),
            other => other.clone(),
        });
    }
    let Some(input) = input else { return Ok(out) };
    match inferred_at {
        Some(at) => {
            let others: Vec<&Dim> = out.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, d)| d).collect();
            out[at] = remaining_factor(input, &others)?;
        }
        None => {
            if let (Dim::Known(a), Dim::Known(b)) = (dim_product(input), dim_product(&out))
                && a != b
            {
                return Err(InferError::InputValue { index: 1, reason: format!("shape {out:?} has {b} elements, the input {a}") });
            }
        }
    }
    Ok(out)
}

/// `product(input) / product(others)` where symbols common to both cancel.
fn remaining_factor(input: &[Dim], others: &[&Dim]) -> Result<Dim, InferError> {
    let mut left: Vec<&Dim> = input.iter().collect();
    let mut right = Vec::new();
    for d in others {
        match d {
            Dim::Sym(_) => match left.iter().position(|l| l == d) {
                Some(p) => {
                    left.remove(p);
                }
                None => right.push(*d),
            },
            _ => right.push(*d),
        }
    }
    // A negative dim (a dynamic dim some exporters write as -1) is not a size.
    let size = |d: &Dim| d.known().filter(|&n| n >= 0);
    let left_known: Option<i64> = left.iter().filter(|d| !matches!(d, Dim::Sym(_))).try_fold(1i64, |a, d| a.checked_mul(size(d)?));
    let right_known: Option<i64> = right.iter().try_fold(1i64, |a, d| a.checked_mul(size(d)?));
    let symbols: Vec<&&Dim> = left.iter().filter(|d| matches!(d, Dim::Sym(_))).collect();
    Ok(match (left_known, right_known, symbols.as_slice()) {
        (Some(l), Some(r), []) if r != 0 => {
            if l % r != 0 {
                return Err(InferError::InputValue { index: 1, reason: format!("{l} elements cannot be reshaped into multiples of {r}") });
            }
            Dim::Known(l / r)
        }
        (Some(l), Some(r), [s]) if l == r && r != 0 => (**s).clone(),
        _ => Dim::Unknown,
    })
}

fn transpose(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, ctx.attr_ints("perm").map(|p| vec![Dim::Unknown; p.len()]));
        return Ok(());
    };
    let rank = dims.len();
    let perm: Vec<usize> = match ctx.attr_ints("perm") {
        Some(p) => {
            let mut seen = vec![false; rank];
            let mut out = Vec::with_capacity(rank);
            for &a in p {
                let axis = usize::try_from(a).ok().filter(|&a| a < rank && !seen[a]).ok_or(InferError::Attribute { name: "perm", reason: format!("{p:?} is not a permutation of rank {rank}") })?;
                seen[axis] = true;
                out.push(axis);
            }
            if out.len() != rank {
                return Err(InferError::Attribute { name: "perm", reason: format!("{p:?} is not a permutation of rank {rank}") });
            }
            out
        }
        None => (0..rank).rev().collect(),
    };
    ctx.set(0, elem, Some(perm.iter().map(|&a| dims[a].clone()).collect()));
    Ok(())
}

fn gather(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let (Some(data), Some(indices)) = (ctx.dims(0), ctx.dims(1)) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    if data.is_empty() {
        return Err(InferError::Rank { index: 0, rank: 0, expected: "at least 1".into() });
    }
    let axis = normalize_axis(ctx.attr_int_or("axis", 0), data.len())?;
    let mut out: Vec<Dim> = data[..axis].to_vec();
    out.extend_from_slice(indices);
    out.extend_from_slice(&data[axis + 1..]);
    let result_rank = out.len();
    ctx.set(0, elem, Some(out));
    if data.len() == 1
        && result_rank <= 1
        && let (Some(values), Some(idx)) = (ctx.data(0), ctx.ints(1))
    {
        let n = values.len() as i64;
        let picked: Option<Vec<Dim>> = idx.iter().map(|&i| usize::try_from(if i < 0 { i + n } else { i }).ok().and_then(|i| values.get(i).cloned())).collect();
        match picked {
            Some(p) => ctx.set_data(0, p),
            None => return Err(InferError::InputValue { index: 1, reason: format!("indices {idx:?} out of range for {n} elements") }),
        }
    }
    Ok(())
}

fn gather_elements(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    ctx.set(0, ctx.elem(0), to_vec(ctx.dims(1)));
    Ok(())
}

fn gather_nd(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let batch_dims = usize::try_from(ctx.attr_int_or("batch_dims", 0)).map_err(|_| InferError::Attribute { name: "batch_dims", reason: "negative".into() })?;
    let dims = match (ctx.dims(0), ctx.dims(1)) {
        (Some(data), Some([lead @ .., Dim::Known(last)])) => {
            let start = usize::try_from(*last).ok().and_then(|l| l.checked_add(batch_dims)).filter(|&s| s <= data.len());
            let start = start.ok_or(InferError::InputValue { index: 1, reason: format!("last dimension {last} exceeds the data rank {}", data.len()) })?;
            let mut out = lead.to_vec();
            out.extend_from_slice(&data[start..]);
            Some(out)
        }
        _ => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn concat(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let inputs: Vec<usize> = (0..ctx.input_count()).filter(|&i| ctx.has_input(i)).collect();
    if inputs.is_empty() {
        return Err(InferError::MissingInput { index: 0 });
    }
    let elem = inputs.iter().find_map(|&i| ctx.elem(i));
    // Concat-1 defaults the axis to 1; later versions require it.
    let axis_attr = match ctx.attr_int("axis") {
        Some(a) => a,
        None if ctx.opset < 4 => 1,
        None => return Err(InferError::Attribute { name: "axis", reason: "missing".into() }),
    };
    let Some(rank) = inputs.iter().find_map(|&i| ctx.rank(i)) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let axis = normalize_axis(axis_attr, rank)?;
    let mut out: Option<Vec<Dim>> = None;
    let mut axis_len = Dim::Known(0);
    for &i in &inputs {
        let Some(dims) = ctx.dims(i) else {
            axis_len = Dim::Unknown;
            continue;
        };
        if dims.len() != rank {
            return Err(InferError::Rank { index: i, rank: dims.len(), expected: rank.to_string() });
        }
        axis_len = dim_add(&axis_len, &dims[axis]);
        out = Some(match out {
            None => dims.to_vec(),
            Some(acc) => acc.iter().zip(dims).enumerate().map(|(k, (a, b))| if k == axis { Ok(a.clone()) } else { unify("Concat", a, b) }).collect::<Result<_, _>>()?,
        });
    }
    let mut out = out.unwrap_or_else(|| vec![Dim::Unknown; rank]);
    out[axis] = axis_len;
    ctx.set(0, elem, Some(out));
    if rank == 1 {
        let mut all = Vec::new();
        for &i in &inputs {
            let Some(d) = ctx.data(i) else { return Ok(()) };
            all.extend(d);
        }
        ctx.set_data(0, all);
    }
    Ok(())
}

/// Start, end, axis and step of each sliced axis; `None` where the values are not known.
struct SliceParams {
    starts: Option<Vec<Dim>>,
    ends: Option<Vec<Dim>>,
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
    /// How many axes are sliced, when known.
    count: Option<usize>,
}

fn slice_params(ctx: &NodeCtx<'_>) -> Result<SliceParams, InferError> {
    let known = |v: &[i64]| v.iter().map(|&x| Dim::Known(x)).collect::<Vec<_>>();
    if ctx.opset < 10 {
        let starts = ctx.attr_ints("starts").ok_or(InferError::Attribute { name: "starts", reason: "missing".into() })?;
        let ends = ctx.attr_ints("ends").ok_or(InferError::Attribute { name: "ends", reason: "missing".into() })?;
        let axes = ctx.attr_ints("axes").map(<[i64]>::to_vec).unwrap_or_else(|| (0..starts.len() as i64).collect());
        let n = starts.len();
        return Ok(SliceParams { starts: Some(known(starts)), ends: Some(known(ends)), axes: Some(axes), steps: Some(vec![1; n]), count: Some(n) });
    }
    ctx.require(1)?;
    ctx.require(2)?;
    let starts = ctx.data(1);
    let ends = ctx.data(2);
    let count = starts.as_ref().map(Vec::len).or(ends.as_ref().map(Vec::len)).or_else(|| length_of(ctx, 1)).or_else(|| length_of(ctx, 2));
    let axes = if ctx.has_input(3) { ctx.ints(3) } else { count.map(|n| (0..n as i64).collect()) };
    let steps = if ctx.has_input(4) { ctx.ints(4) } else { count.map(|n| vec![1; n]) };
    Ok(SliceParams { starts, ends, axes, steps, count })
}

/// The length of one sliced axis; symbolic dims are handled for the whole-axis case.
fn sliced_dim(dim: &Dim, start: &Dim, end: &Dim, step: i64) -> Dim {
    // Ends this large mean "to the end" in exported models.
    let to_end = |e: &Dim| e.known().is_some_and(|e| e >= i64::from(i32::MAX));
    match (dim, start, end) {
        (Dim::Known(d), Dim::Known(s), Dim::Known(e)) => slice_len(*d, *s, *e, step).map_or(Dim::Unknown, Dim::Known),
        (_, Dim::Known(0), e) if step == 1 && (to_end(e) || e == dim) => dim.clone(),
        _ => Dim::Unknown,
    }
}

fn slice(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let rank = dims.len();
    let p = slice_params(ctx)?;
    let Some(axes) = &p.axes else {
        ctx.set(0, elem, Some(vec![Dim::Unknown; rank]));
        return Ok(());
    };
    let axes = normalize_axes(axes, rank)?;
    if p.count.is_some_and(|n| n != axes.len()) {
        return Err(InferError::InputValue { index: 3, reason: format!("{} axes for {:?} starts", axes.len(), p.count) });
    }
    if let Some(steps) = &p.steps {
        if steps.len() != axes.len() {
            return Err(InferError::InputValue { index: 4, reason: format!("{} steps for {} axes", steps.len(), axes.len()) });
        }
        if steps.contains(&0) {
            return Err(InferError::InputValue { index: 4, reason: "a step is 0".into() });
        }
    }
    for (values, index) in [(&p.starts, 1), (&p.ends, 2)] {
        if values.as_ref().is_some_and(|v| v.len() != axes.len()) {
            return Err(InferError::InputValue { index, reason: format!("length differs from the {} axes", axes.len()) });
        }
    }
    let mut out = dims.to_vec();
    for (k, &axis) in axes.iter().enumerate() {
        out[axis] = match (&p.starts, &p.ends, &p.steps) {
            (Some(s), Some(e), Some(st)) => sliced_dim(&dims[axis], &s[k], &e[k], st[k]),
            _ => Dim::Unknown,
        };
    }
    ctx.set(0, elem, Some(out));
    // Tracked values of a 1-D input, sliced.
    if rank == 1
        && let (Some(values), Some(s), Some(e), Some(st)) = (ctx.data(0), &p.starts, &p.ends, &p.steps)
        && let (Some(s), Some(e), Some(&step)) = (s.first().and_then(Dim::known), e.first().and_then(Dim::known), st.first())
        && let Some(picked) = slice_indices(values.len() as i64, s, e, step)
    {
        let picked = picked.into_iter().map(|i| values[i].clone()).collect();
        ctx.set_data(0, picked);
    }
    Ok(())
}

/// The element indices a slice visits.
fn slice_indices(len: i64, start: i64, end: i64, step: i64) -> Option<Vec<usize>> {
    let count = slice_len(len, start, end, step)?;
    let first = if start < 0 { start.saturating_add(len) } else { start };
    let first = if step > 0 { first.clamp(0, len) } else { first.max(0).min(len - 1) };
    (0..count).map(|k| usize::try_from(first + k * step).ok()).collect()
}

/// Axes of Unsqueeze/Squeeze: an attribute before opset 13, an input from 13 on.
fn axes_param(ctx: &NodeCtx<'_>) -> Option<Option<Vec<i64>>> {
    if ctx.opset < 13 {
        Some(ctx.attr_ints("axes").map(<[i64]>::to_vec))
    } else if ctx.has_input(1) {
        ctx.ints(1).map(Some)
    } else {
        Some(None)
    }
}

fn unsqueeze(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let axes = match axes_param(ctx) {
        Some(Some(a)) => a,
        Some(None) => return Err(InferError::Attribute { name: "axes", reason: "missing".into() }),
        None => {
            let dims = ctx.rank(0).zip(length_of(ctx, 1)).map(|(r, n)| vec![Dim::Unknown; r + n]);
            ctx.set(0, elem, dims);
            return Ok(());
        }
    };
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let out_rank = dims.len() + axes.len();
    let axes = normalize_axes(&axes, out_rank)?;
    let mut input = dims.iter();
    let out: Vec<Dim> = (0..out_rank).map(|i| if axes.contains(&i) { Dim::Known(1) } else { input.next().cloned().unwrap_or(Dim::Unknown) }).collect();
    ctx.set(0, elem, Some(out));
    if dims.is_empty()
        && let Some(d) = ctx.data(0)
    {
        ctx.set_data(0, d);
    }
    Ok(())
}

fn squeeze(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let out: Option<Vec<Dim>> = match axes_param(ctx) {
        Some(Some(axes)) => {
            let axes = normalize_axes(&axes, dims.len())?;
            for &a in &axes {
                if let Dim::Known(n) = dims[a]
                    && n != 1
                {
                    return Err(InferError::InputValue { index: 1, reason: format!("cannot squeeze axis {a} of size {n}") });
                }
            }
            Some(dims.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect())
        }
        // Without axes every 1 goes; an unknown dim might be 1, a symbol is taken not to be.
        Some(None) if dims.contains(&Dim::Unknown) => None,
        Some(None) => Some(dims.iter().filter(|d| **d != Dim::Known(1)).cloned().collect()),
        // Axes whose values are not known: only how many dims go.
        None => length_of(ctx, 1).and_then(|n| dims.len().checked_sub(n)).map(|r| vec![Dim::Unknown; r]),
    };
    let squeezed_to_scalar = out.as_ref().is_some_and(Vec::is_empty);
    ctx.set(0, elem, out);
    if squeezed_to_scalar
        && dims.len() == 1
        && let Some(d) = ctx.data(0)
    {
        ctx.set_data(0, d);
    }
    Ok(())
}

fn expand(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let target = ctx.data(1).or_else(|| length_of(ctx, 1).map(|n| vec![Dim::Unknown; n]));
    let dims = match (ctx.dims(0), target) {
        (Some(input), Some(target)) => Some(broadcast(&[input, &target])?),
        _ => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn constant_of_shape(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let value = ctx.node.attr_tensor("value");
    let elem = value.map_or(DataType::Float, |t| t.dtype());
    let target = ctx.data(0).or_else(|| length_of(ctx, 0).map(|n| vec![Dim::Unknown; n]));
    if let Some(t) = &target
        && let Some(n) = t.iter().find_map(|d| d.known().filter(|&n| n < 0))
    {
        return Err(InferError::InputValue { index: 0, reason: format!("negative dimension {n}") });
    }
    ctx.set(0, Some(elem), target.clone());
    if let Some(t) = target
        && t.len() <= 1
        && (elem.is_integer() || elem == DataType::Bool)
        && let Some(count) = t.iter().try_fold(1i64, |a, d| a.checked_mul(d.known()?))
        && let Some(fill) = value.map_or(Some(0), |v| v.to_i64().ok().and_then(|v| v.first().copied()))
    {
        ctx.set_data(0, vec![Dim::Known(fill); usize::try_from(count).unwrap_or(usize::MAX).min(1 << 16)]);
    }
    Ok(())
}

fn constant(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let Some(attr) = ctx.node.attributes.first() else {
        return Err(InferError::Attribute { name: "value", reason: "a Constant needs one value attribute".into() });
    };
    let (elem, dims) = match (attr.name.as_str(), &attr.value) {
        ("value", AttrValue::Tensor(t)) => (t.dtype(), t.dims().iter().map(|&d| Dim::Known(d as i64)).collect()),
        ("sparse_value", AttrValue::SparseTensor(s)) => (s.values.as_ref().map_or(DataType::Undefined, |v| v.dtype()), s.dims.iter().map(|&d| Dim::Known(d)).collect()),
        ("value_float", _) => (DataType::Float, Vec::new()),
        ("value_int", _) => (DataType::Int64, Vec::new()),
        ("value_string", _) => (DataType::String, Vec::new()),
        ("value_floats", AttrValue::Floats(v)) => (DataType::Float, vec![Dim::Known(v.len() as i64)]),
        ("value_ints", AttrValue::Ints(v)) => (DataType::Int64, vec![Dim::Known(v.len() as i64)]),
        ("value_strings", AttrValue::Strings(v)) => (DataType::String, vec![Dim::Known(v.len() as i64)]),
        (name, _) => return Err(InferError::Invalid(format!("Constant with attribute '{name}'"))),
    };
    let elem = (elem != DataType::Undefined).then_some(elem);
    ctx.set(0, elem, Some(dims));
    Ok(())
}

fn range(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    for i in 0..3 {
        ctx.require(i)?;
        // Scalars by the spec; one-element tensors are accepted, as by the reference implementation.
        if let Some(dims) = ctx.dims(i)
            && super::dim_product(dims).known().is_some_and(|n| n != 1)
        {
            return Err(InferError::Rank { index: i, rank: dims.len(), expected: "0 (a scalar)".into() });
        }
    }
    let elem = ctx.elem(0);
    let length = match elem {
        Some(t) if t.is_integer() => match (ctx.data(0), ctx.data(1), ctx.data(2)) {
            (Some(s), Some(l), Some(d)) if s.len() == 1 && l.len() == 1 && d.len() == 1 => match (&s[0], &l[0], &d[0]) {
                (Dim::Known(s), Dim::Known(l), Dim::Known(d)) => {
                    if *d == 0 {
                        return Err(InferError::InputValue { index: 2, reason: "delta is 0".into() });
                    }
                    let span = l.checked_sub(*s).ok_or(InferError::InputValue { index: 1, reason: "range overflows".into() })?;
                    // ceil(span / delta), without overflow (i64::MIN / -1).
                    match (span.checked_div(*d), span.checked_rem(*d)) {
                        (Some(q), Some(r)) => Dim::Known((q + i64::from(r != 0 && (span < 0) == (*d < 0))).max(0)),
                        _ => Dim::Unknown,
                    }
                }
                (Dim::Known(0), limit @ Dim::Sym(_), Dim::Known(1)) => limit.clone(),
                _ => Dim::Unknown,
            },
            _ => Dim::Unknown,
        },
        Some(t) if t.is_float() => match (ctx.floats(0), ctx.floats(1), ctx.floats(2)) {
            (Some(s), Some(l), Some(d)) if s.len() == 1 && l.len() == 1 && d.len() == 1 && d[0] != 0.0 => {
                // Computed in the input's precision, as the op does.
                let n = if t == DataType::Double { ((l[0] - s[0]) / d[0]).ceil() } else { f64::from(((l[0] as f32 - s[0] as f32) / d[0] as f32).ceil()) };
                if n.is_finite() { Dim::Known((n as i64).max(0)) } else { Dim::Unknown }
            }
            _ => Dim::Unknown,
        },
        _ => Dim::Unknown,
    };
    ctx.set(0, elem, Some(vec![length.clone()]));
    if elem.is_some_and(DataType::is_integer)
        && let (Dim::Known(n), Some(s), Some(d)) = (length, ctx.ints(0), ctx.ints(2))
        && let (Some(&s), Some(&d)) = (s.first(), d.first())
        && usize::try_from(n).is_ok_and(|n| n <= 1 << 12)
    {
        ctx.set_data(0, (0..n).map(|k| k.checked_mul(d).and_then(|x| x.checked_add(s)).map_or(Dim::Unknown, Dim::Known)).collect());
    }
    Ok(())
}

fn flatten(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, Some(vec![Dim::Unknown, Dim::Unknown]));
        return Ok(());
    };
    let rank = dims.len();
    let axis = ctx.attr_int_or("axis", 1);
    // The axis is in [-rank, rank]: it may equal the rank (everything goes to the first dim).
    let r = rank as i64;
    if axis < -r || axis > r {
        return Err(InferError::Axis { axis, rank });
    }
    let axis = if axis < 0 { axis + r } else { axis } as usize;
    ctx.set(0, elem, Some(vec![dim_product(&dims[..axis]), dim_product(&dims[axis..])]));
    Ok(())
}

fn split(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let outputs = ctx.output_count();
    let Some(dims) = ctx.dims(0) else {
        for i in 0..outputs {
            ctx.set(i, elem, None);
        }
        return Ok(());
    };
    let axis = normalize_axis(ctx.attr_int_or("axis", 0), dims.len())?;
    let sizes: Option<Vec<i64>> = if ctx.opset < 13 {
        match ctx.attr_ints("split") {
            Some(s) => Some(s.to_vec()),
            // Split-1 and -2 could take the sizes as a second input.
            None if ctx.has_input(1) => match ctx.ints(1) {
                Some(s) => Some(s),
                None => return unknown_split(ctx, elem, dims, axis),
            },
            None => None,
        }
    } else if ctx.has_input(1) {
        match ctx.ints(1) {
            Some(s) => Some(s),
            None => return unknown_split(ctx, elem, dims, axis),
        }
    } else {
        None
    };
    let total = &dims[axis];
    let parts: Vec<Dim> = match sizes {
        Some(sizes) => {
            if sizes.len() != outputs {
                return Err(InferError::InputValue { index: 1, reason: format!("{} sizes for {outputs} outputs", sizes.len()) });
            }
            if let Dim::Known(t) = total
                && sizes.iter().try_fold(0i64, |a, &b| a.checked_add(b)) != Some(*t)
            {
                return Err(InferError::InputValue { index: 1, reason: format!("sizes {sizes:?} do not add up to {t}") });
            }
            sizes.into_iter().map(Dim::Known).collect()
        }
        None => {
            let num_outputs = if ctx.opset >= 18 { ctx.attr_int("num_outputs").unwrap_or(outputs as i64) } else { outputs as i64 };
            if num_outputs != outputs as i64 || num_outputs <= 0 {
                return Err(InferError::Attribute { name: "num_outputs", reason: format!("{num_outputs} for {outputs} outputs") });
            }
            match total {
                Dim::Known(t) if ctx.opset >= 18 => {
                    // Chunks of ceil(t / n); the last one takes what is left.
                    let chunk = super::ceil_div(*t, num_outputs).unwrap_or(0);
                    let last = chunk.checked_mul(num_outputs - 1).and_then(|used| t.checked_sub(used)).unwrap_or(-1);
                    if last < 0 {
                        return Err(InferError::InputValue { index: 0, reason: format!("{t} cannot be split into {num_outputs} parts") });
                    }
                    (0..num_outputs).map(|k| Dim::Known(if k == num_outputs - 1 { last } else { chunk })).collect()
                }
                Dim::Known(t) => {
                    if t % num_outputs != 0 {
                        return Err(InferError::InputValue { index: 0, reason: format!("{t} cannot be split evenly into {num_outputs} parts") });
                    }
                    vec![Dim::Known(t / num_outputs); outputs]
                }
                d if outputs == 1 => vec![d.clone()],
                _ => vec![Dim::Unknown; outputs],
            }
        }
    };
    for (i, part) in parts.into_iter().enumerate() {
        let mut out = dims.to_vec();
        out[axis] = part;
        ctx.set(i, elem, Some(out));
    }
    Ok(())
}

fn unknown_split(ctx: &mut NodeCtx<'_>, elem: Option<DataType>, dims: &[Dim], axis: usize) -> Result<(), InferError> {
    let mut out = dims.to_vec();
    out[axis] = Dim::Unknown;
    for i in 0..ctx.output_count() {
        ctx.set(i, elem, Some(out.clone()));
    }
    Ok(())
}

fn tile(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let out = match ctx.data(1) {
        Some(repeats) => {
            if repeats.len() != dims.len() {
                return Err(InferError::InputValue { index: 1, reason: format!("{} repeats for rank {}", repeats.len(), dims.len()) });
            }
            dims.iter().zip(&repeats).map(|(d, r)| dim_mul(d, r)).collect()
        }
        None => vec![Dim::Unknown; dims.len()],
    };
    ctx.set(0, elem, Some(out));
    Ok(())
}

fn pad(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let rank = dims.len();
    let pads: Option<Vec<Dim>> = if ctx.opset < 11 {
        let name = if ctx.opset < 2 { "paddings" } else { "pads" };
        ctx.attr_ints(name).map(|p| p.iter().map(|&v| Dim::Known(v)).collect())
    } else {
        ctx.require(1)?;
        ctx.data(1)
    };
    let axes: Option<Vec<usize>> = if ctx.opset >= 18 && ctx.has_input(3) {
        match ctx.ints(3) {
            Some(a) => Some(normalize_axes(&a, rank)?),
            None => None,
        }
    } else {
        Some((0..rank).collect())
    };
    let out = match (pads, axes) {
        (Some(pads), Some(axes)) => {
            if pads.len() != 2 * axes.len() {
                return Err(InferError::InputValue { index: 1, reason: format!("{} pads for {} axes", pads.len(), axes.len()) });
            }
            let mut out = dims.to_vec();
            for (k, &a) in axes.iter().enumerate() {
                out[a] = dim_add(&dim_add(&dims[a], &pads[k]), &pads[k + axes.len()]);
                if out[a].known().is_some_and(|n| n < 0) {
                    return Err(InferError::InputValue { index: 1, reason: format!("padding makes axis {a} negative") });
                }
            }
            out
        }
        (_, Some(axes)) => {
            let mut out = dims.to_vec();
            for a in axes {
                out[a] = Dim::Unknown;
            }
            out
        }
        _ => vec![Dim::Unknown; rank],
    };
    ctx.set(0, elem, Some(out));
    Ok(())
}

fn depth_space(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let b = ctx.attr_int("blocksize").filter(|&b| b > 0).ok_or(InferError::Attribute { name: "blocksize", reason: "missing or not positive".into() })?;
    let dims = match ctx.dims(0) {
        Some([n, c, h, w]) => {
            let area = b.checked_mul(b).map_or(Dim::Unknown, Dim::Known);
            let block = Dim::Known(b);
            Some(if ctx.node.op_type == "DepthToSpace" {
                vec![n.clone(), super::dim_div(c, &area), dim_mul(h, &block), dim_mul(w, &block)]
            } else {
                vec![n.clone(), dim_mul(c, &area), super::dim_div(h, &block), super::dim_div(w, &block)]
            })
        }
        Some(d) => return Err(InferError::Rank { index: 0, rank: d.len(), expected: "4".into() }),
        None => None,
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn one_hot(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    ctx.require(2)?;
    let elem = ctx.elem(2);
    let Some(indices) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let depth = match ctx.floats(1) {
        Some(v) if v.len() == 1 => Dim::Known(v[0] as i64),
        _ => Dim::Unknown,
    };
    let axis = normalize_axis(ctx.attr_int_or("axis", -1), indices.len() + 1)?;
    let mut out = indices.to_vec();
    out.insert(axis, depth);
    ctx.set(0, elem, Some(out));
    Ok(())
}

fn non_zero(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let rank = ctx.rank(0).map_or(Dim::Unknown, |r| Dim::Known(r as i64));
    ctx.set(0, Some(DataType::Int64), Some(vec![rank, Dim::Unknown]));
    Ok(())
}

fn compress(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let dims = match ctx.attr_int("axis") {
        None => Some(vec![Dim::Unknown]),
        Some(axis) => match ctx.dims(0) {
            Some(d) => {
                let a = normalize_axis(axis, d.len())?;
                let mut out = d.to_vec();
                out[a] = Dim::Unknown;
                Some(out)
            }
            None => None,
        },
    };
    ctx.set(0, elem, dims);
    Ok(())
}

fn unique(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let i64t = Some(DataType::Int64);
    match ctx.attr_int("axis") {
        None => {
            ctx.set(0, elem, Some(vec![Dim::Unknown]));
            let total = ctx.dims(0).map(dim_product).unwrap_or(Dim::Unknown);
            ctx.set(2, i64t, Some(vec![total]));
        }
        Some(axis) => {
            let Some(d) = ctx.dims(0) else {
                ctx.set(0, elem, None);
                return Ok(());
            };
            let a = normalize_axis(axis, d.len())?;
            let mut out = d.to_vec();
            out[a] = Dim::Unknown;
            ctx.set(0, elem, Some(out));
            ctx.set(2, i64t, Some(vec![d[a].clone()]));
        }
    }
    ctx.set(1, i64t, Some(vec![Dim::Unknown]));
    ctx.set(3, i64t, Some(vec![Dim::Unknown]));
    Ok(())
}

fn center_crop_pad(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let elem = ctx.elem(0);
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let axes: Vec<i64> = ctx.attr_ints("axes").map(<[i64]>::to_vec).unwrap_or_else(|| (0..dims.len() as i64).collect());
    let axes = normalize_axes(&axes, dims.len())?;
    let mut out = dims.to_vec();
    match ctx.data(1) {
        Some(sizes) if sizes.len() == axes.len() => {
            for (k, &a) in axes.iter().enumerate() {
                out[a] = sizes[k].clone();
            }
        }
        Some(sizes) => return Err(InferError::InputValue { index: 1, reason: format!("{} sizes for {} axes", sizes.len(), axes.len()) }),
        None => {
            for &a in &axes {
                out[a] = Dim::Unknown;
            }
        }
    }
    ctx.set(0, elem, Some(out));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }
    fn k(n: i64) -> Dim {
        Dim::Known(n)
    }

    #[test]
    fn reshape_zero_copies_and_minus_one_takes_the_rest() {
        let input = [sym("batch"), sym("seq"), k(384)];
        assert_eq!(reshaped(Some(&input), &[k(0), k(0), k(12), k(32)], false).unwrap(), vec![sym("batch"), sym("seq"), k(12), k(32)]);
        assert_eq!(reshaped(Some(&input), &[sym("batch"), k(-1), k(384)], false).unwrap(), vec![sym("batch"), sym("seq"), k(384)]);
        assert_eq!(reshaped(Some(&[k(2), k(3), k(4)]), &[k(4), k(-1)], false).unwrap(), vec![k(4), k(6)]);
        assert_eq!(reshaped(Some(&[k(2), k(3), k(4)]), &[k(0), k(-1)], false).unwrap(), vec![k(2), k(12)]);
        assert_eq!(reshaped(Some(&input), &[k(-1)], false).unwrap(), vec![Dim::Unknown]);
        // allowzero: 0 is a real size.
        assert_eq!(reshaped(Some(&[k(0), k(3)]), &[k(3), k(0)], true).unwrap(), vec![k(3), k(0)]);
        assert!(reshaped(Some(&[k(2), k(3)]), &[k(4), k(-1)], false).is_err());
        assert!(reshaped(Some(&[k(2), k(3)]), &[k(-1), k(-1)], false).is_err());
        assert!(reshaped(Some(&[k(2), k(3)]), &[k(5)], false).is_err());
    }

    #[test]
    fn slices_clamp_and_handle_symbols() {
        assert_eq!(sliced_dim(&k(10), &k(-3), &k(i64::MAX), 1), k(3));
        assert_eq!(sliced_dim(&k(10), &k(1), &k(-1), 2), k(4));
        assert_eq!(sliced_dim(&k(10), &k(-1), &k(i64::MIN), -1), k(10));
        assert_eq!(sliced_dim(&sym("seq"), &k(0), &k(i64::MAX), 1), sym("seq"));
        assert_eq!(sliced_dim(&sym("seq"), &k(0), &sym("seq"), 1), sym("seq"));
        assert_eq!(sliced_dim(&k(512), &k(0), &sym("seq"), 1), Dim::Unknown);
        assert_eq!(slice_indices(5, -1, i64::MIN, -2), Some(vec![4, 2, 0]));
        assert_eq!(slice_indices(4, 1, 100, 1), Some(vec![1, 2, 3]));
    }
}
