//! Models onnxruntime's own tools make from convolutional and recurrent models run on the
//! bundled runtime and match onnxruntime: `quantize_dynamic` (ConvInteger, MatMulInteger,
//! DynamicQuantizeLinear, com.microsoft.DynamicQuantizeLSTM), `quantize_static` in QOperator
//! format (QLinearConv and com.microsoft QLinearAdd/Mul/GlobalAveragePool/Softmax, QGemm) and
//! the offline optimizer at ORT_ENABLE_EXTENDED (FusedConv) and ORT_ENABLE_ALL
//! (com.microsoft.nchwc ops). Cases and references: `tests/py/make_ort_conv_models.py`.

use compactor_ir::Model;
use compactor_runtime::npy::read_npy;
use compactor_runtime::{Session, SessionOptions, TensorValue};
use compactor_tests::ort_conv_models;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(serde::Deserialize)]
struct Case {
    model: PathBuf,
    inputs: BTreeMap<String, PathBuf>,
    outputs: Vec<PathBuf>,
}

/// Runs case `name` and checks every output within `atol + rtol * |ort|` of onnxruntime's
/// (NaN where onnxruntime has NaN); returns the largest difference.
fn matches_onnxruntime(name: &str, atol: f64, rtol: f64) -> f64 {
    let dir = ort_conv_models();
    let cases: BTreeMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let case = &cases[name];
    let model = Model::load(&case.model).unwrap();
    let session = Session::new(&model, &SessionOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs: Vec<(&str, TensorValue)> = case.inputs.iter().map(|(n, p)| (n.as_str(), read_npy(p).unwrap())).collect();
    let outputs = session.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(outputs.len(), case.outputs.len(), "{name}: outputs");
    let mut worst = 0.0f64;
    for ((out_name, ours), reference) in outputs.iter().zip(&case.outputs) {
        let reference = read_npy(reference).unwrap();
        assert_eq!(ours.shape(), reference.shape(), "{name} {out_name}: shape");
        let (a, b) = (ours.to_f64_vec().unwrap(), reference.to_f64_vec().unwrap());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.is_nan(), y.is_nan(), "{name} {out_name}[{i}]: ours {x}, onnxruntime {y}");
            if !y.is_nan() {
                let diff = (x - y).abs();
                assert!(diff <= atol + rtol * y.abs(), "{name} {out_name}[{i}]: ours {x}, onnxruntime {y} (differ by {diff:.3e})");
                worst = worst.max(diff);
            }
        }
    }
    println!("{name}: max abs diff {worst:.3e} against onnxruntime");
    worst
}

/// ORT_ENABLE_EXTENDED: `com.microsoft.FusedConv` (Conv + activation, Conv + Add + activation).
#[test]
fn fused_conv_from_onnxruntime_extended_optimization_matches() {
    matches_onnxruntime("cls_ort_extended", 1e-5, 1e-4);
    matches_onnxruntime("det_ort_extended", 1e-5, 1e-4);
}

/// ORT_ENABLE_ALL on AVX-512 or AVX2: `com.microsoft.nchwc` Conv (blocked filters, sum input,
/// fused activations), ReorderInput/ReorderOutput and pools.
#[test]
fn nchwc_ops_from_onnxruntime_all_optimizations_match() {
    matches_onnxruntime("cls_ort_all", 1e-5, 1e-4);
    matches_onnxruntime("det_ort_all", 1e-5, 1e-4);
}

/// `quantize_dynamic` on magika: DynamicQuantizeLinear, MatMulInteger and ConvInteger.
#[test]
fn magika_quantized_dynamically_matches() {
    matches_onnxruntime("magika_dynamic", 1e-5, 1e-4);
}

/// `quantize_static` in QOperator format: QLinearConv, com.microsoft QLinearAdd, QLinearMul,
/// QLinearGlobalAveragePool, QGemm and QLinearSoftmax. The output is a uint8 softmax on a
/// 1/256 grid; one rounding step apart on an intermediate may move it by one grid step
/// (measured: equal).
#[test]
fn classifier_quantized_statically_in_qoperator_format_matches() {
    matches_onnxruntime("cls_static_qoperator", 1.0 / 256.0 + 1e-6, 0.0);
}

/// `quantize_dynamic` on silero-vad: com.microsoft.DynamicQuantizeLSTM runs as the float LSTM
/// on the dequantized weights. onnxruntime also rounds the LSTM's input and every step's
/// hidden state to 8 bits before its integer matmuls; that rounding is the difference
/// (measured: 0.008 on the speech probability, 0.035 on the cell state).
#[test]
fn silero_vad_quantized_dynamically_matches_up_to_activation_rounding() {
    matches_onnxruntime("vad_dynamic", 0.05, 0.0);
}
