//! Text <-> ONNX in the CLI: `compactor convert`, and `optimize`/`inspect` reading and writing
//! `*.ctir` files; the converted model computes the same in onnxruntime.

use compactor_ir::Model;
use compactor_ir::text::{model_to_text, parse};
use compactor_tests::repo_root;
use std::path::Path;
use std::process::{Command, Output};

fn compactor(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).output().expect("run compactor")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn onnx_to_text_and_back_keeps_the_graph_and_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny_bert.onnx", "if_subgraph.onnx", "cleanup_zoo.onnx"] {
        let onnx = repo_root().join("fixtures").join(name);
        let text = dir.path().join(name.replace(".onnx", ".ctir"));
        let back = dir.path().join(name);
        let out = compactor(&["convert".as_ref(), &onnx, &text]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let written = std::fs::read_to_string(&text).unwrap();
        assert!(written.starts_with("model ir_version="), "{name}");
        let out = compactor(&["convert".as_ref(), &text, &back]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let (a, b) = (Model::load(&onnx).unwrap(), Model::load(&back).unwrap());
        assert_eq!(model_to_text(&a), model_to_text(&b), "{name}");
        if name != "if_subgraph.onnx" {
            // Every weight came through the text exactly: onnxruntime gives identical outputs.
            compactor_tests::compare_ort(&onnx, &back, 0.0, 0.0, "all", &[]);
        }
    }
}

#[test]
fn optimize_and_inspect_read_and_write_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ctir");
    std::fs::write(
        &input,
        "; a hand-written model\nmodel ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[4,8]\n  init %w = tensor<f32[8,16]> fill=seeded(1)\n  init %b = tensor<f32[16]> fill=seeded(2)\n  %i = Identity(%x)\n  %m = MatMul(%i, %w)\n  %y: f32[4,16] = Add(%m, %b)\n  output %y: f32[4,16]\n}\n",
    )
    .unwrap();
    let text_out = dir.path().join("out.ctir");
    let out = compactor(&["optimize".as_ref(), &input, "-o".as_ref(), &text_out, "--passes".as_ref(), "cleanup".as_ref()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = parse(&std::fs::read_to_string(&text_out).unwrap()).unwrap();
    let text = model_to_text(&result);
    assert!(text.contains("%y: f32[4,16] = Gemm(%x, %w, %b)"), "{text}");
    // The weights were written out in full: the seeded fill's values are there.
    let w = result.graph.main().initializers.iter().map(|&v| result.graph.value(v)).find(|v| v.name == "w").unwrap();
    let values = w.initializer.as_ref().unwrap().to_f32().unwrap();
    assert_eq!(values.len(), 128);
    assert!(values.iter().all(|v| (-1.0..1.0).contains(v)) && values.iter().any(|&v| v != 0.0));
    let onnx_out = dir.path().join("out.onnx");
    let out = compactor(&["optimize".as_ref(), &input, "-o".as_ref(), &onnx_out, "--passes".as_ref(), "cleanup".as_ref()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(model_to_text(&Model::load(&onnx_out).unwrap()), text);
    let out = compactor(&["inspect".as_ref(), &text_out]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Gemm"));
}

#[test]
fn bad_text_is_an_error_naming_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ctir");
    std::fs::write(&bad, "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  %y = Relu(%x)\n  output %y\n}\n").unwrap();
    let out = compactor(&["convert".as_ref(), &bad, &dir.path().join("x.onnx")]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("bad.ctir") && e.contains("line 3, column 13") && e.contains("%x is not defined"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    // A parsed but invalid graph is written, and the verifier's findings give exit code 1.
    let invalid = dir.path().join("invalid.ctir");
    std::fs::write(&invalid, "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2]\n  input %i: i64[2]\n  %y = Add(%x, %i)\n  output %y\n}\n").unwrap();
    let written = dir.path().join("invalid.onnx");
    let out = compactor(&["convert".as_ref(), &invalid, &written]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs one element type"), "{}", stderr(&out));
    assert!(written.exists());
}
