//! `com.microsoft.MoE` (mixture of experts) as one kernel, in f32, with the semantics of
//! onnxruntime's CPU kernel.
//!
//! The routing and the activations follow [`compactor_ir::moe`] (shared with the passes that
//! cut the experts' neurons): per token, the `k` most probable experts of the router's softmax,
//! and the sum over them of `weight · fc2(act(fc1(x)))`, each expert's layers stored `[out, in]`
//! (fc1 `[E, f·I, H]`, fc2 `[E, H, I]`, optional biases `[E, f·I]` and `[E, H]`).
//!
//! Why a kernel: tract has no such op, and written as standard ops every expert would run on
//! every token. Here each expert gathers the tokens routed to it, runs fc1 and fc2 as one
//! product each over those rows (the runtime's `gemm` products, spread over the session's
//! threads), and its weighted rows are added into the output. Experts are taken in order and
//! each token's sum is built in that order, so the result does not depend on the thread count.
//!
//! Refused with a message: a separate fc3 (SwiGLU with `swiglu_fusion = 0`, which onnxruntime's
//! CPU kernel refuses too), `use_sparse_mixer`, `swiglu_limit_after_activation` and the
//! CUDA-only activations.

use super::matmul::GemmMatMul;
use compactor_ir::moe::{AttributeReader, MoeAttributes};
use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_moe(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = MoeAttributes::parse(&AttributeReader {
        int: &|n| node.get_attr_opt::<i64>(n).ok().flatten(),
        float: &|n| node.get_attr_opt::<f32>(n).ok().flatten(),
        string: &|n| node.get_attr_opt::<String>(n).ok().flatten(),
    })
    .map_err(|e| format_err!("MoE: {e}"))?;
    let inputs: Vec<Option<usize>> = optional_inputs(node).take(node.input.len().max(6)).collect();
    ensure!(
        inputs.len() >= 6 && inputs[0].is_some() && inputs[1].is_some() && inputs[2].is_some() && inputs[4].is_some(),
        "MoE: input, router_probs, fc1_experts_weights and fc2_experts_weights are needed"
    );
    ensure!(inputs[6..].iter().all(Option::is_none), "MoE: fc3 weights and bias are not supported (onnxruntime's CPU kernel refuses them too)");
    let op = MoE { attrs, fc1_bias: inputs[3].is_some(), fc2_bias: inputs[5].is_some() };
    Ok((expand(op), vec![]))
}

/// The op. Its inputs are the node's present ones, in order: input, router_probs, fc1 weights,
/// fc1 bias (if any), fc2 weights, fc2 bias (if any).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoE {
    attrs: MoeAttributes,
    fc1_bias: bool,
    fc2_bias: bool,
}

impl MoE {
    fn input_count(&self) -> usize {
        4 + self.fc1_bias as usize + self.fc2_bias as usize
    }
}

impl Expansion for MoE {
    fn name(&self) -> StaticName {
        "MoE".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, self.input_count())?;
        check_output_arity(outputs, 1)?;
        for input in inputs {
            s.equals(&input.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        s.equals(&inputs[1].rank, 2)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for MoE {
    fn name(&self) -> StaticName {
        "MoE".into()
    }
    op_as_typed_op!();
}

impl TypedOp for MoE {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned().collect::<TVec<_>>())))
    }
    as_op!();
}

/// Sizes of one evaluation.
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    experts: usize,
    inter: usize,
}

impl EvalOp for MoE {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.input_count(), "MoE: {} inputs, expected {}", inputs.len(), self.input_count());
        let mut next = 3;
        let mut optional = |present: bool| {
            present.then(|| {
                next += 1;
                &inputs[next - 1]
            })
        };
        let fc1_bias = optional(self.fc1_bias);
        let fc2 = optional(true).expect("fc2 is always present");
        let fc2_bias = optional(self.fc2_bias);
        let (x, router, fc1) = (&inputs[0], &inputs[1], &inputs[2]);
        let dims = self.check_shapes(x.shape(), router.shape(), fc1.shape(), fc2.shape(), fc1_bias.map(|b| b.shape()), fc2_bias.map(|b| b.shape()))?;
        let routes = self.attrs.route(slice(router)?, dims.experts);
        let mut out = Tensor::zero::<f32>(x.shape())?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            let weights = Weights { fc1: slice(fc1)?, fc1_bias: fc1_bias.map(slice).transpose()?, fc2: slice(fc2)?, fc2_bias: fc2_bias.map(slice).transpose()? };
            self.run_experts(&dims, slice(x)?, &weights, &routes, plain.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// A plain f32 tensor's values.
fn slice(t: &TValue) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// The experts' weights, `[out, in]` per expert.
struct Weights<'a> {
    fc1: &'a [f32],
    fc1_bias: Option<&'a [f32]>,
    fc2: &'a [f32],
    fc2_bias: Option<&'a [f32]>,
}

impl MoE {
    /// The sizes, with every shape checked against them.
    fn check_shapes(&self, x: &[usize], router: &[usize], fc1: &[usize], fc2: &[usize], fc1_bias: Option<&[usize]>, fc2_bias: Option<&[usize]>) -> TractResult<Dims> {
        ensure!(x.len() == 2 || x.len() == 3, "MoE: input is {x:?}, it must be [tokens, hidden] or [batch, sequence, hidden]");
        let hidden = x[x.len() - 1];
        let tokens: usize = x[..x.len() - 1].iter().product();
        ensure!(router.len() == 2 && router[0] == tokens, "MoE: router_probs is {router:?}, it must be [{tokens}, experts] for input {x:?}");
        let experts = router[1];
        ensure!(self.attrs.k <= experts, "MoE: k = {} is more than the {experts} experts", self.attrs.k);
        let fusion = self.attrs.activation.fusion();
        ensure!(fc1.len() == 3 && fc1[0] == experts && fc1[2] == hidden && fc1[1].is_multiple_of(fusion), "MoE: fc1_experts_weights is {fc1:?}, it must be [{experts}, {fusion}·inter_size, {hidden}]");
        let inter = fc1[1] / fusion;
        ensure!(fc2 == [experts, hidden, inter], "MoE: fc2_experts_weights is {fc2:?}, it must be [{experts}, {hidden}, {inter}]");
        if let Some(bias) = fc1_bias {
            ensure!(bias == [experts, fusion * inter], "MoE: fc1_experts_bias is {bias:?}, it must be [{experts}, {}]", fusion * inter);
        }
        if let Some(bias) = fc2_bias {
            ensure!(bias == [experts, hidden], "MoE: fc2_experts_bias is {bias:?}, it must be [{experts}, {hidden}]");
        }
        Ok(Dims { hidden, experts, inter })
    }

    /// Each expert on its tokens, its weighted rows added into `out` (`tokens × hidden`, zeroed),
    /// experts in order.
    fn run_experts(&self, dims: &Dims, x: &[f32], weights: &Weights, routes: &[Vec<(usize, f32)>], out: &mut [f32]) -> TractResult<()> {
        let Dims { hidden, inter, .. } = *dims;
        if hidden == 0 || inter == 0 {
            // No features, or experts of no neurons (whose fc2 then adds zero, bias aside).
            return self.run_empty_experts(dims, weights, routes, out);
        }
        let wide = self.attrs.activation.fusion() * inter;
        let most = routes.iter().map(Vec::len).max().unwrap_or(0);
        let linear = GemmMatMul::by_transposed_weight();
        // Buffers sized for the busiest expert, reused by the others.
        let (mut rows, mut fc1_out, mut act, mut fc2_out) = (vec![0f32; most * hidden], vec![0f32; most * wide], vec![0f32; most * inter], vec![0f32; most * hidden]);
        for (expert, routed) in routes.iter().enumerate() {
            let n = routed.len();
            if n == 0 {
                continue;
            }
            for (row, &(token, _)) in rows.chunks_exact_mut(hidden).zip(routed) {
                row.copy_from_slice(&x[token * hidden..][..hidden]);
            }
            let fc1 = &weights.fc1[expert * wide * hidden..][..wide * hidden];
            linear.product(&rows[..n * hidden], &[n, hidden], fc1, &[wide, hidden], &mut fc1_out[..n * wide])?;
            if let Some(bias) = weights.fc1_bias {
                add_rows(&mut fc1_out[..n * wide], &bias[expert * wide..][..wide]);
            }
            self.attrs.activation.apply(&fc1_out[..n * wide], &mut act[..n * inter], inter);
            let fc2 = &weights.fc2[expert * hidden * inter..][..hidden * inter];
            linear.product(&act[..n * inter], &[n, inter], fc2, &[hidden, inter], &mut fc2_out[..n * hidden])?;
            if let Some(bias) = weights.fc2_bias {
                add_rows(&mut fc2_out[..n * hidden], &bias[expert * hidden..][..hidden]);
            }
            for (row, &(token, weight)) in fc2_out.chunks_exact(hidden).zip(routed) {
                out[token * hidden..][..hidden].iter_mut().zip(row).for_each(|(o, &y)| *o += weight * y);
            }
        }
        Ok(())
    }
}

impl MoE {
    /// [`MoE::run_experts`] when there is nothing to multiply: each routed token gets its
    /// experts' weighted fc2 bias.
    fn run_empty_experts(&self, dims: &Dims, weights: &Weights, routes: &[Vec<(usize, f32)>], out: &mut [f32]) -> TractResult<()> {
        let (Some(bias), hidden) = (weights.fc2_bias, dims.hidden) else { return Ok(()) };
        for (expert, routed) in routes.iter().enumerate() {
            for &(token, weight) in routed {
                out[token * hidden..][..hidden].iter_mut().zip(&bias[expert * hidden..][..hidden]).for_each(|(o, &b)| *o += weight * b);
            }
        }
        Ok(())
    }
}

/// Adds `bias` to every row of `rows`.
fn add_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
    }
}
