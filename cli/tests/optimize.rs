//! `compactor optimize` and `compactor passes` from the command line.

use compactor_tests::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn compactor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).output().expect("run compactor")
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const CLEANUP_NO_FOLD: &str = "lift-constants,eliminate-identity,fold-shapes,eliminate-dead-code,merge-duplicate-initializers,fuse-matmul-add";

#[test]
fn optimize_writes_the_model_and_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zoo.onnx");
    let report = dir.path().join("report.json");
    let o = compactor(&["optimize", s(&fixture("cleanup_zoo.onnx")), "-o", s(&out), "--passes", CLEANUP_NO_FOLD, "--report", s(&report), "--verify-each"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let passes = json["pipeline"]["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 6);
    assert_eq!(passes[1]["pass"], "eliminate-identity");
    assert_eq!(passes[1]["summary"], "removed 6 no-op nodes");
    assert_eq!(json["pipeline"]["before"]["nodes"], 23);
    assert_eq!(json["pipeline"]["after"]["nodes"], 11);
    assert_eq!(json["output"]["bytes"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
    assert!(json["input"]["bytes"].as_u64().unwrap() > json["output"]["bytes"].as_u64().unwrap());
    compactor_ir::Model::load(&out).unwrap();
    // The report is written like the model (it was left owner-only by its temporary file).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&report), mode(&out));
    }
}

#[test]
fn same_input_and_options_give_byte_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("{i}.onnx"))).collect();
    for out in &outs {
        let o = compactor(&["optimize", s(&fixture("tiny_bert.onnx")), "-o", s(out), "--passes", CLEANUP_NO_FOLD]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&outs[0]).unwrap(), std::fs::read(&outs[1]).unwrap());
}

#[test]
fn a_toml_pipeline_means_the_same_as_the_cli_string() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("pipeline.toml");
    let tables: String = CLEANUP_NO_FOLD.split(',').map(|p| format!("[[pass]]\nname = \"{p}\"\n")).collect();
    std::fs::write(&toml, tables).unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    assert!(compactor(&["optimize", s(&fixture("cleanup_zoo.onnx")), "-o", s(&a), "--passes", CLEANUP_NO_FOLD]).status.success());
    let o = compactor(&["optimize", s(&fixture("cleanup_zoo.onnx")), "-o", s(&b), "--pipeline", s(&toml)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn stop_after_and_dump_after() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = compactor(&["optimize", s(&fixture("cleanup_zoo.onnx")), "-o", s(&out), "--passes", CLEANUP_NO_FOLD, "--stop-after", "eliminate-identity", "--dump-after", "lift-constants"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dump = std::fs::read_to_string(dir.path().join("m.01-lift-constants.txt")).unwrap();
    assert!(dump.contains("init %c1 = tensor<f32[8]>"), "{dump}");
    // Stopped before fold-shapes: the Shape node is still there.
    let text = compactor_ir::model_to_text(&compactor_ir::Model::load(&out).unwrap());
    assert!(text.contains("= Shape(%r)") && !text.contains("Identity("), "{text}");
    // A --dump-dir that does not exist yet is made.
    let dumps = dir.path().join("dumps/nested");
    let o = compactor(&["optimize", s(&fixture("cleanup_zoo.onnx")), "-o", s(&out), "--passes", CLEANUP_NO_FOLD, "--dump-after", "lift-constants", "--dump-dir", s(&dumps)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dumps.join("m.01-lift-constants.txt").exists());
}

#[test]
fn bad_pipelines_exit_2_and_say_what_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let model = fixture("tiny_mlp.onnx");
    for (spec, needle) in [
        ("fold-constantz", "unknown pass 'fold-constantz'; valid passes and presets: "),
        ("fold-constants(max_bytes=0)", "option 'max_bytes': must be at least 1"),
        ("fold-constants(bytes=1)", "unknown option 'bytes'; valid options: max_bytes"),
        ("fold-constants(max_bytes", "expected '=' after option 'max_bytes'"),
    ] {
        let o = compactor(&["optimize", s(&model), "-o", s(&out), "--passes", spec]);
        assert_eq!(o.status.code(), Some(2), "{spec}");
        assert!(stderr(&o).contains(needle), "{spec}: {}", stderr(&o));
        assert!(!out.exists(), "nothing is written on error");
        if spec == "fold-constantz" {
            for name in compactor_passes::registry::passes().iter().map(|p| p.name).chain(["cleanup"]) {
                assert!(stderr(&o).contains(name), "{name} missing from: {}", stderr(&o));
            }
        }
    }
    let o = compactor(&["optimize", s(&model), "-o", s(&model), "--passes", "eliminate-dead-code"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("would overwrite the input"), "{}", stderr(&o));
}

#[test]
fn passes_lists_every_registered_pass() {
    let o = compactor(&["passes", "--json"]);
    assert!(o.status.success());
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = json["passes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let registered: Vec<&str> = compactor_passes::registry::passes().iter().map(|p| p.name).collect();
    assert_eq!(names, registered);
    let text = String::from_utf8(compactor(&["passes"]).stdout).unwrap();
    assert!(text.contains("max_bytes: integer = 1048576  Largest folded output"), "{text}");
}

#[test]
fn check_fails_without_writing_when_outputs_move_too_far() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let model = fixture("tiny_bert.onnx");
    let dims = ["--dim", "batch=2", "--dim", "seq=8"];
    // Cleanup keeps outputs: the check passes.
    let mut args = vec!["optimize", s(&model), "-o", s(&out), "--passes", "cleanup", "--check", "--max-error", "1e-5"];
    args.extend(dims);
    let o = compactor(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("check: output 'last_hidden_state'"), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();
    // int2 moves outputs far beyond 1e-5: exit 1 and no file.
    let mut args = vec!["optimize", s(&model), "-o", s(&out), "--passes", "quantize(bits=2)", "--check", "--max-error", "1e-5"];
    args.extend(dims);
    let o = compactor(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("check FAILED: output 'last_hidden_state': max abs error"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn calibration_from_a_directory_or_random() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny_bert.onnx");
    let out = dir.path().join("gptq.onnx");
    let o = compactor(&["optimize", s(&model), "-o", s(&out), "--passes", "quantize(method=gptq)", "--calibration", "random:4", "--dim", "batch=2", "--dim", "seq=8"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A directory with one subdirectory per batch of <input>.npy files (written by `compactor run`'s npy writer).
    let cal = dir.path().join("cal");
    for batch in ["a", "b"] {
        let d = cal.join(batch);
        std::fs::create_dir_all(&d).unwrap();
        let ids = compactor_runtime::TensorValue::from_i64(&[1, 6], &[1, 5, 9, 13, 2, 7]).unwrap();
        let mask = compactor_runtime::TensorValue::from_i64(&[1, 6], &[1, 1, 1, 1, 1, 0]).unwrap();
        compactor_runtime::npy::write_npy(&d.join("input_ids.npy"), &ids).unwrap();
        compactor_runtime::npy::write_npy(&d.join("attention_mask.npy"), &mask).unwrap();
    }
    let o = compactor(&["optimize", s(&model), "-o", s(&out), "--passes", "quantize(method=gptq)", "--calibration", s(&cal), "--report", s(&dir.path().join("r.json"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The batches reached GPTQ: every layer says it got it, with its loss and output error.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    let layers = report["pipeline"]["passes"][0]["details"]["layers"].as_array().unwrap_or_else(|| panic!("no layers in {report}"));
    assert!(!layers.is_empty());
    for l in layers {
        assert_eq!(l["method"], "gptq", "{l}");
        assert!(l["gptq_loss"].is_number() && l["output_error"].is_number(), "{l}");
    }
    let o = compactor(&["optimize", s(&model), "-o", s(&out), "--passes", "quantize(method=gptq)", "--calibration", s(&dir.path().join("missing"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    // Without --calibration, the error says which option gives it.
    let none = dir.path().join("none.onnx");
    let o = compactor(&["optimize", s(&model), "-o", s(&none), "--passes", "quantize(awq=true)"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("needs calibration data") && stderr(&o).contains("--calibration random:N"), "{}", stderr(&o));
    assert!(!none.exists());
}

/// The files of a saved model: the model and its data files, by name.
fn saved_files(dir: &Path, stem: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(stem))
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn streaming_rewrites_write_the_same_model_as_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Weights as external data, read through a memory map (whose pages streaming lets go).
    let model = dir.path().join("external.onnx");
    let o = compactor(&["optimize", s(&fixture("tiny_bert.onnx")), "-o", s(&model), "--passes", "eliminate-identity", "--external-data-threshold", "256"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let calibration: &[&str] = &["--calibration", "random:2", "--dim", "batch=1", "--dim", "seq=8"];
    let specs: [(&str, &[&str]); 7] = [
        ("quantize(bits=4,ops=[MatMul,Gather])", &[]),
        ("quantize(bits=4,format=matmulnbits,outliers=0.01)", &[]),
        ("quantize(bits=2,symmetric=false,block=16)", &["--external-data-threshold", "1024"]),
        ("quantize(bits=4,method=gptq)", calibration),
        ("factorize(method=svd,ratio=0.5,min_elements=0)", &["--external-data-threshold", "1024"]),
        ("factorize(method=svd-llm,ratio=0.5,min_elements=0)", calibration),
        ("factorize(method=mpo,rank=4,min_elements=0)", &[]),
    ];
    for (i, (spec, extra)) in specs.iter().enumerate() {
        let mut outputs = Vec::new();
        for stream in [false, true] {
            // Same file names (the model names its data file) in two directories.
            let out_dir = dir.path().join(format!("streaming_{stream}"));
            std::fs::create_dir_all(&out_dir).unwrap();
            let stem = format!("q{i}");
            let out = out_dir.join(format!("{stem}.onnx"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_compactor"));
            cmd.args(["optimize", s(&model), "-o", s(&out), "--passes", spec]).args(*extra).env("TMPDIR", dir.path());
            if stream {
                cmd.env("COMPACTOR_STREAM_MIN_BYTES", "0");
            }
            let o = cmd.output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{spec} (streaming: {stream}): {}", stderr(&o));
            outputs.push(saved_files(&out_dir, &stem));
        }
        assert!(
            outputs[0] == outputs[1],
            "{spec}: streaming wrote other files or bytes: {:?} vs {:?}",
            outputs[0].iter().map(|f| (&f.0, f.1.len())).collect::<Vec<_>>(),
            outputs[1].iter().map(|f| (&f.0, f.1.len())).collect::<Vec<_>>()
        );
    }
    // The scratch files are gone with the process.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_str().unwrap().starts_with(".compactor-scratch")).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Nested widths: one model per width next to the output (out.w50.onnx, out.w75.onnx), the
/// output itself the full width in saliency order; all three load in onnxruntime. Without
/// --calibration, score=activation says which option gives the data.
#[test]
fn prune_channels_widths_write_one_model_per_width() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mlp.ctir");
    std::fs::write(&input, "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[4,8]\n  init %w1 = tensor<f32[8,16]> fill=seeded(1)\n  init %b1 = tensor<f32[16]> fill=seeded(2)\n  init %w2 = tensor<f32[16,8]> fill=seeded(3)\n  %h = MatMul(%x, %w1)\n  %hb = Add(%h, %b1)\n  %a = Relu(%hb)\n  %y = MatMul(%a, %w2)\n  output %y\n}\n").unwrap();
    let out = dir.path().join("out.onnx");
    let o = compactor(&["optimize", s(&input), "-o", s(&out), "--passes", "infer-shapes,prune-channels(widths=[0.5,0.75],multiple=4)", "--calibration", "random:2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let feeds = compactor_tests::random_npy_inputs(&out, dir.path(), &[], 1);
    let (full, _) = compactor_tests::both_runtimes(&out, &feeds);
    for (name, width) in [("out.w50.onnx", 8), ("out.w75.onnx", 12)] {
        let path = dir.path().join(name);
        let model = compactor_ir::Model::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let w1 = model.graph.main().initializers.iter().find(|&&v| model.graph.value(v).name == "w1").copied().unwrap();
        assert_eq!(model.graph.constant(w1).unwrap().dims(), [8, width], "{name}");
        let (ort, ours) = compactor_tests::both_runtimes(&path, &feeds);
        assert!(compactor_tests::relative_difference(&ort, &ours) < 1e-5, "{name}");
        assert_eq!(ort[0].shape(), full[0].shape());
    }
    // The same input and options write the same bytes.
    let again = dir.path().join("again.onnx");
    let o = compactor(&["optimize", s(&input), "-o", s(&again), "--passes", "infer-shapes,prune-channels(widths=[0.5,0.75],multiple=4)", "--calibration", "random:2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.path().join("out.w50.onnx")).unwrap(), std::fs::read(dir.path().join("again.w50.onnx")).unwrap());
    let none = dir.path().join("none.onnx");
    let o = compactor(&["optimize", s(&input), "-o", s(&none), "--passes", "infer-shapes,prune-channels(score=activation)"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("score=activation") && stderr(&o).contains("--calibration random:N"), "{}", stderr(&o));
    assert!(!none.exists());
}
