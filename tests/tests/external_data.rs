//! External data: read lazily, written back at the same offsets, inlined, or split out by a
//! size threshold; models over protobuf's 2 GiB limit.

use compactor_ir::proto;
use compactor_ir::{ExternalDataPolicy, IrError, Model, SaveOptions};
use compactor_tests::{repo_root, run_python};
use prost::Message;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// `src` saved by the onnx package with its tensors in `dir/weights.bin`.
fn onnx_external_copy(src: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("model.onnx");
    run_python("external_data.py", &["to-external".as_ref(), src.as_os_str(), out.as_os_str(), "weights.bin".as_ref()]);
    out
}

fn save(model: &Model, path: &Path, policy: ExternalDataPolicy) -> compactor_ir::SaveReport {
    model.save_with(path, &SaveOptions { external_data: policy, sync: false }).unwrap()
}

#[test]
fn external_data_written_by_onnx_round_trips_byte_identically() {
    for src in [fixture("tiny_bert.onnx"), compactor_tests::minilm()] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let external = onnx_external_copy(&src, a.path());
        let model = Model::load(&external).unwrap();
        let inline = Model::load(&src).unwrap();
        // Lazily mapped external tensors hold exactly the inline data.
        let weights = compactor_ir::summary::weights(&model.graph);
        let inline_weights = compactor_ir::summary::weights(&inline.graph);
        assert_eq!(weights.len(), inline_weights.len());
        assert!(weights.iter().any(|(_, t)| t.external().is_some()));
        for ((name, t), (_, u)) in weights.iter().zip(&inline_weights) {
            assert!(t.content_eq(u).unwrap(), "{name}");
        }
        let report = save(&model, &b.path().join("model.onnx"), ExternalDataPolicy::Preserve);
        assert_eq!(report.external_files.len(), 1);
        assert_eq!(std::fs::read(&external).unwrap(), std::fs::read(b.path().join("model.onnx")).unwrap());
        assert_eq!(std::fs::read(a.path().join("weights.bin")).unwrap(), std::fs::read(b.path().join("weights.bin")).unwrap());
    }
}

#[test]
fn inlining_external_data_restores_the_original_file() {
    let a = tempfile::tempdir().unwrap();
    let src = fixture("tiny_bert.onnx");
    let model = Model::load(onnx_external_copy(&src, a.path())).unwrap();
    let out = a.path().join("inline.onnx");
    let report = save(&model, &out, ExternalDataPolicy::Inline);
    assert!(report.external_files.is_empty());
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
}

#[test]
fn threshold_policy_output_is_accepted_by_onnx_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny_bert.onnx");
    let out = dir.path().join("split.onnx");
    let model = Model::load(&src).unwrap();
    save(&model, &out, ExternalDataPolicy::Threshold { min_bytes: 4096, location: "split.data".into() });
    // Big tensors moved out at page-aligned offsets, small ones stayed inline.
    let reloaded = Model::load(&out).unwrap();
    let weights = compactor_ir::summary::weights(&reloaded.graph);
    let (external, inline): (Vec<_>, Vec<_>) = weights.iter().partition(|(_, t)| t.external().is_some());
    assert!(!external.is_empty() && !inline.is_empty());
    for (name, t) in &external {
        let ext = t.external().unwrap();
        assert_eq!(ext.offset % 4096, 0, "{name} at {}", ext.offset);
        assert!(t.data_bytes() >= 4096, "{name}");
    }
    for (name, t) in &inline {
        assert!(t.data_bytes() < 4096, "{name}");
    }
    let out_text = run_python("external_data.py", &["check".as_ref(), src.as_os_str(), out.as_os_str()]);
    assert!(out_text.starts_with("ok:"), "{out_text}");
}

#[test]
fn external_data_errors_name_the_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx_external_copy(&fixture("tiny_mlp.onnx"), dir.path());
    // Truncated data file: the tensor that no longer fits is named.
    let data = dir.path().join("weights.bin");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len - 8).unwrap();
    let err = Model::load(&model).unwrap_err().to_string();
    assert!(err.contains("model.onnx") && err.contains("weights.bin") && err.contains("tensor '"), "{err}");
    // Missing data file.
    std::fs::remove_file(&data).unwrap();
    let err = Model::load(&model).unwrap_err();
    assert!(matches!(err, IrError::ExternalData { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn external_locations_outside_the_model_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for location in ["../escape.bin", "/etc/passwd"] {
        let path = write_external_model(dir.path(), &[(location, 0, 4)]);
        let err = Model::load(&path).unwrap_err().to_string();
        assert!(err.contains("relative path inside the model's directory"), "{location}: {err}");
    }
}

/// A model whose initializers `w{i}` (f32, 1-D) live in external files at the given places,
/// used by `y = x + sum(w0) + sum(w1) + ...`.
fn write_external_model(dir: &Path, tensors: &[(&str, u64, u64)]) -> PathBuf {
    let entry = |k: &str, v: String| proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let mut graph = proto::GraphProto { name: Some("external".into()), ..Default::default() };
    let f32_info = |name: &str, dims: &[i64]| proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(proto::TensorShapeProto {
                    dim: dims.iter().map(|&d| proto::tensor_shape_proto::Dimension { value: Some(proto::tensor_shape_proto::dimension::Value::DimValue(d)), denotation: None }).collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    };
    graph.input.push(f32_info("x", &[1]));
    let mut acc = "x".to_string();
    for (i, (location, offset, bytes)) in tensors.iter().enumerate() {
        let name = format!("w{i}");
        graph.initializer.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: vec![(*bytes / 4) as i64],
            data_type: Some(1),
            data_location: Some(1),
            external_data: vec![entry("location", location.to_string()), entry("offset", offset.to_string()), entry("length", bytes.to_string())],
            ..Default::default()
        });
        let node = |op: &str, inputs: Vec<String>, output: String| proto::NodeProto { op_type: Some(op.into()), input: inputs, output: vec![output], ..Default::default() };
        graph.node.push(node("ReduceSum", vec![name.clone()], format!("s{i}")));
        graph.node.push(node("Add", vec![acc.clone(), format!("s{i}")], format!("a{i}")));
        acc = format!("a{i}");
    }
    graph.output.push(f32_info(&acc, &[1]));
    let model = proto::ModelProto { ir_version: Some(8), opset_import: vec![proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(12) }], graph: Some(graph), ..Default::default() };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

/// Writes `value` as f32 at `offset` of `file` (which is sparse elsewhere).
fn poke(file: &std::fs::File, offset: u64, value: f32) {
    use std::os::unix::fs::FileExt;
    file.write_all_at(&value.to_le_bytes(), offset).unwrap();
}

#[test]
fn models_over_two_gigabytes_keep_their_data_external() {
    const TENSOR: u64 = 1_100 * 1024 * 1024; // two of these exceed protobuf's 2 GiB
    let src = tempfile::tempdir().unwrap();
    let data = std::fs::File::create(src.path().join("big.bin")).unwrap();
    data.set_len(2 * TENSOR).unwrap(); // sparse: costs no disk until written
    poke(&data, 0, 1.5);
    poke(&data, TENSOR - 4, 2.5);
    poke(&data, TENSOR, 3.5); // past the 1 GiB mark
    poke(&data, 2 * TENSOR - 4, 4.5); // past 2 GiB: needs 64-bit offsets end to end
    drop(data);
    let path = write_external_model(src.path(), &[("big.bin", 0, TENSOR), ("big.bin", TENSOR, TENSOR)]);
    let model = Model::load(&path).unwrap();
    compactor_ir::verify(&model).unwrap();

    // All inline would need more than 2 GiB of protobuf: refused before anything is written.
    let out = tempfile::tempdir().unwrap();
    let inline = out.path().join("inline.onnx");
    let err = model.save_with(&inline, &SaveOptions { external_data: ExternalDataPolicy::Inline, sync: false }).unwrap_err();
    assert!(matches!(err, IrError::TooLargeForProtobuf { .. }), "{err}");
    assert!(err.to_string().contains("external data"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing may be left behind");

    // Preserved external data (named after the output): same offsets, values intact past 2 GiB.
    let kept = out.path().join("kept.onnx");
    save(&model, &kept, ExternalDataPolicy::Preserve);
    let reloaded = Model::load(&kept).unwrap();
    let w1 = reloaded.graph.value(reloaded.graph.main().initializers[1]).initializer.clone().unwrap();
    assert_eq!(w1.external().unwrap().offset, TENSOR);
    let raw = w1.raw_data().unwrap();
    assert_eq!(f32::from_le_bytes(raw[..4].try_into().unwrap()), 3.5);
    assert_eq!(f32::from_le_bytes(raw[raw.len() - 4..].try_into().unwrap()), 4.5);
    let w0 = reloaded.graph.value(reloaded.graph.main().initializers[0]).initializer.clone().unwrap().raw_data().unwrap();
    assert_eq!(f32::from_le_bytes(w0[..4].try_into().unwrap()), 1.5);
    assert_eq!(f32::from_le_bytes(w0[w0.len() - 4..].try_into().unwrap()), 2.5);
    assert_eq!(std::fs::metadata(out.path().join("kept.onnx.data")).unwrap().len(), 2 * TENSOR);
}

/// Saving next to the input must not replace the input's data file: with `Preserve` the output
/// would keep the input's `weights.bin` name, and with a threshold a caller may name it; either
/// way the output's data goes to a file of its own and the input model still loads, intact.
#[test]
fn saving_next_to_the_input_keeps_the_inputs_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny_bert.onnx");
    let input = onnx_external_copy(&src, dir.path());
    let weights_before = std::fs::read(dir.path().join("weights.bin")).unwrap();
    let model = Model::load(&input).unwrap();
    for (out, policy, expected) in
        [("kept.onnx", ExternalDataPolicy::Preserve, "kept.onnx.data"), ("split.onnx", ExternalDataPolicy::Threshold { min_bytes: 1024, location: "weights.bin".into() }, "split.onnx.data")]
    {
        let out = dir.path().join(out);
        let report = save(&model, &out, policy);
        assert_eq!(report.external_files.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(), [expected]);
        assert_eq!(std::fs::read(dir.path().join("weights.bin")).unwrap(), weights_before, "{}", out.display());
        // Both models load and hold the original weights.
        let original = Model::load(&src).unwrap();
        for path in [&input, &out] {
            let reloaded = Model::load(path).unwrap();
            let (a, b) = (compactor_ir::summary::weights(&reloaded.graph), compactor_ir::summary::weights(&original.graph));
            assert_eq!(a.len(), b.len());
            for ((name, t), (_, u)) in a.iter().zip(&b) {
                assert!(t.content_eq(u).unwrap(), "{}: {name}", path.display());
            }
        }
    }
    // Copied under the same file name into another directory, the output keeps its data file's
    // name; under another file name, its data is named after it.
    let other = tempfile::tempdir().unwrap();
    let kept = Model::load(dir.path().join("kept.onnx")).unwrap();
    let report = save(&kept, &other.path().join("kept.onnx"), ExternalDataPolicy::Preserve);
    assert_eq!(report.external_files[0].0.file_name().unwrap(), "kept.onnx.data");
    let report = save(&kept, &other.path().join("again.onnx"), ExternalDataPolicy::Preserve);
    assert_eq!(report.external_files[0].0.file_name().unwrap(), "again.onnx.data");
}

/// Several outputs of one model written into one directory (`a.onnx`, `b.onnx`) must not share
/// the input's data file name: the later save would replace the earlier output's data.
#[test]
fn outputs_written_into_one_directory_keep_their_own_data() {
    let src_dir = tempfile::tempdir().unwrap();
    let input = onnx_external_copy(&fixture("tiny_bert.onnx"), src_dir.path());
    let original = Model::load(&input).unwrap();
    // The second output holds different weights, so a shared data file would show.
    let mut changed = Model::load(&input).unwrap();
    let first =
        changed.graph.main().initializers.iter().copied().find(|&v| changed.graph.value(v).initializer.as_ref().is_some_and(|t| t.external().is_some() && t.dtype() == compactor_ir::DataType::Float));
    let first = first.expect("an external f32 weight");
    let tensor = changed.graph.value(first).initializer.clone().unwrap();
    let values: Vec<f32> = tensor.to_f32().unwrap().iter().map(|v| v + 1.0).collect();
    let name = changed.graph.value(first).name.clone();
    changed.graph.value_mut(first).initializer = Some(compactor_ir::Tensor::from_f32(tensor.dims(), &values).unwrap().with_name(Some(name)));
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a.onnx"), out.path().join("b.onnx"));
    let report_a = save(&original, &a, ExternalDataPolicy::Preserve);
    let report_b = save(&changed, &b, ExternalDataPolicy::Preserve);
    assert_eq!(report_a.external_files[0].0.file_name().unwrap(), "a.onnx.data");
    assert_eq!(report_b.external_files[0].0.file_name().unwrap(), "b.onnx.data");
    let (ra, rb) = (Model::load(&a).unwrap(), Model::load(&b).unwrap());
    for (reloaded, expected) in [(&ra, &original), (&rb, &changed)] {
        let (x, y) = (compactor_ir::summary::weights(&reloaded.graph), compactor_ir::summary::weights(&expected.graph));
        assert_eq!(x.len(), y.len());
        for ((name, t), (_, u)) in x.iter().zip(&y) {
            assert!(t.content_eq(u).unwrap(), "{name}");
        }
    }
}

/// A tensor that no longer reads the data file (a pass replaced it) leaves a gap that the
/// output's data file does not keep: the tensors after it move down, keeping their alignment.
#[test]
fn external_data_of_replaced_tensors_is_not_written_back() {
    const BIG: u64 = 4 << 20;
    let src = tempfile::tempdir().unwrap();
    let data = std::fs::File::create(src.path().join("w.bin")).unwrap();
    data.set_len(4096 + BIG + 8192).unwrap();
    poke(&data, 0, 1.25);
    poke(&data, 4096 + BIG, 2.5);
    poke(&data, 4096 + BIG + 8188, 3.75);
    drop(data);
    let path = write_external_model(src.path(), &[("w.bin", 0, 4096), ("w.bin", 4096, BIG), ("w.bin", 4096 + BIG, 8192)]);
    let mut model = Model::load(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    // Unchanged, the layout is kept as it was.
    save(&model, &out.path().join("same.onnx"), ExternalDataPolicy::Preserve);
    assert_eq!(std::fs::metadata(out.path().join("same.onnx.data")).unwrap().len(), 4096 + BIG + 8192);
    let w1 = model.graph.main().initializers[1];
    model.graph.value_mut(w1).initializer = Some(compactor_ir::Tensor::from_f32(&[BIG / 4], &vec![0.5; (BIG / 4) as usize]).unwrap());
    let kept = out.path().join("kept.onnx");
    save(&model, &kept, ExternalDataPolicy::Preserve);
    assert_eq!(std::fs::metadata(out.path().join("kept.onnx.data")).unwrap().len(), 4096 + 8192);
    let reloaded = Model::load(&kept).unwrap();
    let g = &reloaded.graph;
    let tensor = |i: usize| g.value(g.main().initializers[i]).initializer.clone().unwrap();
    assert_eq!(tensor(2).external().unwrap().offset, 4096);
    assert_eq!(tensor(0).to_f32().unwrap()[0], 1.25);
    let w2 = tensor(2).to_f32().unwrap();
    assert_eq!((w2[0], w2[2047]), (2.5, 3.75));
    assert!(tensor(1).external().is_none());
}
