//! Models written by onnxruntime's own tools (its offline optimizer, its transformer
//! optimizer, its dynamic and static quantizers; made by tests/py/make_regression_models.py):
//! they load and pass the verifier, round-trip losslessly, run on the bundled runtime with
//! onnxruntime's results, and the quantize pass's outputs load and run in onnxruntime (at its
//! full optimization level, where its QDQ transformers run) with the bundled runtime's results.

use compactor_ir::{Model, verify};
use compactor_passes::{Pipeline, RunOptions};
use compactor_runtime::TensorValue;
use compactor_runtime::npy::read_npy;
use compactor_tests::{both_runtimes_at, regression_model, shared_models};
use std::path::{Path, PathBuf};

/// Each model, and the largest difference from onnxruntime allowed on its outputs
/// (`|ours - theirs| <= atol + rtol·|theirs|`).
const MODELS: &[(&str, f64, f64)] = &[
    // f32 graphs with com.microsoft fused ops: only summation order differs.
    ("minilm_ort_extended.onnx", 1e-4, 1e-4),
    ("minilm_ort_fused.onnx", 1e-4, 1e-4),
    // int8 graphs: the same integer codes, rescaled in f32 in another order.
    ("minilm_ort_dynamic_int8.onnx", 2e-3, 1e-3),
    ("minilm_ort_fused_int8.onnx", 2e-3, 1e-3),
    // QDQ: activations are re-quantized after every op, so a last-bit difference upstream
    // flips a code (one step of up to 0.12 here) and the flip travels on; checked by
    // per-token cosine instead (see `close_in_direction`).
    ("minilm_ort_qdq_int8.onnx", f64::INFINITY, 0.0),
    ("conv_ort_dynamic_int8.onnx", 1e-4, 1e-4),
];

/// `name=file.npy` inputs for a model.
fn inputs_for(model: &str) -> Vec<String> {
    if model.starts_with("minilm") {
        let dir = shared_models();
        return ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| format!("{n}={}", dir.join(format!("minilm_{n}.npy")).display())).collect();
    }
    let input = regression_model(model).parent().unwrap().join("conv_input.npy");
    vec![format!("x={}", input.display())]
}

/// The largest `|a - b|` over all outputs, or what is wrong: a shape mismatch, a NaN or
/// infinity in ours that theirs does not have at the same place, or a difference past
/// `atol + rtol·|theirs|`.
fn compare(what: &str, theirs: &[TensorValue], ours: &[TensorValue], atol: f64, rtol: f64) -> Result<f64, String> {
    if theirs.len() != ours.len() {
        return Err(format!("{what}: {} outputs, onnxruntime {}", ours.len(), theirs.len()));
    }
    let mut worst = 0.0f64;
    for (i, (t, o)) in theirs.iter().zip(ours).enumerate() {
        if t.shape() != o.shape() {
            return Err(format!("{what}: output {i} has shape {:?}, onnxruntime {:?}", o.shape(), t.shape()));
        }
        let (t, o) = (t.to_f64_vec().unwrap(), o.to_f64_vec().unwrap());
        for (j, (&a, &b)) in t.iter().zip(&o).enumerate() {
            if a.is_nan() && b.is_nan() || a == b {
                continue;
            }
            let diff = (a - b).abs();
            // NaN and infinities fail here: their difference is NaN or infinite.
            let within = diff <= atol + rtol * a.abs();
            if !within {
                return Err(format!("{what}: output {i}[{j}] = {b}, onnxruntime {a} (diff {diff:.3e} > {atol:e} + {rtol:e}·|{a}|)"));
            }
            worst = worst.max(diff);
        }
    }
    Ok(worst)
}

fn assert_close(what: &str, theirs: &[TensorValue], ours: &[TensorValue], atol: f64, rtol: f64) -> f64 {
    if atol.is_infinite() {
        return close_in_direction(what, theirs, ours);
    }
    compare(what, theirs, ours, atol, rtol).unwrap_or_else(|e| panic!("{e}"))
}

/// For QDQ graphs: no NaN or infinity, and every row (token) of every output at cosine
/// >= 0.99 with onnxruntime's. Returns the lowest cosine.
fn close_in_direction(what: &str, theirs: &[TensorValue], ours: &[TensorValue]) -> f64 {
    compare(what, theirs, ours, f64::MAX, 0.0).unwrap_or_else(|e| panic!("{e}"));
    let mut lowest = 1.0f64;
    for (t, o) in theirs.iter().zip(ours) {
        let row = *t.shape().last().unwrap();
        let (t, o) = (t.to_f64_vec().unwrap(), o.to_f64_vec().unwrap());
        for (a, b) in t.chunks(row).zip(o.chunks(row)) {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let cosine = dot / (norm(a) * norm(b));
            assert!(cosine >= 0.99, "{what}: a row at cosine {cosine} with onnxruntime's");
            lowest = lowest.min(cosine);
        }
    }
    lowest
}

#[test]
fn the_comparison_fails_on_nan_and_on_differences() {
    let a = TensorValue::from_f32(&[3], &[1.0, 2.0, 3.0]).unwrap();
    let nan = TensorValue::from_f32(&[3], &[1.0, f32::NAN, 3.0]).unwrap();
    let inf = TensorValue::from_f32(&[3], &[1.0, f32::INFINITY, 3.0]).unwrap();
    let off = TensorValue::from_f32(&[3], &[1.0, 2.01, 3.0]).unwrap();
    let one = |v: &TensorValue| vec![v.clone()];
    assert_eq!(compare("same", &one(&a), &one(&a), 0.0, 0.0), Ok(0.0));
    assert!(compare("nan", &one(&a), &one(&nan), 1.0, 1.0).is_err());
    assert!(compare("nan in theirs", &one(&nan), &one(&a), 1.0, 1.0).is_err());
    assert!(compare("inf", &one(&a), &one(&inf), 1.0, 1.0).is_err());
    assert!(compare("off", &one(&a), &one(&off), 1e-3, 1e-3).is_err());
    assert!(compare("within", &one(&a), &one(&off), 2e-2, 0.0).is_ok());
    assert_eq!(compare("both nan", &one(&nan), &one(&nan), 0.0, 0.0), Ok(0.0));
}

#[test]
fn models_written_by_onnxruntime_pass_the_verifier_and_round_trip_losslessly() {
    let dir = tempfile::tempdir().unwrap();
    for &(name, _, _) in MODELS {
        let path = regression_model(name);
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(problems) = verify(&model) {
            panic!("{name}: the verifier reports problems on onnxruntime's own model:\n{problems}");
        }
        let written = dir.path().join(name);
        model.save(&written).unwrap();
        assert!(std::fs::read(&path).unwrap() == std::fs::read(&written).unwrap(), "{name}: the written bytes differ from onnxruntime's file");
    }
}

#[test]
fn bundled_runtime_matches_onnxruntime_on_models_onnxruntime_wrote() {
    for &(name, atol, rtol) in MODELS {
        let path = regression_model(name);
        let (theirs, ours) = both_runtimes_at(&path, &inputs_for(name), "basic");
        let worst = assert_close(name, &theirs, &ours, atol, rtol);
        println!("{name}: {} {worst:.3e}", if atol.is_infinite() { "lowest per-token cosine with onnxruntime" } else { "max abs difference from onnxruntime" });
    }
}

/// MiniLM's sentence embedding (last hidden state) from the fused graphs is MiniLM's own.
#[test]
fn fused_minilm_gives_the_reference_hidden_state() {
    let reference = read_npy(&shared_models().join("minilm_ref_hidden.npy")).unwrap();
    for name in ["minilm_ort_extended.onnx", "minilm_ort_fused.onnx"] {
        let path = regression_model(name);
        let (_, ours) = both_runtimes_at(&path, &inputs_for(name), "none");
        let worst = assert_close(name, std::slice::from_ref(&reference), &ours[..1], 1e-4, 1e-4);
        println!("{name}: max abs difference from the reference hidden state {worst:.3e}");
    }
}

fn quantized(name: &str, spec: &str, out: &Path) -> serde_json::Value {
    let mut model = Model::load(regression_model(name)).unwrap();
    let report = Pipeline::parse(spec).unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap_or_else(|e| panic!("{name} {spec}: {e}"));
    model.save(out).unwrap();
    report.passes.iter().find(|p| p.pass == "quantize").unwrap().details.clone()
}

/// How many constant weights the integer and fused ops of a model read.
fn integer_op_weights(model: &Model) -> usize {
    let g = &model.graph;
    let inputs = |op: &str| -> &[usize] {
        match op {
            "MatMulInteger" | "ConvInteger" | "QAttention" | "Attention" => &[1],
            "QEmbedLayerNormalization" | "EmbedLayerNormalization" => &[2, 3, 4],
            _ => &[],
        }
    };
    g.all_nodes().into_iter().map(|id| g.node(id)).map(|n| inputs(&n.op_type).iter().filter(|&&i| n.input(i).is_some_and(|w| g.constant(w).is_some())).count()).sum()
}

#[test]
fn quantized_models_load_and_run_in_onnxruntime_like_on_the_bundled_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for spec in ["quantize(bits=4)", "quantize(bits=8,block=0)"] {
        for &(name, atol, rtol) in MODELS {
            let out: PathBuf = dir.path().join(format!("{}.{}.onnx", name.trim_end_matches(".onnx"), spec.replace(['(', ')', ',', '='], "_")));
            let details = quantized(name, spec, &out);
            // Integer-op weights are left alone, each with a reason.
            let original = Model::load(regression_model(name)).unwrap();
            let skipped = details["skipped"].as_array().cloned().unwrap_or_default();
            let left: Vec<_> = skipped.iter().filter(|s| s["reason"].as_str().unwrap().contains("left as it is")).collect();
            assert_eq!(left.len(), integer_op_weights(&original), "{name} {spec}: skipped weights {skipped:?}");
            let layers = details["layers"].as_array().map(Vec::len).unwrap_or(0);
            // The bundled runtime against onnxruntime's plain kernels; then onnxruntime at its
            // full optimization level (its QDQ transformers, which refused the int8 QDQ
            // model at opset 21, included) against its plain kernels.
            let (theirs, ours) = both_runtimes_at(&out, &inputs_for(name), "basic");
            let worst = assert_close(&format!("{name} {spec}"), &theirs, &ours, atol, rtol);
            let (optimized, _) = both_runtimes_at(&out, &inputs_for(name), "all");
            close_in_direction(&format!("{name} {spec}: onnxruntime all vs basic"), &theirs, &optimized);
            println!("{name} {spec}: {layers} weights quantized, {} left to their integer or fused op; max abs difference from onnxruntime {worst:.3e}", left.len());
        }
    }
}

/// The exact failure from the report: raising the opset of a model with int8 activation Q/DQ
/// pairs gave a model onnxruntime refused ("output_dtype INT8 does not match y_zero_point type
/// UINT8"); upgrade-opset alone must give a model that loads and computes the same.
#[test]
fn raising_the_opset_keeps_int8_activation_qdq_valid_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let name = "minilm_ort_qdq_int8.onnx";
    let mut model = Model::load(regression_model(name)).unwrap();
    let report = Pipeline::parse("upgrade-opset(version=21)").unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
    println!("{}", report.passes[0].summary);
    let out = dir.path().join("opset21.onnx");
    model.save(&out).unwrap();
    // The int8 -> uint8 rewrite is exact: onnxruntime's plain kernels give the same numbers.
    let (before, _) = both_runtimes_at(&regression_model(name), &inputs_for(name), "basic");
    let (after, ours) = both_runtimes_at(&out, &inputs_for(name), "basic");
    assert_close("opset 21 vs the original in onnxruntime", &before, &after, 1e-6, 0.0);
    // At its full optimization level onnxruntime now loads it (it refused it before).
    let (theirs, _) = both_runtimes_at(&out, &inputs_for(name), "all");
    close_in_direction("opset 21: onnxruntime all vs basic", &after, &theirs);
    close_in_direction("opset 21: bundled runtime vs onnxruntime", &theirs, &ours);
}
