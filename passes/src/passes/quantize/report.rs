//! What the pass reports per quantized weight.

use super::*;

/// Per-layer numbers for the report.
#[derive(Serialize)]
pub(super) struct LayerReport {
    pub(super) name: String,
    pub(super) op: &'static str,
    /// The method this layer got: `gptq` needs calibration statistics of its input, so layers
    /// without them (embedding tables, kxk and grouped convolutions) get `rtn`.
    pub(super) method: &'static str,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) bits: u8,
    pub(super) relative_error: f64,
    pub(super) sqnr_db: f64,
    pub(super) bits_per_weight: f64,
    pub(super) bytes_before: u64,
    pub(super) bytes_after: u64,
    pub(super) outliers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) gptq_loss: Option<f64>,
    /// Relative output error on calibration data, `tr(ΔWᵀHΔW) / tr(WᵀHW)` (with calibration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) output_error: Option<f64>,
    /// AWQ: the chosen exponent, and the relative output error plain quantization would have had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) awq_alpha: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) unscaled_output_error: Option<f64>,
    /// A shared weight's readers (all of them use the one quantized weight).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) readers: Vec<String>,
    /// Why a shared weight did not get what the options asked for (AWQ scaling, MatMulNBits).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) notes: Vec<String>,
}

pub(super) fn layer_report(t: &Target, method: Method, q: &QuantizedWeight, gptq_loss: Option<f64>, w: &[f32], hessian: Option<&Hessian>, scaling: Option<&Scaling>) -> LayerReport {
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
            report.output_error = hessian.map(|h| quant::relative_output_error(w, &q.dequantize(), t.n, h));
        }
        Some(scaling) => {
            // The stored weight is the scaled one: measure what the layer computes,
            // `diag(1/s) W_hat`, against the original, and count the `1/s` vector as storage
            // (as f32; half that for float16 activations).
            let effective = quant::effective_weight(q, Some(scaling));
            report.relative_error = quant::relative_error(w, &effective);
            report.sqnr_db = -20.0 * report.relative_error.log10();
            let (bits_per_weight, bytes_after) = QuantMetrics::storage(q);
            let extra_bits = 32 * t.k as u64;
            report.bits_per_weight = bits_per_weight + extra_bits as f64 / (t.k * t.n) as f64;
            report.bytes_after = bytes_after + extra_bits / 8;
            report.awq_alpha = Some(scaling.alpha);
            if let Some(h) = hessian {
                let reference = h.quadratic_form(w, t.n);
                let relative = |e: f64| if reference > 0.0 { e / reference } else { 0.0 };
                report.output_error = Some(quant::relative_output_error(w, &effective, t.n, h));
                report.unscaled_output_error = Some(relative(scaling.unscaled_output_error));
            }
        }
    }
    report
}
