//! The pass framework: registry, option validation, pipelines, per-pass before/after
//! snapshots, pattern helpers, and numeric checks of the cleanup passes in onnxruntime.

use compactor_ir::{Model, model_to_text};
use compactor_passes::analysis::linear::linear_layers;
use compactor_passes::analysis::transformer::transformer_blocks;
use compactor_passes::analysis::{LayerId, LinearOp};
use compactor_passes::registry::{PRESETS, passes};
use compactor_passes::{PassError, Pipeline, RunOptions};
use compactor_tests::{minilm, repo_root};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

fn load(path: &Path) -> Model {
    Model::load(path).unwrap()
}

/// Runs a spec with the runtime's constant evaluator (as the CLI and the library facade do).
fn run(spec: &str, model: &mut Model) -> compactor_passes::PipelineReport {
    compactor::Pipeline::parse(spec).unwrap().run_with(model, RunOptions { verify_each: true, ..Default::default() }).unwrap()
}

#[test]
fn every_pass_is_listed_with_described_options() {
    let all = passes();
    assert!(all.len() >= 8);
    for p in &all {
        assert!(!p.summary.is_empty(), "{}", p.name);
        for o in p.options() {
            assert!(!o.description.is_empty(), "{}: option {} has no description", p.name, o.name);
            assert!(!o.default.is_null(), "{}: option {} has no default", p.name, o.name);
        }
        // Every pass builds from its defaults.
        p.build(&serde_json::Map::new()).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    let fold = all.iter().find(|p| p.name == "fold-constants").unwrap().options();
    assert_eq!(fold[0].name, "max_bytes");
    assert_eq!(fold[0].ty, "integer");
    assert_eq!(fold[0].default, serde_json::json!(1 << 20));
    for preset in PRESETS {
        assert!(all.iter().all(|p| p.name != preset.name), "preset {} shadows a pass", preset.name);
        Pipeline::parse(preset.spec).unwrap();
    }
}

#[test]
fn unknown_names_and_bad_values_are_rejected_with_what_is_valid() {
    let e = Pipeline::parse("fold-constants(max_byte=1)").err().unwrap();
    assert!(matches!(e, PassError::UnknownOption { .. }));
    assert_eq!(e.to_string(), "pass 'fold-constants': unknown option 'max_byte'; valid options: max_bytes");
    let e = Pipeline::parse("eliminate-dead-code(x=1)").err().unwrap().to_string();
    assert!(e.contains("valid options: (none)"), "{e}");
    let e = Pipeline::parse("fold-constants(max_bytes=lots)").err().unwrap().to_string();
    assert!(e.starts_with("pass 'fold-constants': option 'max_bytes': invalid type: string \"lots\""), "{e}");
    let e = Pipeline::parse("fold-constants(max_bytes=0)").err().unwrap().to_string();
    assert_eq!(e, "pass 'fold-constants': option 'max_bytes': must be at least 1");
    let e = Pipeline::parse("quantise").err().unwrap().to_string();
    assert!(e.contains("unknown pass 'quantise'") && e.contains("eliminate-dead-code") && e.contains("cleanup"), "{e}");
    let e = Pipeline::from_toml("[[pass]]\nname = \"fold-constants\"\nmax_bytes = \"x\"\n").err().unwrap().to_string();
    assert!(e.contains("option 'max_bytes'"), "{e}");
}

/// Runs one pass on a fixture and returns the text before, after, and the pass's summary.
fn before_after(pass: &str, fixture_name: &str) -> String {
    let mut model = load(&fixture(fixture_name));
    let before = model_to_text(&model);
    let report = run(pass, &mut model);
    let after = model_to_text(&model);
    let summaries: Vec<String> = report.passes.iter().map(|p| format!("{}: {}", p.pass, p.summary)).collect();
    format!("--- {fixture_name} before\n{before}--- after {pass}\n{}\n{after}", summaries.join("\n"))
}

#[test]
fn snapshot_lift_constants() {
    insta::assert_snapshot!(before_after("lift-constants", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_eliminate_identity() {
    insta::assert_snapshot!(before_after("eliminate-identity", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_fold_shapes() {
    insta::assert_snapshot!(before_after("fold-shapes", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_fold_constants() {
    insta::assert_snapshot!(before_after("fold-constants", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_cleanup_preset() {
    insta::assert_snapshot!(before_after("cleanup", "cleanup_zoo.onnx"));
}

#[test]
fn fold_constants_needs_an_evaluator_and_respects_its_size_cap() {
    let mut model = load(&fixture("cleanup_zoo.onnx"));
    let e = Pipeline::parse("fold-constants").unwrap().run(&mut model).err().unwrap().to_string();
    assert!(e.contains("needs a constant evaluator"), "{e}");
    // The Add of two 8-float constants is 32 bytes: a cap of 16 keeps it.
    let report = run("fold-constants(max_bytes=16)", &mut model);
    assert!(report.passes[0].summary.contains("1 left: output over 16 bytes"), "{}", report.passes[0].summary);
}

#[test]
fn snapshot_eliminate_dead_code() {
    insta::assert_snapshot!(before_after("eliminate-dead-code", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_merge_duplicate_initializers() {
    insta::assert_snapshot!(before_after("merge-duplicate-initializers", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_fuse_matmul_add() {
    insta::assert_snapshot!(before_after("fuse-matmul-add", "cleanup_zoo.onnx"));
}

#[test]
fn snapshot_infer_shapes() {
    insta::assert_snapshot!(before_after("infer-shapes", "tiny_mlp.onnx"));
}

#[test]
fn snapshot_upgrade_opset() {
    insta::assert_snapshot!(before_after("upgrade-opset(version=21)", "opset11_zoo.onnx"));
    // The rewritten graph computes the same in onnxruntime.
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&fixture("opset11_zoo.onnx"));
    run("upgrade-opset(version=21)", &mut model);
    let out = dir.path().join("upgraded.onnx");
    model.save(&out).unwrap();
    compactor_tests::compare_ort(&fixture("opset11_zoo.onnx"), &out, 1e-6, 1e-5, "all", &[]);
}

/// An analysis pass: the graph is unchanged; the snapshot is its report.
#[test]
fn snapshot_find_layers() {
    let mut model = load(&fixture("tiny_bert.onnx"));
    let before = model_to_text(&model);
    let report = run("find-layers", &mut model);
    assert_eq!(model_to_text(&model), before);
    let pass = &report.passes[0];
    assert!(!pass.changed);
    insta::assert_snapshot!(format!("{}\n{}", pass.summary, serde_json::to_string_pretty(&pass.details).unwrap()));
}

#[test]
fn dead_code_in_and_around_subgraphs() {
    // The If reads `w` and `x` from inside its branches: both stay; the whole If goes when unused.
    let mut model = load(&fixture("if_subgraph.onnx"));
    let report = run("eliminate-dead-code", &mut model);
    assert!(!report.passes[0].changed, "{}", report.passes[0].summary);
    let main_outputs = std::mem::take(&mut model.graph.main_mut().outputs);
    let report = run("eliminate-dead-code", &mut model);
    assert_eq!(report.passes[0].summary, "removed 1 dead nodes and 1 unused initializers");
    assert_eq!(model.graph.region_ids().count(), 1, "the branches go with the If");
    assert_eq!(main_outputs.len(), 1);
}

#[test]
fn cleanup_passes_keep_outputs_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["cleanup_zoo.onnx", "tiny_mlp.onnx", "tiny_bert.onnx", "if_subgraph.onnx"] {
        let mut model = load(&fixture(name));
        let report = run("cleanup", &mut model);
        let out = dir.path().join(name);
        model.save(&out).unwrap();
        if name != "if_subgraph.onnx" {
            compactor_tests::compare_ort(&fixture(name), &out, 1e-6, 1e-5, "all", &[]);
        }
        assert!(report.after.nodes <= report.before.nodes, "{name}");
    }
    let mut zoo = load(&fixture("cleanup_zoo.onnx"));
    let report = run("cleanup", &mut zoo);
    // Everything the shape computation and the constants did is folded, and the Reshape to the
    // (now constant) shape its input already has goes too. Left: the Gemm, Relu, the two branch
    // MatMuls reading one merged weight, their Add, and the Mul by the folded constant.
    assert_eq!((report.before.nodes, report.after.nodes), (23, 6), "{}", model_to_text(&zoo));
    assert_eq!(zoo.graph.main().initializers.iter().filter(|&&v| zoo.graph.value(v).name.starts_with("w2")).count(), 1);
}

#[test]
fn cleanup_passes_keep_minilm_outputs_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "cleanup";
    let mut model = load(&minilm());
    let report = run(spec, &mut model);
    assert!(report.after.nodes < report.before.nodes);
    let out = dir.path().join("minilm.onnx");
    model.save(&out).unwrap();
    // Same kernels, same graph computation: results must be bit-identical.
    compactor_tests::compare_ort(&minilm(), &out, 0.0, 0.0, "all", &compactor_tests::model_inputs(&minilm()));
}

#[test]
fn pipeline_stops_dumps_and_reports() {
    let mut model = load(&fixture("cleanup_zoo.onnx"));
    let mut dumps = Vec::new();
    let mut on_dump = |pass: &str, index: usize, text: &str| dumps.push((pass.to_string(), index, text.len()));
    let report = Pipeline::parse("lift-constants,eliminate-identity,eliminate-dead-code")
        .unwrap()
        .run_with(&mut model, RunOptions { stop_after: Some("eliminate-identity".into()), dump_after: vec!["lift-constants".into()], on_dump: Some(&mut on_dump), ..Default::default() })
        .unwrap();
    assert_eq!(report.passes.len(), 2);
    assert_eq!(report.stopped_after.as_deref(), Some("eliminate-identity"));
    assert_eq!(dumps.len(), 1);
    assert_eq!((dumps[0].0.as_str(), dumps[0].1), ("lift-constants", 0));
    assert!(report.passes[0].changed && report.passes[0].after.nodes + 2 == report.passes[0].before.nodes);
    let e = Pipeline::parse("lift-constants").unwrap().run_with(&mut model, RunOptions { stop_after: Some("fold-shapes".into()), ..Default::default() }).err().unwrap().to_string();
    assert!(e.contains("--stop-after 'fold-shapes': no such pass"), "{e}");
}

#[test]
fn linear_layers_are_found_however_they_were_exported() {
    let mlp = load(&fixture("tiny_mlp.onnx"));
    let layers = linear_layers(&mlp.graph);
    let layers = layers.as_slice();
    assert_eq!(layers.len(), 2);
    assert_eq!((layers[0].op, layers[0].in_features, layers[0].out_features, layers[0].weight.transposed), (LinearOp::MatMul, 64, 128, false));
    assert!(layers[0].bias.as_ref().unwrap().add.is_some());
    assert_eq!((layers[1].op, layers[1].in_features, layers[1].out_features, layers[1].weight.transposed), (LinearOp::Gemm, 128, 32, true));
    assert!(layers[1].bias.as_ref().unwrap().add.is_none());

    let m = load(&minilm());
    let layers = linear_layers(&m.graph);
    let layers = layers.as_slice();
    assert_eq!(layers.len(), 36, "6 layers x (q, k, v, o, up, down)");
    assert!(layers.iter().all(|l| l.bias.is_some() && l.op == LinearOp::MatMul));
    assert_eq!(layers.iter().filter(|l| (l.in_features, l.out_features) == (384, 1536)).count(), 6);
}

#[test]
fn transformer_blocks_of_minilm_and_tiny_bert() {
    for (path, blocks_expected, hidden, ffn) in [(minilm(), 6, 384, 1536), (fixture("tiny_bert.onnx"), 2, 64, 128)] {
        let model = load(&path);
        let layers = linear_layers(&model.graph);
        let blocks = transformer_blocks(&model.graph);
        assert_eq!(blocks.len(), blocks_expected, "{}", path.display());
        for (i, b) in blocks.iter().enumerate() {
            let name = |l: LayerId| layers[l].label(&model.graph);
            let a = &b.attention;
            for (l, role) in [(a.q, "query"), (a.k, "key"), (a.v, "value")] {
                assert_eq!((layers[l].in_features, layers[l].out_features), (hidden, hidden));
                assert!(name(l).contains(role), "block {i}: {role} is {}", name(l));
            }
            assert!(name(a.o).contains("output"), "block {i}: o is {}", name(a.o));
            let f = b.ffn.as_ref().expect("every block has an FFN");
            assert_eq!((layers[f.up].in_features, layers[f.up].out_features), (hidden, ffn));
            assert_eq!((layers[f.down].in_features, layers[f.down].out_features), (ffn, hidden));
            assert!(f.gate.is_none());
            assert_eq!((b.norms.len(), b.residual_adds.len()), (2, 2), "block {i}");
            assert!(name(a.q).contains(&format!("layer.{i}")), "{}", name(a.q));
        }
    }
}

/// Llama-style blocks in the four SmolLM2 graphs: q and k reached back through the rotary
/// embedding (primitive ops or com.microsoft RotaryEmbedding), k and v through the repeated KV
/// heads and the KV cache's Concat, or from com.microsoft GroupQueryAttention; gated FFNs.
#[test]
fn transformer_blocks_of_the_smollm2_graphs() {
    let dir = compactor_tests::test_data().join("smollm2");
    for graph in ["prefill", "decode", "prefill_fused", "decode_fused"] {
        let model = load(&dir.join(format!("{graph}.onnx")));
        let layers = linear_layers(&model.graph);
        let blocks = transformer_blocks(&model.graph);
        assert_eq!(blocks.len(), 30, "{graph}");
        for (i, b) in blocks.iter().enumerate() {
            let name = |l: LayerId| model.graph.value(layers[l].weight.value).name.clone();
            let a = &b.attention;
            for (l, role) in [(a.q, "q_proj"), (a.k, "k_proj"), (a.v, "v_proj"), (a.o, "o_proj")] {
                assert!(name(l).contains(&format!("layers.{i}.")) && name(l).contains(role), "{graph} block {i}: {role} is {}", name(l));
            }
            assert_eq!((layers[a.k].in_features, layers[a.k].out_features), (576, 192), "{graph}: three KV heads of 64");
            let f = b.ffn.as_ref().expect("every block has an FFN");
            for (l, role) in [(f.gate.expect("a gated FFN"), "gate_proj"), (f.up, "up_proj"), (f.down, "down_proj")] {
                assert!(name(l).contains(&format!("layers.{i}.")) && name(l).contains(role), "{graph} block {i}: {role} is {}", name(l));
            }
        }
    }
}

#[test]
fn cleanup_output_is_deterministic() {
    let spec = "lift-constants,eliminate-identity,fold-shapes,eliminate-dead-code,merge-duplicate-initializers";
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..2 {
        let mut model = load(&minilm());
        run(spec, &mut model);
        let out = dir.path().join(format!("{i}.onnx"));
        model.save(&out).unwrap();
        files.push(std::fs::read(out).unwrap());
    }
    assert!(files[0] == files[1]);
}

/// Cleanup after quantization keeps the quantized weights: folding a weight's
/// DequantizeLinear would store it in f32 again (and onnxruntime matches `DequantizeLinear ->
/// MatMul` to run its quantized kernels).
#[test]
fn cleanup_after_quantize_keeps_weights_quantized() {
    let mut model = load(&fixture("tiny_bert.onnx"));
    run("quantize(bits=4)", &mut model);
    let count = |m: &Model| model_to_text(m).matches("= DequantizeLinear(").count();
    let quantized = count(&model);
    assert!(quantized > 0, "the fixture has quantized weights");
    run("cleanup", &mut model);
    assert_eq!(count(&model), quantized, "cleanup folded DequantizeLinear nodes");
}
