//! Control flow with every value known: `If` runs the branch taken, `Loop`, `Scan` and
//! `SequenceMap` run their body once per iteration, element or slice.

use super::sequence::retyped;
use super::{Env, Interpreter};
use crate::error::RuntimeError;
use crate::value::{RuntimeValue, TensorValue};
use compactor_ir::graph::AttrValue;
use compactor_ir::{NodeId, RegionId};
use tract_onnx::prelude::Tensor;

impl Interpreter {
    fn body(&self, id: NodeId, attr: &str) -> Result<RegionId, RuntimeError> {
        match self.graph().node(id).attr(attr) {
            Some(AttrValue::Graph(r)) => Ok(*r),
            _ => Err(self.fail(id, format!("no '{attr}' subgraph"))),
        }
    }

    /// Binds `values` to the body's inputs, runs the body, returns its outputs.
    fn run_body(&self, id: NodeId, body: RegionId, values: Vec<RuntimeValue>, env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let region = self.graph().region(body);
        if values.len() > region.inputs.len() {
            return Err(self.fail(id, format!("the body takes {} inputs, given {}", region.inputs.len(), values.len())));
        }
        for (&v, value) in region.inputs.iter().zip(values) {
            env.insert(v, value);
        }
        self.run_region(body, env)?;
        let outputs = self.graph().region(body).outputs.clone();
        outputs.iter().map(|&v| self.get(env, v)).collect()
    }

    fn tensor_input<'a>(&self, id: NodeId, inputs: &'a [Option<RuntimeValue>], i: usize) -> Result<Option<&'a TensorValue>, RuntimeError> {
        match inputs.get(i).and_then(Option::as_ref) {
            None => Ok(None),
            Some(v) => v.as_tensor().map(Some).ok_or_else(|| self.fail(id, format!("input {i} is {}, not a tensor", v.kind()))),
        }
    }

    fn truth(&self, id: NodeId, v: &RuntimeValue) -> Result<bool, RuntimeError> {
        let t = v.as_tensor().ok_or_else(|| self.fail(id, format!("a condition is {}, not a tensor", v.kind())))?;
        let values = t.to_f64_vec().map_err(|e| self.fail(id, e.to_string()))?;
        values.first().map(|&x| x != 0.0).ok_or_else(|| self.fail(id, "a condition is empty"))
    }

    pub(super) fn run_if(&self, id: NodeId, inputs: &[Option<RuntimeValue>], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let cond = inputs.first().and_then(Option::as_ref).ok_or_else(|| self.fail(id, "no condition"))?;
        let branch = if self.truth(id, cond)? { "then_branch" } else { "else_branch" };
        let body = self.body(id, branch)?;
        self.run_body(id, body, Vec::new(), env)
    }

    /// `Loop(M, cond, v...)`: runs while `cond` holds and fewer than `M` iterations ran; the
    /// body's outputs are the next condition, the carried values and per-iteration values
    /// stacked into the scan outputs.
    pub(super) fn run_loop(&self, id: NodeId, inputs: &[Option<RuntimeValue>], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let body = self.body(id, "body")?;
        let max_trips = match self.tensor_input(id, inputs, 0)? {
            Some(t) => Some(*t.to_f64_vec().map_err(|e| self.fail(id, e.to_string()))?.first().ok_or_else(|| self.fail(id, "empty trip count"))? as i64),
            None => None,
        };
        let mut keep_going = match inputs.get(1).and_then(Option::as_ref) {
            Some(c) => self.truth(id, c)?,
            None => true,
        };
        let mut carried: Vec<RuntimeValue> = inputs.iter().skip(2).map(|v| v.clone().unwrap_or(RuntimeValue::Optional(None))).collect();
        let scan_count = self.graph().region(body).outputs.len().checked_sub(1 + carried.len()).ok_or_else(|| self.fail(id, "the body has too few outputs"))?;
        let mut scans: Vec<Vec<TensorValue>> = vec![Vec::new(); scan_count];
        let mut trip = 0i64;
        while keep_going && max_trips.is_none_or(|m| trip < m) {
            let iteration = TensorValue::from_slice(&[], &[trip])?;
            let cond = TensorValue::from_slice(&[], &[keep_going])?;
            let mut values = vec![RuntimeValue::Tensor(iteration), RuntimeValue::Tensor(cond)];
            values.extend(carried.iter().cloned());
            let outputs = self.run_body(id, body, values, env)?;
            keep_going = self.truth(id, &outputs[0])?;
            carried = outputs[1..1 + carried.len()].to_vec();
            for (k, v) in outputs[1 + carried.len()..].iter().enumerate() {
                let t = v.as_tensor().ok_or_else(|| self.fail(id, format!("scan output {k} is {}, not a tensor", v.kind())))?;
                scans[k].push(t.clone());
            }
            trip += 1;
        }
        let carried_count = carried.len();
        let mut outputs = carried;
        for (k, values) in scans.iter().enumerate() {
            let out = self.graph().region(body).outputs[1 + carried_count + k];
            let stacked = if values.is_empty() { self.empty_like(id, out)? } else { stack(values, 0).map_err(|e| self.fail(id, e))? };
            outputs.push(RuntimeValue::Tensor(stacked));
        }
        Ok(outputs)
    }

    /// A scan output of no iterations: zero rows of the body output's declared type and shape.
    fn empty_like(&self, id: NodeId, body_output: compactor_ir::ValueId) -> Result<TensorValue, RuntimeError> {
        let value = self.graph().value(body_output);
        let dtype = value.elem().ok_or_else(|| self.fail(id, "no iterations ran and the scan output's type is not declared"))?;
        let mut shape = vec![0usize];
        if let Some(dims) = value.shape().and_then(|s| s.as_known()) {
            shape.extend(dims.iter().map(|&d| d as usize));
        }
        let carrier = crate::value::carrier_type(dtype).ok_or_else(|| self.fail(id, format!("{dtype} is not supported")))?;
        let t = Tensor::zero_dt(carrier, &shape).map_err(|e| self.fail(id, e.to_string()))?;
        TensorValue::with_onnx_type(t, dtype)
    }

    /// `Scan` (opset 9 on): the body runs once per slice of the scan inputs along their axes,
    /// carrying the state values; per-slice outputs are stacked along the output axes.
    /// Opset 8's form (a leading batch axis, optional sequence lengths) runs once per batch entry.
    pub(super) fn run_scan(&self, id: NodeId, inputs: &[Option<RuntimeValue>], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        if self.model.opset_version("").unwrap_or(21) < 9 {
            return self.run_scan8(id, inputs, env);
        }
        let tensors: Vec<TensorValue> =
            (0..inputs.len()).map(|i| self.tensor_input(id, inputs, i)?.cloned().ok_or_else(|| self.fail(id, format!("input {i} is missing")))).collect::<Result<_, _>>()?;
        self.scan_once(id, &tensors, env)
    }

    fn scan_once(&self, id: NodeId, inputs: &[TensorValue], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let node = self.graph().node(id);
        let body = self.body(id, "body")?;
        let scan_inputs = node.attr_int("num_scan_inputs").ok_or_else(|| self.fail(id, "num_scan_inputs is required"))? as usize;
        let states = inputs.len().checked_sub(scan_inputs).ok_or_else(|| self.fail(id, "fewer inputs than num_scan_inputs"))?;
        let ints = |name: &str, n: usize| node.attr_ints(name).map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; n]);
        let (in_axes, in_dirs) = (ints("scan_input_axes", scan_inputs), ints("scan_input_directions", scan_inputs));
        let outputs_count = self.graph().region(body).outputs.len().checked_sub(states).ok_or_else(|| self.fail(id, "the body has too few outputs"))?;
        let (out_axes, out_dirs) = (ints("scan_output_axes", outputs_count), ints("scan_output_directions", outputs_count));
        let scanned = &inputs[states..];
        let axes: Vec<usize> = scanned.iter().zip(&in_axes).map(|(t, &a)| axis_of(a, t.shape().len()).map_err(|e| self.fail(id, e))).collect::<Result<_, _>>()?;
        let length = match scanned.first() {
            Some(t) => t.shape()[axes[0]],
            None => return Err(self.fail(id, "no scan inputs")),
        };
        let mut state: Vec<RuntimeValue> = inputs[..states].iter().cloned().map(RuntimeValue::Tensor).collect();
        let mut collected: Vec<Vec<TensorValue>> = vec![Vec::new(); outputs_count];
        for step in 0..length {
            let mut values = state.clone();
            for ((t, &axis), &dir) in scanned.iter().zip(&axes).zip(&in_dirs) {
                let at = if dir == 1 { length - 1 - step } else { step };
                let mut slice = t.tract().slice(axis, at, at + 1).map_err(|e| self.fail(id, e.to_string()))?;
                slice.remove_axis(axis).map_err(|e| self.fail(id, e.to_string()))?;
                values.push(RuntimeValue::Tensor(retyped(slice, t).map_err(|e| self.fail(id, e))?));
            }
            let outputs = self.run_body(id, body, values, env)?;
            state = outputs[..states].to_vec();
            for (k, v) in outputs[states..].iter().enumerate() {
                collected[k].push(v.as_tensor().ok_or_else(|| self.fail(id, format!("scan output {k} is {}", v.kind())))?.clone());
            }
        }
        let mut results = state;
        for (k, mut values) in collected.into_iter().enumerate() {
            if out_dirs.get(k) == Some(&1) {
                values.reverse();
            }
            let out = self.graph().region(body).outputs[states + k];
            let stacked = if values.is_empty() {
                self.empty_like(id, out)?
            } else {
                let axis = axis_of(out_axes.get(k).copied().unwrap_or(0), values[0].shape().len() + 1).map_err(|e| self.fail(id, e))?;
                stack(&values, axis).map_err(|e| self.fail(id, e))?
            };
            results.push(RuntimeValue::Tensor(stacked));
        }
        Ok(results)
    }

    /// Opset 8's Scan: `sequence_lens` first, then states and scan inputs, all with a leading
    /// batch axis (scan axis 1); each batch entry is scanned on its own.
    fn run_scan8(&self, id: NodeId, inputs: &[Option<RuntimeValue>], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let tensors: Vec<TensorValue> =
            (1..inputs.len()).map(|i| self.tensor_input(id, inputs, i)?.cloned().ok_or_else(|| self.fail(id, format!("input {i} is missing")))).collect::<Result<_, _>>()?;
        let batch = tensors.first().map(|t| t.shape().first().copied().unwrap_or(0)).ok_or_else(|| self.fail(id, "no inputs"))?;
        if let Some(lens) = self.tensor_input(id, inputs, 0)? {
            let length = tensors.last().and_then(|t| t.shape().get(1)).copied().unwrap_or(0) as f64;
            if lens.to_f64_vec().map_err(|e| self.fail(id, e.to_string()))?.iter().any(|&l| l != length) {
                return Err(self.fail(id, "sequence_lens shorter than the scan inputs are not supported"));
            }
        }
        let mut per_batch: Vec<Vec<TensorValue>> = Vec::new();
        for b in 0..batch {
            let entry: Vec<TensorValue> = tensors
                .iter()
                .map(|t| {
                    let mut s = t.tract().slice(0, b, b + 1).map_err(|e| e.to_string())?;
                    s.remove_axis(0).map_err(|e| e.to_string())?;
                    retyped(s, t)
                })
                .collect::<Result<_, String>>()
                .map_err(|e| self.fail(id, e))?;
            let outputs = self.scan8_entry(id, &entry, env)?;
            per_batch.push(outputs.iter().map(|v| v.as_tensor().cloned().ok_or_else(|| self.fail(id, "a non-tensor output"))).collect::<Result<_, _>>()?);
        }
        let count = per_batch.first().map_or(0, Vec::len);
        (0..count).map(|k| stack(&per_batch.iter().map(|o| o[k].clone()).collect::<Vec<_>>(), 0).map(RuntimeValue::Tensor).map_err(|e| self.fail(id, e))).collect()
    }

    /// One batch entry of opset 8's Scan: `directions` is the only layout attribute (axis 0).
    fn scan8_entry(&self, id: NodeId, inputs: &[TensorValue], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let node = self.graph().node(id);
        if node.attr_ints("directions").is_some_and(|d| d.iter().any(|&x| x != 0)) {
            let directions = node.attr_ints("directions").map(<[i64]>::to_vec).unwrap_or_default();
            let mut model_inputs = inputs.to_vec();
            let states = inputs.len() - directions.len();
            for (k, &dir) in directions.iter().enumerate() {
                if dir == 1 {
                    model_inputs[states + k] = reverse_axis0(&inputs[states + k]).map_err(|e| self.fail(id, e))?;
                }
            }
            return self.scan_once(id, &model_inputs, env);
        }
        self.scan_once(id, inputs, env)
    }

    /// `SequenceMap`: the body once per element of the input sequences (tensor inputs are
    /// passed whole each time); each output collects into a sequence.
    pub(super) fn run_sequence_map(&self, id: NodeId, inputs: &[Option<RuntimeValue>], env: &mut Env) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let body = self.body(id, "body")?;
        let length = match inputs.first().and_then(Option::as_ref) {
            Some(RuntimeValue::Sequence(s)) => s.len(),
            _ => return Err(self.fail(id, "input 0 must be a sequence")),
        };
        let mut collected: Vec<Vec<TensorValue>> = vec![Vec::new(); self.graph().node(id).outputs.len()];
        for i in 0..length {
            let values: Vec<RuntimeValue> = inputs
                .iter()
                .map(|v| match v {
                    Some(RuntimeValue::Sequence(s)) => s.get(i).cloned().map(RuntimeValue::Tensor).ok_or_else(|| self.fail(id, format!("an input sequence is shorter than {length}"))),
                    Some(other) => Ok(other.clone()),
                    None => Err(self.fail(id, "an input is missing")),
                })
                .collect::<Result<_, _>>()?;
            let outputs = self.run_body(id, body, values, env)?;
            for (k, v) in outputs.iter().enumerate().take(collected.len()) {
                collected[k].push(v.as_tensor().ok_or_else(|| self.fail(id, format!("body output {k} is {}", v.kind())))?.clone());
            }
        }
        Ok(collected.into_iter().map(RuntimeValue::Sequence).collect())
    }
}

fn axis_of(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(format!("axis {axis} is outside rank {rank}"));
    }
    Ok(a as usize)
}

/// The tensors stacked along a new axis `axis`.
fn stack(values: &[TensorValue], axis: usize) -> Result<TensorValue, String> {
    let parts: Vec<Tensor> = values
        .iter()
        .map(|t| {
            let mut t = t.tract().clone();
            t.insert_axis(axis).map_err(|e| e.to_string())?;
            Ok(t)
        })
        .collect::<Result<_, String>>()?;
    retyped(Tensor::stack_tensors(axis, &parts).map_err(|e| e.to_string())?, &values[0])
}

fn reverse_axis0(t: &TensorValue) -> Result<TensorValue, String> {
    let n = t.shape().first().copied().unwrap_or(0);
    let parts: Vec<Tensor> = (0..n).rev().map(|i| t.tract().slice(0, i, i + 1).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    if parts.is_empty() {
        return Ok(t.clone());
    }
    retyped(Tensor::stack_tensors(0, &parts).map_err(|e| e.to_string())?, t)
}
