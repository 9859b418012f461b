//! Blockwise weight-only quantization of MatMul/Gemm (and optionally Conv and Gather
//! embedding tables) to 8, 4 or 2 bits, emitted as standard opset-21 `DequantizeLinear` with
//! `block_size` or as `com.microsoft.MatMulNBits`.
//!
//! The numerics live in [`crate::quant`]; this pass picks the weights, gathers calibration
//! statistics through the runtime (GPTQ, mixed precision, AWQ), and rewrites the graph (AWQ
//! puts a `Mul` by `1/s` in front of each scaled layer). Embedding
//! tables, Conv weights and Gemms with alpha or beta other than 1 always use the `DequantizeLinear`
//! form (MatMulNBits is a plain matmul);
//! Conv weights are blocked along their input channels, or, when that would put far fewer
//! weights than a block under each scale (depthwise convolutions) or with `block=0`, have one
//! scale per output channel.
//! A weight read by several nodes (layers sharing weights, an embedding table tied to the
//! output projection) is quantized once, and every reader uses the compressed form: see
//! [`shared`].

mod already_quantized;

use crate::pass::{Activation, OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use crate::passes::upgrade_opset::{UpgradeOpset, min_ir_version};
use crate::patterns::{LinearLayer, LinearOp, linear_layers, weight_readers};
use crate::quant::{self, BlockSize, GptqOptions, Hessian, HessianAccumulator, MatMulNBitsTensors, MseOptions, QdqLayout, QdqTensors, QuantConfig, QuantMetrics, QuantizedWeight, ScaleDtype};
use compactor_ir::graph::SparseTensor;
use compactor_ir::{Anchor, AttrValue, DataType, Graph, NodeId, PValue, Patch, Tensor, ValueDef, ValueId};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

mod shared;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Round to nearest (onnxruntime's MatMulNBitsQuantizer grid).
    #[default]
    Rtn,
    /// Per-block clip and zero-point search minimising reconstruction error (no data).
    Mse,
    /// Error feedback with the inverse Hessian of calibration activations.
    Gptq,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Standard ONNX: DequantizeLinear with block_size (opset 21; 2 bits: opset 25).
    #[default]
    Qdq,
    /// com.microsoft.MatMulNBits (onnxruntime's fused int4/int8 matmul).
    Matmulnbits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScaleType {
    #[default]
    F32,
    F16,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Quantize {
    /// Bits per weight: 2, 4 or 8.
    pub bits: u8,
    /// Weights per scale along the reduction axis: a power of two from 16 to 256, or 0 for one scale per output channel.
    /// Conv weights are blocked along their input channels; with far fewer input channels than a block (depthwise) they get one scale per output channel.
    pub block: usize,
    /// Symmetric (no zero points) or asymmetric (a zero point per block).
    pub symmetric: bool,
    /// Element type of the scales.
    pub scale_dtype: ScaleType,
    /// How weights are rounded.
    pub method: Method,
    /// The emitted form.
    pub format: Format,
    /// Ops whose constant weights are quantized: MatMul, Gemm, Conv, Gather (embedding tables).
    pub ops: Vec<String>,
    /// Only weights whose node or weight name matches one of these glob patterns (all when empty).
    pub include: Vec<String>,
    /// Leave weights whose node or weight name matches one of these glob patterns.
    pub exclude: Vec<String>,
    /// Leave weights with fewer elements than this.
    pub min_elements: u64,
    /// Leave the first selected layer (in execution order) in full precision.
    pub skip_first: bool,
    /// Leave the last selected layer (in execution order) in full precision.
    pub skip_last: bool,
    /// GPTQ: damping added to the Hessian diagonal, as a fraction of its mean.
    pub damp: f64,
    /// GPTQ: quantize input channels in order of decreasing activation energy (better on every model measured; see docs/benchmarks.md).
    pub act_order: bool,
    /// GPTQ: calibrate each group of layers on the model with the earlier layers already quantized (the GPTQ paper's order; a calibration run per group, slower) instead of on the original model in one run.
    pub sequential: bool,
    /// Fraction of each weight's elements (those with the largest error) kept as sparse f16 corrections; 0 disables.
    pub outliers: f64,
    /// Mixed precision: average bits per weight to spend (0 disables); the layers whose error costs most on calibration data get 8 bits.
    pub budget_bits: f64,
    /// AWQ activation-aware scaling (needs calibration data): each MatMul/Gemm weight's input channels are scaled by s = mean|x|^a before quantizing and the activation is divided by s (a Mul in front of the layer); a is searched per layer on the calibration output error of RTN (MSE with method=mse), and a = 0 (no scaling) is among the candidates. With method=gptq, GPTQ then quantizes the scaled weight against the correspondingly scaled Hessian.
    pub awq: bool,
}

impl Default for Quantize {
    fn default() -> Self {
        Quantize {
            bits: 4,
            block: 32,
            symmetric: true,
            scale_dtype: ScaleType::F32,
            method: Method::Rtn,
            format: Format::Qdq,
            ops: vec!["MatMul".into(), "Gemm".into()],
            include: Vec::new(),
            exclude: Vec::new(),
            min_elements: 1024,
            skip_first: false,
            skip_last: false,
            damp: 0.01,
            act_order: true,
            sequential: false,
            outliers: 0.0,
            budget_bits: 0.0,
            awq: false,
        }
    }
}

const OPS: [&str; 4] = ["MatMul", "Gemm", "Conv", "Gather"];

impl PassDef for Quantize {
    const NAME: &'static str = "quantize";
    const SUMMARY: &'static str = "Blockwise weight quantization (8/4/2 bits; RTN, MSE/HQQ or GPTQ; optional AWQ scaling) to DequantizeLinear or MatMulNBits";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !matches!(self.bits, 2 | 4 | 8) {
            return Err(OptionError::new("bits", format!("{} is not one of 2, 4, 8", self.bits)));
        }
        if self.block != 0 && (!self.block.is_power_of_two() || !(quant::MIN_BLOCK_SIZE..=quant::MAX_BLOCK_SIZE).contains(&self.block)) {
            return Err(OptionError::new("block", format!("{} is not a power of two from 16 to 256 (or 0 for per-channel)", self.block)));
        }
        if let Some(op) = self.ops.iter().find(|o| !OPS.contains(&o.as_str())) {
            return Err(OptionError::new("ops", format!("'{op}' is not one of {}", OPS.join(", "))));
        }
        for (option, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for p in patterns {
                glob::Pattern::new(p).map_err(|e| OptionError::new(option, format!("'{p}': {e}")))?;
            }
        }
        if !(0.0..0.5).contains(&self.damp) || self.damp == 0.0 {
            return Err(OptionError::new("damp", "must be in (0, 0.5)"));
        }
        if !(0.0..=0.1).contains(&self.outliers) {
            return Err(OptionError::new("outliers", "must be a fraction from 0 to 0.1"));
        }
        if self.budget_bits != 0.0 && !(self.bits as f64..=9.0).contains(&self.budget_bits) {
            return Err(OptionError::new("budget_bits", format!("must be 0 (off) or between {} and 9 bits per weight", self.bits)));
        }
        if self.budget_bits != 0.0 && self.bits == 8 {
            return Err(OptionError::new("budget_bits", "mixed precision promotes layers to 8 bits; use bits=2 or bits=4"));
        }
        Ok(())
    }
}

/// A quantized weight, its GPTQ loss (if GPTQ ran), the original `[K, N]` matrix, and the
/// AWQ scaling the quantized weight is stored under (if any).
type LayerResult = (QuantizedWeight, Option<f64>, Matrix, Option<Scaling>);

/// How an AWQ-scaled weight relates to the original: `W ≈ diag(inverse_scales) · dequantized`.
struct Scaling {
    inverse_scales: Vec<f32>,
    alpha: f32,
    /// `tr(ΔWᵀHΔW)` of plain quantization (α = 0), for the report.
    unscaled_output_error: f64,
}

/// A weight as the `[K, N]` f32 matrix the numerics read: a view of the model's own bytes
/// when they already are exactly that (f32, `[K, N]`, 4-byte aligned in a little-endian
/// process), else a converted copy. The view saves a copy and its page faults per weight.
enum Matrix {
    View(bytes::Bytes),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Matrix {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // Alignment and length were checked when the view was made.
            Matrix::View(raw) => bytemuck::cast_slice(raw),
            Matrix::Owned(v) => v,
        }
    }
}

/// One weight to quantize and how it maps to the `[K, N]` matrix of the numerics.
struct Target {
    /// The node that reads the weight (MatMul, Gemm, Conv or Gather).
    node: NodeId,
    op: &'static str,
    label: String,
    /// The constant at the root of the weight chain, and the nodes between it and `node`.
    weight: ValueId,
    chain: Vec<NodeId>,
    tensor: Tensor,
    /// The activation the weight multiplies; none for Gather.
    input: Option<ValueId>,
    /// How calibration reads that activation as rows of K inputs; none where the weight is not
    /// a plain product of them (embedding tables, kxk and grouped convolutions).
    rows: Option<ActivationRows>,
    /// How the stored weight maps to `[K, N]`.
    layout: QdqLayout,
    k: usize,
    n: usize,
    /// A shared weight's other readers, in execution order, each described as if it read the
    /// weight alone; `node` is the first. `chain` then holds every reader's chain and `layout`,
    /// `k` and `n` the one layout that serves them all.
    also: Vec<Target>,
}

/// How a layer's activation holds its K inputs.
#[derive(Clone, Debug, PartialEq)]
enum ActivationRows {
    /// On the last axis (MatMul, Gemm).
    LastAxis,
    /// `[B, C, spatial...]` with C = K, one row per position a 1x1 convolution reads: every
    /// `strides[i]`-th along each spatial axis.
    Channels { strides: Vec<usize> },
}

impl ActivationRows {
    /// The rows (`[rows, k]`, row-major) of one captured activation.
    fn rows<'a>(&self, shape: &[usize], data: &'a [f32], k: usize) -> Result<std::borrow::Cow<'a, [f32]>, String> {
        match self {
            ActivationRows::LastAxis if shape.last() == Some(&k) => Ok(data.into()),
            ActivationRows::Channels { strides } if shape.len() == strides.len() + 2 && shape[1] == k => {
                let spatial = &shape[2..];
                let positions: usize = spatial.iter().product();
                // Flat spatial indices of the positions read, in row-major order.
                let mut read: Vec<usize> = vec![0];
                for (&extent, &stride) in spatial.iter().zip(strides) {
                    read = read.iter().flat_map(|&base| (0..extent).step_by(stride.max(1)).map(move |i| base * extent + i)).collect();
                }
                let mut rows = Vec::with_capacity(shape[0] * read.len() * k);
                for image in data.chunks_exact(k * positions) {
                    for &p in &read {
                        rows.extend((0..k).map(|c| image[c * positions + p]));
                    }
                }
                Ok(rows.into())
            }
            ActivationRows::LastAxis => Err(format!("has shape {shape:?}, expected last dimension {k}")),
            ActivationRows::Channels { strides } => Err(format!("has shape {shape:?}, expected [batch, {k}] and {} spatial dimensions", strides.len())),
        }
    }
}

impl Target {
    /// The calibration Hessian of the layer's input, where calibration applies to it (for a
    /// shared weight, the sum over its readers').
    fn hessian<'c>(&self, calibration: &'c Calibration) -> Option<&'c Hessian> {
        if !self.also.is_empty() {
            return calibration.shared_hessians.get(&self.weight);
        }
        self.rows.as_ref().and(self.input).and_then(|x| calibration.hessians.get(&x))
    }

    /// AWQ's mean |x| per input channel of the layer's input (for a shared weight, the mean
    /// over its readers', when every reader multiplies an activation).
    fn mean_abs<'c>(&self, calibration: &'c Calibration) -> Option<&'c Vec<f32>> {
        if !self.also.is_empty() {
            return calibration.shared_mean_abs.get(&self.weight);
        }
        self.rows.as_ref().and(self.input).and_then(|x| calibration.mean_abs.get(&x))
    }

    /// This target and a shared weight's other readers.
    fn readers(&self) -> impl Iterator<Item = &Target> {
        std::iter::once(self).chain(&self.also)
    }

    fn elements(&self) -> u64 {
        (self.k * self.n) as u64
    }

    /// The weight as the `[K, N]` matrix.
    fn matrix(&self) -> Result<Matrix, PassError> {
        let (k, n) = (self.k, self.n);
        if self.tensor.dtype() == DataType::Float && cfg!(target_endian = "little") {
            let raw = self.tensor.raw_data().map_err(|e| PassError::ir(Quantize::NAME, e))?;
            if raw.len() == k * n * 4 && bytemuck::try_cast_slice::<u8, f32>(&raw).is_ok() {
                // Read in place: map the pages in one call rather than a fault per page run.
                compactor_ir::tensor::prefault(&raw);
                match self.layout {
                    QdqLayout::KN => return Ok(Matrix::View(raw)),
                    QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => return Ok(Matrix::Owned(quant::transpose(bytemuck::cast_slice(&raw), n, k))),
                    QdqLayout::Conv { .. } => {}
                }
            }
        }
        let data = self.tensor.to_f32().map_err(|e| PassError::ir(Quantize::NAME, e))?;
        Ok(Matrix::Owned(match &self.layout {
            QdqLayout::KN => data,
            // Stored [N, K].
            QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => quant::transpose(&data, n, k),
            QdqLayout::Conv { out_channels, spatial } => {
                let s: usize = spatial.iter().product();
                let mut m = vec![0.0; k * n];
                for o in 0..*out_channels {
                    for ch in 0..k {
                        for x in 0..s {
                            m[ch * n + o * s + x] = data[(o * k + ch) * s + x];
                        }
                    }
                }
                m
            }
        }))
    }
}

/// Per-layer numbers for the report.
#[derive(Serialize)]
struct LayerReport {
    name: String,
    op: &'static str,
    /// The method this layer got: `gptq` needs calibration statistics of its input, so layers
    /// without them (embedding tables, kxk and grouped convolutions) get `rtn`.
    method: &'static str,
    k: usize,
    n: usize,
    bits: u8,
    relative_error: f64,
    sqnr_db: f64,
    bits_per_weight: f64,
    bytes_before: u64,
    bytes_after: u64,
    outliers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    gptq_loss: Option<f64>,
    /// Relative output error on calibration data, `tr(ΔWᵀHΔW) / tr(WᵀHW)` (with calibration).
    #[serde(skip_serializing_if = "Option::is_none")]
    output_error: Option<f64>,
    /// AWQ: the chosen exponent, and the relative output error plain quantization would have had.
    #[serde(skip_serializing_if = "Option::is_none")]
    awq_alpha: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unscaled_output_error: Option<f64>,
    /// A shared weight's readers (all of them use the one quantized weight).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    readers: Vec<String>,
    /// Why a shared weight did not get what the options asked for (AWQ scaling, MatMulNBits).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

/// What the calibration data tells about each activation a selected layer reads.
#[derive(Default)]
struct Calibration {
    hessians: HashMap<ValueId, Hessian>,
    /// Mean |x| per input channel (only with `awq`).
    mean_abs: HashMap<ValueId, Vec<f32>>,
    /// Shared weights' statistics, by weight: see [`shared::combine_calibration`].
    shared_hessians: HashMap<ValueId, Hessian>,
    shared_mean_abs: HashMap<ValueId, Vec<f32>>,
}

#[derive(Serialize)]
struct Skipped {
    name: String,
    reason: String,
}

impl Quantize {
    fn config(&self, t: &Target, bits: u8) -> QuantConfig {
        let per_channel = self.block == 0 || matches!(t.layout, QdqLayout::ConvPerChannel { .. });
        QuantConfig {
            bits,
            block_size: if per_channel { BlockSize::PerChannel } else { BlockSize::Blocked(self.block) },
            symmetric: self.symmetric,
            scale_dtype: match self.scale_dtype {
                ScaleType::F32 => ScaleDtype::F32,
                ScaleType::F16 => ScaleDtype::F16,
            },
        }
    }

    fn matches(patterns: &[String], names: &[&str]) -> bool {
        patterns.iter().any(|p| glob::Pattern::new(p).is_ok_and(|p| names.iter().any(|n| p.matches(n))))
    }

    /// The weights this run quantizes, in execution order (of their first reader), and the ones
    /// it leaves (with why).
    fn select(&self, graph: &Graph) -> (Vec<Target>, Vec<Skipped>) {
        let uses = graph.uses();
        let mut candidates: Vec<Target> = Vec::new();
        let mut skipped = Vec::new();
        let linear: HashMap<NodeId, LinearLayer> = linear_layers(graph).into_iter().map(|l| (l.node, l)).collect();
        // The readers this pass can rewrite, by the weight they read.
        let mut by_weight: Vec<(ValueId, Vec<Target>)> = Vec::new();
        let mut index: HashMap<ValueId, usize> = HashMap::new();
        for id in graph.all_nodes() {
            let node = graph.node(id);
            let Some(&op) = OPS.iter().find(|&&op| node.is(op)) else { continue };
            if !self.ops.iter().any(|o| o == op) {
                continue;
            }
            let target = if op == "Gather" { gather_target(graph, id) } else { linear.get(&id).and_then(|l| linear_target(graph, l, self.block)) };
            let Some(target) = target else { continue };
            match index.get(&target.weight) {
                Some(&i) => by_weight[i].1.push(target),
                None => {
                    index.insert(target.weight, by_weight.len());
                    by_weight.push((target.weight, vec![target]));
                }
            }
        }
        for (weight, mut targets) in by_weight {
            let readers = weight_readers(graph, &uses, weight);
            let label = targets[0].label.clone();
            let target = if readers.readers.len() == 1 && !readers.is_output {
                targets.pop().expect("a weight's first reader")
            } else {
                match shared::group(graph, &readers, targets, &self.ops) {
                    Ok(target) => target,
                    Err(reason) => {
                        skipped.push(Skipped { name: label, reason });
                        continue;
                    }
                }
            };
            let mut names: Vec<&str> = target.readers().map(|r| r.label.as_str()).collect();
            names.push(graph.value(target.weight).name.as_str());
            let reason = if !self.include.is_empty() && !Self::matches(&self.include, &names) {
                Some("not matched by include".to_string())
            } else if Self::matches(&self.exclude, &names) {
                Some("matched by exclude".to_string())
            } else if target.elements() < self.min_elements {
                Some(format!("{} elements, fewer than min_elements", target.elements()))
            } else if !matches!(target.tensor.dtype(), DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double) {
                Some(format!("weight is {}", target.tensor.dtype()))
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(Skipped { name: target.label, reason }),
                None => candidates.push(target),
            }
        }
        skipped.extend(already_quantized::weights_left_to_their_op(graph).into_iter().map(|(name, reason)| Skipped { name, reason }));
        if self.skip_last
            && let Some(t) = candidates.pop()
        {
            skipped.push(Skipped { name: t.label, reason: "skip_last".into() });
        }
        if self.skip_first && !candidates.is_empty() {
            let t = candidates.remove(0);
            skipped.push(Skipped { name: t.label, reason: "skip_first".into() });
        }
        (candidates, skipped)
    }

    /// Hessians `(2/n) Σ xxᵀ` of each distinct activation input, from the calibration data,
    /// and (for AWQ) the mean absolute value of each input channel.
    fn calibrate(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>, targets: &[&Target]) -> Result<Calibration, PassError> {
        let mut accumulators: BTreeMap<ValueId, HessianAccumulator> = BTreeMap::new();
        let mut layouts: BTreeMap<ValueId, ActivationRows> = BTreeMap::new();
        let mut conflicting = Vec::new();
        for t in targets.iter().flat_map(|t| t.readers()) {
            if let (Some(input), Some(rows)) = (t.input, &t.rows) {
                accumulators.entry(input).or_insert_with(|| HessianAccumulator::new(t.k));
                if *layouts.entry(input).or_insert_with(|| rows.clone()) != *rows || accumulators[&input].k() != t.k {
                    conflicting.push(input);
                }
            }
        }
        // An activation read two ways (rare) gets no statistics: its layers fall back to data-free methods.
        for v in conflicting {
            accumulators.remove(&v);
        }
        if accumulators.is_empty() {
            return Ok(Calibration::default());
        }
        // Σ|x| per channel (f64, summed batch by batch in a fixed order) and the row count.
        let mut abs_sums: BTreeMap<ValueId, (Vec<f64>, usize)> = if self.awq { accumulators.iter().map(|(&v, a)| (v, (vec![0.0; a.k()], 0))).collect() } else { BTreeMap::new() };
        let model = ctx.snapshot(graph);
        let Some(calibrator) = ctx.calibrator.as_deref_mut() else {
            return Err(PassError::Missing { pass: Self::NAME.into(), what: "calibration data (method=gptq, budget_bits and awq need activations)".into() });
        };
        let values: Vec<ValueId> = accumulators.keys().copied().collect();
        let mut error = None;
        let mut sink = |v: ValueId, a: Activation<'_>| {
            let Some(acc) = accumulators.get_mut(&v) else { return };
            let k = acc.k();
            let data = match layouts[&v].rows(a.shape, a.data, k) {
                Ok(data) => data,
                Err(e) => {
                    error.get_or_insert_with(|| format!("captured '{}' {e}", graph.value(v).name));
                    return;
                }
            };
            if let Err(e) = acc.add_batch(&data, data.len() / k) {
                error.get_or_insert(e.to_string());
            }
            if let Some((sums, rows)) = abs_sums.get_mut(&v) {
                for row in data.chunks_exact(k) {
                    for (s, &x) in sums.iter_mut().zip(row) {
                        *s += x.abs() as f64;
                    }
                }
                *rows += data.len() / k;
            }
        };
        ctx.progress.begin("calibrating", calibrator.batches() as u64);
        let result = calibrator.capture(&model, &values, ctx.progress, &mut sink);
        ctx.progress.end();
        result.map_err(|e| PassError::failed(Self::NAME, "calibration", e))?;
        if let Some(e) = error {
            return Err(PassError::failed(Self::NAME, "calibration", e));
        }
        let hessians = accumulators
            .into_iter()
            .map(|(v, acc)| acc.hessian().map(|h| (v, h)).map_err(|e| PassError::failed(Self::NAME, format!("calibration of '{}'", graph.value(v).name), e.to_string())))
            .collect::<Result<_, _>>()?;
        let mean_abs = abs_sums.into_iter().map(|(v, (sums, rows))| (v, sums.iter().map(|&s| (s / rows.max(1) as f64) as f32).collect())).collect();
        let mut calibration = Calibration { hessians, mean_abs, ..Default::default() };
        shared::combine_calibration(&mut calibration, targets)?;
        Ok(calibration)
    }

    fn quantize_weight(&self, t: &Target, w: &[f32], bits: u8, hessian: Option<&Hessian>) -> Result<(QuantizedWeight, Option<f64>), PassError> {
        let fail = |e: quant::QuantError| PassError::failed(Self::NAME, t.label.clone(), e.to_string());
        let config = self.config(t, bits);
        let (mut q, loss) = match (self.method, hessian) {
            (Method::Gptq, Some(h)) => {
                let r = quant::quantize_gptq(w, t.k, t.n, &config, h, &self.gptq_options()).map_err(fail)?;
                (r.weight, Some(r.loss))
            }
            (Method::Mse, _) => (quant::quantize_mse(w, t.k, t.n, &config, &MseOptions::default()).map_err(fail)?, None),
            // GPTQ on a weight without activations (embedding tables, Conv) falls back to RTN.
            _ => (quant::quantize_rtn(w, t.k, t.n, &config).map_err(fail)?, None),
        };
        if self.outliers > 0.0 {
            q.add_top_outliers(w, self.outlier_count(t)).map_err(fail)?;
        }
        Ok((q, loss))
    }

    fn gptq_options(&self) -> GptqOptions {
        GptqOptions { percdamp: self.damp, act_order: self.act_order, ..Default::default() }
    }

    /// How many sparse corrections `outliers` buys a weight.
    fn outlier_count(&self, t: &Target) -> usize {
        (self.outliers * (t.k * t.n) as f64).round() as usize
    }
}

impl Quantize {
    /// AWQ: the scaled weight with the exponent that gives the smallest output error (and its
    /// GPTQ loss with method=gptq).
    fn quantize_scaled(&self, t: &Target, w: &[f32], hessian: &Hessian, mean_abs: &[f32]) -> Result<(QuantizedWeight, Option<f64>, Scaling), PassError> {
        let fail = |e: quant::QuantError| PassError::failed(Self::NAME, t.label.clone(), e.to_string());
        let config = self.config(t, self.bits);
        let quantize = |scaled: &[f32]| match self.method {
            Method::Mse => quant::quantize_mse(scaled, t.k, t.n, &config, &MseOptions::default()),
            _ => quant::quantize_rtn(scaled, t.k, t.n, &config),
        };
        let r = quant::search_awq_scales(w, t.k, t.n, mean_abs, hessian, quantize).map_err(fail)?;
        let scaled = || -> Vec<f32> { w.chunks_exact(t.n).zip(&r.scales).flat_map(|(row, &s)| row.iter().map(move |&v| v * s)).collect() };
        let (mut q, loss) = if self.method == Method::Gptq {
            // The scaled layer sees x/s: its Hessian is diag(1/s) H diag(1/s).
            let k = t.k;
            let inv = &r.inverse_scales;
            let data: Vec<f64> = (0..k * k).map(|i| hessian.get(i / k, i % k) * inv[i / k] as f64 * inv[i % k] as f64).collect();
            let scaled_hessian = Hessian::from_matrix(k, data).map_err(fail)?;
            let g = quant::quantize_gptq(&scaled(), t.k, t.n, &config, &scaled_hessian, &self.gptq_options()).map_err(fail)?;
            (g.weight, Some(g.loss))
        } else {
            (r.weight, None)
        };
        if self.outliers > 0.0 {
            // Outliers of the stored (scaled) weight; they are scaled back with the rest.
            q.add_top_outliers(&scaled(), self.outlier_count(t)).map_err(fail)?;
        }
        Ok((q, loss, Scaling { inverse_scales: r.inverse_scales, alpha: r.alpha, unscaled_output_error: r.unscaled_output_error }))
    }
}

/// `tr(ΔWᵀ H ΔW) / tr(Wᵀ H W)`: the relative output error on the calibration data.
fn output_error(w: &[f32], w_hat: &[f32], n: usize, h: &Hessian) -> f64 {
    let delta: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    let signal = h.quadratic_form(w, n);
    if signal > 0.0 { h.quadratic_form(&delta, n) / signal } else { 0.0 }
}

/// Whether a Conv weight `[O, C, spatial...]` gets one scale per output channel rather than
/// blocks along C. Blocks along C hold min(C, block) weights; a scale per output channel holds
/// the whole C·S reduction. With fewer channels than a block, take whichever is nearer a
/// block's worth (by ratio): per output channel for depthwise weights (C = 1), which would
/// otherwise get a scale per weight, and for a first layer over 3 channels.
fn conv_per_output_channel(dims: &[usize], block: usize) -> bool {
    let (c, whole) = (dims[1], dims[1..].iter().product::<usize>());
    block == 0 || (c < block && (whole <= block || whole * c < block * block))
}

/// `block` is the pass's block size (0: per channel), which decides a Conv weight's layout.
fn linear_target(graph: &Graph, layer: &LinearLayer, block: usize) -> Option<Target> {
    if layer.weight.is_quantized() {
        return None;
    }
    let (op, layout) = match layer.op {
        LinearOp::MatMul => ("MatMul", if layer.weight.transposed { QdqLayout::NK } else { QdqLayout::KN }),
        LinearOp::Gemm => ("Gemm", if layer.weight.transposed { QdqLayout::NK } else { QdqLayout::KN }),
        LinearOp::Conv => {
            let dims: Vec<usize> = layer.weight.tensor.dims().iter().map(|&d| d as usize).collect();
            if conv_per_output_channel(&dims, block) {
                ("Conv", QdqLayout::ConvPerChannel { dims })
            } else {
                ("Conv", QdqLayout::Conv { out_channels: dims[0], spatial: dims[2..].to_vec() })
            }
        }
    };
    let (k, n) = match &layout {
        QdqLayout::Conv { out_channels, spatial } => (layer.weight.tensor.dims()[1] as usize, out_channels * spatial.iter().product::<usize>()),
        QdqLayout::ConvPerChannel { dims } => (dims[1..].iter().product(), dims[0]),
        _ => (layer.in_features as usize, layer.out_features as usize),
    };
    let node = graph.node(layer.node);
    let rows = match layer.op {
        // (`linear_layers` takes Gemms without transA only: their activation is [M, K].)
        LinearOp::MatMul | LinearOp::Gemm => Some(ActivationRows::LastAxis),
        LinearOp::Conv => {
            // A 1x1 convolution over all channels, without padding, is a product over the channels
            // at the positions it reads; others mix positions (or groups) into the reduction.
            let dims = layer.weight.tensor.dims();
            let spatial = dims.len() - 2;
            let ones = |name: &str, default: i64| node.attr_ints(name).is_none_or(|v| v.iter().all(|&x| x == default));
            let pointwise = dims[2..].iter().all(|&d| d == 1)
                && node.attr_int("group").unwrap_or(1) == 1
                && ones("pads", 0)
                && node.attr_string("auto_pad").is_none_or(|p| p == "NOTSET" || p == "VALID");
            let strides = node.attr_ints("strides").map(|v| v.iter().map(|&x| x.max(1) as usize).collect()).unwrap_or_else(|| vec![1; spatial]);
            (pointwise && strides.len() == spatial).then_some(ActivationRows::Channels { strides })
        }
    };
    Some(Target {
        node: layer.node,
        op,
        label: layer.label(graph),
        weight: layer.weight.value,
        chain: layer.weight.chain.iter().map(|(n, _)| *n).collect(),
        tensor: layer.weight.tensor.clone(),
        input: Some(layer.input),
        rows,
        layout,
        k,
        n,
        also: Vec::new(),
    })
}

/// An embedding lookup `Gather(table [V, D], ids)` on axis 0 with a constant table.
fn gather_target(graph: &Graph, node: NodeId) -> Option<Target> {
    let n = graph.node(node);
    if n.attr_int("axis").unwrap_or(0) != 0 {
        return None;
    }
    let table = n.input(0)?;
    let tensor = graph.constant(table)?;
    let &[v, d] = tensor.dims() else { return None };
    Some(Target {
        node,
        op: "Gather",
        label: n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| graph.value(table).name.clone()),
        weight: table,
        chain: Vec::new(),
        tensor,
        input: None,
        rows: None,
        layout: QdqLayout::NK,
        k: d as usize,
        n: v as usize,
        also: Vec::new(),
    })
}

fn ir(e: compactor_ir::IrError) -> PassError {
    PassError::ir(Quantize::NAME, e)
}

fn scale_tensor(values: &[f32], dtype: ScaleDtype, dims: &[usize]) -> Result<Tensor, PassError> {
    let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    let data_type = match dtype {
        ScaleDtype::F32 => DataType::Float,
        ScaleDtype::F16 => DataType::Float16,
    };
    Tensor::from_raw(data_type, &dims, quant::scales_raw(values, dtype).into()).map_err(ir)
}

/// The sparse f16 correction of a weight's outliers, laid out like the op reads the weight.
fn outlier_tensor(q: &QuantizedWeight, layout: &QdqLayout) -> Result<Option<SparseTensor>, PassError> {
    if q.outliers.is_empty() {
        return Ok(None);
    }
    let shape: Vec<i64> = match layout {
        QdqLayout::KN => vec![q.k as i64, q.n as i64],
        QdqLayout::NK => vec![q.n as i64, q.k as i64],
        QdqLayout::ConvPerChannel { dims } => dims.iter().map(|&d| d as i64).collect(),
        QdqLayout::Conv { out_channels, spatial } => [*out_channels, q.k].iter().chain(spatial).map(|&d| d as i64).collect(),
    };
    // The outlier's position in the tensor as the op reads it: [K, N]; [N, K] flattened; or
    // [O, C, spatial] with K = C and column n = o·S + s.
    let flat = |row: usize, col: usize| match layout {
        QdqLayout::KN => row * q.n + col,
        QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => col * q.k + row,
        QdqLayout::Conv { spatial, .. } => {
            let s: usize = spatial.iter().product();
            ((col / s) * q.k + row) * s + col % s
        }
    };
    let mut entries: Vec<(i64, half::f16)> = q.outliers.iter().map(|o| (flat(o.row as usize, o.col as usize) as i64, o.delta)).collect();
    entries.sort_by_key(|e| e.0);
    let count = entries.len() as u64;
    let values = Tensor::from_raw(DataType::Float16, &[count], entries.iter().flat_map(|e| e.1.to_le_bytes()).collect::<Vec<u8>>().into()).map_err(ir)?;
    let indices = Tensor::from_i64(&[count], &entries.iter().map(|e| e.0).collect::<Vec<_>>()).map_err(ir)?;
    Ok(Some(SparseTensor { values: Some(values), indices: Some(indices), dims: shape }))
}

/// Emits `DequantizeLinear` for the weight (plus a Cast from f16 scales and the outlier
/// correction) and returns the value that now feeds the op.
fn emit_dequantize(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, layout: &QdqLayout, packed: QdqTensors) -> Result<PValue, PassError> {
    let region = graph.node(t.node).region;
    let base = graph.value(t.weight).name.clone();
    let dims: Vec<u64> = packed.shape.iter().map(|&d| d as u64).collect();
    let qv = patch.new_initializer(region, &format!("{base}_q"), Tensor::from_raw(packed.dtype, &dims, packed.quantized.into()).map_err(ir)?);
    let sv = patch.new_initializer(region, &format!("{base}_scale"), scale_tensor(&packed.scales, packed.scale_dtype, &packed.scale_shape)?);
    let scale_dims: Vec<u64> = packed.scale_shape.iter().map(|&d| d as u64).collect();
    let zv = match packed.zero_points {
        Some(zp) => Some(patch.new_initializer(region, &format!("{base}_zero_point"), Tensor::from_raw(packed.dtype, &scale_dims, zp.into()).map_err(ir)?)),
        None => None,
    };
    let mut out = patch.new_value(region, &format!("{base}_dequantized"), None);
    let mut dq = patch.node("DequantizeLinear", Anchor::Before(t.node)).name(format!("{}/DequantizeLinear", t.label)).input(qv).input(sv);
    if let Some(z) = zv {
        dq = dq.input(z);
    }
    dq.output(out).attr("axis", AttrValue::Int(packed.axis)).attr("block_size", AttrValue::Int(packed.block_size as i64)).add();
    // The op gets the weight in the element type it read before (the end of the old chain).
    let index = if t.op == "Gather" { 0 } else { 1 };
    let wanted = graph.node(t.node).input(index).and_then(|v| graph.value(v).elem()).unwrap_or(t.tensor.dtype());
    let scale_type = match packed.scale_dtype {
        ScaleDtype::F32 => DataType::Float,
        ScaleDtype::F16 => DataType::Float16,
    };
    if scale_type != wanted {
        let cast = patch.new_value(region, &format!("{base}_dequantized_{wanted}"), None);
        patch.node("Cast", Anchor::Before(t.node)).input(out).output(cast).attr("to", AttrValue::Int(wanted.code() as i64)).add();
        out = cast;
    }
    if let Some(sparse) = outlier_tensor(q, layout)? {
        let delta = patch.new_sparse_initializer(region, &format!("{base}_outliers"), sparse);
        let delta_cast = patch.new_value(region, &format!("{base}_outliers_{wanted}"), None);
        patch.node("Cast", Anchor::Before(t.node)).input(delta).output(delta_cast).attr("to", AttrValue::Int(wanted.code() as i64)).add();
        let corrected = patch.new_value(region, &format!("{base}_corrected"), None);
        patch.node("Add", Anchor::Before(t.node)).input(out).input(delta_cast).output(corrected).add();
        out = corrected;
    }
    Ok(out)
}

/// The initializers of a weight in `MatMulNBits` form, which every reader of the weight uses.
struct NBitsWeight {
    b: PValue,
    scales: PValue,
    zero_points: Option<PValue>,
    k: usize,
    n: usize,
    bits: u8,
    block_size: usize,
    /// The sparse outlier correction, until the first reader makes it a dense f32 value.
    outliers: Option<SparseTensor>,
    outliers_f32: Option<PValue>,
}

fn nbits_initializers(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, packed: MatMulNBitsTensors) -> Result<NBitsWeight, PassError> {
    let region = graph.node(t.node).region;
    let base = graph.value(t.weight).name.clone();
    let b = patch.new_initializer(region, &format!("{base}_nbits"), Tensor::from_raw(DataType::Uint8, &packed.b_shape.map(|d| d as u64), packed.b.into()).map_err(ir)?);
    let scales = patch.new_initializer(region, &format!("{base}_scales"), scale_tensor(&packed.scales, packed.scale_dtype, &[packed.scales.len()])?);
    let zero_points = match packed.zero_points {
        Some(z) => {
            let len = z.len() as u64;
            Some(patch.new_initializer(region, &format!("{base}_zero_points"), Tensor::from_raw(DataType::Uint8, &[len], z.into()).map_err(ir)?))
        }
        None => None,
    };
    let outliers = outlier_tensor(q, &QdqLayout::KN)?;
    Ok(NBitsWeight { b, scales, zero_points, k: packed.k, n: packed.n, bits: packed.bits, block_size: packed.block_size, outliers, outliers_f32: None })
}

/// Replaces a MatMul / Gemm by `MatMulNBits` reading `w` (plus the bias Add of a Gemm and the outlier branch).
fn emit_matmul_nbits(graph: &Graph, patch: &mut Patch, t: &Target, w: &mut NBitsWeight, activation: Option<PValue>) -> Result<(), PassError> {
    let node = graph.node(t.node);
    let region = node.region;
    let base = graph.value(t.weight).name.clone();
    let x = activation.unwrap_or_else(|| PValue::Existing(t.input.expect("linear layers have an input")));
    let y = node.output(0).ok_or_else(|| PassError::failed(Quantize::NAME, t.label.clone(), "has no output"))?;
    let bias = if t.op == "Gemm" { node.input(2) } else { None };
    let has_outliers = w.outliers.is_some() || w.outliers_f32.is_some();
    // The last node of the replacement produces the op's output value (keeping its name).
    let direct = bias.is_none() && !has_outliers;
    let mm_out = if direct { PValue::Existing(y) } else { patch.new_value(region, &format!("{base}_matmul"), None) };
    let mut mm = patch.node("MatMulNBits", Anchor::Before(t.node)).domain("com.microsoft").name(t.label.clone()).input(x).input(w.b).input(w.scales);
    if let Some(z) = w.zero_points {
        mm = mm.input(z);
    }
    mm.output(mm_out)
        .attr("K", AttrValue::Int(w.k as i64))
        .attr("N", AttrValue::Int(w.n as i64))
        .attr("bits", AttrValue::Int(w.bits as i64))
        .attr("block_size", AttrValue::Int(w.block_size as i64))
        .add();
    let mut acc = mm_out;
    if has_outliers {
        let delta_f32 = match (w.outliers_f32, w.outliers.take()) {
            (Some(v), _) => v,
            (None, Some(sparse)) => {
                let delta = patch.new_sparse_initializer(region, &format!("{base}_outliers"), sparse);
                let delta_f32 = patch.new_value(region, &format!("{base}_outliers_f32"), None);
                patch.node("Cast", Anchor::Before(t.node)).input(delta).output(delta_f32).attr("to", AttrValue::Int(DataType::Float as i64)).add();
                w.outliers_f32 = Some(delta_f32);
                delta_f32
            }
            (None, None) => unreachable!("has_outliers"),
        };
        let extra = patch.new_value(region, &format!("{base}_outlier_product"), None);
        patch.node("MatMul", Anchor::Before(t.node)).input(x).input(delta_f32).output(extra).add();
        let sum = if bias.is_none() { PValue::Existing(y) } else { patch.new_value(region, &format!("{base}_with_outliers"), None) };
        patch.node("Add", Anchor::Before(t.node)).input(acc).input(extra).output(sum).add();
        acc = sum;
    }
    if let Some(c) = bias {
        patch.node("Add", Anchor::Before(t.node)).input(acc).input(c).output(PValue::Existing(y)).add();
    }
    patch.remove_node(t.node);
    Ok(())
}

/// A weight's quantized tensors in the form its layer takes.
enum Packed {
    NBits(MatMulNBitsTensors),
    /// The chain (Transpose, Cast) goes away: the op reads the dequantized weight in the layout
    /// it expects itself: `[K, N]` for MatMul, per transB for Gemm, the original layout for
    /// Conv and Gather.
    Qdq(QdqTensors, QdqLayout),
}

/// Packs a quantized weight (independent of the other layers, so it runs in parallel).
fn pack(graph: &Graph, t: &Target, q: &QuantizedWeight, as_nbits: bool) -> Result<Packed, PassError> {
    let fail = |e: quant::QuantError| PassError::failed(Quantize::NAME, t.label.clone(), e.to_string());
    if as_nbits {
        return Ok(Packed::NBits(quant::pack_matmul_nbits(q).map_err(fail)?));
    }
    let layout = if t.also.is_empty() { reads_layout(graph, t) } else { shared::stored_layout(graph, t) };
    Ok(Packed::Qdq(quant::pack_qdq_as(q, &layout).map_err(fail)?, layout))
}

/// The layout in which a reader reads the dequantized weight: `[K, N]` for MatMul, per transB
/// for Gemm, the original layout for Conv and Gather.
fn reads_layout(graph: &Graph, t: &Target) -> QdqLayout {
    match t.op {
        "MatMul" => QdqLayout::KN,
        "Gemm" if graph.node(t.node).attr_int("transB").unwrap_or(0) != 0 => QdqLayout::NK,
        "Gemm" => QdqLayout::KN,
        _ => t.layout.clone(),
    }
}

/// AWQ: the `1/s` vector of a layer's input channels, as an initializer of the activation's type.
fn awq_inverse_scales(graph: &Graph, patch: &mut Patch, t: &Target, scaling: &Scaling) -> Result<Option<PValue>, PassError> {
    let Some(x) = t.input else { return Ok(None) };
    let region = graph.node(t.node).region;
    let elem = graph.value(x).elem().unwrap_or(DataType::Float);
    // Per input channel: the last axis of a matmul's activation, axis 1 of a 1x1 Conv's.
    let spatial = if t.op == "Conv" { t.tensor.dims().len() - 2 } else { 0 };
    let dims: Vec<u64> = std::iter::once(t.k as u64).chain(std::iter::repeat_n(1, spatial)).collect();
    let tensor = match elem {
        DataType::Float => Tensor::from_f32(&dims, &scaling.inverse_scales).map_err(ir)?,
        DataType::Float16 => {
            let raw: Vec<u8> = scaling.inverse_scales.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            Tensor::from_raw(DataType::Float16, &dims, raw.into()).map_err(ir)?
        }
        other => return Err(PassError::failed(Quantize::NAME, t.label.clone(), format!("awq scales a float or float16 activation, not {other}"))),
    };
    let base = graph.value(t.weight).name.clone();
    Ok(Some(patch.new_initializer(region, &format!("{base}_awq_inverse_scale"), tensor)))
}

/// AWQ: `x * (1/s)` in front of a layer, for it to read instead of `x`.
fn awq_scaled_input(graph: &Graph, patch: &mut Patch, t: &Target, inverse: PValue) -> Option<PValue> {
    let x = t.input?;
    let region = graph.node(t.node).region;
    let scaled = patch.new_value(region, &format!("{}_awq_scaled", graph.value(x).name), None);
    patch.node("Mul", Anchor::Before(t.node)).name(format!("{}/AwqScale", t.label)).input(x).input(inverse).output(scaled).add();
    Some(scaled)
}

/// Removes the weight, and the chain between it and its readers.
fn remove_weight(graph: &Graph, patch: &mut Patch, t: &Target) {
    for &n in &t.chain {
        patch.remove_node(n);
    }
    // The weight is an initializer or the output of a Constant node, which goes with it.
    match graph.value(t.weight).def {
        ValueDef::Node { node, .. } => patch.remove_node(node),
        _ => patch.remove_value(t.weight),
    }
}

/// Replaces the weight by its quantized form in the layer, removing the old chain and weight.
fn emit(graph: &Graph, patch: &mut Patch, t: &Target, q: &QuantizedWeight, packed: Packed, scaling: Option<&Scaling>) -> Result<(), PassError> {
    if !t.also.is_empty() {
        return shared::emit(graph, patch, t, q, packed, scaling);
    }
    // AWQ: the layer reads `x * (1/s)` instead of `x`.
    let activation = match scaling {
        Some(scaling) => awq_inverse_scales(graph, patch, t, scaling)?.and_then(|inverse| awq_scaled_input(graph, patch, t, inverse)),
        None => None,
    };
    match packed {
        Packed::NBits(tensors) => {
            let mut weight = nbits_initializers(graph, patch, t, q, tensors)?;
            emit_matmul_nbits(graph, patch, t, &mut weight, activation)?
        }
        Packed::Qdq(tensors, layout) => {
            if let Some(scaled) = activation {
                patch.set_input(t.node, 0, Some(scaled));
            }
            let dequantized = emit_dequantize(graph, patch, t, q, &layout, tensors)?;
            let index = if t.op == "Gather" { 0 } else { 1 };
            patch.set_input(t.node, index, Some(dequantized));
        }
    }
    remove_weight(graph, patch, t);
    Ok(())
}

/// `‖W − W_hat‖_F / ‖W‖_F`, with [`QuantMetrics`]' conventions: 0 for an exact reconstruction,
/// infinite for any error on an all-zero W.
fn relative_error(w: &[f32], w_hat: &[f32]) -> f64 {
    let signal: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
    let noise: f64 = w.iter().zip(w_hat).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    if signal > 0.0 { (noise / signal).sqrt() } else if noise > 0.0 { f64::INFINITY } else { 0.0 }
}

/// What a layer computes with: the dequantized weight, times `1/s` per input channel under AWQ.
fn effective_weight(q: &QuantizedWeight, scaling: Option<&Scaling>) -> Vec<f32> {
    let mut w_hat = q.dequantize();
    if let Some(scaling) = scaling {
        for (row, &inv) in w_hat.chunks_exact_mut(q.n.max(1)).zip(&scaling.inverse_scales) {
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
    w_hat
}

fn layer_report(t: &Target, method: Method, q: &QuantizedWeight, gptq_loss: Option<f64>, w: &[f32], hessian: Option<&Hessian>, scaling: Option<&Scaling>) -> LayerReport {
    let mut report = LayerReport {
        name: t.label.clone(),
        op: t.op,
        method: match (method, gptq_loss) {
            (_, Some(_)) => "gptq",
            (Method::Mse, None) => "mse",
            _ => "rtn",
        },
        k: t.k,
        n: t.n,
        bits: q.config.bits,
        relative_error: 0.0,
        sqnr_db: 0.0,
        bits_per_weight: 0.0,
        bytes_before: t.tensor.data_bytes(),
        bytes_after: 0,
        outliers: q.outliers.len(),
        gptq_loss,
        output_error: None,
        awq_alpha: None,
        unscaled_output_error: None,
        readers: if t.also.is_empty() { Vec::new() } else { t.readers().map(|r| r.label.clone()).collect() },
        notes: Vec::new(),
    };
    match scaling {
        None => {
            let m = QuantMetrics::new(w, q);
            (report.relative_error, report.sqnr_db, report.bits_per_weight, report.bytes_after) = (m.relative_frobenius_error, m.sqnr_db, m.bits_per_weight, m.bytes_after);
            report.output_error = hessian.map(|h| output_error(w, &q.dequantize(), t.n, h));
        }
        Some(scaling) => {
            // The stored weight is the scaled one: measure what the layer computes,
            // `diag(1/s) W_hat`, against the original, and count the `1/s` vector as storage
            // (as f32; half that for float16 activations).
            let effective = effective_weight(q, Some(scaling));
            report.relative_error = relative_error(w, &effective);
            report.sqnr_db = -20.0 * report.relative_error.log10();
            let (bits_per_weight, bytes_after) = QuantMetrics::storage(q);
            let extra_bits = 32 * t.k as u64;
            report.bits_per_weight = bits_per_weight + extra_bits as f64 / (t.k * t.n) as f64;
            report.bytes_after = bytes_after + extra_bits / 8;
            report.awq_alpha = Some(scaling.alpha);
            if let Some(h) = hessian {
                let reference = h.quadratic_form(w, t.n);
                let relative = |e: f64| if reference > 0.0 { e / reference } else { 0.0 };
                report.output_error = Some(output_error(w, &effective, t.n, h));
                report.unscaled_output_error = Some(relative(scaling.unscaled_output_error));
            }
        }
    }
    report
}

impl Pass for Quantize {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let (targets, skipped) = self.select(graph);
        if targets.is_empty() {
            return Ok(PassOutcome::unchanged("no weights selected").with_details(serde_json::json!({ "skipped": skipped })));
        }
        // Which form each target takes. MatMulNBits is a plain product `x · W (+ b)`: a Gemm
        // with alpha or beta takes the DequantizeLinear form (like Conv and Gather), and
        // the scales must have the activation's type (an error: the user chose both).
        let plain = |t: &Target| -> bool {
            let n = graph.node(t.node);
            t.op == "MatMul" || (t.op == "Gemm" && n.attr_float("alpha").unwrap_or(1.0) == 1.0 && n.attr_float("beta").unwrap_or(1.0) == 1.0 && n.attr_int("transA").unwrap_or(0) == 0)
        };
        let scale_matches = |t: &Target| -> bool {
            let activation = t.input.and_then(|x| graph.value(x).elem());
            match self.scale_dtype {
                ScaleType::F32 => activation == Some(DataType::Float),
                ScaleType::F16 => activation == Some(DataType::Float16),
            }
        };
        // A shared weight takes MatMulNBits only if all its readers can: they share one packed form.
        let wants_nbits = |t: &Target| self.format == Format::Matmulnbits && t.readers().all(|r| plain(r) && scale_matches(r));
        if self.format == Format::Matmulnbits
            && let Some(t) = targets.iter().find(|t| plain(t) && !scale_matches(t))
        {
            let activation = t.input.and_then(|x| graph.value(x).elem()).map(|d| d.to_string()).unwrap_or_else(|| "unknown".into());
            return Err(PassError::failed(Self::NAME, t.label.clone(), format!("MatMulNBits needs scales of the activation's type ({activation}), not {:?}; use scale_dtype to match, or format=qdq", self.scale_dtype)));
        }
        let nbits: Vec<bool> = targets.iter().map(wants_nbits).collect();
        let needs_qdq = nbits.iter().any(|&n| !n);
        let min_opset = if self.bits == 2 { 25 } else { 21 };
        let mut upgrade_summary = None;
        if needs_qdq && ctx.opset("").unwrap_or(0) < min_opset {
            let outcome = UpgradeOpset { version: min_opset }.run(graph, ctx)?;
            upgrade_summary = Some(outcome.summary);
        }

        let needs_calibration = self.method == Method::Gptq || self.budget_bits > 0.0 || self.awq;
        // GPTQ goes stage by stage (the layers reading one activation form a stage), each
        // calibrated on the graph with the earlier stages already quantized; otherwise one stage.
        let stages: Vec<Vec<usize>> = if self.method == Method::Gptq && self.sequential && self.budget_bits == 0.0 {
            let mut by_input: Vec<(Option<ValueId>, Vec<usize>)> = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                match by_input.iter_mut().find(|(input, _)| *input == t.input) {
                    Some((_, members)) => members.push(i),
                    None => by_input.push((t.input, vec![i])),
                }
            }
            by_input.into_iter().map(|(_, members)| members).collect()
        } else {
            vec![(0..targets.len()).collect()]
        };
        let mut layers: Vec<Option<LayerReport>> = (0..targets.len()).map(|_| None).collect();
        for (stage_number, stage) in stages.iter().enumerate() {
            let members: Vec<&Target> = stage.iter().map(|&i| &targets[i]).collect();
            let calibration = if needs_calibration { self.calibrate(graph, ctx, &members)? } else { Calibration::default() };
            let label = if stages.len() > 1 { format!("quantizing stage {}/{}", stage_number + 1, stages.len()) } else { "quantizing".to_string() };
            ctx.progress.begin(&label, members.len() as u64 * if self.budget_bits > 0.0 { 2 } else { 1 });
            // Layers are independent: quantize them in parallel (each result only depends on its
            // own weight and Hessian, so the output does not depend on the thread count).
            let progress = ctx.progress;
            // Packing and the error metrics are per layer too: without a budget to spend they
            // run in the same task, while the layer's codes are still in cache; with one, after
            // the budget has picked each layer's final form.
            let frozen: &Graph = graph;
            let finish = |i: usize, (q, loss, w, scaling): &LayerResult| -> Result<(Packed, LayerReport), PassError> {
                let t = &targets[i];
                let hessian = t.hessian(&calibration);
                let mut report = layer_report(t, self.method, q, *loss, w, hessian, scaling.as_ref());
                report.notes = shared::notes(frozen, t, self.awq, self.format == Format::Matmulnbits, scaling.is_some(), nbits[i]);
                Ok((pack(frozen, t, q, nbits[i])?, report))
            };
            let fused = self.budget_bits == 0.0;
            let (mut results, finished): (Vec<LayerResult>, Vec<Option<(Packed, LayerReport)>>) = stage
                .par_iter()
                .map(|&i| {
                    let t = &targets[i];
                    let w = t.matrix()?;
                    let hessian = t.hessian(&calibration);
                    let mean_abs = t.mean_abs(&calibration);
                    let result = match (hessian, mean_abs) {
                        (Some(h), Some(m)) => {
                            let (q, loss, scaling) = self.quantize_scaled(t, &w, h, m)?;
                            (q, loss, w, Some(scaling))
                        }
                        _ => {
                            let (q, loss) = self.quantize_weight(t, &w, self.bits, hessian)?;
                            (q, loss, w, None)
                        }
                    };
                    let finished = if fused { Some(finish(i, &result)?) } else { None };
                    progress.advance(1);
                    Ok((result, finished))
                })
                .collect::<Result<Vec<_>, PassError>>()?
                .into_iter()
                .unzip();
            if !fused {
                self.apply_budget(ctx, &members, &calibration, &mut results)?;
            }
            ctx.progress.end();
            let packed: Vec<(Packed, LayerReport)> = if fused {
                finished.into_iter().map(|f| f.expect("fused layers are finished")).collect()
            } else {
                stage.par_iter().zip(&results).map(|(&i, result)| finish(i, result)).collect::<Result<_, PassError>>()?
            };
            let mut patch = Patch::new();
            for ((&i, (q, _, _, scaling)), (tensors, report)) in stage.iter().zip(&results).zip(packed) {
                emit(graph, &mut patch, &targets[i], q, tensors, scaling.as_ref())?;
                layers[i] = Some(report);
            }
            graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        }
        let layers: Vec<LayerReport> = layers.into_iter().flatten().collect();
        if nbits.iter().any(|&n| n) {
            ctx.set_opset("com.microsoft", ctx.opset("com.microsoft").unwrap_or(1).max(1));
        }
        if needs_qdq {
            ctx.require_ir_version(min_ir_version(min_opset));
        }

        let before: u64 = layers.iter().map(|l| l.bytes_before).sum();
        let after: u64 = layers.iter().map(|l| l.bytes_after).sum();
        let params: usize = layers.iter().map(|l| l.k * l.n).sum();
        let mean_sqnr = layers.iter().map(|l| l.sqnr_db.min(200.0)).sum::<f64>() / layers.len() as f64;
        let summary = format!(
            "quantized {} weights ({:.2}M params) to {} bits ({:?}{}, {:?}): {:.1} KiB -> {:.1} KiB, mean SQNR {:.1} dB{}",
            layers.len(),
            params as f64 / 1e6,
            self.bits,
            self.method,
            if self.awq { format!(", AWQ-scaled {} of them", layers.iter().filter(|l| l.awq_alpha.is_some()).count()) } else { String::new() },
            self.format,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            mean_sqnr,
            upgrade_summary.map(|s| format!("; {s}")).unwrap_or_default()
        );
        Ok(PassOutcome::changed(summary).with_details(serde_json::json!({ "layers": layers, "skipped": skipped })))
    }
}

impl Quantize {
    /// Mixed precision: starting from `bits` everywhere, promotes to 8 bits the layers whose
    /// output error drops most per extra byte, while the average stays within `budget_bits`.
    fn apply_budget(&self, ctx: &mut PassCtx<'_, '_>, targets: &[&Target], calibration: &Calibration, results: &mut [LayerResult]) -> Result<(), PassError> {
        let total_weights: f64 = targets.iter().map(|t| t.elements() as f64).sum();
        // Storage bits of a layer, counting an AWQ layer's `1/s` vector.
        let bits_of = |q: &QuantizedWeight, scaling: Option<&Scaling>| QuantMetrics::storage(q).0 * (q.k * q.n) as f64 + scaling.map_or(0.0, |s| 32.0 * s.inverse_scales.len() as f64);
        let mut spent: f64 = results.iter().map(|(q, _, _, scaling)| bits_of(q, scaling.as_ref())).sum();
        let mut options = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let (low, _, w, scaling) = &results[i];
            // 8 bits needs no AWQ scaling: the promoted layer is the plain 8-bit weight.
            let (high, loss) = self.quantize_weight(t, w, 8, t.hessian(calibration))?;
            ctx.progress.advance(1);
            // Error weighted by the activations when there are any, by the weights otherwise.
            let error = |q: &QuantizedWeight, scaling: Option<&Scaling>| {
                let w_hat = effective_weight(q, scaling);
                match t.hessian(calibration) {
                    Some(h) => output_error(w, &w_hat, t.n, h),
                    None => relative_error(w, &w_hat).powi(2),
                }
            };
            let gain = error(low, scaling.as_ref()) - error(&high, None);
            let cost = bits_of(&high, None) - bits_of(low, scaling.as_ref());
            options.push((gain / cost.max(1.0), i, high, loss, cost));
        }
        options.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i, high, loss, cost) in options {
            if (spent + cost) / total_weights > self.budget_bits {
                continue;
            }
            spent += cost;
            results[i].0 = high;
            results[i].1 = loss;
            results[i].3 = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tensor: Tensor, layout: QdqLayout, k: usize, n: usize) -> Target {
        Target { node: NodeId(0), op: "MatMul", label: "w".into(), weight: ValueId(0), chain: vec![], tensor, input: None, rows: None, layout, k, n, also: vec![] }
    }

    /// The zero-copy view and the converting copy give the same matrix, whatever the
    /// alignment of the stored bytes.
    #[test]
    fn matrix_view_and_copy_agree() {
        let (k, n) = (5, 3);
        let values: Vec<f32> = (0..k * n).map(|i| i as f32 * 0.25 - 1.0).collect();
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // The same bytes at an aligned and at an odd address.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&le);
        let shifted = bytes::Bytes::from(shifted).slice(1..);
        for raw in [bytes::Bytes::from(le.clone()), shifted] {
            let aligned = bytemuck::try_cast_slice::<u8, f32>(&raw).is_ok();
            let kn = target(Tensor::from_raw(DataType::Float, &[k as u64, n as u64], raw.clone()).unwrap(), QdqLayout::KN, k, n);
            let m = kn.matrix().unwrap();
            assert_eq!(matches!(m, Matrix::View(_)), aligned);
            assert_eq!(&*m, &values[..]);
            // Stored [N, K]: the matrix is its transpose.
            let nk = target(Tensor::from_raw(DataType::Float, &[n as u64, k as u64], raw).unwrap(), QdqLayout::NK, n, k);
            let m = nk.matrix().unwrap();
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(m[r * k + c], values[c * n + r]);
                }
            }
        }
    }

    /// A 1x1 convolution with strides (2, 3) over x [2, 3, 5, 7] reads positions (h, w) with
    /// h in {0, 2, 4} and w in {0, 3, 6}: 2 x 3 x 3 = 18 rows of the 3 channels.
    #[test]
    fn channel_rows_are_the_positions_a_strided_pointwise_conv_reads() {
        let shape = [2, 3, 5, 7];
        let x: Vec<f32> = (0..2 * 3 * 5 * 7).map(|i| i as f32).collect();
        let rows = ActivationRows::Channels { strides: vec![2, 3] }.rows(&shape, &x, 3).unwrap();
        let mut expected = Vec::new();
        for b in 0..2 {
            for h in (0..5).step_by(2) {
                for w in (0..7).step_by(3) {
                    expected.extend((0..3).map(|c| x[((b * 3 + c) * 5 + h) * 7 + w]));
                }
            }
        }
        assert_eq!(rows.as_ref(), expected.as_slice());
        // The last axis is the rows as they are; wrong shapes are errors, not panics.
        assert_eq!(ActivationRows::LastAxis.rows(&[35, 6], &x, 6).unwrap().len(), x.len());
        assert!(ActivationRows::LastAxis.rows(&shape, &x, 3).is_err());
        assert!(ActivationRows::Channels { strides: vec![1, 1] }.rows(&shape, &x, 4).is_err());
        assert!(ActivationRows::Channels { strides: vec![1] }.rows(&shape, &x, 3).is_err());
    }

    #[test]
    fn conv_weights_take_the_scale_layout_nearer_a_block() {
        // (dims, block, per output channel?)
        for (dims, block, expected) in [
            (&[64, 1, 3, 3][..], 32, true),  // depthwise: 9 per scale, not 1
            (&[16, 3, 3, 3][..], 32, true),  // first layer: 27 per scale, not 3
            (&[64, 8, 3, 3][..], 32, true),  // 72 per scale is nearer 32 than 8 is
            (&[64, 16, 3, 3][..], 32, false), // 16 per scale is nearer 32 than 144 is
            (&[64, 8, 1, 1][..], 32, true),  // 1x1 over 8 channels: the same 8 either way
            (&[64, 64, 3, 3][..], 32, false), // whole blocks along C
            (&[64, 64, 3, 3][..], 0, true),  // block=0: per channel
        ] {
            assert_eq!(conv_per_output_channel(dims, block), expected, "{dims:?} block {block}");
        }
    }
}
