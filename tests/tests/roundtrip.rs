//! ONNX -> IR -> ONNX with no passes must lose nothing: byte-identical files for canonical
//! inputs, and every written model accepted by onnx.checker and equal to its original as a
//! protobuf message (checked in Python, the reference implementation).

use compactor_ir::{Model, verify};
use compactor_tests::{node_test_dirs, real_models, run_python, short};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Round-trips each model into `out_dir`; returns (original, written) pairs and the failures.
fn round_trip_all(models: &[PathBuf], out_dir: &Path, name_of: impl Fn(&Path) -> String) -> (Vec<(PathBuf, PathBuf)>, Vec<String>) {
    let mut pairs = Vec::new();
    let mut failures = Vec::new();
    for original in models {
        let written = out_dir.join(name_of(original));
        let result = Model::load(original).and_then(|m| {
            if let Err(problems) = verify(&m) {
                failures.push(format!("{}: verifier: {problems}", short(original)));
            }
            // What `compactor inspect` shows must be computable for every model.
            let summary = compactor_ir::summary::summarize(&m, 10);
            if summary.nodes != m.graph.all_nodes().len() || !summary.problems.is_empty() {
                failures.push(format!("{}: summary disagrees with the graph", short(original)));
            }
            m.save(&written)
        });
        match result {
            Err(e) => failures.push(format!("{}: {e}", short(original))),
            Ok(_) => {
                if std::fs::read(original).unwrap() != std::fs::read(&written).unwrap() {
                    failures.push(format!("{}: written bytes differ from the original", short(original)));
                }
                pairs.push((original.clone(), written));
            }
        }
    }
    (pairs, failures)
}

fn python_check(pairs: &[(PathBuf, PathBuf)], dir: &Path) {
    let list = dir.join("pairs.tsv");
    let mut f = std::fs::File::create(&list).unwrap();
    for (a, b) in pairs {
        writeln!(f, "{}\t{}", a.display(), b.display()).unwrap();
    }
    drop(f);
    let out = run_python("check_roundtrip.py", &[list.as_os_str()]);
    assert!(out.contains(&format!("checked {} models, 0 failures", pairs.len())), "{out}");
}

#[test]
fn all_onnx_node_test_models_round_trip_losslessly() {
    let dirs = node_test_dirs();
    assert_eq!(dirs.len(), 1765, "the onnx 1.22.0 wheel ships 1765 node tests");
    let models: Vec<PathBuf> = dirs.iter().map(|d| d.join("model.onnx")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (pairs, failures) = round_trip_all(&models, tmp.path(), |p| format!("{}.onnx", p.parent().unwrap().file_name().unwrap().to_string_lossy()));
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), models.len(), failures.join("\n"));
    python_check(&pairs, tmp.path());
}

#[test]
fn real_models_round_trip_byte_identically() {
    let models = real_models();
    let tmp = tempfile::tempdir().unwrap();
    let (pairs, failures) = round_trip_all(&models, tmp.path(), |p| short(p).replace('/', "__"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(pairs.len(), models.len());
    python_check(&pairs, tmp.path());
}

#[test]
fn lifting_constants_keeps_values_and_removes_constant_nodes() {
    let path = compactor_tests::minilm();
    let plain = Model::load(&path).unwrap();
    let lifted = Model::load_with(&path, &compactor_ir::LoadOptions { lift_constants: true }).unwrap();
    let count = |m: &Model| m.graph.all_nodes().into_iter().filter(|&n| m.graph.node(n).is("Constant")).count();
    assert_eq!(count(&plain), 160);
    assert_eq!(count(&lifted), 0);
    assert_eq!(lifted.graph.all_nodes().len(), plain.graph.all_nodes().len() - 160);
    verify(&lifted).unwrap();
    // Every former Constant output is now an initializer with the same data.
    for n in plain.graph.all_nodes() {
        let node = plain.graph.node(n);
        if !node.is("Constant") {
            continue;
        }
        let v = node.output(0).unwrap();
        let before = plain.graph.constant(v).unwrap();
        let after = lifted.graph.constant(v).expect("lifted value is constant");
        assert!(before.content_eq(&after).unwrap(), "{}", plain.graph.value(v).name);
    }
}

/// A graph output that also has a `value_info` entry stating another type (onnxruntime's
/// optimizer writes one without the shape) keeps both as read: the output's declared shape is
/// what onnx.checker requires, and the entry is written back unchanged.
#[test]
fn an_output_repeated_in_value_info_with_another_type_round_trips() {
    use compactor_ir::proto;
    use prost::Message;
    let dim = |d: proto::tensor_shape_proto::dimension::Value| proto::tensor_shape_proto::Dimension { value: Some(d), ..Default::default() };
    let tensor_type = |shape: Option<proto::TensorShapeProto>| {
        Some(proto::TypeProto { value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor { elem_type: Some(1), shape })), ..Default::default() })
    };
    let shaped =
        tensor_type(Some(proto::TensorShapeProto { dim: vec![dim(proto::tensor_shape_proto::dimension::Value::DimValue(1)), dim(proto::tensor_shape_proto::dimension::Value::DimParam("n".into()))] }));
    let info = |name: &str, ty: Option<proto::TypeProto>| proto::ValueInfoProto { name: Some(name.into()), r#type: ty, ..Default::default() };
    let graph = proto::GraphProto {
        name: Some("g".into()),
        node: vec![proto::NodeProto { op_type: Some("Relu".into()), input: vec!["x".into()], output: vec!["y".into()], ..Default::default() }],
        input: vec![info("x", shaped.clone())],
        output: vec![info("y", shaped)],
        value_info: vec![info("y", tensor_type(None))],
        ..Default::default()
    };
    let model = proto::ModelProto { ir_version: Some(8), opset_import: vec![proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }], graph: Some(graph), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (original, written) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    std::fs::write(&original, model.encode_to_vec()).unwrap();
    let loaded = Model::load(&original).unwrap();
    let y = loaded.graph.main().outputs[0];
    assert_eq!(loaded.graph.value(y).ty.as_ref().and_then(|t| t.shape()).map(|s| s.rank()), Some(2), "the output keeps its declared shape");
    loaded.save(&written).unwrap();
    assert_eq!(std::fs::read(&original).unwrap(), std::fs::read(&written).unwrap());
}
