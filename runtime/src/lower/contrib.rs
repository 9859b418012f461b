//! onnxruntime's `com.microsoft` contrib ops, which its offline optimizer, quantizer and
//! onnxruntime-genai's model builder write (FusedMatMul, BiasGelu/FastGelu/Gelu,
//! SkipLayerNormalization, EmbedLayerNormalization and its quantized form, Attention and
//! QAttention; the LLM ops SkipSimplifiedLayerNormalization, RotaryEmbedding and
//! GroupQueryAttention, and SimplifiedLayerNormalization, which onnxruntime registers in the
//! default domain): tract has none of them, so each is expanded into the standard ops that
//! define it (one file per op), following the semantics of onnxruntime's contrib op schemas and
//! CPU kernels.
//!
//! The expansions work at any default-domain opset from 13 on: the few ops whose signature
//! changed since (`Unsqueeze`, `ReduceMean`/`ReduceSum`/`ReduceMax` axes) are written in the model's form.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute, Node};
use compactor_ir::{DataType, Dim, NodeId, Shape, ValueId, ValueType};

pub(super) const MICROSOFT: &str = "com.microsoft";

/// What an expansion needs besides the builder: the default-domain opset it writes for.
#[derive(Clone, Copy)]
pub(super) struct Opset(pub i64);

impl Opset {
    pub(super) fn unsqueeze(self, b: &mut Builder, x: ValueId, axes: &[i64]) -> ValueId {
        if self.0 >= 13 {
            let axes_v = b.constant_i64("axes", &[axes.len() as u64], axes);
            b.op("Unsqueeze", &[x, axes_v], vec![])
        } else {
            b.op("Unsqueeze", &[x], vec![Attribute::new("axes", AttrValue::Ints(axes.to_vec()))])
        }
    }

    /// `ReduceMean`, `ReduceMax` or `ReduceSum` over `axes`; the axes became an input at opset 18
    /// (Mean, Max) and 13 (Sum).
    pub(super) fn reduce(self, b: &mut Builder, op: &str, x: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        let as_input = if op == "ReduceSum" { self.0 >= 13 } else { self.0 >= 18 };
        let keep = Attribute::new("keepdims", AttrValue::Int(keepdims as i64));
        if as_input {
            let axes_v = b.constant_i64("axes", &[axes.len() as u64], axes);
            b.op(op, &[x, axes_v], vec![keep])
        } else {
            b.op(op, &[x], vec![Attribute::new("axes", AttrValue::Ints(axes.to_vec())), keep])
        }
    }

    /// Layer normalization over the last axis: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    /// Returns the output, the mean and `1 / sqrt(var + eps)` (both keeping the last axis as 1).
    pub(super) fn layer_norm(self, b: &mut Builder, x: ValueId, gamma: ValueId, beta: Option<ValueId>, epsilon: f32) -> (ValueId, ValueId, ValueId) {
        let mean = self.reduce(b, "ReduceMean", x, &[-1], true);
        let centered = b.op("Sub", &[x, mean], vec![]);
        let squares = b.op("Mul", &[centered, centered], vec![]);
        let variance = self.reduce(b, "ReduceMean", squares, &[-1], true);
        let eps = b.constant_f32(epsilon);
        let shifted = b.op("Add", &[variance, eps], vec![]);
        let root = b.op("Sqrt", &[shifted], vec![]);
        let inv_std = b.op("Reciprocal", &[root], vec![]);
        let normed = b.op("Mul", &[centered, inv_std], vec![]);
        let scaled = b.op("Mul", &[normed, gamma], vec![]);
        let out = match beta {
            Some(beta) => b.op("Add", &[scaled, beta], vec![]),
            None => scaled,
        };
        (out, mean, inv_std)
    }

    /// Root-mean-square normalization over `axes`: `x / sqrt(mean(x²) + eps) · scale`, as
    /// onnxruntime's kernels divide. Returns the output and `sqrt(mean(x²) + eps)` (the reduced
    /// axes kept as 1), whose reciprocal is the optional `inv_std_var` output.
    pub(super) fn rms_norm(self, b: &mut Builder, x: ValueId, scale: ValueId, axes: &[i64], epsilon: f32) -> (ValueId, ValueId) {
        let squares = b.op("Mul", &[x, x], vec![]);
        let mean_square = self.reduce(b, "ReduceMean", squares, axes, true);
        let eps = b.constant_f32(epsilon);
        let shifted = b.op("Add", &[mean_square, eps], vec![]);
        let root = b.op("Sqrt", &[shifted], vec![]);
        let normed = b.op("Div", &[x, root], vec![]);
        (b.op("Mul", &[normed, scale], vec![]), root)
    }

    /// The size of axis `axis` of `x` as an int64 scalar.
    pub(super) fn dim(self, b: &mut Builder, x: ValueId, axis: i64) -> ValueId {
        let shape = b.op("Shape", &[x], vec![]);
        let index = b.constant_i64("axis", &[], &[axis]);
        b.op("Gather", &[shape, index], vec![])
    }
}

impl Lowering {
    /// Expands every contrib op listed in the module doc; other `com.microsoft` ops
    /// (MatMulNBits, which the runtime runs itself) are left alone, and so is the common form
    /// of GroupQueryAttention and MoE, which the runtime's kernels take.
    pub(super) fn expand_contrib_ops(&mut self) -> Result<(), RuntimeError> {
        let opset = Opset(self.model.opset_version("").unwrap_or(13));
        let mut nodes: Vec<NodeId> = self
            .graph()
            .all_nodes()
            .into_iter()
            .filter(|&id| {
                let n = self.graph().node(id);
                n.domain() == MICROSOFT || n.is("SimplifiedLayerNormalization")
            })
            .collect();
        // Embedding layers first: their mask_index output gets a type that tells the
        // Attention expansions its rank.
        nodes.sort_by_key(|&id| !self.graph().node(id).op_type.ends_with("EmbedLayerNormalization"));
        if !nodes.is_empty() {
            self.ranks = super::ranks::infer_ranks(self.graph(), opset.0);
        }
        for id in nodes {
            let node = self.graph().node(id);
            let expanded = match (node.domain(), node.op_type.as_str()) {
                ("", "SimplifiedLayerNormalization") => self.expand_simplified_layer_norm(id, opset)?,
                (MICROSOFT, "FusedMatMul") => self.expand_fused_matmul(id)?,
                (MICROSOFT, "BiasGelu" | "FastGelu" | "Gelu") => self.expand_gelu(id)?,
                (MICROSOFT, "SkipLayerNormalization") => self.expand_skip_layer_norm(id, opset)?,
                (MICROSOFT, "EmbedLayerNormalization" | "QEmbedLayerNormalization") => self.expand_embed_layer_norm(id, opset)?,
                (MICROSOFT, "Attention" | "QAttention") => self.expand_ms_attention(id, opset)?,
                (MICROSOFT, "SkipSimplifiedLayerNormalization") => self.expand_skip_simplified_layer_norm(id, opset)?,
                (MICROSOFT, "RotaryEmbedding") => self.expand_rotary_embedding(id, opset)?,
                (MICROSOFT, "GroupQueryAttention") => self.expand_group_query_attention(id, opset)?,
                (MICROSOFT, "MoE") => self.keep_moe(id)?,
                _ => false,
            };
            if expanded {
                self.model.graph.remove_node(id);
                self.report.expanded_functions += 1;
            }
        }
        self.ranks.clear();
        Ok(())
    }

    /// A builder inserting before `id`, with names derived from it, and the node itself.
    pub(super) fn builder_at(&mut self, id: NodeId) -> Result<(Builder<'_>, Node), RuntimeError> {
        let node = self.graph().node(id).clone();
        let Some(out) = node.output(0) else { return Err(self.err(label(self.graph(), id), "its first output is missing")) };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let prefix = format!("{}.expanded", lbl_name(&node, out));
        Ok((Builder { lowering: self, region, pos, prefix }, node))
    }

    /// An error naming the node.
    pub(super) fn node_err(&self, id: NodeId, reason: impl Into<String>) -> RuntimeError {
        self.err(label(self.graph(), id), reason)
    }

    /// Declares a value's element type and rank (dims unknown), for later expansions to read.
    pub(super) fn declare(&mut self, v: ValueId, dtype: DataType, rank: usize) {
        let shape = Shape::new(vec![Dim::Unknown; rank]);
        self.model.graph.value_mut(v).ty = Some(ValueType::tensor(dtype, Some(shape)));
    }
}
