//! Which weights `factorize` rewrites, and how each maps to the `[K, N]` matrix of the numerics.

use super::{Factorize, Method, Skipped};
use crate::analysis::linear::weight_readers;
use crate::analysis::{Analyses, LinearLayers, LinearOp, Uses};
use crate::calib::RowLayout;
use crate::pass::{PassDef, PassError};
use compactor_ir::{DataType, Graph, NodeId, Tensor, ValueId};
use std::collections::HashSet;

/// A layer that reads the weight.
pub(crate) struct Reader {
    pub node: NodeId,
    pub op: LinearOp,
    /// The activation the weight multiplies.
    pub input: ValueId,
    /// How calibration reads that activation as rows of K inputs.
    pub rows: RowLayout,
    /// The activation's rank, where known (the MPO chain reshapes around its leading axes).
    pub input_rank: Option<usize>,
}

/// One weight to factorize: every reader reads it the same way, as `x · W` with `W [K, N]`.
pub(crate) struct Target {
    pub label: String,
    pub weight: ValueId,
    pub tensor: Tensor,
    /// Nodes between the weight and its readers (Transposes), removed with it.
    pub chain: Vec<NodeId>,
    /// The stored tensor is `[N, K]` (a Transpose on the way, Gemm's transB, a Conv's
    /// `[O, I, 1, 1]`).
    pub stored_transposed: bool,
    pub k: usize,
    pub n: usize,
    pub readers: Vec<Reader>,
}

impl Target {
    pub fn op_name(&self) -> &'static str {
        match self.readers[0].op {
            LinearOp::MatMul => "MatMul",
            LinearOp::Gemm => "Gemm",
            LinearOp::Conv => "Conv",
        }
    }

    /// The weight as the `[K, N]` row-major matrix.
    pub fn matrix(&self) -> Result<Vec<f32>, PassError> {
        let data = self.tensor.to_f32().map_err(|e| PassError::ir(Factorize::NAME, e))?;
        Ok(if self.stored_transposed { crate::quant::transpose(&data, self.n, self.k) } else { data })
    }
}

impl Factorize {
    /// The weights this run factorizes, in execution order of their first reader, and the ones
    /// it leaves (with why).
    pub(super) fn select(&self, graph: &Graph, analyses: &mut Analyses) -> (Vec<Target>, Vec<Skipped>) {
        let uses = analyses.get::<Uses>(graph);
        let linear = analyses.get::<LinearLayers>(graph);
        let mut seen = HashSet::new();
        let (mut targets, mut skipped) = (Vec::new(), Vec::new());
        let op_name = |op: LinearOp| match op {
            LinearOp::MatMul => "MatMul",
            LinearOp::Gemm => "Gemm",
            LinearOp::Conv => "Conv",
        };
        for (_, layer) in linear.iter() {
            if !self.ops.iter().any(|o| o == op_name(layer.op)) || !seen.insert(layer.weight.value) {
                continue;
            }
            let label = layer.label(graph);
            let mut skip = |reason: String| skipped.push(Skipped { name: label.clone(), reason });
            if layer.weight.is_quantized() {
                skip("already quantized".into());
                continue;
            }
            let readers = weight_readers(graph, &uses, layer.weight.value);
            if readers.is_output {
                skip("the weight is also a graph output".into());
                continue;
            }
            let mut selected = Vec::new();
            let mut problem = None;
            for r in &readers.readers {
                let node = graph.node(r.node);
                let Some(l) = linear.of_node(r.node).map(|id| &linear[id]).filter(|l| l.weight.value == layer.weight.value && r.input == 1) else {
                    problem = Some(format!("shared weight: also read by {} (input {}), which factorize does not rewrite", node.label(r.node), r.input));
                    break;
                };
                if !self.ops.iter().any(|o| o == op_name(l.op)) {
                    problem = Some(format!("shared weight: also read by {}, which ops does not select", node.label(r.node)));
                    break;
                }
                if l.weight.transposed != layer.weight.transposed || (l.in_features, l.out_features) != (layer.in_features, layer.out_features) {
                    problem = Some(format!("shared weight: {} reads it in the other orientation", node.label(r.node)));
                    break;
                }
                if node.region != graph.node(layer.node).region {
                    problem = Some("shared weight: read in more than one graph".into());
                    break;
                }
                match self.reader(graph, l) {
                    Ok(reader) => selected.push(reader),
                    Err(reason) => {
                        problem = Some(reason);
                        break;
                    }
                }
            }
            if problem.is_none() && selected.len() > 1 && selected.iter().any(|r| r.op == LinearOp::Conv) {
                problem = Some("shared Conv weight".into());
            }
            let tensor = &layer.weight.tensor;
            let (k, n) = (layer.in_features as usize, layer.out_features as usize);
            let mut names: Vec<&str> = readers.readers.iter().filter_map(|r| graph.node(r.node).name.as_deref()).collect();
            names.push(graph.value(layer.weight.value).name.as_str());
            let reason = problem.or_else(|| {
                if !self.include.is_empty() && !super::super::matches_any(&self.include, &names) {
                    Some("not matched by include".into())
                } else if super::super::matches_any(&self.exclude, &names) {
                    Some("matched by exclude".into())
                } else if ((k * n) as u64) < self.min_elements {
                    Some(format!("{} elements, fewer than min_elements", k * n))
                } else if tensor.dtype() != DataType::Float {
                    Some(format!("weight is {}; factorize works on f32 weights", tensor.dtype()))
                } else {
                    None
                }
            });
            if let Some(reason) = reason {
                skip(reason);
                continue;
            }
            targets.push(Target { label, weight: layer.weight.value, tensor: tensor.clone(), chain: readers.chain_nodes(), stored_transposed: layer.weight.transposed, k, n, readers: selected });
        }
        (targets, skipped)
    }

    /// One reader as the rewrite needs it, or why it cannot be rewritten.
    fn reader(&self, graph: &Graph, l: &crate::analysis::LinearLayer) -> Result<Reader, String> {
        let node = graph.node(l.node);
        let input_rank = graph.value(l.input).shape().map(|s| s.rank());
        let rows = match l.op {
            LinearOp::MatMul | LinearOp::Gemm => RowLayout::LastAxis,
            LinearOp::Conv => {
                let dims = l.weight.tensor.dims();
                let spatial = dims.len() - 2;
                let ones = |name: &str, default: i64| node.attr_ints(name).is_none_or(|v| v.iter().all(|&x| x == default));
                let pointwise =
                    dims[2..].iter().all(|&d| d == 1) && node.attr_int("group").unwrap_or(1) == 1 && ones("pads", 0) && node.attr_string("auto_pad").is_none_or(|p| p == "NOTSET" || p == "VALID");
                if !pointwise {
                    return Err("only 1x1 convolutions over all channels without padding are factorized".into());
                }
                if self.method == Method::Mpo {
                    return Err("mpo rewrites MatMul and Gemm, not Conv".into());
                }
                let strides = node.attr_ints("strides").map(|v| v.iter().map(|&x| x.max(1) as usize).collect()).unwrap_or_else(|| vec![1; spatial]);
                RowLayout::Channels { strides }
            }
        };
        if self.method == Method::Mpo {
            if l.op == LinearOp::Gemm && (node.attr_float("alpha").unwrap_or(1.0) != 1.0 || node.attr_float("beta").unwrap_or(1.0) != 1.0) {
                return Err("mpo: a Gemm with alpha or beta other than 1".into());
            }
            if input_rank.is_none_or(|r| r < 2) {
                return Err("mpo: the input's rank is unknown (or below 2)".into());
            }
        }
        Ok(Reader { node: l.node, op: l.op, input: l.input, rows, input_rank })
    }
}
