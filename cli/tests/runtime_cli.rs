//! `compactor run`, `compactor compare` and `compactor bench runtime` as a user calls them:
//! files written, JSON, exit codes.

use compactor_ir::{Model, Tensor};
use compactor_runtime::TensorValue;
use compactor_runtime::npy::{read_npy, write_npy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn compactor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).output().expect("run compactor")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn run_writes_every_output_as_npy_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_mlp.onnx");
    let first = tmp.path().join("first");
    let out = compactor(&["run", s(&model), "--dim", "batch=3", "--output-dir", s(&first)]);
    assert!(out.status.success(), "{}", text(&out));
    let y = read_npy(&first.join("y.npy")).unwrap();
    assert_eq!(y.shape()[0], 3);
    let second = tmp.path().join("second");
    let out = compactor(&["run", s(&model), "--dim", "batch=3", "--output-dir", s(&second), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read_npy(&second.join("y.npy")).unwrap().to_f64_vec().unwrap(), y.to_f64_vec().unwrap(), "made-up inputs come from a fixed seed");
}

#[test]
fn run_takes_inputs_from_npy_files_and_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    write_npy(&x, &TensorValue::from_f32(&[2, 64], &(0..128).map(|i| i as f32 / 64.0 - 1.0).collect::<Vec<_>>()).unwrap()).unwrap();
    let input = format!("x={}", s(&x));
    let out = compactor(&["run", s(&fixture("tiny_mlp.onnx")), "--input", &input, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["outputs"][0]["name"], "y");
    assert_eq!(json["outputs"][0]["shape"][0], 2);
}

#[test]
fn bad_inputs_exit_2_and_name_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_mlp.onnx");
    let missing = tmp.path().join("missing.npy");
    let out = compactor(&["run", s(&model), "--input", &format!("x={}", s(&missing))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.npy"), "{}", text(&out));

    let garbage = tmp.path().join("garbage.npy");
    std::fs::write(&garbage, b"definitely not numpy").unwrap();
    let out = compactor(&["run", s(&model), "--input", &format!("x={}", s(&garbage))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("garbage.npy"), "{}", text(&out));

    let wrong = tmp.path().join("wrong.npy");
    write_npy(&wrong, &TensorValue::from_f32(&[2, 3], &[0.0; 6]).unwrap()).unwrap();
    let out = compactor(&["run", s(&model), "--input", &format!("x={}", s(&wrong))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'x'") && err.contains("shape"), "{}", text(&out));

    let out = compactor(&["run", s(&model)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dim batch=N"), "{}", text(&out));

    // A dynamic dimension written as -1 (Paddle's exporter does): name the input to give.
    let mut minus_one = Model::load(&model).unwrap();
    let x = minus_one.graph.main().inputs[0];
    let ty = minus_one.graph.value(x).ty.clone().unwrap();
    let compactor_ir::TypeKind::Tensor { elem, shape: Some(mut shape) } = ty.kind else { panic!("tiny_mlp's x is a tensor of known rank") };
    shape.dims[0] = compactor_ir::Dim::Known(-1);
    minus_one.graph.value_mut(x).ty = Some(compactor_ir::ValueType::tensor(elem.unwrap(), Some(shape)));
    let minus_one_path = tmp.path().join("minus_one.onnx");
    minus_one.save(&minus_one_path).unwrap();
    let out = compactor(&["run", s(&minus_one_path)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dimension -1 (dynamic") && String::from_utf8_lossy(&out.stderr).contains("--input x=FILE.npy"), "{}", text(&out));

    // Every unset symbolic dimension is named at once.
    let out = compactor(&["run", s(&fixture("tiny_bert.onnx"))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(--dim batch=N --dim seq=N)"), "{}", text(&out));

    let out = compactor(&["run", s(&tmp.path().join("nope.onnx"))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.onnx"), "{}", text(&out));
}

/// tiny_mlp with every float initializer scaled by `factor`.
fn scaled_copy(dir: &Path, factor: f32) -> PathBuf {
    let mut model = Model::load(fixture("tiny_mlp.onnx")).unwrap();
    let ids: Vec<_> = model.graph.value_ids().collect();
    for id in ids {
        let value = model.graph.value_mut(id);
        if let Some(t) = &value.initializer
            && t.dtype() == compactor_ir::DataType::Float
        {
            let scaled: Vec<f32> = t.to_f32().unwrap().iter().map(|v| v * factor).collect();
            value.initializer = Some(Tensor::from_f32(t.dims(), &scaled).unwrap().with_name(Some(value.name.clone())));
        }
    }
    let path = dir.join(format!("scaled_{factor}.onnx"));
    model.save(&path).unwrap();
    path
}

#[test]
fn compare_reports_errors_sizes_latency_and_fails_on_broken_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let a = fixture("tiny_mlp.onnx");
    let out = compactor(&["compare", s(&a), s(&a), "--dim", "batch=4", "--runs", "3", "--json", "--max-error", "0", "--min-cosine", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["outputs"][0]["max_abs_error"], 0.0);
    assert_eq!(json["size_ratio"], 1.0);
    assert!(json["a"]["median_ms"].as_f64().unwrap() > 0.0);
    assert!(json["outputs"][0]["top1_agreement"].as_f64().is_some());

    let b = scaled_copy(tmp.path(), 1.5);
    let out = compactor(&["compare", s(&a), s(&b), "--dim", "batch=4", "--runs", "2", "--max-error", "1e-6"]);
    assert_eq!(out.status.code(), Some(1), "a broken --max-error must exit 1: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"), "{}", text(&out));
    let out = compactor(&["compare", s(&a), s(&b), "--dim", "batch=4", "--runs", "2", "--min-cosine", "0.999999999"]);
    assert_eq!(out.status.code(), Some(1), "a broken --min-cosine must exit 1: {}", text(&out));
    let out = compactor(&["compare", s(&a), s(&b), "--dim", "batch=4", "--runs", "2", "--min-cosine=-1"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = compactor(&["compare", s(&a), s(&fixture("tiny_bert.onnx")), "--dim", "batch=1", "--dim", "seq=4"]);
    assert_eq!(out.status.code(), Some(2), "models with different inputs are bad input: {}", text(&out));
}

/// `bench runtime --input-set`: one session goes round inputs of two batch sizes; each set's
/// median and first run are reported next to onnxruntime's.
#[test]
fn bench_runtime_goes_round_input_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let python = compactor_tests::python();
    let mut args =
        vec!["bench".to_string(), "runtime".into(), s(&fixture("tiny_mlp.onnx")).into(), "--runs".into(), "3".into(), "--warmup".into(), "1".into(), "--threads".into(), "1".into(), "--json".into()];
    args.extend(["--python".to_string(), s(&python).to_string()]);
    for rows in [2usize, 5] {
        let dir = tmp.path().join(format!("rows_{rows}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_npy(&dir.join("x.npy"), &TensorValue::from_f32(&[rows, 64], &(0..rows * 64).map(|i| (i % 13) as f32 / 13.0).collect::<Vec<_>>()).unwrap()).unwrap();
        args.extend(["--input-set".to_string(), s(&dir).to_string()]);
    }
    let out = compactor(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sets = json["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    for set in sets {
        for key in ["compactor_first_ms", "compactor_median_ms", "onnxruntime_median_ms", "ratio"] {
            assert!(set[key].as_f64().unwrap() > 0.0, "{key}: {set}");
        }
    }
    assert!(sets[1]["dir"].as_str().unwrap().ends_with("rows_5"));
    assert!(json["max_abs_error_vs_onnxruntime"].as_f64().unwrap() < 1e-4, "{json}");
    // An empty set is refused with its name.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = compactor(&["bench", "runtime", s(&fixture("tiny_mlp.onnx")), "--input-set", s(&empty)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no .npy files"), "{}", text(&out));
}
