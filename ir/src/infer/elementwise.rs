//! Elementwise ops: numpy-broadcasting binary and variadic ops, comparisons, `Where`, unary
//! maps, `Cast`. Integer ones also compute tracked values (shape arithmetic).

use super::{InferError, NodeCtx, Rule, broadcast, dim_add, dim_div, dim_mul, dim_sub};
use crate::dtype::DataType;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitShift" | "StringConcat" => arithmetic,
        "Pow" => power,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => comparison,
        "Where" => select,
        "Max" | "Min" | "Sum" | "Mean" => variadic,
        "Not" | "IsNaN" | "IsInf" | "RegexFullMatch" => to_bool,
        "Cast" => cast,
        "BitCast" => bit_cast,
        "CastLike" => cast_like,
        "Neg" | "Abs" => negate_or_abs,
        "Relu"
        | "Sigmoid"
        | "Tanh"
        | "Erf"
        | "Sqrt"
        | "Exp"
        | "Log"
        | "Reciprocal"
        | "Ceil"
        | "Floor"
        | "Round"
        | "Sign"
        | "Sin"
        | "Cos"
        | "Tan"
        | "Asin"
        | "Acos"
        | "Atan"
        | "Sinh"
        | "Cosh"
        | "Asinh"
        | "Acosh"
        | "Atanh"
        | "Softplus"
        | "Softsign"
        | "Elu"
        | "Selu"
        | "Celu"
        | "LeakyRelu"
        | "ThresholdedRelu"
        | "HardSigmoid"
        | "HardSwish"
        | "Mish"
        | "Gelu"
        | "Swish"
        | "Shrink"
        | "BitwiseNot"
        | "Clip"
        | "PRelu"
        | "Trilu"
        | "CumSum"
        | "CumProd"
        | "LRN"
        | "LpNormalization"
        | "MeanVarianceNormalization"
        | "InstanceNormalization"
        | "ReverseSequence"
        | "Scatter"
        | "ScatterElements"
        | "ScatterND"
        | "TensorScatter"
        | "RotaryEmbedding" => same_as_first_input,
        "Bernoulli" | "RandomUniformLike" | "RandomNormalLike" | "EyeLike" => like_with_dtype,
        _ => return None,
    })
}

/// The broadcast shape of the given inputs; `None` when one has unknown rank. Before opset 7
/// binary ops broadcast (if at all) the second input to the first, so the first shape is it.
fn broadcast_inputs(ctx: &NodeCtx<'_>, inputs: &[usize]) -> Result<Option<Vec<Dim>>, InferError> {
    if ctx.opset < 7 && inputs.len() == 2 {
        return Ok(ctx.dims(inputs[0]).map(<[Dim]>::to_vec));
    }
    let mut shapes = Vec::with_capacity(inputs.len());
    for &i in inputs {
        match ctx.dims(i) {
            Some(d) => shapes.push(d),
            None => return Ok(None),
        }
    }
    broadcast(&shapes).map(Some)
}

/// The common element type of inputs that must agree.
fn common_elem(ctx: &NodeCtx<'_>, inputs: &[usize]) -> Result<Option<DataType>, InferError> {
    let mut found: Option<DataType> = None;
    for &i in inputs {
        match (found, ctx.elem(i)) {
            (Some(a), Some(b)) if a != b => return Err(InferError::ElemMismatch { a, b }),
            (None, b) => found = b,
            _ => {}
        }
    }
    Ok(found)
}

/// Elementwise combination of tracked values, broadcasting a single value.
fn zip_data(a: &[Dim], b: &[Dim], f: impl Fn(&Dim, &Dim) -> Dim) -> Option<Vec<Dim>> {
    match (a.len(), b.len()) {
        (x, y) if x == y => Some(a.iter().zip(b).map(|(x, y)| f(x, y)).collect()),
        (1, _) => Some(b.iter().map(|y| f(&a[0], y)).collect()),
        (_, 1) => Some(a.iter().map(|x| f(x, &b[0])).collect()),
        _ => None,
    }
}

fn arithmetic(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = common_elem(ctx, &[0, 1])?;
    let dims = broadcast_inputs(ctx, &[0, 1])?;
    ctx.set(0, elem, dims);
    if elem.is_some_and(DataType::is_integer)
        && let (Some(a), Some(b)) = (ctx.data(0), ctx.data(1))
    {
        let op: fn(&Dim, &Dim) -> Dim = match ctx.node.op_type.as_str() {
            "Add" => dim_add,
            "Sub" => dim_sub,
            "Mul" => dim_mul,
            "Div" => integer_div,
            "Mod" if ctx.attr_int_or("fmod", 0) == 0 => |a, b| known2(a, b, |x, y| x.checked_rem_euclid(y).map(|r| if r != 0 && y < 0 { r + y } else { r })),
            _ => return Ok(()),
        };
        if let Some(out) = zip_data(&a, &b, op) {
            ctx.set_data(0, out);
        }
    }
    Ok(())
}

/// Integer `Div` truncates toward zero; sizes are never negative, so only exact or
/// non-negative cases are computed.
fn integer_div(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if *x >= 0 && *y > 0 => Dim::Known(x / y),
        (Dim::Known(_), Dim::Known(_)) => Dim::Unknown,
        _ => dim_div(a, b),
    }
}

fn known2(a: &Dim, b: &Dim, f: impl Fn(i64, i64) -> Option<i64>) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => f(*x, *y).map_or(Dim::Unknown, Dim::Known),
        _ => Dim::Unknown,
    }
}

fn power(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    // The exponent may have another element type (opset 12 and later).
    let dims = broadcast_inputs(ctx, &[0, 1])?;
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

/// Compares a tracked value with another; symbols are sizes greater than one.
fn compare(a: &Dim, b: &Dim) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Some(x.cmp(y)),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Some(Equal),
        (Dim::Sym(_), Dim::Known(k)) if *k <= 1 => Some(Greater),
        (Dim::Known(k), Dim::Sym(_)) if *k <= 1 => Some(Less),
        _ => None,
    }
}

fn truth(b: Option<bool>) -> Dim {
    b.map_or(Dim::Unknown, |b| Dim::Known(i64::from(b)))
}

fn comparison(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    common_elem(ctx, &[0, 1])?;
    let dims = broadcast_inputs(ctx, &[0, 1])?;
    ctx.set(0, Some(DataType::Bool), dims);
    if let (Some(a), Some(b)) = (ctx.data(0), ctx.data(1)) {
        use std::cmp::Ordering::*;
        let op: fn(&Dim, &Dim) -> Dim = match ctx.node.op_type.as_str() {
            "Equal" => |a, b| truth(compare(a, b).map(|o| o == Equal)),
            "Less" => |a, b| truth(compare(a, b).map(|o| o == Less)),
            "Greater" => |a, b| truth(compare(a, b).map(|o| o == Greater)),
            "LessOrEqual" => |a, b| truth(compare(a, b).map(|o| o != Greater)),
            "GreaterOrEqual" => |a, b| truth(compare(a, b).map(|o| o != Less)),
            "And" => |a, b| known2(a, b, |x, y| Some(i64::from(x != 0 && y != 0))),
            "Or" => |a, b| known2(a, b, |x, y| Some(i64::from(x != 0 || y != 0))),
            "Xor" => |a, b| known2(a, b, |x, y| Some(i64::from((x != 0) != (y != 0)))),
            _ => return Ok(()),
        };
        if let Some(out) = zip_data(&a, &b, op) {
            ctx.set_data(0, out);
        }
    }
    Ok(())
}

fn select(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = common_elem(ctx, &[1, 2])?;
    let dims = broadcast_inputs(ctx, &[0, 1, 2])?;
    ctx.set(0, elem, dims);
    if let (Some(c), Some(x), Some(y)) = (ctx.data(0), ctx.data(1), ctx.data(2)) {
        let n = c.len().max(x.len()).max(y.len());
        let at = |d: &[Dim], i: usize| if d.len() == 1 { d[0].clone() } else { d[i].clone() };
        if [c.len(), x.len(), y.len()].iter().all(|&l| l == 1 || l == n) {
            let out = (0..n)
                .map(|i| match at(&c, i) {
                    Dim::Known(0) => at(&y, i),
                    Dim::Known(_) => at(&x, i),
                    _ if at(&x, i) == at(&y, i) => at(&x, i),
                    _ => Dim::Unknown,
                })
                .collect();
            ctx.set_data(0, out);
        }
    }
    Ok(())
}

fn variadic(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let inputs: Vec<usize> = (0..ctx.input_count()).filter(|&i| ctx.has_input(i)).collect();
    if inputs.is_empty() {
        return Err(InferError::MissingInput { index: 0 });
    }
    let elem = common_elem(ctx, &inputs)?;
    let mut shapes = Vec::new();
    for &i in &inputs {
        shapes.push(ctx.dims(i));
    }
    let dims = match shapes.into_iter().collect::<Option<Vec<_>>>() {
        Some(shapes) => Some(broadcast(&shapes)?),
        None => None,
    };
    ctx.set(0, elem, dims);
    if elem.is_some_and(DataType::is_integer) {
        let op: fn(&Dim, &Dim) -> Dim = match ctx.node.op_type.as_str() {
            "Sum" => dim_add,
            "Max" => |a, b| match compare(a, b) {
                Some(std::cmp::Ordering::Less) => b.clone(),
                Some(_) => a.clone(),
                None => Dim::Unknown,
            },
            "Min" => |a, b| match compare(a, b) {
                Some(std::cmp::Ordering::Greater) => b.clone(),
                Some(_) => a.clone(),
                None => Dim::Unknown,
            },
            _ => return Ok(()),
        };
        let mut acc: Option<Vec<Dim>> = None;
        for &i in &inputs {
            let Some(d) = ctx.data(i) else { return Ok(()) };
            acc = Some(match acc {
                None => d,
                Some(a) => match zip_data(&a, &d, op) {
                    Some(x) => x,
                    None => return Ok(()),
                },
            });
        }
        if let Some(out) = acc {
            ctx.set_data(0, out);
        }
    }
    Ok(())
}

fn to_bool(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.set(0, Some(DataType::Bool), ctx.dims(0).map(<[Dim]>::to_vec));
    if ctx.node.op_type == "Not"
        && let Some(d) = ctx.data(0)
    {
        ctx.set_data(0, d.iter().map(|x| truth(x.known().map(|v| v == 0))).collect());
    }
    Ok(())
}

fn same_as_first_input(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.set(0, ctx.elem(0), ctx.dims(0).map(<[Dim]>::to_vec));
    Ok(())
}

fn negate_or_abs(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    same_as_first_input(ctx)?;
    if ctx.elem(0).is_some_and(DataType::is_integer)
        && let Some(d) = ctx.data(0)
    {
        let abs = ctx.node.op_type == "Abs";
        let out = d
            .iter()
            .map(|x| match x {
                Dim::Known(v) if abs => v.checked_abs().map_or(Dim::Unknown, Dim::Known),
                Dim::Known(v) => v.checked_neg().map_or(Dim::Unknown, Dim::Known),
                Dim::Sym(_) if abs => x.clone(),
                _ => Dim::Unknown,
            })
            .collect();
        ctx.set_data(0, out);
    }
    Ok(())
}

/// Ops whose output has the input's shape and an element type from `dtype` (else the input's).
fn like_with_dtype(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = ctx.attr_dtype("dtype")?.or(ctx.elem(0));
    ctx.set(0, elem, ctx.dims(0).map(<[Dim]>::to_vec));
    Ok(())
}

fn cast(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    // Cast-1 spells the target as a string (`"FLOAT"`).
    let to = match ctx.attr_string("to") {
        Some(name) => Some(DataType::parse(name).ok_or(InferError::Attribute { name: "to", reason: format!("unknown type '{name}'") })?),
        None => ctx.attr_dtype("to")?,
    };
    let Some(to) = to else {
        return Err(InferError::Attribute { name: "to", reason: "missing".into() });
    };
    ctx.set(0, Some(to), ctx.dims(0).map(<[Dim]>::to_vec));
    cast_data(ctx, to);
    Ok(())
}

/// Reinterprets the bits; between types of one width the shape stays.
fn bit_cast(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let to = ctx.attr_dtype("to")?.ok_or(InferError::Attribute { name: "to", reason: "missing".into() })?;
    let same_width = ctx.elem(0).is_some_and(|from| from.bit_width().is_some() && from.bit_width() == to.bit_width());
    ctx.set(0, Some(to), ctx.dims(0).filter(|_| same_width).map(<[Dim]>::to_vec));
    Ok(())
}

fn cast_like(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let to = ctx.elem(1);
    ctx.set(0, to, ctx.dims(0).map(<[Dim]>::to_vec));
    if let Some(to) = to {
        cast_data(ctx, to);
    }
    Ok(())
}

/// Tracked integer values converted to another integer (or bool) type.
fn cast_data(ctx: &mut NodeCtx<'_>, to: DataType) {
    let from_int = ctx.elem(0).is_some_and(|t| t.is_integer() || t == DataType::Bool);
    if !from_int {
        return;
    }
    let Some(d) = ctx.data(0) else { return };
    use DataType::*;
    let convert = |x: &Dim| -> Dim {
        match (x, to) {
            (Dim::Known(v), Bool) => Dim::Known(i64::from(*v != 0)),
            (Dim::Sym(_), Bool) => Dim::Known(1),
            (Dim::Known(v), Int64 | Uint64) => Dim::Known(*v),
            (Dim::Known(v), Int32) => Dim::Known(*v as i32 as i64),
            (Dim::Known(v), Uint32) => Dim::Known(*v as u32 as i64),
            (Dim::Known(v), Int16) => Dim::Known(*v as i16 as i64),
            (Dim::Known(v), Uint16) => Dim::Known(*v as u16 as i64),
            (Dim::Known(v), Int8) => Dim::Known(*v as i8 as i64),
            (Dim::Known(v), Uint8) => Dim::Known(*v as u8 as i64),
            // Sizes fit in 32 bits in any model this matters for.
            (Dim::Sym(_), Int64 | Uint64 | Int32 | Uint32) => x.clone(),
            _ => Dim::Unknown,
        }
    };
    if to.is_integer() || to == Bool {
        ctx.set_data(0, d.iter().map(convert).collect());
    }
}
