//! Micro-expert scores and pruning (CAMERA-P) on dense FFNs: the pass's scores equal an
//! independent onnxruntime + NumPy computation of each formula (tests/py/micro_expert_reference.py);
//! ratio 0 is the identity; sequential pruning scores later layers on the pruned ones'
//! activations; pruned models verify and run alike in both runtimes. Fixtures: tiny_bert (GELU
//! FFN, weights [in, out], biases) and SmolLM2 (SwiGLU FFN, gate/up/down).

use compactor::{Pipeline, RuntimeCalibrator};
use compactor_ir::Model;
use compactor_passes::analysis::experts::FfnExperts;
use compactor_passes::analysis::{Analyses, LinearLayers};
use compactor_passes::{PipelineReport, RunOptions};
use compactor_runtime::{SessionOptions, TensorValue, npy};
use compactor_tests::{both_runtimes, random_npy_inputs, relative_difference, repo_root, run_python, test_data};
use std::path::Path;

const RHO: f64 = 0.9;

fn options() -> SessionOptions {
    SessionOptions { threads: 2, ..Default::default() }
}

fn run(model: &mut Model, spec: &str, calibration: Option<&Path>) -> PipelineReport {
    let mut pipeline = Pipeline::parse(spec).unwrap();
    if let Some(dir) = calibration {
        pipeline = pipeline.with_calibration(RuntimeCalibrator::from_dir(dir, options()).unwrap());
    }
    pipeline.run_with(model, RunOptions { verify_each: true, ..Default::default() }).unwrap()
}

/// Writes `batches` (each a list of named inputs) as `dir/NNN/<input>.npy`.
fn write_batches(dir: &Path, batches: &[Vec<(String, TensorValue)>]) {
    for (i, batch) in batches.iter().enumerate() {
        let d = dir.join(format!("{i:03}"));
        std::fs::create_dir_all(&d).unwrap();
        for (name, value) in batch {
            npy::write_npy(&d.join(format!("{name}.npy")), value).unwrap();
        }
    }
}

fn tiny_bert() -> Model {
    Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap()
}

fn tiny_bert_batches(dir: &Path) {
    let model = tiny_bert();
    let dims = [("batch".to_string(), 2), ("seq".to_string(), 8)];
    let batches: Vec<_> = (0..3).map(|seed| compactor_runtime::inputs::random_inputs(&model, &dims, seed).unwrap()).collect();
    write_batches(dir, &batches);
}

/// Two batches of 48 real tokens of the calibration text.
fn smollm2_batches(dir: &Path) {
    let text = npy::read_npy(&test_data().join("smollm2/text_calibration.npy")).unwrap().to_f64_vec().unwrap();
    let batches: Vec<_> = (0..2)
        .map(|b| {
            let ids: Vec<i64> = text[b * 48..(b + 1) * 48].iter().map(|&t| t as i64).collect();
            vec![
                ("input_ids".to_string(), TensorValue::from_i64(&[1, 48], &ids).unwrap()),
                ("attention_mask".to_string(), TensorValue::from_i64(&[1, 48], &[1; 48]).unwrap()),
                ("position_ids".to_string(), TensorValue::from_i64(&[1, 48], &(0..48).collect::<Vec<i64>>()).unwrap()),
            ]
        })
        .collect();
    write_batches(dir, &batches);
}

/// The FFN layers as the reference script reads them (value and initializer names).
fn layer_spec(model: &Model) -> serde_json::Value {
    let mut analyses = Analyses::new();
    let experts = analyses.get::<FfnExperts>(&model.graph);
    let layers = analyses.get::<LinearLayers>(&model.graph);
    let g = &model.graph;
    let name = |v| g.value(v).name.clone();
    let spec: Vec<serde_json::Value> = experts
        .iter()
        .map(|l| {
            let w = |id| &layers[id];
            let experts: Vec<serde_json::Value> = l
                .experts
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "hidden": name(e.hidden),
                        "gate": e.gate.map(|id| name(w(id).weight.value)),
                        "up": name(w(e.up).weight.value),
                        "down": name(w(e.down).weight.value),
                        "transposed": [e.gate.is_some_and(|id| w(id).weight.transposed), w(e.up).weight.transposed, w(e.down).weight.transposed],
                        "routing": e.routing.map(name),
                    })
                })
                .collect();
            serde_json::json!({ "input": name(l.input), "experts": experts })
        })
        .collect();
    serde_json::Value::Array(spec)
}

/// Every score of the pass against the reference, neuron by neuron (relative to each layer's
/// largest score).
fn scores_match_reference(model_path: &Path, calibration: &Path, expected_layers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(model_path).unwrap();
    let spec = layer_spec(&model);
    assert_eq!(spec.as_array().unwrap().len(), expected_layers, "FFN layers found");
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let rho = RHO.to_string();
    let reference: serde_json::Value = serde_json::from_str(&run_python("micro_expert_reference.py", &[model_path.as_os_str(), spec_path.as_os_str(), calibration.as_os_str(), rho.as_ref()])).unwrap();
    for score in ["camera", "activation", "magnitude", "wanda"] {
        let mut m = model.clone();
        let report = run(&mut m, &format!("micro-expert-scores(score={score},rho={RHO},vectors=true)"), (score != "magnitude").then_some(calibration));
        let layers = report.passes[0].details["layers"].as_array().unwrap().clone();
        assert_eq!(layers.len(), expected_layers);
        for (i, (ours, theirs)) in layers.iter().zip(reference.as_array().unwrap()).enumerate() {
            // Per layer, relative to the largest score of any of its experts (pooled, as pruning ranks them).
            let ours: Vec<Vec<f64>> = ours["experts"].as_array().unwrap().iter().map(|e| serde_json::from_value(e["scores"].clone()).unwrap()).collect();
            let theirs: Vec<Vec<f64>> = theirs.as_array().unwrap().iter().map(|e| serde_json::from_value(e[score].clone()).unwrap()).collect();
            assert_eq!(ours.len(), theirs.len(), "layer {i}: experts");
            let scale = theirs.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
            for (e, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(ours.len(), theirs.len());
                let worst = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0f64, f64::max) / scale;
                assert!(worst < 1e-4, "{}: layer {i} expert {e} score={score}: relative difference {worst:e}", model_path.display());
            }
        }
    }
}

#[test]
fn scores_equal_the_numpy_reference_on_a_gelu_ffn() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert_batches(dir.path());
    scores_match_reference(&repo_root().join("fixtures/tiny_bert.onnx"), dir.path(), 2);
}

#[test]
fn scores_equal_the_numpy_reference_on_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    smollm2_batches(dir.path());
    scores_match_reference(&test_data().join("smollm2/prefill.onnx"), dir.path(), 30);
}

/// The tiny decoder of tests/py/make_tiny_moe.py (Hugging Face MoE form, a shared expert in
/// its second layer), written to `dir`, with three batches of random calibration inputs.
fn tiny_moe(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    tiny_moe_form(dir, "hf")
}

/// [`tiny_moe`] in the Hugging Face form (`hf`) or with com.microsoft.MoE nodes (`ort`): the
/// same network, weights and calibration batches.
fn tiny_moe_form(dir: &Path, form: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let path = dir.join(format!("tiny_moe_{form}.onnx"));
    run_python("make_tiny_moe.py", &[path.as_os_str(), "--form".as_ref(), form.as_ref()]);
    let model = Model::load(&path).unwrap();
    let dims = [("batch".to_string(), 2), ("seq".to_string(), 8)];
    let batches: Vec<_> = (0..3).map(|seed| compactor_runtime::inputs::random_inputs(&model, &dims, seed).unwrap()).collect();
    let calibration = dir.join("calibration");
    write_batches(&calibration, &batches);
    (path, calibration)
}

/// Routed experts' neurons are scored on their activation times their routing weight (zero on
/// the tokens not routed to them), the shared expert's on the activation alone.
#[test]
fn scores_equal_the_numpy_reference_on_a_mixture_of_experts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, calibration) = tiny_moe(dir.path());
    let model = Model::load(&path).unwrap();
    let spec = layer_spec(&model);
    let experts: Vec<usize> = spec.as_array().unwrap().iter().map(|l| l["experts"].as_array().unwrap().len()).collect();
    assert_eq!(experts, vec![4, 5], "four routed experts, and a shared one in the second layer");
    let routed: Vec<bool> = spec[1]["experts"].as_array().unwrap().iter().map(|e| !e["routing"].is_null()).collect();
    assert_eq!(routed, vec![false, true, true, true, true]);
    scores_match_reference(&path, &calibration, 2);
}

/// Pruning pools a layer's micro-experts across its experts (ragged widths), and the pruned
/// mixture runs alike in both runtimes.
#[test]
fn pruning_a_mixture_of_experts_pools_its_experts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, calibration) = tiny_moe(dir.path());
    let mut m = Model::load(&path).unwrap();
    let report = run(&mut m, "infer-shapes,prune-micro-experts(ratio=0.25)", Some(&calibration));
    let layers = report.passes[1].details["layers"].as_array().unwrap().clone();
    for (layer, total) in layers.iter().zip([32, 30]) {
        assert_eq!(layer["before"], total);
        assert_eq!(layer["after"], total - total / 4);
        let widths: Vec<u64> = layer["experts"].as_array().unwrap().iter().map(|e| e["width_after"].as_u64().unwrap()).collect();
        assert_eq!(widths.iter().sum::<u64>(), (total - total / 4) as u64);
    }
    // per_expert: every expert of a layer keeps the same width.
    let mut uniform = Model::load(&path).unwrap();
    let report = run(&mut uniform, "infer-shapes,prune-micro-experts(ratio=0.25,per_expert=true)", Some(&calibration));
    for (layer, width) in report.passes[1].details["layers"].as_array().unwrap().iter().zip([8u64, 6]) {
        let widths: Vec<u64> = layer["experts"].as_array().unwrap().iter().map(|e| e["width_after"].as_u64().unwrap()).collect();
        assert!(widths.iter().all(|&w| w == width - width / 4), "{widths:?}");
    }
    let pruned = dir.path().join("pruned.onnx");
    m.save(&pruned).unwrap();
    let feeds = random_npy_inputs(&pruned, dir.path(), &[("batch".into(), 2), ("seq".into(), 8)], 3);
    let (ort, ours) = both_runtimes(&pruned, &feeds);
    assert!(relative_difference(&ort, &ours) < 1e-5, "the runtimes differ on the pruned mixture");
}

/// The MoE machinery against the dense function: the tiny decoder's FFNs split into 4 experts,
/// all selected with uniform routing weights and each down projection scaled by 4 (`--variant
/// exact`), in both MoE forms, compute the dense FFN model's logits (1e-4 of their scale) in
/// onnxruntime and in the bundled runtime.
#[test]
fn the_exact_mixture_equals_the_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    let make = |form: &str, variant: &str| {
        let path = dir.path().join(format!("tiny_moe_{form}_{variant}.onnx"));
        run_python("make_tiny_moe.py", &[path.as_os_str(), "--form".as_ref(), form.as_ref(), "--variant".as_ref(), variant.as_ref()]);
        path
    };
    let dense = make("hf", "dense");
    let feeds = random_npy_inputs(&dense, dir.path(), &[("batch".into(), 2), ("seq".into(), 8)], 4);
    let (want, _) = both_runtimes(&dense, &feeds);
    for form in ["hf", "ort"] {
        let (ort, ours) = both_runtimes(&make(form, "exact"), &feeds);
        assert!(relative_difference(&want, &ort) < 1e-4, "{form}: onnxruntime's exact mixture differs from the dense model");
        assert!(relative_difference(&want, &ours) < 1e-4, "{form}: the bundled runtime's exact mixture differs from the dense model");
    }
}

/// Per-expert score vectors of every layer, from `micro-expert-scores(vectors=true)`.
fn score_vectors(path: &Path, calibration: &Path, score: &str) -> Vec<Vec<Vec<f64>>> {
    let mut m = Model::load(path).unwrap();
    let report = run(&mut m, &format!("infer-shapes,micro-expert-scores(score={score},vectors=true)"), Some(calibration));
    let layers = report.passes[1].details["layers"].as_array().unwrap().clone();
    layers.iter().map(|l| l["experts"].as_array().unwrap().iter().map(|e| e["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()).collect()).collect()
}

/// A com.microsoft.MoE node's neurons are scored from its captured input and router logits
/// (routed, its fc1 run and activated in the pass): every score equals the Hugging Face form's
/// of the same network, whose activations the graph computes (and which the NumPy reference
/// checks above). The layer with a shared expert beside the node pools both.
#[test]
fn scores_of_a_moe_node_equal_the_hugging_face_forms() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, calibration) = tiny_moe_form(dir.path(), "hf");
    let (ort, _) = tiny_moe_form(dir.path(), "ort");
    let layers = {
        let model = Model::load(&ort).unwrap();
        let mut analyses = Analyses::new();
        analyses.get::<FfnExperts>(&model.graph).iter().map(|l| (l.experts.len(), l.moe_op.as_ref().map(|op| (op.experts, op.width)))).collect::<Vec<_>>()
    };
    assert_eq!(layers, vec![(0, Some((4, 8))), (1, Some((4, 6)))], "a MoE node per layer, the second beside a shared expert");
    for score in ["camera", "activation", "wanda", "magnitude"] {
        let (want, got) = (score_vectors(&hf, &calibration, score), score_vectors(&ort, &calibration, score));
        assert_eq!(want.len(), got.len());
        for (l, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.len(), g.len(), "layer {l}: experts");
            for (e, (w, g)) in w.iter().zip(g).enumerate() {
                let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let worst = w.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(w.len() == g.len() && worst <= 1e-4 * scale, "score={score} layer {l} expert {e}: {worst} of {scale}\n{w:?}\n{g:?}");
            }
        }
    }
}

/// Pruning a com.microsoft.MoE node cuts the neurons the Hugging Face form's pruning cuts:
/// `per_expert=true` gives every expert one narrower width; pooled, each expert keeps its own
/// neurons, padded with zero neurons to the widest. Either way the pruned node computes what
/// the pruned Hugging Face graph computes, in onnxruntime and the bundled runtime; ratio 0
/// leaves the model as it was.
#[test]
fn pruning_a_moe_node_equals_pruning_the_hugging_face_form() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, calibration) = tiny_moe_form(dir.path(), "hf");
    let (ort, _) = tiny_moe_form(dir.path(), "ort");
    let feeds = random_npy_inputs(&hf, dir.path(), &[("batch".into(), 2), ("seq".into(), 8)], 5);
    for (options, widths) in [("ratio=0.25,per_expert=true", [6usize, 5]), ("ratio=0.25", [0, 0]), ("ratio=0.4,score=wanda,sequential=false", [0, 0])] {
        let spec = format!("infer-shapes,prune-micro-experts({options})");
        let (mut pruned_hf, mut pruned_ort) = (Model::load(&hf).unwrap(), Model::load(&ort).unwrap());
        let (report_hf, report_ort) = (run(&mut pruned_hf, &spec, Some(&calibration)), run(&mut pruned_ort, &spec, Some(&calibration)));
        let (layers_hf, layers_ort) = (report_hf.passes[1].details["layers"].as_array().unwrap().clone(), report_ort.passes[1].details["layers"].as_array().unwrap().clone());
        for (l, (h, o)) in layers_hf.iter().zip(&layers_ort).enumerate() {
            assert_eq!((&h["before"], &h["after"]), (&o["before"], &o["after"]), "{options}: layer {l}");
            // The routed experts' kept counts are the Hugging Face form's widths.
            let routed: Vec<u64> = h["experts"].as_array().unwrap().iter().skip(l).map(|e| e["width_after"].as_u64().unwrap()).collect();
            let moe = &o["moe"];
            let kept: Vec<u64> = moe["kept"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(routed, kept, "{options}: layer {l}");
            let width = moe["width_after"].as_u64().unwrap();
            assert_eq!(width, *kept.iter().max().unwrap());
            assert_eq!(moe["padded"].as_u64().unwrap(), kept.iter().map(|k| width - k).sum::<u64>());
            if widths[l] > 0 {
                assert!(kept.iter().all(|&k| k as usize == widths[l]) && moe["padded"] == 0, "{options}: layer {l}: {kept:?}");
            }
        }
        let (path_hf, path_ort) = (dir.path().join("pruned_hf.onnx"), dir.path().join("pruned_ort.onnx"));
        pruned_hf.save(&path_hf).unwrap();
        pruned_ort.save(&path_ort).unwrap();
        let (ort_hf, _) = both_runtimes(&path_hf, &feeds);
        let (ort_ort, ours_ort) = both_runtimes(&path_ort, &feeds);
        assert!(relative_difference(&ort_hf, &ort_ort) < 1e-5, "{options}: the pruned forms differ");
        assert!(relative_difference(&ort_ort, &ours_ort) < 1e-5, "{options}: the runtimes differ on the pruned MoE node");
    }
    let mut shaped = Model::load(&ort).unwrap();
    run(&mut shaped, "infer-shapes", None);
    let mut unpruned = Model::load(&ort).unwrap();
    let report = run(&mut unpruned, "infer-shapes,prune-micro-experts(ratio=0)", Some(&calibration));
    assert!(!report.passes[1].changed);
    assert_eq!(unpruned.to_bytes().unwrap(), shaped.to_bytes().unwrap(), "ratio 0 changed the model");
    // Tiers are not built for a MoE node: its layers are left alone with the reason.
    let mut tiered = Model::load(&ort).unwrap();
    let report = run(&mut tiered, "infer-shapes,quantize-micro-experts", Some(&calibration));
    let skipped = report.passes[1].details["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().all(|s| s["reason"].as_str().unwrap().contains("com.microsoft.MoE")), "{skipped:?}");
}

#[test]
fn ratio_zero_is_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert_batches(dir.path());
    let mut shaped = tiny_bert();
    run(&mut shaped, "infer-shapes", None);
    for score in ["camera", "magnitude"] {
        let mut pruned = tiny_bert();
        let report = run(&mut pruned, &format!("infer-shapes,prune-micro-experts(ratio=0,score={score})"), Some(dir.path()));
        assert!(!report.passes[1].changed, "{score}");
        assert_eq!(pruned.to_bytes().unwrap(), shaped.to_bytes().unwrap(), "score={score}: ratio 0 changed the model");
    }
}

/// Sequential pruning scores the second layer on activations through the pruned first one:
/// its scores differ from the one-shot ones while the first layer's are the same, and both
/// remove the same number of neurons.
#[test]
fn sequential_pruning_scores_later_layers_after_earlier_cuts() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert_batches(dir.path());
    let reports: Vec<serde_json::Value> = ["true", "false"]
        .iter()
        .map(|sequential| {
            let mut m = tiny_bert();
            let report = run(&mut m, &format!("infer-shapes,prune-micro-experts(ratio=0.25,sequential={sequential})"), Some(dir.path()));
            report.passes[1].details["layers"].clone()
        })
        .collect();
    let (seq, once) = (&reports[0], &reports[1]);
    for layer in 0..2 {
        assert_eq!(seq[layer]["before"], 128);
        assert_eq!(seq[layer]["after"], 96, "floor(0.25 * 128) neurons go");
        assert_eq!(once[layer]["after"], 96);
    }
    assert_eq!(seq[0]["experts"][0]["score_mean"], once[0]["experts"][0]["score_mean"]);
    assert_ne!(seq[1]["experts"][0]["score_mean"], once[1]["experts"][0]["score_mean"]);
}

/// Pruned models (every score, CAMERA sequential and one-shot) verify, shrink the FFN weights
/// and run alike in onnxruntime and the bundled runtime.
#[test]
fn pruned_models_run_alike_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration");
    tiny_bert_batches(&calibration);
    for spec in ["prune-micro-experts(ratio=0.3)", "prune-micro-experts(ratio=0.3,sequential=false,score=wanda)", "prune-micro-experts(ratio=0.2,score=magnitude,multiple=8)"] {
        let mut m = tiny_bert();
        let before = m.graph.main().initializers.len();
        let report = run(&mut m, &format!("infer-shapes,{spec}"), Some(&calibration));
        assert!(report.passes[1].changed, "{spec}");
        assert_eq!(m.graph.main().initializers.len(), before);
        let path = dir.path().join("pruned.onnx");
        m.save(&path).unwrap();
        let feeds = random_npy_inputs(&path, dir.path(), &[("batch".into(), 2), ("seq".into(), 8)], 11);
        let (ort, ours) = both_runtimes(&path, &feeds);
        assert!(relative_difference(&ort, &ours) < 1e-5, "{spec}: the runtimes differ");
    }
    let mut m = tiny_bert();
    let report = run(&mut m, "infer-shapes,prune-micro-experts(ratio=0.2,score=magnitude,multiple=8)", None);
    // floor(0.2 * 128) = 25 go, the kept 103 round up to 104.
    assert_eq!(report.passes[1].details["layers"][0]["after"], 104);
}

#[test]
fn smollm2_pruned_one_shot_runs_alike_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration");
    smollm2_batches(&calibration);
    let mut m = Model::load(test_data().join("smollm2/prefill.onnx")).unwrap();
    let report = run(&mut m, "infer-shapes,prune-micro-experts(ratio=0.2,sequential=false),eliminate-dead-code", Some(&calibration));
    let layers = report.passes[1].details["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    assert!(layers.iter().all(|l| l["before"] == 1536 && l["after"] == 1536 - 307), "{layers:?}");
    let path = dir.path().join("pruned.onnx");
    m.save(&path).unwrap();
    let feeds = [("input_ids", "calibration/000/input_ids.npy"), ("attention_mask", "calibration/000/attention_mask.npy"), ("position_ids", "calibration/000/position_ids.npy")]
        .map(|(n, f)| format!("{n}={}", dir.path().join(f).display()));
    let (ort, ours) = both_runtimes(&path, &feeds);
    assert!(relative_difference(&ort, &ours) < 1e-4, "the runtimes differ on the pruned SmolLM2");
}

/// CAMERA-Q: three tiers at equal bits give the one-tier model (the whole permuted FFN
/// quantized at once: tiers are block multiples, so the down projection's blocks are the same),
/// and an 8/4/2 split reports its average bits; every model runs alike in both runtimes.
#[test]
fn tiered_quantization_at_equal_bits_equals_one_tier() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration");
    tiny_bert_batches(&calibration);
    let mut outputs = Vec::new();
    for (name, spec, tiers) in [
        ("three", "quantize-micro-experts(bits=[4,4,4],shares=[0.25,0.25,0.5],block=16)", 3),
        ("one", "quantize-micro-experts(bits=[4],shares=[1],block=16)", 1),
        ("mixed", "quantize-micro-experts(block=16)", 3),
    ] {
        let mut m = tiny_bert();
        let report = run(&mut m, &format!("infer-shapes,{spec}"), Some(&calibration));
        let details = &report.passes[1].details;
        assert!(details["skipped"].as_array().unwrap().is_empty(), "{name}: {details}");
        if name == "mixed" {
            // 16, 32 and 80 of 128 neurons at 8, 4 and 2 bits.
            assert_eq!(details["average_bits"], (16.0 * 8.0 + 32.0 * 4.0 + 80.0 * 2.0) / 128.0);
            let tiers: Vec<(u64, u64)> = details["layers"][0]["experts"][0].as_array().unwrap().iter().map(|t| (t["bits"].as_u64().unwrap(), t["neurons"].as_u64().unwrap())).collect();
            assert_eq!(tiers, vec![(8, 16), (4, 32), (2, 80)]);
        }
        let nbits = m.graph.all_nodes().into_iter().filter(|&n| m.graph.node(n).op_type == "MatMulNBits").count();
        assert_eq!(nbits, 2 * 2 * tiers, "{name}: two layers, up and down, a MatMulNBits per tier");
        let path = dir.path().join(format!("{name}.onnx"));
        m.save(&path).unwrap();
        let feeds = random_npy_inputs(&path, dir.path(), &[("batch".into(), 2), ("seq".into(), 8)], 5);
        let (ort, ours) = both_runtimes(&path, &feeds);
        assert!(relative_difference(&ort, &ours) < 1e-5, "{name}: the runtimes differ");
        outputs.push(ours);
    }
    assert!(relative_difference(&outputs[0], &outputs[1]) < 1e-5, "three 4-bit tiers differ from one");
    assert!(relative_difference(&outputs[0], &outputs[2]) > 1e-3, "8/4/2 bits should differ from 4 bits");
}
