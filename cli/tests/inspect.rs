//! `compactor inspect`: works on every model the tests use; bad input gives a clear error
//! naming the file and the problem, exit code 2, and never a panic.

use compactor_ir::proto;
use compactor_tests::{real_models, repo_root, short};
use prost::Message;
use std::path::Path;
use std::process::{Command, Output};

fn compactor(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).output().expect("run compactor")
}

fn inspect(path: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["inspect".as_ref(), path.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    compactor(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inspect_summarizes_every_real_model_and_fixture() {
    let mut models = real_models();
    models.extend(["tiny_mlp.onnx", "tiny_bert.onnx", "if_subgraph.onnx"].map(|f| repo_root().join("fixtures").join(f)));
    for model in models {
        let out = inspect(&model, &[]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", short(&model), stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("inputs:") && text.contains("weights:"), "{}", short(&model));
        let out = inspect(&model, &["--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", short(&model));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        assert!(json["ops"].as_array().is_some_and(|ops| !ops.is_empty()), "{}", short(&model));
        assert!(json["problems"].as_array().is_some_and(|p| p.is_empty()), "{}: {}", short(&model), json["problems"]);
    }
}

#[test]
fn inspect_reports_minilm_facts() {
    let out = inspect(&compactor_tests::minilm(), &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ir_version"], 8);
    assert_eq!(json["opsets"][0]["version"], 17);
    assert_eq!(json["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(json["inputs"][0]["ty"], "i64[batch,seq]");
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!(["batch", "seq", 384]));
    // 22.6M parameters counted from the tensors themselves (embeddings + 6 layers, no pooler).
    let params = json["weights"]["elements"].as_u64().unwrap();
    assert!((22_500_000..22_700_000).contains(&params), "{params}");
    assert_eq!(json["largest_tensors"][0]["name"], "m.embeddings.word_embeddings.weight");
    assert_eq!(json["largest_tensors"][0]["dims"], serde_json::json!([30522, 384]));
    let matmuls = json["ops"].as_array().unwrap().iter().find(|o| o["op"] == "MatMul").unwrap();
    assert_eq!(matmuls["count"], 48);
}

fn assert_bad_input(path: &Path, needle: &str) {
    let out = inspect(path, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&path.display().to_string()), "error must name the file: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn bad_inputs_give_clear_errors_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();

    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert_bad_input(&truncated, "truncated");

    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model\n").unwrap();
    assert_bad_input(&text, "not an ONNX model");

    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_bad_input(&empty, "empty");

    assert_bad_input(&dir.path().join("missing.onnx"), "No such file");

    // A tensor with a data type ONNX does not define.
    let mut model = proto::ModelProto::decode(&good[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph.initializer[0].data_type = Some(99);
    let name = graph.initializer[0].name.clone().unwrap();
    let unknown = dir.path().join("unknown_dtype.onnx");
    std::fs::write(&unknown, model.encode_to_vec()).unwrap();
    assert_bad_input(&unknown, &format!("tensor '{name}': unknown data type 99"));

    // External data file that is not there.
    let mut model = proto::ModelProto::decode(&good[..]).unwrap();
    let t = &mut model.graph.as_mut().unwrap().initializer[0];
    let len = t.raw_data.take().unwrap().len();
    t.data_location = Some(1);
    let entry = |k: &str, v: String| proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    t.external_data = vec![entry("location", "weights.bin".into()), entry("offset", "0".into()), entry("length", len.to_string())];
    let missing_ext = dir.path().join("missing_external.onnx");
    std::fs::write(&missing_ext, model.encode_to_vec()).unwrap();
    assert_bad_input(&missing_ext, "weights.bin' does not exist");
}

#[test]
fn invalid_graphs_are_reported_with_exit_code_1() {
    // A node reading a value defined after it: loads, but the verifier objects.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(repo_root().join("fixtures/tiny_mlp.onnx")).unwrap();
    let mut model = proto::ModelProto::decode(&good[..]).unwrap();
    model.graph.as_mut().unwrap().node.swap(0, 1);
    let path = dir.path().join("unsorted.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let out = inspect(&path, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("verifier: 1 problem(s)") && text.contains("not in topological order"), "{text}");
}

#[test]
fn closed_stdout_is_not_an_error() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_compactor"))
        .args(["inspect".as_ref(), compactor_tests::minilm().as_os_str(), "--graph".as_ref()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then drop: the pipe closes
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
