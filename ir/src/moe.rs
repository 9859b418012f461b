//! `com.microsoft.MoE` (mixture of experts) as onnxruntime's CPU kernel computes it: the
//! attributes it takes, the routing of tokens to experts and the activation between fc1 and
//! fc2. The runtime's kernel runs it by these rules, and the micro-expert passes score and cut
//! its experts' neurons by them, so the two cannot drift apart.
//!
//! Each token's row of `router_probs` holds its router's logits over the `E` experts: their
//! softmax is taken, the `k` most probable experts are kept (the lower index first on a tie),
//! their probabilities renormalised to sum to 1 with `normalize_routing_weights`. Each expert's
//! layers are stored `[out, in]`: fc1 `[E, f·I, H]` (`f` = 2 for a fused SwiGLU, whose gate and
//! up neurons are interleaved with `swiglu_fusion = 1`, or concatenated with 2), fc2 `[E, H, I]`.
//! SwiGLU is `g·sigmoid(alpha·g)·(u + beta)`, with `g` clamped from above and `u` on both sides
//! by `swiglu_limit` when given; gelu is onnxruntime's tanh approximation.

use crate::Node;

/// Where a fused SwiGLU's gate and up neurons sit in a row of fc1's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateUp {
    /// `g0, u0, g1, u1, …` (`swiglu_fusion = 1`).
    Interleaved,
    /// `g0 … g(I-1), u0 … u(I-1)` (`swiglu_fusion = 2`).
    Concatenated,
}

/// The activation between fc1 and fc2; floats kept as bits so it can be `Eq` and `Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoeActivation {
    Relu,
    /// onnxruntime's MoE gelu: the tanh approximation.
    Gelu,
    Silu,
    Identity,
    SwiGlu {
        gate_up: GateUp,
        alpha: u32,
        beta: u32,
        limit: Option<u32>,
    },
}

impl MoeActivation {
    /// fc1's outputs per intermediate neuron: 2 (gate and up) for SwiGLU.
    pub fn fusion(self) -> usize {
        if matches!(self, MoeActivation::SwiGlu { .. }) { 2 } else { 1 }
    }

    /// The rows of one expert's fc1 that make neuron `j` of `inter`: its gate and up rows for
    /// SwiGLU, its one row otherwise.
    pub fn fc1_rows(self, j: usize, inter: usize) -> (usize, Option<usize>) {
        match self {
            MoeActivation::SwiGlu { gate_up: GateUp::Interleaved, .. } => (2 * j, Some(2 * j + 1)),
            MoeActivation::SwiGlu { gate_up: GateUp::Concatenated, .. } => (j, Some(inter + j)),
            _ => (j, None),
        }
    }

    /// `act` (`rows × I`) from fc1's output `hidden` (`rows × f·I`).
    pub fn apply(self, hidden: &[f32], act: &mut [f32], inter: usize) {
        let MoeActivation::SwiGlu { gate_up, alpha, beta, limit } = self else {
            for (a, &h) in act.iter_mut().zip(hidden) {
                *a = match self {
                    MoeActivation::Relu => h.max(0.0),
                    MoeActivation::Gelu => 0.5 * h * (1.0 + (0.797_884_6 * (h + 0.044715 * h * h * h)).tanh()),
                    MoeActivation::Silu => h / (1.0 + (-h).exp()),
                    _ => h,
                };
            }
            return;
        };
        let (alpha, beta, limit) = (f32::from_bits(alpha), f32::from_bits(beta), limit.map(f32::from_bits));
        let swiglu = |g: f32, u: f32| {
            let (g, u) = match limit {
                Some(limit) => (g.min(limit), u.clamp(-limit, limit)),
                None => (g, u),
            };
            g / (1.0 + (-alpha * g).exp()) * (u + beta)
        };
        for (out, row) in act.chunks_exact_mut(inter).zip(hidden.chunks_exact(2 * inter)) {
            match gate_up {
                GateUp::Interleaved => out.iter_mut().zip(row.chunks_exact(2)).for_each(|(a, gu)| *a = swiglu(gu[0], gu[1])),
                GateUp::Concatenated => {
                    let (gates, ups) = row.split_at(inter);
                    out.iter_mut().zip(gates.iter().zip(ups)).for_each(|(a, (&g, &u))| *a = swiglu(g, u));
                }
            }
        }
    }
}

/// A MoE node's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MoeAttributes {
    /// Experts per token.
    pub k: usize,
    pub normalize: bool,
    pub activation: MoeActivation,
}

/// How a reader of attributes hands them over: by name, each kind typed.
pub struct AttributeReader<'a> {
    pub int: &'a dyn Fn(&str) -> Option<i64>,
    pub float: &'a dyn Fn(&str) -> Option<f32>,
    pub string: &'a dyn Fn(&str) -> Option<String>,
}

impl MoeAttributes {
    /// The attributes, or why the node is not one this module computes (the options
    /// onnxruntime's CPU kernel refuses or runs on CUDA only).
    pub fn parse(attrs: &AttributeReader<'_>) -> Result<MoeAttributes, String> {
        let k = (attrs.int)("k").unwrap_or(1);
        if k <= 0 {
            return Err(format!("k is {k}, it must be positive"));
        }
        if (attrs.int)("use_sparse_mixer").unwrap_or(0) != 0 {
            return Err("use_sparse_mixer is not supported".into());
        }
        if (attrs.int)("swiglu_limit_after_activation").unwrap_or(0) != 0 {
            return Err("swiglu_limit_after_activation is not supported (onnxruntime runs it on CUDA only)".into());
        }
        let name = (attrs.string)("activation_type").unwrap_or_else(|| "relu".to_string());
        let activation = match name.as_str() {
            "relu" => MoeActivation::Relu,
            "gelu" => MoeActivation::Gelu,
            "silu" => MoeActivation::Silu,
            "identity" => MoeActivation::Identity,
            "swiglu" => {
                let gate_up = match (attrs.int)("swiglu_fusion").unwrap_or(0) {
                    1 => GateUp::Interleaved,
                    2 => GateUp::Concatenated,
                    0 => return Err("SwiGLU with separate fc1 and fc3 weights (swiglu_fusion=0) is not supported; fuse them into fc1 (swiglu_fusion=1)".into()),
                    other => return Err(format!("swiglu_fusion is {other}, not 0, 1 or 2")),
                };
                MoeActivation::SwiGlu {
                    gate_up,
                    alpha: (attrs.float)("activation_alpha").unwrap_or(1.0).to_bits(),
                    beta: (attrs.float)("activation_beta").unwrap_or(0.0).to_bits(),
                    limit: (attrs.float)("swiglu_limit").map(f32::to_bits),
                }
            }
            other => return Err(format!("activation_type {other:?} is not supported (relu, gelu, silu, identity, swiglu)")),
        };
        Ok(MoeAttributes { k: k as usize, normalize: (attrs.int)("normalize_routing_weights").unwrap_or(0) == 1, activation })
    }

    /// [`MoeAttributes::parse`] of a graph node.
    pub fn of_node(node: &Node) -> Result<MoeAttributes, String> {
        MoeAttributes::parse(&AttributeReader { int: &|n| node.attr_int(n), float: &|n| node.attr_float(n), string: &|n| node.attr_string(n).map(str::to_string) })
    }

    /// Per expert, the tokens routed to it (in token order) and their routing weights, from
    /// the router's logits (`tokens × experts`).
    pub fn route(&self, logits: &[f32], experts: usize) -> Vec<Vec<(usize, f32)>> {
        let mut routes = vec![Vec::new(); experts];
        let mut probs = vec![0f32; experts];
        let mut order: Vec<usize> = Vec::with_capacity(experts);
        let k = self.k.min(experts);
        for (token, row) in logits.chunks_exact(experts.max(1)).enumerate() {
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            probs.iter_mut().zip(row).for_each(|(p, &l)| *p = (l - top).exp());
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
            order.clear();
            order.extend(0..experts);
            // Most probable first, the lower index first on a tie (a NaN logit sorts last).
            order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap_or_else(|| probs[a].is_nan().cmp(&probs[b].is_nan())).then(a.cmp(&b)));
            let chosen = &order[..k];
            let scale = if self.normalize { 1.0 / chosen.iter().map(|&e| probs[e]).sum::<f32>() } else { 1.0 };
            for &e in chosen {
                routes[e].push((token, probs[e] * scale));
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_top_k_renormalised_lower_index_first_on_ties() {
        let attrs = MoeAttributes { k: 2, normalize: true, activation: MoeActivation::Relu };
        // Token 0: logits 0, ln 2, ln 3 -> probabilities 1/6, 2/6, 3/6 -> experts 2 and 1.
        // Token 1: all equal -> experts 0 and 1, half each.
        let logits = [0.0, 2f32.ln(), 3f32.ln(), 1.0, 1.0, 1.0];
        let routes = attrs.route(&logits, 3);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert_eq!(routes[0].len(), 1);
        assert!(routes[0][0].0 == 1 && close(routes[0][0].1, 0.5));
        assert!(routes[1].len() == 2 && close(routes[1][0].1, 0.4) && close(routes[1][1].1, 0.5));
        assert!(routes[2].len() == 1 && close(routes[2][0].1, 0.6));
        let plain = MoeAttributes { normalize: false, ..attrs };
        assert!(close(plain.route(&logits, 3)[2][0].1, 0.5));
    }

    #[test]
    fn swiglu_rows_follow_the_fusion_layout() {
        let swiglu = |gate_up| MoeActivation::SwiGlu { gate_up, alpha: 1f32.to_bits(), beta: 0f32.to_bits(), limit: None };
        assert_eq!(swiglu(GateUp::Interleaved).fc1_rows(3, 8), (6, Some(7)));
        assert_eq!(swiglu(GateUp::Concatenated).fc1_rows(3, 8), (3, Some(11)));
        assert_eq!(MoeActivation::Gelu.fc1_rows(3, 8), (3, None));
        // g·sigmoid(g)·u on one interleaved neuron and the same on concatenated rows.
        let mut a = [0f32; 2];
        swiglu(GateUp::Interleaved).apply(&[1.0, 2.0, -1.0, 3.0], &mut a, 2);
        let silu = |g: f32| g / (1.0 + (-g).exp());
        assert!((a[0] - silu(1.0) * 2.0).abs() < 1e-6 && (a[1] - silu(-1.0) * 3.0).abs() < 1e-6);
        let mut b = [0f32; 2];
        swiglu(GateUp::Concatenated).apply(&[1.0, -1.0, 2.0, 3.0], &mut b, 2);
        assert_eq!(a, b);
    }

    #[test]
    fn unsupported_attributes_are_refused_with_the_reason() {
        let parse = |ints: &'static [(&'static str, i64)], act: &'static str| {
            MoeAttributes::parse(&AttributeReader {
                int: &move |n| ints.iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
                float: &|_| None,
                string: &move |n| (n == "activation_type").then(|| act.to_string()),
            })
        };
        assert!(parse(&[("k", 2), ("swiglu_fusion", 1)], "swiglu").is_ok());
        assert!(parse(&[("k", 0)], "relu").unwrap_err().contains("k is 0"));
        assert!(parse(&[("swiglu_fusion", 0)], "swiglu").unwrap_err().contains("fc3"));
        assert!(parse(&[("use_sparse_mixer", 1)], "relu").unwrap_err().contains("sparse"));
        assert!(parse(&[], "tanh").unwrap_err().contains("tanh"));
    }
}
