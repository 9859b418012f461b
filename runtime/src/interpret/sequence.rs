//! Sequence and optional ops: they only move tensors around (split, concatenate, insert, pick),
//! so they run here rather than on tract, which has no sequence type.

use crate::value::{RuntimeValue, TensorValue};
use compactor_ir::Node;
use tract_onnx::prelude::{DatumType, Tensor};

/// True for the ops [`run`] handles.
pub(super) fn handles(op: &str) -> bool {
    matches!(
        op,
        "SequenceConstruct"
            | "SequenceEmpty"
            | "SequenceInsert"
            | "SequenceErase"
            | "SequenceAt"
            | "SequenceLength"
            | "SplitToSequence"
            | "ConcatFromSequence"
            | "Optional"
            | "OptionalHasElement"
            | "OptionalGetElement"
    )
}

/// Runs one sequence or optional op on its inputs (`None`: an omitted optional input).
pub(super) fn run(node: &Node, inputs: &[Option<RuntimeValue>]) -> Result<Vec<RuntimeValue>, String> {
    let input = |i: usize| inputs.get(i).and_then(Option::as_ref);
    let sequence = |i: usize| match input(i) {
        Some(RuntimeValue::Sequence(s)) => Ok(s.clone()),
        Some(RuntimeValue::Optional(Some(inner))) if matches!(**inner, RuntimeValue::Sequence(_)) => {
            let RuntimeValue::Sequence(s) = &**inner else { unreachable!("matched above") };
            Ok(s.clone())
        }
        Some(other) => Err(format!("input {i} is {}, not a sequence", other.kind())),
        None => Err(format!("input {i} is missing")),
    };
    let tensor = |i: usize| match input(i).map(|v| (v, v.as_tensor())) {
        Some((_, Some(t))) => Ok(t.clone()),
        Some((v, None)) => Err(format!("input {i} is {}, not a tensor", v.kind())),
        None => Err(format!("input {i} is missing")),
    };
    let value = match node.op_type.as_str() {
        "SequenceEmpty" => RuntimeValue::Sequence(Vec::new()),
        "SequenceConstruct" => RuntimeValue::Sequence((0..inputs.len()).map(tensor).collect::<Result<_, _>>()?),
        "SequenceLength" => RuntimeValue::Tensor(scalar_i64(sequence(0)?.len() as i64)?),
        "SequenceAt" => {
            let s = sequence(0)?;
            let at = position(&tensor(1)?, s.len(), false)?;
            RuntimeValue::Tensor(s[at].clone())
        }
        "SequenceInsert" => {
            let mut s = sequence(0)?;
            let at = match input(2) {
                Some(_) => position(&tensor(2)?, s.len(), true)?,
                None => s.len(),
            };
            s.insert(at, tensor(1)?);
            RuntimeValue::Sequence(s)
        }
        "SequenceErase" => {
            let mut s = sequence(0)?;
            let at = match input(1) {
                Some(_) => position(&tensor(1)?, s.len(), false)?,
                None if s.is_empty() => return Err("cannot erase from an empty sequence".into()),
                None => s.len() - 1,
            };
            s.remove(at);
            RuntimeValue::Sequence(s)
        }
        "SplitToSequence" => {
            let split = match input(1) {
                Some(_) => Some(tensor(1)?),
                None => None,
            };
            RuntimeValue::Sequence(split_to_sequence(&tensor(0)?, split.as_ref(), node.attr_int("axis").unwrap_or(0), node.attr_int("keepdims").unwrap_or(1) != 0)?)
        }
        "ConcatFromSequence" => {
            let axis = node.attr_int("axis").ok_or("the axis attribute is required")?;
            RuntimeValue::Tensor(concat(&sequence(0)?, axis, node.attr_int("new_axis").unwrap_or(0) != 0)?)
        }
        "Optional" => RuntimeValue::Optional(input(0).map(|v| Box::new(v.clone()))),
        "OptionalHasElement" => {
            let present = match input(0) {
                None | Some(RuntimeValue::Optional(None)) => false,
                Some(_) => true,
            };
            RuntimeValue::Tensor(TensorValue::from_slice(&[], &[present]).map_err(|e| e.to_string())?)
        }
        "OptionalGetElement" => match input(0) {
            Some(RuntimeValue::Optional(Some(inner))) => (**inner).clone(),
            Some(RuntimeValue::Optional(None)) => return Err("the optional input is empty".into()),
            Some(other) => other.clone(),
            None => return Err("input 0 is missing".into()),
        },
        other => return Err(format!("{other} is not a sequence op")),
    };
    Ok(vec![value])
}

fn scalar_i64(v: i64) -> Result<TensorValue, String> {
    TensorValue::from_slice(&[], &[v]).map_err(|e| e.to_string())
}

fn as_i64s(t: &TensorValue) -> Result<Vec<i64>, String> {
    Ok(t.to_f64_vec().map_err(|e| e.to_string())?.into_iter().map(|x| x as i64).collect())
}

/// A position in a sequence of `len` tensors (negative counts from the back); `len` itself is
/// valid only where inserting.
fn position(t: &TensorValue, len: usize, inserting: bool) -> Result<usize, String> {
    let p = *as_i64s(t)?.first().ok_or("the position is empty")?;
    let at = if p < 0 { p + len as i64 } else { p };
    let last = if inserting { len as i64 } else { len as i64 - 1 };
    if at < 0 || at > last {
        return Err(format!("position {p} is outside a sequence of {len}"));
    }
    Ok(at as usize)
}

fn axis_of(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(format!("axis {axis} is outside rank {rank}"));
    }
    Ok(a as usize)
}

/// `SplitToSequence`: pieces of `split` sizes along `axis` (one size: equal pieces, the last
/// smaller; none: pieces of 1, the axis dropped unless `keepdims`).
fn split_to_sequence(x: &TensorValue, split: Option<&TensorValue>, axis: i64, keepdims: bool) -> Result<Vec<TensorValue>, String> {
    let axis = axis_of(axis, x.shape().len())?;
    let dim = x.shape()[axis];
    let sizes: Vec<usize> = match split {
        None => vec![1; dim],
        Some(s) if s.shape().is_empty() => {
            let n = *as_i64s(s)?.first().ok_or("empty split")?;
            if n <= 0 {
                return Err(format!("split size {n} must be positive"));
            }
            let n = n as usize;
            (0..dim.div_ceil(n)).map(|k| n.min(dim - k * n)).collect()
        }
        Some(s) => as_i64s(s)?.into_iter().map(|n| usize::try_from(n).map_err(|_| format!("split size {n} is negative"))).collect::<Result<_, _>>()?,
    };
    if sizes.iter().sum::<usize>() != dim {
        return Err(format!("split sizes {sizes:?} do not add up to dimension {dim}"));
    }
    let mut start = 0;
    let mut pieces = Vec::with_capacity(sizes.len());
    for n in sizes {
        let mut piece = x.tract().slice(axis, start, start + n).map_err(|e| e.to_string())?;
        if split.is_none() && !keepdims {
            piece.remove_axis(axis).map_err(|e| e.to_string())?;
        }
        pieces.push(retyped(piece, x)?);
        start += n;
    }
    Ok(pieces)
}

/// `ConcatFromSequence`: the tensors joined along `axis`, or stacked on a new axis there.
fn concat(seq: &[TensorValue], axis: i64, new_axis: bool) -> Result<TensorValue, String> {
    let first = seq.first().ok_or("cannot concatenate an empty sequence")?;
    let rank = first.shape().len() + new_axis as usize;
    let axis = axis_of(axis, rank)?;
    let parts: Vec<Tensor> = seq
        .iter()
        .map(|t| {
            let mut t = t.tract().clone();
            if new_axis {
                t.insert_axis(axis).map_err(|e| e.to_string())?;
            }
            Ok(t)
        })
        .collect::<Result<_, String>>()?;
    retyped(Tensor::stack_tensors(axis, &parts).map_err(|e| e.to_string())?, first)
}

/// `t` as a value of `like`'s ONNX type (the same carrier).
pub(super) fn retyped(t: Tensor, like: &TensorValue) -> Result<TensorValue, String> {
    if t.datum_type() == DatumType::String || like.tract().datum_type() != t.datum_type() {
        return TensorValue::from_tract(t).map_err(|e| e.to_string());
    }
    TensorValue::with_onnx_type(t, like.dtype()).map_err(|e| e.to_string())
}
