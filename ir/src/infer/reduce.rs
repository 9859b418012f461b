//! Reductions (`ReduceSum`, `ReduceMean`, ...) and `ArgMax`/`ArgMin`.

use super::{InferError, NodeCtx, Rule, dim_add, dim_mul, normalize_axes, normalize_axis};
use crate::dtype::DataType;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => reduce,
        "ArgMax" | "ArgMin" => arg_reduce,
        _ => return None,
    })
}

/// Which axes a reduction reduces.
enum Axes {
    All,
    None,
    These(Vec<i64>),
    /// Given as an input whose values are not known; `Some(n)` when their number is.
    Unknown(Option<usize>),
}

fn reduction_axes(ctx: &NodeCtx<'_>) -> Axes {
    // ReduceSum takes the axes as an input from opset 13, the other reductions from 18.
    let axes_as_input = ctx.opset >= 18 || (ctx.node.op_type == "ReduceSum" && ctx.opset >= 13);
    if !axes_as_input {
        return match ctx.attr_ints("axes") {
            Some(a) if !a.is_empty() => Axes::These(a.to_vec()),
            _ => Axes::All,
        };
    }
    let empty = || if ctx.attr_int_or("noop_with_empty_axes", 0) != 0 { Axes::None } else { Axes::All };
    if !ctx.has_input(1) {
        return empty();
    }
    match ctx.ints(1) {
        Some(a) if a.is_empty() => empty(),
        Some(a) => Axes::These(a),
        None => match ctx.dims(1) {
            Some([Dim::Known(0)]) => empty(),
            Some([Dim::Known(n)]) => Axes::Unknown(usize::try_from(*n).ok()),
            _ => Axes::Unknown(None),
        },
    }
}

fn reduce(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let keep = ctx.attr_int_or("keepdims", 1) != 0;
    let Some(dims) = ctx.dims(0) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let rank = dims.len();
    let reduced: Vec<usize> = match reduction_axes(ctx) {
        Axes::All => (0..rank).collect(),
        Axes::None => Vec::new(),
        Axes::These(a) => normalize_axes(&a, rank)?,
        Axes::Unknown(count) => {
            let out = if keep { Some(vec![Dim::Unknown; rank]) } else { count.and_then(|n| rank.checked_sub(n)).map(|r| vec![Dim::Unknown; r]) };
            ctx.set(0, elem, out);
            return Ok(());
        }
    };
    let out: Vec<Dim> = dims
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (reduced.contains(&i), keep) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect();
    ctx.set(0, elem, Some(out));
    // The product or sum of a tracked 1-D tensor (e.g. the element count of a shape).
    if rank == 1
        && reduced == [0]
        && elem.is_some_and(DataType::is_integer)
        && let Some(values) = ctx.data(0)
    {
        let folded = match ctx.node.op_type.as_str() {
            "ReduceProd" => Some(values.iter().fold(Dim::Known(1), |a, d| dim_mul(&a, d))),
            "ReduceSum" => Some(values.iter().fold(Dim::Known(0), |a, d| dim_add(&a, d))),
            _ => None,
        };
        if let Some(v) = folded {
            ctx.set_data(0, vec![v]);
        }
    }
    Ok(())
}

fn arg_reduce(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let keep = ctx.attr_int_or("keepdims", 1) != 0;
    let dims = match ctx.dims(0) {
        Some(x) => {
            let axis = normalize_axis(ctx.attr_int_or("axis", 0), x.len())?;
            let mut out = x.to_vec();
            if keep {
                out[axis] = Dim::Known(1);
            } else {
                out.remove(axis);
            }
            Some(out)
        }
        None => None,
    };
    ctx.set(0, Some(DataType::Int64), dims);
    Ok(())
}
