//! Rewrites (a clone of) the IR into something tract 0.23.9 can load, keeping its meaning.
//!
//! tract has no INT4/UINT4/INT2/UINT2, BF16, FP8 or FP4 tensors and no `block_size` on
//! `DequantizeLinear`/`QuantizeLinear`, and lacks a few ops. In order:
//!
//! 0. **Inline** `If` nodes whose condition is constant (`lower/constant_ifs.rs`), and **expand** ops tract lacks
//!    (onnxruntime's contrib ops, the LLM ops of onnxruntime-genai's model builder included —
//!    SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding,
//!    GroupQueryAttention: `lower/contrib.rs`, with the ranks of undeclared values from
//!    `lower/ranks.rs`; NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, LpPool, CenterCropPad,
//!    CausalConvWithState, training-mode BatchNormalization, Attention
//!    with softcap or qk output, bool ReduceMax/Min, vector·vector MatMul) into the ops
//!    defining them, one file per op under `lower/`. f32 RotaryEmbedding and the common form of
//!    GroupQueryAttention and f32 MoE are left in place for the runtime's own kernels (`kernels/`).
//! 1. **Fuse** `DequantizeLinear(constant 2-D weight) -> MatMul` (directly, or through a
//!    `Transpose` for an `[N, K]` weight) into `com.microsoft.MatMulNBits` (`lower/dequantize_matmul.rs`), which the runtime
//!    registers with its own fused kernel: blocked, per-channel or per-tensor scales; int8,
//!    uint8, int4, uint4, int2, uint2 weights; f32/f16/bf16 scales; optional zero points.
//! 2. **Fold** any other `DequantizeLinear` whose inputs are all constant into an initializer.
//! 3. **Expand** the remaining quantize/dequantize nodes tract cannot take (blocked, or of a
//!    type tract lacks) into plain ONNX arithmetic (`lower/quantize_dequantize.rs`).
//! 4. **Widen** every tensor and value type tract lacks: INT4/INT2 to INT8, UINT4/UINT2 to UINT8,
//!    BF16/FP8/FP4 to FLOAT (the values are exact in the wider type: `lower/widen.rs`).
//! 5. **Drop** the declared shapes of intermediate values (hints that tract would otherwise
//!    take as facts: `lower/annotations.rs`).

mod annotations;
mod contrib;
mod embed_layer_norm;
mod fused_matmul;
mod gelu;
mod group_query_attention;
mod moe;
mod ms_attention;
mod rotary_embedding;
mod simplified_layer_norm;
mod skip_layer_norm;
mod skip_simplified_layer_norm;

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
mod ranks;
mod widen;

mod attention;
mod bool_reductions;
mod causal_conv;
mod center_crop_pad;
mod losses;
mod lp_pool;
mod small_ops;
mod training_batch_norm;
mod vector_dot_products;

mod constant_ifs;
mod constants_second;
mod loop_bodies;
mod sparse_initializers;

pub use constant_ifs::inline_constant_ifs;
pub(crate) use wrap_pad::expand_wrap_pads;

use attention::attention_needs_expansion;
use constants_second::constants_second;
use loop_bodies::type_loop_bodies;
use quant_params::QuantLayout;

use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute, Node, Value};
use compactor_ir::{DataType, Dim, Graph, Model, NodeId, RegionId, Tensor, ValueDef, ValueId, ValueType};
use std::collections::HashMap;

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
/// common ones: most ops keep their first input's type). `steps` bounds the walk: a deep
/// decoder's activations are hundreds of ops from the nearest declared type, so it is a loop.
fn infer_elem(g: &Graph, mut v: ValueId, steps: u32) -> Option<DataType> {
    for _ in 0..=steps {
        let value = g.value(v);
        if let Some(t) = &value.initializer {
            return Some(t.dtype());
        }
        if let Some(dt) = value.elem() {
            return Some(dt);
        }
        let (node_id, output) = g.producer(v)?;
        let node = g.node(node_id);
        // The input whose type the output has, when it is not fixed by the op.
        let follow = if !node.domain().is_empty() {
            0
        } else {
            match node.op_type.as_str() {
                "Constant" => return g.constant(v).map(|t| t.dtype()),
                "ConstantOfShape" => return Some(node.attr_tensor("value").map(|t| t.dtype()).unwrap_or(DataType::Float)),
                "Cast" => return node.attr_int("to").and_then(|c| DataType::from_code(c as i32)),
                "CastLike" | "Where" => 1,
                "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => return Some(DataType::Int64),
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN" | "IsInf" => return Some(DataType::Bool),
                "DequantizeLinear" => 1,
                // Quantized outputs: the zero point's type, `output_dtype`, or uint8.
                "QuantizeLinear" => match node.attr_int("output_dtype").filter(|&c| c != 0) {
                    Some(code) => return DataType::from_code(code as i32),
                    None if node.input(2).is_some() => 2,
                    None => return Some(DataType::Uint8),
                },
                "DynamicQuantizeLinear" => return Some(if output == 1 { DataType::Float } else { DataType::Uint8 }),
                "MatMulInteger" | "ConvInteger" => return Some(DataType::Int32),
                "TopK" if output == 1 => return Some(DataType::Int64),
                _ => 0,
            }
        };
        v = node.input(follow)?;
    }
    None
}

/// The lowered model and what was done to it.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub model: Model,
    pub report: LoweringReport,
}

/// Lowers a clone of `model`.
pub fn lower(model: &Model) -> Result<Lowered, RuntimeError> {
    let mut lowering = Lowering { model: model.clone(), name: model_name(model), report: LoweringReport::default(), ranks: HashMap::new() };
    lowering.densify_sparse_initializers()?;
    lowering.report.inlined_branches = inline_constant_ifs(&mut lowering.model);
    type_loop_bodies(&mut lowering.model.graph);
    lowering.expand_contrib_ops()?;
    lowering.expand_missing_ops()?;
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

pub(crate) fn model_name(model: &Model) -> String {
    model.origin.to_string()
}

struct Lowering {
    model: Model,
    name: String,
    report: LoweringReport,
    /// Ranks of undeclared values, while the contrib ops are expanded (`lower/ranks.rs`).
    ranks: HashMap<ValueId, usize>,
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
        value.initializer.as_ref().map(Tensor::dtype).or_else(|| self.graph().constant(v).map(|t| t.dtype())).or_else(|| infer_elem(self.graph(), v, 100_000))
    }

    fn value_rank(&self, v: ValueId) -> Option<usize> {
        if let Some(t) = self.graph().constant(v) {
            return Some(t.dims().len());
        }
        self.graph().value(v).shape().map(|s| s.rank()).or_else(|| self.ranks.get(&v).copied())
    }

    /// Dimension `axis` (negative counts from the end) of a constant or of a declared shape.
    fn known_dim(&self, v: ValueId, axis: i64) -> Option<i64> {
        let value = self.graph().value(v);
        let tensor_dims = |t: &Tensor| t.dims().iter().map(|&d| Some(d as i64)).collect();
        // Initializers are read in place: a table or weight may be large.
        let dims: Vec<Option<i64>> = match (&value.initializer, value.shape()) {
            (Some(t), _) => tensor_dims(t),
            (None, Some(shape)) => shape.dims.iter().map(Dim::known).collect(),
            (None, None) => tensor_dims(&self.graph().constant(v)?),
        };
        let axis = if axis < 0 { axis + dims.len() as i64 } else { axis };
        *dims.get(usize::try_from(axis).ok()?)?
    }

    /// Step 0's expansions of ops tract lacks (each in its own file under `lower/`): the losses,
    /// LpPool, CenterCropPad, Attention that tract refuses, CausalConvWithState and
    /// training-mode BatchNormalization, then bool reductions, vector dot products and the
    /// small one- or two-node rewrites.
    fn expand_missing_ops(&mut self) -> Result<(), RuntimeError> {
        let opset = self.model.opset_version("").unwrap_or(13);
        let nodes: Vec<NodeId> = self
            .graph()
            .all_nodes()
            .into_iter()
            .filter(|&id| {
                let n = self.graph().node(id);
                n.is("NegativeLogLikelihoodLoss")
                    || n.is("SoftmaxCrossEntropyLoss")
                    || n.is("LpPool")
                    || n.is("CenterCropPad")
                    || (n.is("Attention") && attention_needs_expansion(n))
                    || n.is("CausalConvWithState")
                    || (n.is("BatchNormalization") && n.attr_int("training_mode") == Some(1))
            })
            .collect();
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
        let inputs: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        self.node_into(None, op_type, &inputs, attributes, &[Some(out)]);
    }

    /// Adds a node (of `domain`, or the default one) whose outputs are existing values (which
    /// it then defines); `None` leaves an input or output out.
    fn node_into(&mut self, domain: Option<&str>, op_type: &str, inputs: &[Option<ValueId>], attributes: Vec<Attribute>, outputs: &[Option<ValueId>]) {
        let g = &mut self.lowering.model.graph;
        let name = format!("{}.{}{}", self.prefix, op_type, self.pos);
        let node = Node {
            op_type: op_type.to_string(),
            domain: domain.map(str::to_string),
            name: Some(name),
            overload: None,
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            attributes,
            doc_string: None,
            metadata_props: Vec::new(),
            device_configurations: Vec::new(),
            region: self.region,
        };
        let id = g.add_node_detached(node);
        g.region_mut(self.region).nodes.insert(self.pos, id);
        self.pos += 1;
        for (i, out) in outputs.iter().enumerate() {
            if let Some(out) = out {
                g.value_mut(*out).def = ValueDef::Node { node: id, output: i as u32 };
            }
        }
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
