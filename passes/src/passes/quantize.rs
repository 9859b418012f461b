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
//!
//! The files: [`target`] picks the weights, [`emit`] writes the quantized forms, [`budget`]
//! does mixed precision, [`report`] the per-layer numbers, [`already_quantized`] lists the
//! weights other ops already hold quantized.

mod already_quantized;
mod budget;
mod emit;
mod report;
mod shared;
mod target;

use crate::analysis::linear::weight_readers;
use crate::analysis::{Analyses, LinearLayer, LinearLayers, LinearOp, Uses};
use crate::calib::{self, RowLayout};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use crate::passes::upgrade_opset::{UpgradeOpset, min_ir_version};
use crate::quant::{self, BlockSize, GptqOptions, Hessian, MatMulNBitsTensors, MseOptions, QdqLayout, QdqTensors, QuantConfig, QuantMetrics, QuantizedWeight, ScaleDtype, Scaling};
use compactor_ir::graph::SparseTensor;
use compactor_ir::scratch::ScratchFile;
use compactor_ir::{Anchor, AttrValue, DataType, Graph, NodeId, PValue, Patch, Tensor, ValueId};
use emit::{Packed, emit, pack};
use rayon::prelude::*;
use report::{LayerReport, layer_report};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use target::{Matrix, Target};

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

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Quantize {
    /// Bits per weight: 2, 3, 4 or 8 (a 3-bit grid is stored in 4-bit containers: int4's file size, 3 bits' accuracy).
    pub bits: u8,
    /// Weights per scale along the reduction axis: a power of two from 16 to 256, or 0 for one scale per output channel.
    /// Conv weights are blocked along their input channels; with far fewer input channels than a block (depthwise) they get one scale per output channel.
    pub block: usize,
    /// Symmetric (no zero points) or asymmetric (a zero point per block).
    pub symmetric: bool,
    /// Element type of the scales.
    pub scale_dtype: ScaleDtype,
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
            scale_dtype: ScaleDtype::F32,
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
    const SUMMARY: &'static str = "Blockwise weight quantization (8/4/3/2 bits; RTN, MSE/HQQ or GPTQ; optional AWQ scaling) to DequantizeLinear or MatMulNBits";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !quant::BIT_WIDTHS.contains(&self.bits) {
            return Err(OptionError::new("bits", format!("{} is not one of 2, 3, 4, 8", self.bits)));
        }
        if self.block != 0 && (!self.block.is_power_of_two() || !(quant::MIN_BLOCK_SIZE..=quant::MAX_BLOCK_SIZE).contains(&self.block)) {
            return Err(OptionError::new("block", format!("{} is not a power of two from 16 to 256 (or 0 for per-channel)", self.block)));
        }
        if let Some(op) = self.ops.iter().find(|o| !OPS.contains(&o.as_str())) {
            return Err(OptionError::new("ops", format!("'{op}' is not one of {}", OPS.join(", "))));
        }
        super::validate_globs("include", &self.include)?;
        super::validate_globs("exclude", &self.exclude)?;
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
        QuantConfig { bits, block_size: if per_channel { BlockSize::PerChannel } else { BlockSize::Blocked(self.block) }, symmetric: self.symmetric, scale_dtype: self.scale_dtype }
    }

    /// Hessians `(2/n) Σ xxᵀ` of each distinct activation input, from the calibration data,
    /// and (for AWQ) the mean absolute value of each input channel.
    fn calibrate(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>, targets: &[&Target]) -> Result<Calibration, PassError> {
        let wanted = calib::Wanted { gram: true, mean_abs: self.awq, ..Default::default() };
        let requests: Vec<calib::Request> =
            targets.iter().flat_map(|t| t.readers()).filter_map(|t| Some(calib::Request { row_scale: None, value: t.input?, layout: t.rows.clone()?, k: t.k, wanted })).collect();
        let stats = calib::collect(graph, ctx, Self::NAME, "method=gptq, budget_bits and awq need activations", &requests)?;
        let mut calibration = Calibration::default();
        for (v, s) in stats {
            calibration.hessians.extend(s.gram.map(|h| (v, h)));
            calibration.mean_abs.extend(s.mean_abs.map(|m| (v, m)));
        }
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

fn ir(e: compactor_ir::IrError) -> PassError {
    PassError::ir(Quantize::NAME, e)
}

impl Pass for Quantize {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let (targets, skipped) = self.select(graph, ctx.analyses);
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
                ScaleDtype::F32 => activation == Some(DataType::Float),
                ScaleDtype::F16 => activation == Some(DataType::Float16),
            }
        };
        // A shared weight takes MatMulNBits only if all its readers can: they share one packed form.
        let wants_nbits = |t: &Target| self.format == Format::Matmulnbits && t.readers().all(|r| plain(r) && scale_matches(r));
        if self.format == Format::Matmulnbits
            && let Some(t) = targets.iter().find(|t| plain(t) && !scale_matches(t))
        {
            let activation = t.input.and_then(|x| graph.value(x).elem()).map(|d| d.to_string()).unwrap_or_else(|| "unknown".into());
            return Err(PassError::failed(
                Self::NAME,
                t.label.clone(),
                format!("MatMulNBits needs scales of the activation's type ({activation}), not {:?}; use scale_dtype to match, or format=qdq", self.scale_dtype),
            ));
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
            // Streaming needs each layer finished in its own task (no budget spent over all of them).
            let weight_bytes: u64 = members.iter().map(|t| t.tensor.data_bytes()).sum();
            let scratch = if fused && weight_bytes >= super::stream_min_bytes() {
                Some(ScratchFile::new(None).map_err(|e| PassError::failed(Self::NAME, "scratch file", format!("cannot create a scratch file in the temporary directory (TMPDIR): {e}")))?)
            } else {
                None
            };
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
                    let mut finished = if fused { Some(finish(i, &result)?) } else { None };
                    let result = match (&scratch, finished.as_mut()) {
                        (Some(scratch), Some((packed, _))) => {
                            // Only the small parts stay in memory: scales, outliers, the report.
                            packed.store_codes(scratch)?;
                            let (mut q, loss, _, scaling) = result;
                            q.codes = Vec::new();
                            t.tensor.release_pages();
                            (q, loss, Matrix::Owned(Vec::new()), scaling)
                        }
                        _ => result,
                    };
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
