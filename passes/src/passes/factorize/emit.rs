//! The graph rewrite: factors as initializers, each reader's product split into a chain.

use super::select::{Reader, Target};
use super::{Factored, Factorize};
use crate::analysis::LinearOp;
use crate::lowrank::MpoShape;
use crate::pass::{PassDef, PassError};
use compactor_ir::scratch::ScratchFile;
use compactor_ir::{Anchor, AttrValue, DataType, Graph, PValue, Patch, Tensor};

/// The new weights of one target.
pub(super) enum Tensors {
    /// `A` and `B` in the layout the readers take: `[K, r]` and `[r, N]`, or for a Conv
    /// `[r, K, 1..]` and `[N, r, 1..]`.
    LowRank { a: Tensor, b: Tensor },
    /// Core `t` as `[χ_t·k_t, n_t·χ_(t+1)]`.
    Mpo { cores: Vec<Tensor>, shape: MpoShape, bonds: Vec<usize> },
}

fn ir(e: compactor_ir::IrError) -> PassError {
    PassError::ir(Factorize::NAME, e)
}

/// An f32 tensor, in memory or (streaming) in the scratch file.
fn store(dims: &[u64], values: &[f32], scratch: Option<&ScratchFile>) -> Result<Tensor, PassError> {
    match scratch {
        Some(s) => s.store(DataType::Float, dims, bytemuck::cast_slice(values)).map_err(ir),
        None => Tensor::from_f32(dims, values).map_err(ir),
    }
}

pub(super) fn tensors(t: &Target, factored: &Factored, scratch: Option<&ScratchFile>) -> Result<Tensors, PassError> {
    let (k, n) = (t.k as u64, t.n as u64);
    match factored {
        Factored::LowRank { factors, .. } => {
            let r = factors.rank as u64;
            if t.readers[0].op == LinearOp::Conv {
                // Conv weights are [out, in, 1..]: the transposes of A and B.
                let ones = t.tensor.dims().len() - 2;
                let dims = |out: u64, inp: u64| [out, inp].into_iter().chain(std::iter::repeat_n(1, ones)).collect::<Vec<u64>>();
                let a = crate::quant::transpose(&factors.a, t.k, factors.rank);
                let b = crate::quant::transpose(&factors.b, factors.rank, t.n);
                return Ok(Tensors::LowRank { a: store(&dims(r, k), &a, scratch)?, b: store(&dims(n, r), &b, scratch)? });
            }
            Ok(Tensors::LowRank { a: store(&[k, r], &factors.a, scratch)?, b: store(&[r, n], &factors.b, scratch)? })
        }
        Factored::Mpo { mpo, .. } => {
            let cores = (0..mpo.shape.cores())
                .map(|c| {
                    let rows = (mpo.bond(c) * mpo.shape.in_factors[c]) as u64;
                    let cols = (mpo.shape.out_factors[c] * mpo.bond(c + 1)) as u64;
                    store(&[rows, cols], &mpo.cores[c], scratch)
                })
                .collect::<Result<_, _>>()?;
            Ok(Tensors::Mpo { cores, shape: mpo.shape.clone(), bonds: mpo.bonds.clone() })
        }
    }
}

/// Rewrites every reader of `t` to use its new weights and removes the old weight.
pub(super) fn emit(graph: &Graph, patch: &mut Patch, t: &Target, tensors: Tensors) -> Result<(), PassError> {
    let region = graph.node(t.readers[0].node).region;
    let weight_name = graph.value(t.weight).name.clone();
    match tensors {
        Tensors::LowRank { a, b } => {
            let a = patch.new_initializer(region, &format!("{weight_name}_lowrank_a"), a);
            let b = patch.new_initializer(region, &format!("{weight_name}_lowrank_b"), b);
            for r in &t.readers {
                low_rank(graph, patch, r, a, b);
            }
        }
        Tensors::Mpo { cores, shape, bonds } => {
            let cores: Vec<PValue> = cores.into_iter().enumerate().map(|(c, tensor)| patch.new_initializer(region, &format!("{weight_name}_mpo_core{c}"), tensor)).collect();
            for r in &t.readers {
                mpo_chain(graph, patch, r, &cores, &shape, &bonds, t.n)?;
            }
        }
    }
    crate::passes::remove_weight(graph, patch, &t.chain, t.weight);
    Ok(())
}

/// The reader's node name (else its output's), for the names of the nodes and values it gets.
fn reader_label(graph: &Graph, r: &Reader) -> String {
    let node = graph.node(r.node);
    node.name.clone().filter(|n| !n.is_empty()).or_else(|| node.output(0).map(|o| graph.value(o).name.clone())).unwrap_or_else(|| format!("node{}", r.node.index()))
}

/// `x · W` becomes `(x · A) · B`: a new product in front, the reader multiplying by `B`.
fn low_rank(graph: &Graph, patch: &mut Patch, r: &Reader, a: PValue, b: PValue) {
    let node = graph.node(r.node);
    let label = reader_label(graph, r);
    let mid = patch.new_value(node.region, &format!("{label}_lowrank"), None);
    match r.op {
        LinearOp::MatMul | LinearOp::Gemm => {
            patch.node("MatMul", Anchor::Before(r.node)).name(format!("{label}/lowrank_a")).input(r.input).input(a).output(mid).add();
            if r.op == LinearOp::Gemm {
                patch.set_attr(r.node, "transB", AttrValue::Int(0));
            }
        }
        LinearOp::Conv => {
            // The first convolution takes the strides; the second is pointwise at every position.
            let mut first = patch.node("Conv", Anchor::Before(r.node)).name(format!("{label}/lowrank_a")).input(r.input).input(a).output(mid);
            for attr in ["strides", "dilations", "auto_pad"] {
                if let Some(value) = node.attr(attr).cloned() {
                    first = first.attr(attr, value);
                }
            }
            first.add();
            let spatial = node.attr_ints("strides").map(|s| s.len());
            if let Some(len) = spatial {
                patch.set_attr(r.node, "strides", AttrValue::Ints(vec![1; len]));
            }
            patch.remove_attr(r.node, "auto_pad");
        }
    }
    patch.set_input(r.node, 0, Some(mid));
    patch.set_input(r.node, 1, Some(b));
}

/// `x · W` as the cores' contraction (see [`crate::lowrank::Mpo::apply`]): for each core, the
/// state `[.., k_t, Q_t, χ_t]` has `k_t` moved last, is reshaped to `[.., Q_t, χ_t·k_t]` and
/// multiplied by the core. Leading axes are kept by Reshape's `0`; the last Reshape gives
/// `[.., N]` and takes over the reader's output (after a Gemm's bias, if it has one).
fn mpo_chain(graph: &Graph, patch: &mut Patch, r: &Reader, cores: &[PValue], shape: &MpoShape, bonds: &[usize], n: usize) -> Result<(), PassError> {
    let node = graph.node(r.node);
    let region = node.region;
    let label = reader_label(graph, r);
    let lead = r.input_rank.expect("selected with a known rank") - 1;
    let output = node.output(0).ok_or_else(|| PassError::failed(Factorize::NAME, label.clone(), "the layer has no output"))?;
    let bond = |t: usize| if t == 0 || t == shape.cores() { 1 } else { bonds[t - 1] };
    let shape_constant = |patch: &mut Patch, name: &str, dims: &[usize]| -> Result<PValue, PassError> {
        let values: Vec<i64> = std::iter::repeat_n(0, lead).chain(dims.iter().map(|&d| d as i64)).collect();
        Ok(patch.new_initializer(region, &format!("{label}_{name}"), Tensor::from_i64(&[values.len() as u64], &values).map_err(ir)?))
    };
    let anchor = Anchor::Before(r.node);
    let mut state: PValue = r.input.into();
    let mut q: usize = shape.in_factors.iter().product::<usize>() / shape.in_factors[0];
    for (t, &core) in cores.iter().enumerate() {
        let (k, chi) = (shape.in_factors[t], bond(t));
        let split = shape_constant(patch, &format!("mpo{t}_split_shape"), &[k, q, chi])?;
        let merged = shape_constant(patch, &format!("mpo{t}_merge_shape"), &[q, chi * k])?;
        let v1 = patch.new_value(region, &format!("{label}_mpo{t}_split"), None);
        patch.node("Reshape", anchor).name(format!("{label}/mpo{t}/split")).input(state).input(split).output(v1).add();
        let v2 = patch.new_value(region, &format!("{label}_mpo{t}_moved"), None);
        let perm: Vec<i64> = (0..lead as i64).chain([lead as i64 + 1, lead as i64 + 2, lead as i64]).collect();
        patch.node("Transpose", anchor).name(format!("{label}/mpo{t}/move")).input(v1).output(v2).attr("perm", AttrValue::Ints(perm)).add();
        let v3 = patch.new_value(region, &format!("{label}_mpo{t}_merged"), None);
        patch.node("Reshape", anchor).name(format!("{label}/mpo{t}/merge")).input(v2).input(merged).output(v3).add();
        let v4 = patch.new_value(region, &format!("{label}_mpo{t}"), None);
        patch.node("MatMul", anchor).name(format!("{label}/mpo{t}/core")).input(v3).input(core).output(v4).add();
        state = v4;
        if t + 1 < cores.len() {
            q = q / shape.in_factors[t + 1] * shape.out_factors[t];
        }
    }
    let flat = shape_constant(patch, "mpo_out_shape", &[n])?;
    let bias = if r.op == LinearOp::Gemm { node.input(2) } else { None };
    // The value that takes over the layer's output keeps its type.
    let output_type = graph.value(output).ty.clone();
    let result = patch.new_value(region, &format!("{label}_mpo_out"), if bias.is_some() { None } else { output_type.clone() });
    patch.node("Reshape", anchor).name(format!("{label}/mpo/out")).input(state).input(flat).output(result).add();
    let result = match bias {
        Some(c) => {
            let biased = patch.new_value(region, &format!("{label}_mpo_biased"), output_type);
            patch.node("Add", anchor).name(format!("{label}/mpo/bias")).input(result).input(c).output(biased).add();
            biased
        }
        None => result,
    };
    patch.replace_uses(output, result);
    patch.remove_node(r.node);
    patch.rename(result, graph.value(output).name.clone());
    Ok(())
}
