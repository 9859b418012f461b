//! Rewrites (a clone of) the IR into something tract 0.23.9 can load, keeping its meaning.
//!
//! tract has no INT4/UINT4/INT2/UINT2, BF16, FP8 or FP4 tensors and no `block_size` on
//! `DequantizeLinear`/`QuantizeLinear`, and lacks a few ops. In order:
//!
//! 0. **Inline** `If` nodes whose condition is constant, and **expand** ops tract lacks
//!    (onnxruntime's `com.microsoft` contrib ops: `lower/contrib.rs`; NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, LpPool, CenterCropPad,
//!    CausalConvWithState, training-mode BatchNormalization, Attention
//!    with softcap or qk output, bool ReduceMax/Min, vector·vector MatMul) into the ops
//!    defining them.
//! 1. **Fuse** `DequantizeLinear(constant 2-D weight) -> MatMul` (directly, or through a
//!    `Transpose` for an `[N, K]` weight) into `com.microsoft.MatMulNBits`, which the runtime
//!    registers with its own fused kernel: blocked, per-channel or per-tensor scales; int8,
//!    uint8, int4, uint4, int2, uint2 weights; f32/f16/bf16 scales; optional zero points.
//! 2. **Fold** any other `DequantizeLinear` whose inputs are all constant into an initializer.
//! 3. **Expand** the remaining quantize/dequantize nodes tract cannot take (blocked, or of a
//!    type tract lacks) into plain ONNX arithmetic.
//! 4. **Widen** every tensor and value type tract lacks: INT4/INT2 to INT8, UINT4/UINT2 to UINT8,
//!    BF16/FP8/FP4 to FLOAT (the values are exact in the wider type).
//! 5. **Drop** the declared shapes of intermediate values (hints that tract would otherwise
//!    take as facts: `lower/annotations.rs`).

mod annotations;
mod contrib;
mod embed_layer_norm;
mod fused_matmul;
mod gelu;
mod ms_attention;
mod skip_layer_norm;

mod dynamic_quantize_lstm;
mod empty_reductions;
mod fused_conv;
mod nchwc;
mod qgemm;
mod qlinear;
mod tract_quirks;
mod wrap_pad;

mod dequantize_matmul;
mod quant_params;
mod quantize_dequantize;
mod widen;

pub(crate) use wrap_pad::expand_wrap_pads;

use crate::error::RuntimeError;
use bytes::Bytes;
use compactor_ir::graph::{AttrValue, Attribute, Node, Value};
use compactor_ir::{DataType, Graph, Model, NodeId, RegionId, Tensor, ValueDef, ValueId, ValueType};
use quant_params::QuantLayout;

/// What lowering did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoweringReport {
    /// `DequantizeLinear -> MatMul` pairs turned into fused `MatMulNBits`.
    pub fused_matmuls: usize,
    /// Constant `DequantizeLinear` nodes replaced by their f32/f16 result.
    pub folded_dequantize: usize,
    /// Quantize/dequantize nodes rewritten as plain arithmetic.
    pub expanded: usize,
    /// Tensors (initializers, Constant attributes) stored in a wider type.
    pub widened_tensors: usize,
    /// `If` nodes with a constant condition replaced by the branch taken.
    pub inlined_branches: usize,
    /// `Add`/`Mul` nodes whose constant operand was moved second.
    pub swapped_operands: usize,
    /// Ops tract lacks (losses, LpPool, CenterCropPad, bool ReduceMax/Min, vector·vector MatMul)
    /// written out as the ONNX ops their definition is made of.
    pub expanded_functions: usize,
}

/// The element type of a value: declared, or followed back through the ops producing it (the
/// common ones: most ops keep their first input's type).
fn infer_elem(g: &Graph, v: ValueId, depth: u32) -> Option<DataType> {
    let value = g.value(v);
    if let Some(t) = &value.initializer {
        return Some(t.dtype());
    }
    if let Some(dt) = value.elem() {
        return Some(dt);
    }
    let (node_id, output) = g.producer(v)?;
    let node = g.node(node_id);
    if depth == 0 {
        return None;
    }
    let input = |i: usize| node.input(i).and_then(|x| infer_elem(g, x, depth - 1));
    if !node.domain().is_empty() {
        return input(0);
    }
    match node.op_type.as_str() {
        "Constant" => g.constant(v).map(|t| t.dtype()),
        "ConstantOfShape" => Some(node.attr_tensor("value").map(|t| t.dtype()).unwrap_or(DataType::Float)),
        "Cast" => node.attr_int("to").and_then(|c| DataType::from_code(c as i32)),
        "CastLike" | "Where" => input(1),
        "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => Some(DataType::Int64),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN" | "IsInf" => Some(DataType::Bool),
        "DequantizeLinear" => input(1),
        // Quantized outputs: the zero point's type, `output_dtype`, or uint8.
        "QuantizeLinear" => match node.attr_int("output_dtype").filter(|&c| c != 0) {
            Some(code) => DataType::from_code(code as i32),
            None if node.input(2).is_some() => input(2),
            None => Some(DataType::Uint8),
        },
        "DynamicQuantizeLinear" => Some(if output == 1 { DataType::Float } else { DataType::Uint8 }),
        "MatMulInteger" | "ConvInteger" => Some(DataType::Int32),
        "TopK" if output == 1 => Some(DataType::Int64),
        _ => input(0),
    }
}

/// Gives the bodies of `Scan` and `Loop` nodes element types for their untyped inputs (the
/// expanded function bodies of onnx 1.22 leave them untyped, and tract needs them): a Scan
/// body input takes its outer input's type, a Loop body's are the iteration count (int64),
/// the condition (bool) and the carried values' types.
fn type_loop_bodies(g: &mut Graph) {
    for id in g.all_nodes() {
        let node = g.node(id);
        let scan = node.is("Scan");
        if !scan && !node.is("Loop") {
            continue;
        }
        let Some(AttrValue::Graph(body)) = node.attr("body").cloned() else { continue };
        let body_inputs = g.region(body).inputs.clone();
        let types: Vec<Option<DataType>> = body_inputs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if scan {
                    g.node(id).input(i).and_then(|outer| infer_elem(g, outer, 32))
                } else {
                    match i {
                        0 => Some(DataType::Int64),
                        1 => Some(DataType::Bool),
                        _ => g.node(id).input(i).and_then(|outer| infer_elem(g, outer, 32)),
                    }
                }
            })
            .collect();
        for (v, dt) in body_inputs.into_iter().zip(types) {
            let value = g.value_mut(v);
            if let Some(dt) = dt
                && value.elem().is_none()
            {
                value.ty = Some(ValueType::tensor(dt, None));
            }
        }
    }
}

/// tract's Attention refuses `softcap`, `qk_matmul_output_mode` and the `qk_matmul_output`
/// output; those nodes are expanded (not ones with `nonpad_kv_seqlen`, which the expansion
/// does not cover).
fn attention_needs_expansion(node: &Node) -> bool {
    let refused = node.attr_float("softcap").is_some_and(|c| c != 0.0) || node.attr_int("qk_matmul_output_mode").is_some_and(|m| m != 0) || node.output(3).is_some();
    refused && node.input(6).is_none()
}

/// Puts the constant operand of `Add` and `Mul` second (both commute, broadcasting included).
/// PyTorch exports a linear layer's bias as `Add(bias, MatMul(..))`; tract fuses a bias into
/// its matmul only when it comes second, and otherwise runs a separate broadcasting add (a
/// fifth of MiniLM's time at batch 8).
fn constants_second(g: &mut Graph) -> usize {
    let swaps: Vec<NodeId> = g
        .all_nodes()
        .into_iter()
        .filter(|&id| {
            let n = g.node(id);
            (n.is("Add") || n.is("Mul")) && n.inputs.len() == 2 && {
                let (a, b) = (n.input(0), n.input(1));
                a.is_some_and(|a| g.constant(a).is_some()) && b.is_some_and(|b| g.constant(b).is_none())
            }
        })
        .collect();
    for &id in &swaps {
        g.node_mut(id).inputs.swap(0, 1);
    }
    swaps.len()
}

/// The value of a one-element constant, or of a small expression (comparisons, logic, casts)
/// over such constants: an If condition like `Equal(sr, 16000)` once `sr` is known.
fn constant_scalar(g: &Graph, v: ValueId, depth: u32) -> Option<f64> {
    if let Some(t) = g.constant(v) {
        if t.len() != 1 {
            return None;
        }
        return if t.dtype().is_float() { t.to_f32().ok()?.first().map(|&x| x as f64) } else { t.to_i64().ok()?.first().map(|&x| x as f64) };
    }
    let (node, _) = g.producer(v)?;
    let node = g.node(node);
    if depth == 0 || !node.domain().is_empty() {
        return None;
    }
    let arg = |i: usize| node.input(i).and_then(|x| constant_scalar(g, x, depth - 1));
    let truth = |b: bool| if b { 1.0 } else { 0.0 };
    Some(match node.op_type.as_str() {
        "Identity" => arg(0)?,
        "Not" => truth(arg(0)? == 0.0),
        "Cast" if node.attr_int("to") == Some(DataType::Bool.code() as i64) => truth(arg(0)? != 0.0),
        "Equal" => truth(arg(0)? == arg(1)?),
        "Greater" => truth(arg(0)? > arg(1)?),
        "Less" => truth(arg(0)? < arg(1)?),
        "GreaterOrEqual" => truth(arg(0)? >= arg(1)?),
        "LessOrEqual" => truth(arg(0)? <= arg(1)?),
        "And" => truth(arg(0)? != 0.0 && arg(1)? != 0.0),
        "Or" => truth(arg(0)? != 0.0 || arg(1)? != 0.0),
        _ => return None,
    })
}

/// Replaces every `If` whose condition is a constant by the nodes of the branch it takes.
///
/// tract types both branches of an If against the actual shapes, and the branch not taken may
/// not fit them (silero-vad's 8 kHz branch on 16 kHz input, say); the one taken always does.
/// Returns how many were inlined.
pub fn inline_constant_ifs(model: &mut Model) -> usize {
    let mut inlined = 0;
    loop {
        let g = &model.graph;
        let found = g.all_nodes().into_iter().find_map(|id| {
            let node = g.node(id);
            if !node.is("If") {
                return None;
            }
            let taken = constant_scalar(g, node.input(0)?, 8)? != 0.0;
            let branch = |name: &str| match node.attr(name) {
                Some(AttrValue::Graph(r)) => Some(*r),
                _ => None,
            };
            let (keep, drop) = if taken { (branch("then_branch")?, branch("else_branch")?) } else { (branch("else_branch")?, branch("then_branch")?) };
            (g.region(keep).outputs.len() == node.outputs.len()).then_some((id, keep, drop))
        });
        let Some((id, keep, drop)) = found else { return inlined };
        let g = &mut model.graph;
        let parent = g.node(id).region;
        let pos = g.region(parent).nodes.iter().position(|&n| n == id).expect("a node is in its region");
        let body = g.region(keep).clone();
        for &n in &body.nodes {
            g.node_mut(n).region = parent;
        }
        let moved: Vec<ValueId> = g.value_ids().filter(|&v| g.value(v).region == keep).collect();
        for v in moved {
            g.value_mut(v).region = parent;
        }
        g.region_mut(parent).initializers.extend(&body.initializers);
        let nodes = &mut g.region_mut(parent).nodes;
        nodes.splice(pos..pos, body.nodes.iter().copied());
        let outputs = g.node(id).outputs.clone();
        for (out, branch_out) in outputs.iter().zip(&body.outputs) {
            if let Some(out) = out {
                g.replace_uses(*out, *branch_out);
            }
        }
        // The body's nodes now belong to the parent: empty the region before dropping it.
        g.region_mut(keep).nodes.clear();
        g.region_mut(keep).initializers.clear();
        g.remove_node(id);
        g.remove_region(keep);
        g.remove_region(drop);
        for out in outputs.into_iter().flatten() {
            if g.try_value(out).is_some() {
                g.remove_value(out);
            }
        }
        inlined += 1;
    }
}

/// The lowered model and what was done to it.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub model: Model,
    pub report: LoweringReport,
}

/// Lowers a clone of `model`.
pub fn lower(model: &Model) -> Result<Lowered, RuntimeError> {
    let mut lowering = Lowering { model: model.clone(), name: model_name(model), report: LoweringReport::default() };
    lowering.densify_sparse_initializers()?;
    lowering.report.inlined_branches = inline_constant_ifs(&mut lowering.model);
    type_loop_bodies(&mut lowering.model.graph);
    lowering.expand_contrib_ops()?;
    lowering.expand_losses()?;
    // onnxruntime's own ops, as its quantizer and optimizer write them.
    lowering.expand_qlinear_ops()?;
    lowering.expand_qgemms()?;
    lowering.expand_fused_convs()?;
    lowering.expand_nchwc_ops()?;
    lowering.expand_dynamic_quantize_lstms()?;
    lowering.fill_empty_reductions();
    lowering.expand_wrap_pads();
    lowering.meet_tract_strictness();
    lowering.report.swapped_operands = constants_second(&mut lowering.model.graph);
    lowering.fuse_dequantize_matmul()?;
    lowering.fold_and_expand_quantization()?;
    lowering.widen_tensors()?;
    lowering.widen_value_types();
    annotations::drop_intermediate_shapes(&mut lowering.model.graph);
    Ok(Lowered { model: lowering.model, report: lowering.report })
}

impl Lowering {
    /// tract has no sparse initializers: they become dense ones (as onnxruntime does at load).
    fn densify_sparse_initializers(&mut self) -> Result<(), RuntimeError> {
        let graph = &mut self.model.graph;
        for r in graph.region_ids().collect::<Vec<_>>() {
            for v in std::mem::take(&mut graph.region_mut(r).sparse_initializers) {
                let sparse = graph.value_mut(v).sparse_initializer.take().expect("listed sparse initializers hold data");
                let dense = sparse.to_dense().map_err(|e| RuntimeError::Lowering { model: self.name.clone(), node: graph.value(v).name.clone(), reason: format!("sparse initializer '{}': {e}", graph.value(v).name) })?;
                let value = graph.value_mut(v);
                value.def = compactor_ir::ValueDef::Initializer;
                value.initializer = Some(dense);
                graph.region_mut(r).initializers.push(v);
            }
        }
        Ok(())
    }
}

pub(crate) fn model_name(model: &Model) -> String {
    model.origin.to_string()
}

struct Lowering {
    model: Model,
    name: String,
    report: LoweringReport,
}

/// Attribute readers on node + error helpers.
fn label(graph: &Graph, id: NodeId) -> String {
    graph.node(id).label(id)
}

impl Lowering {
    fn err(&self, graph_node: String, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Lowering { model: self.name.clone(), node: graph_node, reason: reason.into() }
    }

    fn graph(&self) -> &Graph {
        &self.model.graph
    }

    fn add_initializer(&mut self, region: RegionId, base: &str, tensor: Tensor) -> ValueId {
        let name = self.model.graph.fresh_name(base);
        let ty = ValueType::tensor(tensor.dtype(), Some(tensor.shape()));
        let id = self.model.graph.add_value(Value {
            name: name.clone(),
            ty: Some(ty),
            doc_string: None,
            metadata_props: Vec::new(),
            def: ValueDef::Initializer,
            region,
            initializer: Some(tensor.with_name(Some(name))),
            sparse_initializer: None,
        });
        self.model.graph.region_mut(region).initializers.push(id);
        id
    }

    fn input_type(&self, node: NodeId, i: usize) -> Option<DataType> {
        let v = self.graph().node(node).input(i)?;
        let value = self.graph().value(v);
        value.initializer.as_ref().map(Tensor::dtype).or_else(|| self.graph().constant(v).map(|t| t.dtype())).or_else(|| infer_elem(self.graph(), v, 32))
    }

    fn value_rank(&self, v: ValueId) -> Option<usize> {
        if let Some(t) = self.graph().constant(v) {
            return Some(t.dims().len());
        }
        self.graph().value(v).shape().map(|s| s.rank())
    }

    /// NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss as plain ONNX ops, following their
    /// definitions: `loss = -log_prob[n, target[n, ...], ...] * weight[target]`, zero where
    /// `target == ignore_index`, then `none`, `sum` or (weighted) `mean` reduction.
    fn expand_losses(&mut self) -> Result<(), RuntimeError> {
        let opset = self.model.opset_version("").unwrap_or(13);
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| {
            let n = self.graph().node(id);
            n.is("NegativeLogLikelihoodLoss") || n.is("SoftmaxCrossEntropyLoss") || n.is("LpPool") || n.is("CenterCropPad") || (n.is("Attention") && attention_needs_expansion(n)) || n.is("CausalConvWithState")
                || (n.is("BatchNormalization") && n.attr_int("training_mode") == Some(1))
        }).collect();
        for id in nodes {
            if self.graph().node(id).is("BatchNormalization") {
                self.expand_training_batch_norm(id, opset)?;
            } else if self.graph().node(id).is("CausalConvWithState") {
                self.expand_causal_conv(id)?;
            } else if self.graph().node(id).is("Attention") {
                self.expand_attention(id)?;
            } else if self.graph().node(id).is("LpPool") {
                self.expand_lp_pool(id)?;
            } else if self.graph().node(id).is("CenterCropPad") {
                self.expand_center_crop_pad(id)?;
            } else {
                self.expand_loss(id, opset)?;
            }
        }
        self.reduce_bools();
        self.vector_dot_products();
        self.small_ops();
        Ok(())
    }

    /// Ops with a one- or two-node equivalent: `OptionalHasElement`/`OptionalGetElement` on a
    /// plain tensor or a missing input (the session has no optional values), and
    /// `ai.onnx.ml.Binarizer` (`x > threshold`, as x's type).
    fn small_ops(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let Some(out) = node.output(0) else { continue };
            let plain_tensor = |l: &Lowering, v: Option<ValueId>| v.is_some_and(|v| l.graph().value(v).ty.as_ref().is_some_and(|t| t.is_tensor()));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            if node.is("OptionalHasElement") && (node.input(0).is_none() || plain_tensor(self, node.input(0))) {
                let present = node.input(0).is_some();
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.known", lbl_name(&node, out)) };
                let value = b.constant("present", Tensor::from_raw(DataType::Bool, &[], Bytes::from(vec![present as u8])).expect("a scalar fits"));
                b.op_into("Identity", &[value], vec![], out);
            } else if node.is("OptionalGetElement") && plain_tensor(self, node.input(0)) {
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.known", lbl_name(&node, out)) };
                b.op_into("Identity", &[node.input(0).expect("checked")], vec![], out);
            } else if node.is("QLinearMatMul") && [1, 4, 6].iter().any(|&i| self.input_type(id, i) == Some(DataType::Float16)) {
                // tract's QLinearMatMul takes f32 scales only; f16 ones convert exactly.
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.f32_scales", lbl_name(&node, out)) };
                let mut rewired = node.clone();
                for i in [1, 4, 6] {
                    if let Some(scale) = node.input(i) {
                        rewired.inputs[i] = Some(b.cast(scale, DataType::Float));
                    }
                }
                self.model.graph.node_mut(id).inputs = rewired.inputs;
                continue;
            } else if node.op_type == "Binarizer" && node.domain() == "ai.onnx.ml" && node.input(0).is_some() {
                let x = node.input(0).expect("checked");
                let threshold = node.attr_float("threshold").unwrap_or(0.0);
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
                let t = b.constant_f32(threshold);
                let t = b.op("CastLike", &[t, x], vec![]);
                let above = b.op("Greater", &[x, t], vec![]);
                b.op_into("CastLike", &[above, x], vec![], out);
            } else {
                continue;
            }
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
    }

    /// `MatMul` of two vectors is their dot product, a scalar; tract's MatMul wants a matrix on
    /// one side, so write it as `ReduceSum(a * b)`.
    fn vector_dot_products(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| {
            let n = self.graph().node(id);
            n.is("MatMul") && n.output(0).is_some() && (0..2).all(|i| n.input(i).and_then(|v| self.value_rank(v)) == Some(1))
        }).collect();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let (a, b_in, out) = (node.input(0).expect("filtered"), node.input(1).expect("filtered"), node.output(0).expect("filtered"));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.dot", lbl_name(&node, out)) };
            let products = b.op("Mul", &[a, b_in], vec![]);
            b.op_into("ReduceSum", &[products], vec![Attribute::new("keepdims", AttrValue::Int(0))], out);
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
    }

    /// tract's ReduceMax/ReduceMin take numbers only; on bools they are any/all, so reduce
    /// the values as uint8 and cast back.
    fn reduce_bools(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| {
            let n = self.graph().node(id);
            (n.is("ReduceMax") || n.is("ReduceMin")) && n.input(0).is_some() && n.output(0).is_some() && self.input_type(id, 0) == Some(DataType::Bool)
        }).collect();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let (x, out) = (node.input(0).expect("filtered"), node.output(0).expect("filtered"));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.as_uint8", lbl_name(&node, out)) };
            let wide = b.cast(x, DataType::Uint8);
            let reduced = b.new_value("reduced");
            b.pos += 1; // after the reduction itself
            b.op_into("Cast", &[reduced], vec![Attribute::new("to", AttrValue::Int(DataType::Bool.code() as i64))], out);
            let g = &mut self.model.graph;
            g.node_mut(id).inputs[0] = Some(wide);
            g.node_mut(id).outputs[0] = Some(reduced);
            g.value_mut(reduced).def = ValueDef::Node { node: id, output: 0 };
            self.report.expanded_functions += 1;
        }
    }

    /// `BatchNormalization` in training mode: normalise with the batch's own mean and (population)
    /// variance over every axis but the channels, and update the running statistics with
    /// `momentum`.
    fn expand_training_batch_norm(&mut self, id: NodeId, opset: i64) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(scale), Some(bias), Some(mean), Some(var), Some(out)) = (node.input(0), node.input(1), node.input(2), node.input(3), node.input(4), node.output(0)) else {
            return Err(self.err(lbl, "needs X, scale, B, input_mean, input_var and an output"));
        };
        let Some(rank) = self.value_rank(x) else { return Err(self.err(lbl, "the input's rank is unknown")) };
        let epsilon = node.attr_float("epsilon").unwrap_or(1e-5);
        let momentum = node.attr_float("momentum").unwrap_or(0.9);
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.training", lbl_name(&node, out)) };
        let axes: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
        let mean_over = |b: &mut Builder, v: ValueId| {
            if opset >= 18 {
                let axes_v = b.constant_i64("axes", &[axes.len() as u64], &axes);
                b.op("ReduceMean", &[v, axes_v], vec![Attribute::new("keepdims", AttrValue::Int(1))])
            } else {
                b.op("ReduceMean", &[v], vec![Attribute::new("axes", AttrValue::Ints(axes.clone())), Attribute::new("keepdims", AttrValue::Int(1))])
            }
        };
        let batch_mean = mean_over(&mut b, x);
        let centered = b.op("Sub", &[x, batch_mean], vec![]);
        let squared = b.op("Mul", &[centered, centered], vec![]);
        let batch_var = mean_over(&mut b, squared);
        let eps = b.constant_f32(epsilon);
        let eps = b.op("CastLike", &[eps, x], vec![]);
        let shifted = b.op("Add", &[batch_var, eps], vec![]);
        let std = b.op("Sqrt", &[shifted], vec![]);
        let normalized = b.op("Div", &[centered, std], vec![]);
        let mut channel_shape = vec![1i64, -1];
        channel_shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
        let channel_shape = b.constant_i64("channels", &[channel_shape.len() as u64], &channel_shape);
        let scale_b = b.op("Reshape", &[scale, channel_shape], vec![]);
        let bias_b = b.op("Reshape", &[bias, channel_shape], vec![]);
        let scaled = b.op("Mul", &[normalized, scale_b], vec![]);
        b.op_into("Add", &[scaled, bias_b], vec![], out);
        let flat = b.constant_i64("flat", &[1], &[-1]);
        let keep = b.constant_f32(momentum);
        let keep = b.op("CastLike", &[keep, x], vec![]);
        let take = b.constant_f32(1.0 - momentum);
        let take = b.op("CastLike", &[take, x], vec![]);
        for (output, running, batch) in [(node.output(1), mean, batch_mean), (node.output(2), var, batch_var)] {
            let Some(output) = output else { continue };
            let batch = b.op("Reshape", &[batch, flat], vec![]);
            let old = b.op("Mul", &[running, keep], vec![]);
            let new = b.op("Mul", &[batch, take], vec![]);
            b.op_into("Add", &[old, new], vec![], output);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }

    /// `CausalConvWithState(x [B, C, L], w [C, 1, k], bias?, past [B, C, k-1]?)`: a depthwise
    /// convolution over `past ++ x` (zeros when no past), optionally followed by SiLU; the new
    /// state is the last `k - 1` steps of `past ++ x`.
    fn expand_causal_conv(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(w), Some(out)) = (node.input(0), node.input(1), node.output(0)) else {
            return Err(self.err(lbl, "needs an input, a weight and an output"));
        };
        let channels = self.graph().constant(w).and_then(|t| t.dims().first().map(|&c| c as i64)).or_else(|| self.graph().value(x).shape().and_then(|s| s.dims.get(1)).and_then(|d| d.known()));
        let Some(channels) = channels else { return Err(self.err(lbl, "the channel count (the group size of the convolution) is unknown")) };
        let activation = node.attr_string("activation").unwrap_or("none").to_string();
        let half_input = self.input_type(id, 0) == Some(DataType::Float16);
        if !matches!(activation.as_str(), "none" | "silu" | "swish") {
            return Err(self.err(lbl, format!("unknown activation '{activation}'")));
        }
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let ints = |b: &mut Builder, name: &str, v: &[i64]| b.constant_i64(name, &[v.len() as u64], v);
        let (i0, i1, i2, i3) = (ints(&mut b, "i0", &[0]), ints(&mut b, "i1", &[1]), ints(&mut b, "i2", &[2]), ints(&mut b, "i3", &[3]));
        let w_shape = b.op("Shape", &[w], vec![]);
        let k = b.op("Slice", &[w_shape, i2, i3], vec![]);
        let history = b.op("Sub", &[k, i1], vec![]);
        let axis2 = vec![Attribute::new("axis", AttrValue::Int(2))];
        let past = match node.input(3) {
            Some(p) => p,
            None => {
                let x_shape = b.op("Shape", &[x], vec![]);
                let lead = b.op("Slice", &[x_shape, i0, i2], vec![]);
                let shape = b.op("Concat", &[lead, history], vec![Attribute::new("axis", AttrValue::Int(0))]);
                let zeros = b.op("ConstantOfShape", &[shape], vec![]);
                b.op("CastLike", &[zeros, x], vec![])
            }
        };
        let padded = b.op("Concat", &[past, x], axis2);
        // f16 inputs are convolved in f32 and rounded once, as the definition's reference does.
        let mut conv_inputs = vec![padded, w];
        conv_inputs.extend(node.input(2));
        if half_input {
            conv_inputs = conv_inputs.into_iter().map(|v| b.cast(v, DataType::Float)).collect();
        }
        let conv = b.op("Conv", &conv_inputs, vec![Attribute::new("group", AttrValue::Int(channels))]);
        let result = if activation == "none" {
            conv
        } else {
            let gate = b.op("Sigmoid", &[conv], vec![]);
            b.op("Mul", &[conv, gate], vec![])
        };
        if half_input {
            b.op_into("Cast", &[result], vec![Attribute::new("to", AttrValue::Int(DataType::Float16.code() as i64))], out);
        } else {
            b.op_into("Identity", &[result], vec![], out);
        }
        if let Some(state_out) = node.output(1) {
            let p_shape = b.op("Shape", &[padded], vec![]);
            let len = b.op("Slice", &[p_shape, i2, i3], vec![]);
            let start = b.op("Sub", &[len, history], vec![]);
            b.op_into("Slice", &[padded, start, len, i2], vec![], state_out);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }

    /// ONNX `Attention` (opset 23) as plain ops, for the variants tract's own refuses (see
    /// [`attention_needs_expansion`]). Follows the operator's definition: heads split from 3-D
    /// inputs, past key/value concatenated, KV heads repeated for grouped queries, both Q and K
    /// scaled by `sqrt(scale)`, softcap, mask (bool or additive, padded with -inf to the KV
    /// length) and causal bias, softmax, and the `qk_matmul_output` of the requested mode.
    fn expand_attention(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(q), Some(k), Some(v), Some(out)) = (node.input(0), node.input(1), node.input(2), node.output(0)) else {
            return Err(self.err(lbl, "needs Q, K, V and an output"));
        };
        let Some(rank) = self.value_rank(q) else { return Err(self.err(lbl, "the rank of Q is unknown")) };
        let mask_is_bool = node.input(3).is_some() && self.input_type(id, 3) == Some(DataType::Bool);
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let ints = |b: &mut Builder, name: &str, v: &[i64]| b.constant_i64(name, &[v.len() as u64], v);
        let perm = |p: &[i64]| vec![Attribute::new("perm", AttrValue::Ints(p.to_vec()))];
        let float = |b: &mut Builder, name: &str, value: f32| {
            let c = b.constant(name, Tensor::from_f32(&[], &[value]).expect("a scalar fits"));
            b.op("CastLike", &[c, q], vec![])
        };
        // [B, S, H*D] -> [B, H, S, D]
        let heads = |b: &mut Builder, x: ValueId, count: Option<i64>| -> Result<ValueId, String> {
            if rank == 4 {
                return Ok(x);
            }
            let count = count.ok_or("3-D inputs need q_num_heads and kv_num_heads")?;
            let shape = ints(b, "split_heads", &[0, 0, count, -1]);
            let split = b.op("Reshape", &[x, shape], vec![]);
            Ok(b.op("Transpose", &[split], perm(&[0, 2, 1, 3])))
        };
        let q4 = heads(&mut b, q, node.attr_int("q_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let k_new = heads(&mut b, k, node.attr_int("kv_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let v_new = heads(&mut b, v, node.attr_int("kv_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let concat2 = vec![Attribute::new("axis", AttrValue::Int(2))];
        let present_k = match node.input(4) {
            Some(past) => b.op("Concat", &[past, k_new], concat2.clone()),
            None => k_new,
        };
        let present_v = match node.input(5) {
            Some(past) => b.op("Concat", &[past, v_new], concat2),
            None => v_new,
        };
        if let Some(o) = node.output(1) {
            b.op_into("Identity", &[present_k], vec![], o);
        }
        if let Some(o) = node.output(2) {
            b.op_into("Identity", &[present_v], vec![], o);
        }
        // Scale: both operands by sqrt(scale), scale defaulting to 1/sqrt(head size).
        let root_scale = match node.attr_float("scale") {
            Some(scale) => float(&mut b, "root_scale", scale.sqrt()),
            None => {
                let shape = b.op("Shape", &[q4], vec![]);
                let three = ints(&mut b, "three", &[3]);
                let d = b.op("Gather", &[shape, three], vec![]);
                let d = b.op("CastLike", &[d, q], vec![]);
                let root = b.op("Sqrt", &[d], vec![]);
                let root = b.op("Sqrt", &[root], vec![]);
                b.op("Reciprocal", &[root], vec![])
            }
        };
        // Grouped queries: repeat each KV head q_heads / kv_heads times, interleaved.
        let repeat = |b: &mut Builder, x: ValueId| {
            let (q_shape, x_shape) = (b.op("Shape", &[q4], vec![]), b.op("Shape", &[x], vec![]));
            let (zero, one, two, four) = (ints(b, "i0", &[0]), ints(b, "i1", &[1]), ints(b, "i2", &[2]), ints(b, "i4", &[4]));
            let q_heads = b.op("Slice", &[q_shape, one, two], vec![]);
            let x_heads = b.op("Slice", &[x_shape, one, two], vec![]);
            let reps = b.op("Div", &[q_heads, x_heads], vec![]);
            let lead = b.op("Slice", &[x_shape, zero, two], vec![]);
            let tail = b.op("Slice", &[x_shape, two, four], vec![]);
            let batch = b.op("Slice", &[x_shape, zero, one], vec![]);
            let expanded_shape = b.op("Concat", &[lead, reps, tail], vec![Attribute::new("axis", AttrValue::Int(0))]);
            let unsqueezed = b.op("Unsqueeze", &[x, two], vec![]);
            let expanded = b.op("Expand", &[unsqueezed, expanded_shape], vec![]);
            let final_shape = b.op("Concat", &[batch, q_heads, tail], vec![Attribute::new("axis", AttrValue::Int(0))]);
            b.op("Reshape", &[expanded, final_shape], vec![])
        };
        let k_all = repeat(&mut b, present_k);
        let v_all = repeat(&mut b, present_v);
        let q_scaled = b.op("Mul", &[q4, root_scale], vec![]);
        let k_scaled = b.op("Mul", &[k_all, root_scale], vec![]);
        let k_t = b.op("Transpose", &[k_scaled], perm(&[0, 1, 3, 2]));
        let mut qk = b.op("MatMul", &[q_scaled, k_t], vec![]);
        if let Some(cap) = node.attr_float("softcap").filter(|&c| c > 0.0) {
            let cap = float(&mut b, "softcap", cap);
            let scaled = b.op("Div", &[qk, cap], vec![]);
            let squashed = b.op("Tanh", &[scaled], vec![]);
            qk = b.op("Mul", &[squashed, cap], vec![]);
        }
        // The additive bias: the mask (padded to the KV length with -inf), plus the causal part.
        let qk_shape = b.op("Shape", &[qk], vec![]);
        let (minus_two, minus_one, last) = (ints(&mut b, "m2", &[-2]), ints(&mut b, "m1", &[-1]), ints(&mut b, "last", &[i64::MAX]));
        let q_len = b.op("Slice", &[qk_shape, minus_two, minus_one], vec![]);
        let kv_len = b.op("Slice", &[qk_shape, minus_one, last], vec![]);
        let neg_inf = float(&mut b, "neg_inf", f32::NEG_INFINITY);
        let zero_f = float(&mut b, "zero", 0.0);
        let mut bias = match node.input(3) {
            Some(mask) => {
                let mask_shape = b.op("Shape", &[mask], vec![]);
                let mask_len = b.op("Slice", &[mask_shape, minus_one, last], vec![]);
                let missing = b.op("Sub", &[kv_len, mask_len], vec![]);
                let zero_i = ints(&mut b, "pad_before", &[0]);
                let pads = b.op("Concat", &[zero_i, missing], vec![Attribute::new("axis", AttrValue::Int(0))]);
                let additive = if mask_is_bool {
                    let no = b.constant("false", Tensor::from_raw(DataType::Bool, &[], bytes::Bytes::from_static(&[0])).expect("a scalar fits"));
                    let padded = b.op("Pad", &[mask, pads, no, minus_one], vec![]);
                    b.op("Where", &[padded, zero_f, neg_inf], vec![])
                } else {
                    b.op("Pad", &[mask, pads, neg_inf, minus_one], vec![])
                };
                Some(additive)
            }
            None => None,
        };
        if node.attr_int("is_causal").unwrap_or(0) != 0 {
            let past = match node.input(4) {
                Some(p) => {
                    let shape = b.op("Shape", &[p], vec![]);
                    let (two, three) = (ints(&mut b, "c2", &[2]), ints(&mut b, "c3", &[3]));
                    b.op("Slice", &[shape, two, three], vec![])
                }
                None => ints(&mut b, "no_past", &[0]),
            };
            let (zero_s, one_s) = (b.constant_i64("r0", &[], &[0]), b.constant_i64("r1", &[], &[1]));
            let q_len_s = b.op("Squeeze", &[q_len], vec![]);
            let kv_len_s = b.op("Squeeze", &[kv_len], vec![]);
            let rows = b.op("Range", &[zero_s, q_len_s, one_s], vec![]);
            let cols = b.op("Range", &[zero_s, kv_len_s, one_s], vec![]);
            let axis1 = ints(&mut b, "ax1", &[1]);
            let rows = b.op("Unsqueeze", &[rows, axis1], vec![]);
            let limit = b.op("Add", &[rows, past], vec![]);
            let future = b.op("Greater", &[cols, limit], vec![]);
            let causal = b.op("Where", &[future, neg_inf, zero_f], vec![]);
            bias = Some(match bias {
                Some(m) => b.op("Add", &[m, causal], vec![]),
                None => causal,
            });
        }
        let with_bias = match bias {
            Some(bias) => b.op("Add", &[qk, bias], vec![]),
            None => qk,
        };
        let probs = b.op("Softmax", &[with_bias], vec![Attribute::new("axis", AttrValue::Int(-1))]);
        if let Some(o) = node.output(3) {
            let chosen = match node.attr_int("qk_matmul_output_mode").unwrap_or(0) {
                2 => with_bias,
                3 => probs,
                _ => qk,
            };
            b.op_into("Identity", &[chosen], vec![], o);
        }
        if rank == 4 {
            b.op_into("MatMul", &[probs, v_all], vec![], out);
        } else {
            let y = b.op("MatMul", &[probs, v_all], vec![]);
            let y = b.op("Transpose", &[y], perm(&[0, 2, 1, 3]));
            let merged = ints(&mut b, "merge_heads", &[0, 0, -1]);
            b.op_into("Reshape", &[y, merged], vec![], out);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }

    /// `CenterCropPad(x, shape)`: along each axis, crop the centred window of the target size
    /// (the extra element, if odd, at the end) or pad with zeros around (the extra one at the
    /// end): `Slice` then `Pad`, with starts and pads computed from `Shape(x)`.
    fn expand_center_crop_pad(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(target), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { return Err(self.err(lbl, "needs an input, a shape and an output")) };
        let Some(rank) = self.value_rank(x) else { return Err(self.err(lbl, "the input's rank is unknown")) };
        let axes: Vec<i64> = match node.attr_ints("axes") {
            Some(axes) => axes.iter().map(|&a| if a < 0 { a + rank as i64 } else { a }).collect(),
            None => (0..rank as i64).collect(),
        };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let axes_v = b.constant_i64("axes", &[axes.len() as u64], &axes);
        let zero = b.constant_i64("zero", &[], &[0]);
        let two = b.constant_i64("two", &[], &[2]);
        let shape = b.op("Shape", &[x], vec![]);
        let dims = b.op("Gather", &[shape, axes_v], vec![]);
        let target = b.cast(target, DataType::Int64);
        let surplus = b.op("Sub", &[dims, target], vec![]);
        let crop = b.op("Max", &[surplus, zero], vec![]);
        let start = b.op("Div", &[crop, two], vec![]);
        let kept = b.op("Min", &[dims, target], vec![]);
        let end = b.op("Add", &[start, kept], vec![]);
        let cropped = b.op("Slice", &[x, start, end, axes_v], vec![]);
        let shortfall = b.op("Neg", &[surplus], vec![]);
        let pad = b.op("Max", &[shortfall, zero], vec![]);
        let before = b.op("Div", &[pad, two], vec![]);
        let after = b.op("Sub", &[pad, before], vec![]);
        let pads = b.op("Concat", &[before, after], vec![Attribute::new("axis", AttrValue::Int(0))]);
        let pad_value = b.constant("pad_value", Tensor::from_f32(&[], &[0.0]).expect("a scalar fits"));
        let pad_value = b.op("CastLike", &[pad_value, x], vec![]);
        b.op_into("Pad", &[cropped, pads, pad_value, axes_v], vec![], out);
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }

    /// `LpPool(x) = (Σ_window |x|^p)^(1/p)`, the window sum being an AveragePool (padding
    /// counted, so padded zeros add nothing) times the window size.
    fn expand_lp_pool(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(out)) = (node.input(0), node.output(0)) else { return Err(self.err(lbl, "needs an input and an output")) };
        let Some(kernel) = node.attr_ints("kernel_shape").map(<[i64]>::to_vec) else { return Err(self.err(lbl, "needs kernel_shape")) };
        let p = node.attr_int("p").unwrap_or(2) as f32;
        let window: i64 = kernel.iter().product();
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let mut attributes: Vec<Attribute> = node.attributes.iter().filter(|a| a.name != "p").cloned().collect();
        attributes.push(Attribute::new("count_include_pad", AttrValue::Int(1)));
        let abs = b.op("Abs", &[x], vec![]);
        let p_v = b.constant_f32(p);
        let p_v = b.op("CastLike", &[p_v, x], vec![]);
        let powered = b.op("Pow", &[abs, p_v], vec![]);
        let mean = b.op("AveragePool", &[powered], attributes);
        let size = b.constant_f32(window as f32);
        let size = b.op("CastLike", &[size, x], vec![]);
        let sum = b.op("Mul", &[mean, size], vec![]);
        let inv = b.constant_f32(1.0 / p);
        let inv = b.op("CastLike", &[inv, x], vec![]);
        b.op_into("Pow", &[sum, inv], vec![], out);
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }

    fn expand_loss(&mut self, id: NodeId, opset: i64) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let softmax = node.op_type == "SoftmaxCrossEntropyLoss";
        let reduction = node.attr_string("reduction").unwrap_or("mean").to_string();
        let (Some(x), Some(target)) = (node.input(0), node.input(1)) else {
            return Err(self.err(lbl, "needs scores and targets"));
        };
        if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
            return Err(self.err(lbl, format!("unknown reduction '{reduction}'")));
        }
        let Some(out) = node.output(0) else { return Ok(()) };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let axes_one = |b: &mut Builder, op: &str, v: ValueId| {
            // Squeeze/Unsqueeze take axes as an input from opset 13, as an attribute before.
            if opset >= 13 {
                let axes = b.constant_i64("axis1", &[1], &[1]);
                b.op(op, &[v, axes], vec![])
            } else {
                b.op(op, &[v], vec![Attribute::new("axes", AttrValue::Ints(vec![1]))])
            }
        };
        let log_prob = if softmax {
            let lp = if opset >= 13 {
                b.op("LogSoftmax", &[x], vec![Attribute::new("axis", AttrValue::Int(1))])
            } else {
                // Before 13 LogSoftmax flattens the trailing axes; classes are axis 1 only.
                let lse = b.op("ReduceLogSumExp", &[x], vec![Attribute::new("axes", AttrValue::Ints(vec![1])), Attribute::new("keepdims", AttrValue::Int(1))]);
                b.op("Sub", &[x, lse], vec![])
            };
            if let Some(lp_out) = node.output(1) {
                b.op_into("Identity", &[lp], vec![], lp_out);
            }
            lp
        } else {
            x
        };
        let (safe_target, keep) = match node.attr_int("ignore_index") {
            Some(ignore) => {
                let ignore = b.constant_i64("ignore_index", &[], &[ignore]);
                let ignore = b.op("CastLike", &[ignore, target], vec![]);
                let zero = b.constant_i64("zero", &[], &[0]);
                let zero = b.op("CastLike", &[zero, target], vec![]);
                let ignored = b.op("Equal", &[target, ignore], vec![]);
                let keep = b.op("Not", &[ignored], vec![]);
                (b.op("Where", &[keep, target, zero], vec![]), Some(keep))
            }
            None => (target, None),
        };
        let index = axes_one(&mut b, "Unsqueeze", safe_target);
        let picked = b.op("GatherElements", &[log_prob, index], vec![Attribute::new("axis", AttrValue::Int(1))]);
        let picked = axes_one(&mut b, "Squeeze", picked);
        let mut loss = b.op("Neg", &[picked], vec![]);
        let mut weights = None;
        if let Some(w) = node.input(2) {
            let w = b.op("Gather", &[w, safe_target], vec![Attribute::new("axis", AttrValue::Int(0))]);
            loss = b.op("Mul", &[loss, w], vec![]);
            weights = Some(w);
        }
        if let Some(keep) = keep {
            let keep = b.op("CastLike", &[keep, loss], vec![]);
            loss = b.op("Mul", &[loss, keep], vec![]);
            weights = Some(match weights {
                Some(w) => b.op("Mul", &[w, keep], vec![]),
                None => keep,
            });
        }
        let all = vec![Attribute::new("keepdims", AttrValue::Int(0))];
        match (reduction.as_str(), weights) {
            ("none", _) => b.op_into("Identity", &[loss], vec![], out),
            ("sum", _) => b.op_into("ReduceSum", &[loss], all, out),
            (_, None) => b.op_into("ReduceMean", &[loss], all, out),
            (_, Some(w)) => {
                let total = b.op("ReduceSum", &[loss], all.clone());
                let weight = b.op("ReduceSum", &[w], all);
                b.op_into("Div", &[total, weight], vec![], out);
            }
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}

/// A name prefix for the nodes that replace `node`.
fn lbl_name(node: &Node, out: ValueId) -> String {
    node.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{out}"))
}

/// Inserts new nodes before position `pos` of a region, in order.
struct Builder<'a> {
    lowering: &'a mut Lowering,
    region: RegionId,
    pos: usize,
    prefix: String,
}

impl Builder<'_> {
    fn new_value(&mut self, base: &str) -> ValueId {
        let name = self.lowering.model.graph.fresh_name(&format!("{}.{base}", self.prefix));
        self.lowering.model.graph.add_value(Value {
            name,
            ty: None,
            doc_string: None,
            metadata_props: Vec::new(),
            def: ValueDef::Annotation,
            region: self.region,
            initializer: None,
            sparse_initializer: None,
        })
    }

    fn op(&mut self, op_type: &str, inputs: &[ValueId], attributes: Vec<Attribute>) -> ValueId {
        let out = self.new_value(&op_type.to_lowercase());
        self.op_into(op_type, inputs, attributes, out);
        out
    }

    /// Adds a node writing into an existing value (which it then defines).
    fn op_into(&mut self, op_type: &str, inputs: &[ValueId], attributes: Vec<Attribute>, out: ValueId) {
        let g = &mut self.lowering.model.graph;
        let name = format!("{}.{}{}", self.prefix, op_type, self.pos);
        let node = Node {
            op_type: op_type.to_string(),
            domain: None,
            name: Some(name),
            overload: None,
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            outputs: vec![Some(out)],
            attributes,
            doc_string: None,
            metadata_props: Vec::new(),
            device_configurations: Vec::new(),
            region: self.region,
        };
        let id = g.add_node_detached(node);
        g.region_mut(self.region).nodes.insert(self.pos, id);
        self.pos += 1;
        g.value_mut(out).def = ValueDef::Node { node: id, output: 0 };
    }

    fn constant(&mut self, base: &str, tensor: Tensor) -> ValueId {
        let name = format!("{}.{base}", self.prefix);
        self.lowering.add_initializer(self.region, &name, tensor)
    }

    fn constant_f32(&mut self, v: f32) -> ValueId {
        self.constant("c", Tensor::from_f32(&[], &[v]).expect("a scalar fits"))
    }

    fn constant_i64(&mut self, base: &str, dims: &[u64], v: &[i64]) -> ValueId {
        self.constant(base, Tensor::from_i64(dims, v).expect("dims match the values"))
    }

    fn cast(&mut self, v: ValueId, to: DataType) -> ValueId {
        self.op("Cast", &[v], vec![Attribute::new("to", AttrValue::Int(to.code() as i64))])
    }

    /// A scale or zero point (already f32) made to broadcast against `x` of rank `rank`.
    fn broadcast_param(&mut self, p: ValueId, x: ValueId, layout: QuantLayout, rank: usize) -> ValueId {
        match layout {
            QuantLayout::PerTensor => p,
            QuantLayout::PerAxis { axis } => {
                let axes: Vec<i64> = (0..rank as i64).filter(|&a| a != axis as i64).collect();
                if axes.is_empty() {
                    return p;
                }
                let axes_v = self.constant_i64("axes", &[axes.len() as u64], &axes);
                self.op("Unsqueeze", &[p, axes_v], vec![])
            }
            QuantLayout::Blocked { axis, block } => {
                // index[i] = i / block for i in 0..dim(x, axis): repeats each block's parameter.
                let shape = self.op("Shape", &[x], vec![]);
                let axis_i = self.constant_i64("axis", &[1], &[axis as i64]);
                let dim = self.op("Gather", &[shape, axis_i], vec![]);
                let zero = self.constant_i64("zero", &[], &[0]);
                let one = self.constant_i64("one", &[], &[1]);
                let dim_scalar = self.op("Squeeze", &[dim], vec![]);
                let range = self.op("Range", &[zero, dim_scalar, one], vec![]);
                let block_v = self.constant_i64("block", &[], &[block as i64]);
                let index = self.op("Div", &[range, block_v], vec![]);
                self.op("Gather", &[p, index], vec![Attribute::new("axis", AttrValue::Int(axis as i64))])
            }
        }
    }
}
