//! Width pruning beyond a uniform share: activation-aware scores, bias compensation measured on
//! the calibration data, a global parameter budget, normalised groups and nested widths; every
//! pruned model runs in onnxruntime and the bundled runtime alike.

use compactor::{Pipeline, RuntimeCalibrator};
use compactor_ir::Model;
use compactor_passes::{PassError, PipelineReport, RunOptions};
use compactor_runtime::{Session, SessionOptions, TensorValue};
use compactor_tests::{both_runtimes, cache_dir, random_npy_inputs, relative_difference};

/// Two layers with a Relu between them: the hidden activations have a positive mean, so a cut
/// hidden channel leaves a bias behind.
const MLP: &str = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[16,8]\n  init %w1 = tensor<f32[8,32]> fill=seeded(1)\n  init %b1 = tensor<f32[32]> fill=seeded(2)\n  init %w2 = tensor<f32[32,8]> fill=seeded(3)\n  init %b2 = tensor<f32[8]> fill=seeded(4)\n  %h = MatMul(%x, %w1)\n  %hb = Add(%h, %b1)\n  %a = Relu(%hb)\n  %o = MatMul(%a, %w2)\n  %y = Add(%o, %b2)\n  output %y\n}\n";

/// A block whose hidden width a LayerNorm normalises.
const NORMED: &str = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[4,8]\n  init %w1 = tensor<f32[8,16]> fill=seeded(1)\n  init %gamma = tensor<f32[16]> fill=seeded(2)\n  init %beta = tensor<f32[16]> fill=seeded(3)\n  init %w2 = tensor<f32[16,8]> fill=seeded(4)\n  %h = MatMul(%x, %w1)\n  %n = LayerNormalization(%h, %gamma, %beta) {axis=-1}\n  %y = MatMul(%n, %w2)\n  output %y\n}\n";

const BATCHES: usize = 4;

fn options() -> SessionOptions {
    SessionOptions { threads: 1, ..Default::default() }
}

fn run(model: &mut Model, spec: &str, calibrated: bool) -> Result<PipelineReport, PassError> {
    let mut pipeline = Pipeline::parse(spec)?;
    if calibrated {
        pipeline = pipeline.with_calibration(RuntimeCalibrator::random(model, BATCHES, 0, options()).unwrap());
    }
    pipeline.run_with(model, RunOptions { verify_each: true, ..Default::default() })
}

fn outputs(model: &Model, feeds: &[(String, TensorValue)]) -> Vec<f32> {
    let named: Vec<(&str, TensorValue)> = feeds.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    Session::new(model, &options()).unwrap().run(&named).unwrap().into_iter().flat_map(|(_, v)| v.to_f64_vec().unwrap().into_iter().map(|x| x as f32)).collect()
}

/// Mean squared error of `pruned` against `original` over the calibration batches (the inputs
/// `RuntimeCalibrator::random` made from seed 0).
fn calibration_error(original: &Model, pruned: &Model) -> f64 {
    let mut sum = 0.0;
    let mut count = 0;
    for i in 0..BATCHES as u64 {
        let feeds = compactor_runtime::inputs::random_inputs(original, &[], i).unwrap();
        let (a, b) = (outputs(original, &feeds), outputs(pruned, &feeds));
        sum += a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>();
        count += a.len();
    }
    sum / count as f64
}

fn weights(model: &Model, name: &str) -> (Vec<u64>, Vec<f32>) {
    let g = &model.graph;
    let v = g.main().initializers.iter().copied().find(|&v| g.value(v).name == name).unwrap_or_else(|| panic!("no initializer {name}"));
    let t = g.constant(v).unwrap();
    (t.dims().to_vec(), t.to_f32().unwrap())
}

/// Runs a model in both runtimes on random inputs; they must agree.
fn runs_in_both(model: &Model, dir: &std::path::Path, name: &str) {
    let path = dir.join(format!("{name}.onnx"));
    model.save(&path).unwrap();
    let feeds = random_npy_inputs(&path, dir, &[], 7);
    let (ort, ours) = both_runtimes(&path, &feeds);
    assert!(relative_difference(&ort, &ours) < 1e-5, "{name}: onnxruntime and the bundled runtime differ");
}

/// Without calibration data, score=activation fails with the typed error naming the need
/// (the CLI adds which option gives it); compensation is then off, and the report says so.
#[test]
fn activation_score_needs_calibration_and_compensation_is_off_without_it() {
    for spec in ["permute-channels(score=activation)", "prune-channels(score=activation)"] {
        let mut model = compactor_ir::text::parse(MLP).unwrap();
        let e = run(&mut model, &format!("infer-shapes,{spec}"), false).unwrap_err();
        assert!(matches!(&e, PassError::NeedsCalibration { pass, .. } if spec.starts_with(pass.as_str())), "{spec}: {e}");
    }
    let mut model = compactor_ir::text::parse(MLP).unwrap();
    let report = run(&mut model, "infer-shapes,prune-channels(keep=0.5)", false).unwrap();
    assert!(report.passes[1].details["groups"][0].get("compensation").is_none());
    assert_eq!(report.passes[1].details["not_compensated"], "no calibration data");
    let report = run(&mut compactor_ir::text::parse(MLP).unwrap(), "infer-shapes,prune-channels(keep=0.5,compensate=false)", false).unwrap();
    assert!(report.passes[1].details.get("not_compensated").is_none());
}

/// The activation score ranks by calibration activations: permuting by it is exact, and
/// pruning by it loses less on the calibration data than a random order.
#[test]
fn activation_score_orders_and_prunes_by_calibration_activations() {
    let dir = tempfile::tempdir().unwrap();
    let original = compactor_ir::text::parse(MLP).unwrap();
    let mut permuted = original.clone();
    let report = run(&mut permuted, "infer-shapes,permute-channels(score=activation)", true).unwrap();
    assert!(report.passes[1].changed, "{}", report.passes[1].summary);
    assert!(calibration_error(&original, &permuted) < 1e-10);
    let mut errors = Vec::new();
    for score in ["activation", "random"] {
        let mut model = original.clone();
        run(&mut model, &format!("infer-shapes,prune-channels(keep=0.5,score={score},compensate=false)"), true).unwrap();
        assert_eq!(weights(&model, "w2").0, [16, 8]);
        errors.push(calibration_error(&original, &model));
        runs_in_both(&model, dir.path(), score);
    }
    eprintln!("calibration MSE at half width: activation {:.5}, random {:.5}", errors[0], errors[1]);
    assert!(errors[0] < errors[1], "activation {} vs random {}", errors[0], errors[1]);
}

/// Compensation moves the cut channels' mean contribution into a bias (fc2's existing bias
/// here): the pruned model's error on the calibration data drops. The report gives, per
/// group, the widths, the score summary and each consumer's bias shift.
#[test]
fn compensation_lowers_the_calibration_error() {
    let dir = tempfile::tempdir().unwrap();
    let original = compactor_ir::text::parse(MLP).unwrap();
    let mut errors = Vec::new();
    let mut details = Vec::new();
    for compensate in [false, true] {
        let mut model = original.clone();
        let report = run(&mut model, &format!("infer-shapes,prune-channels(keep=0.25,compensate={compensate})"), true).unwrap();
        errors.push(calibration_error(&original, &model));
        details.push(report.passes[1].details.clone());
        runs_in_both(&model, dir.path(), &format!("compensate_{compensate}"));
    }
    eprintln!("calibration MSE at quarter width: uncompensated {:.5}, compensated {:.5}", errors[0], errors[1]);
    assert!(errors[1] < errors[0], "compensated {} vs uncompensated {}", errors[1], errors[0]);
    assert_eq!(details[1]["groups"][0]["compensation"][0]["bias"], "b2", "{}", details[1]);
    assert!(details[0]["groups"][0].get("compensation").is_none());
    // Calibration data given: compensation is on by default.
    let mut model = original.clone();
    let report = run(&mut model, "infer-shapes,prune-channels(keep=0.25)", true).unwrap();
    assert_eq!(report.passes[1].details, details[1]);
    insta::assert_snapshot!(serde_json::to_string_pretty(&details[1]).unwrap());
}

/// Convolutions too: a Conv without a bias gets the shift (summed over its kernel window) as
/// its bias; on the calibration data the error drops (exactly compensated away from the
/// padded border).
#[test]
fn compensation_of_a_convolution_lowers_the_calibration_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,3,8,8]\n  init %w1 = tensor<f32[16,3,3,3]> fill=seeded(1)\n  init %b1 = tensor<f32[16]> fill=seeded(2)\n  init %w2 = tensor<f32[4,16,3,3]> fill=seeded(3)\n  %a = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]}\n  %r = Relu(%a)\n  %y = Conv(%r, %w2) {pads=[1, 1, 1, 1]}\n  output %y\n}\n";
    let original = compactor_ir::text::parse(text).unwrap();
    let mut errors = Vec::new();
    for compensate in [false, true] {
        let mut model = original.clone();
        let report = run(&mut model, &format!("infer-shapes,prune-channels(keep=0.5,compensate={compensate})"), true).unwrap();
        assert_eq!(weights(&model, "w2").0, [4, 8, 3, 3]);
        errors.push(calibration_error(&original, &model));
        if compensate {
            assert_eq!(report.passes[1].details["groups"][0]["compensation"][0]["bias"], "w2_compensation", "{}", report.passes[1].details);
            assert_eq!(weights(&model, "w2_compensation").0, [4]);
        }
        runs_in_both(&model, dir.path(), &format!("conv_compensate_{compensate}"));
    }
    eprintln!("convolution calibration MSE at half width: uncompensated {:.5}, compensated {:.5}", errors[0], errors[1]);
    assert!(errors[1] < errors[0], "compensated {} vs uncompensated {}", errors[1], errors[0]);
}

/// threshold=t cuts the share t of the prunable groups' parameters (to within one channel;
/// with multiple=1 nothing rounds), spread over the groups by normalised score.
#[test]
fn threshold_cuts_that_share_of_the_groups_parameters() {
    // Two hidden groups: 8 -> 32 -> 24 -> 8.
    let text = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[4,8]\n  init %w1 = tensor<f32[8,32]> fill=seeded(1)\n  init %w2 = tensor<f32[32,24]> fill=seeded(2)\n  init %w3 = tensor<f32[24,8]> fill=seeded(3)\n  %h = MatMul(%x, %w1)\n  %a = Relu(%h)\n  %i = MatMul(%a, %w2)\n  %b = Relu(%i)\n  %y = MatMul(%b, %w3)\n  output %y\n}\n";
    for threshold in [0.2, 0.5] {
        let mut model = compactor_ir::text::parse(text).unwrap();
        let report = run(&mut model, &format!("infer-shapes,prune-channels(threshold={threshold},multiple=1)"), false).unwrap();
        let pass = &report.passes[1];
        let total = (8 * 32 + 32 * 24 + 24 * 8) as f64;
        let cut = (pass.before.parameters - pass.after.parameters) as f64;
        // One channel of the first group costs 8 + 24 parameters, of the second 32 + 8.
        assert!(cut >= threshold * total && cut < threshold * total + 40.0, "threshold {threshold}: cut {cut} of {total}");
        let widths: Vec<i64> = pass.details["groups"].as_array().unwrap().iter().map(|g| g["width_after"].as_i64().unwrap()).collect();
        assert_eq!(widths.len(), 2, "{}", pass.summary);
    }
    let e = Pipeline::parse("prune-channels(keep=0.5,threshold=0.3)").err().unwrap();
    assert!(e.to_string().contains("not both"), "{e}");
}

/// A group a LayerNorm normalises is left by default, with the reason; allow_norms cuts it and
/// the report says the statistics change; onnxruntime runs the result.
#[test]
fn allow_norms_cuts_normalised_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = compactor_ir::text::parse(NORMED).unwrap();
    let report = run(&mut model, "infer-shapes,prune-channels(keep=0.5)", false).unwrap();
    assert!(!report.passes[1].changed);
    assert!(report.passes[1].details["skipped"][0]["reason"].as_str().unwrap().contains("allow_norms=true"));
    let mut model = compactor_ir::text::parse(NORMED).unwrap();
    let report = run(&mut model, "infer-shapes,prune-channels(keep=0.5,allow_norms=true)", false).unwrap();
    let group = &report.passes[1].details["groups"][0];
    assert_eq!((group["width_before"].as_i64(), group["width_after"].as_i64()), (Some(16), Some(8)));
    assert!(group["notes"][0].as_str().unwrap().contains("statistics change"), "{group}");
    assert_eq!(weights(&model, "gamma").0, [8]);
    runs_in_both(&model, dir.path(), "normed");
}

/// On SmolLM2 the residual stream (every RMSNorm reduces over it) is cut only with
/// allow_norms, with the FFNs; onnxruntime and the bundled runtime run the result alike.
#[test]
fn allow_norms_cuts_smollm2s_residual_stream() {
    let dir = tempfile::tempdir().unwrap();
    let src = cache_dir().join("smollm2").join("prefill.onnx");
    let mut model = Model::load(&src).unwrap();
    let report = run(&mut model, "infer-shapes,prune-channels(keep=0.75,allow_norms=true)", false).unwrap();
    let groups = report.passes[1].details["groups"].as_array().unwrap().clone();
    let residual: Vec<&serde_json::Value> = groups.iter().filter(|g| g["width_before"] == 576).collect();
    assert_eq!(residual.len(), 1, "{}", report.passes[1].summary);
    assert_eq!(residual[0]["width_after"], 432);
    assert!(residual[0]["notes"].as_array().unwrap().len() >= 61, "every RMSNorm's statistics change");
    assert_eq!(groups.iter().filter(|g| g["width_before"] == 1536 && g["width_after"] == 1152).count(), 30);
    let path = dir.path().join("smollm2_pruned.onnx");
    model.save(&path).unwrap();
    let feeds = random_npy_inputs(&path, dir.path(), &[("batch_size".into(), 1), ("sequence_length".into(), 12)], 5);
    let (ort, ours) = both_runtimes(&path, &feeds);
    assert!(relative_difference(&ort, &ours) < 1e-4);
}

/// Nested widths from one ordering: the pass's graph is the full width in saliency order (the
/// same function), each width a variant; every narrower model's weights are the first channels
/// of every wider one's, and of the ordered full model's.
#[test]
fn nested_widths_share_their_first_channels() {
    let dir = tempfile::tempdir().unwrap();
    let original = compactor_ir::text::parse(MLP).unwrap();
    let mut model = original.clone();
    let report = run(&mut model, "infer-shapes,prune-channels(widths=[0.75,0.5],compensate=false),eliminate-dead-code", true).unwrap();
    assert!(calibration_error(&original, &model) < 1e-10, "the full-width model is a permutation");
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["w50", "w75"]);
    assert_eq!(report.variants[0].passes.len(), 1, "the rest of the pipeline ran on each width");
    let (_, full) = weights(&model, "w1");
    let (d50, w50) = weights(&report.variants[0].model, "w1");
    let (d75, w75) = weights(&report.variants[1].model, "w1");
    assert_eq!((d50, d75), (vec![8, 16], vec![8, 24]));
    // w1 is [8, width]: row r of the narrower model is the start of row r of the wider one.
    for r in 0..8 {
        assert_eq!(w50[r * 16..(r + 1) * 16], w75[r * 24..r * 24 + 16], "row {r}");
        assert_eq!(w75[r * 24..(r + 1) * 24], full[r * 32..r * 32 + 24], "row {r}");
    }
    assert_eq!(weights(&report.variants[0].model, "w2").1[..16 * 8], weights(&report.variants[1].model, "w2").1[..16 * 8]);
    for v in &report.variants {
        runs_in_both(&v.model, dir.path(), &v.name);
    }
}

/// The original model with the output-projection rows of every head a pruned group cut set to
/// zero: what cutting those heads must compute (each head's output reaches the rest of the
/// model only through its rows).
fn zero_cut_heads(original: &Model, groups: &[serde_json::Value]) -> Model {
    let mut model = original.clone();
    let g = &model.graph;
    let mut patch = compactor_ir::Patch::new();
    for group in groups {
        let kept: Vec<usize> = group["kept_heads"].as_array().unwrap().iter().map(|u| u.as_u64().unwrap() as usize).collect();
        let (before, after) = (group["width_before"].as_u64().unwrap() as usize, group["width_after"].as_u64().unwrap() as usize);
        let units = kept.len() * before / after;
        let unit = before / units;
        // The output projection: the group's matrix whose rows (axis 0) are the heads' channels.
        let consumer = group["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .filter_map(|p| p.strip_suffix("[0]"))
            .find(|name| weights(original, name).0.len() == 2)
            .expect("an output projection");
        let v = g.main().initializers.iter().copied().find(|&v| g.value(v).name == consumer).unwrap();
        let (dims, mut w) = weights(original, consumer);
        let row = dims[1] as usize;
        for u in (0..units).filter(|u| !kept.contains(u)) {
            w[u * unit * row..(u + 1) * unit * row].fill(0.0);
        }
        patch.set_initializer(v, compactor_ir::Tensor::from_f32(&dims, &w).unwrap());
    }
    model.graph.apply(patch).unwrap();
    model
}

/// Cutting whole heads computes what the original computes with those heads' rows of the output
/// projection zeroed: MiniLM's 12 heads of 32 (reshape targets [B, S, -1, 32]) and a tiny Llama's
/// 2 KV heads, each with its 2 query heads (reshape targets spelling out the head counts and the
/// width, narrowed with the cut), also in onnxruntime's fused form. Only the groups `groups`
/// names are cut (keep=1 for the rest); both runtimes agree on the pruned models.
#[test]
fn cut_heads_equal_the_original_with_their_output_rows_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let (llama, fused) = (dir.path().join("tiny_llama.onnx"), dir.path().join("tiny_llama_fused.onnx"));
    compactor_tests::run_python("make_tiny_llama.py", &[llama.as_os_str()]);
    compactor_tests::run_python("make_tiny_llama.py", &[fused.as_os_str(), "--fused".as_ref()]);
    let llama_dims = vec![("batch_size".to_string(), 2), ("sequence_length".to_string(), 9)];
    let cases = [
        (compactor_tests::minilm(), "*attention.self.query.bias=0.75", 6, 288, vec![("batch".to_string(), 2), ("seq".to_string(), 16)]),
        (llama, "*q_proj*=0.5", 4, 16, llama_dims.clone()),
        // GroupQueryAttention and RotaryEmbedding: their head-count attributes follow the cut.
        (fused, "*q_proj*=0.5", 4, 16, llama_dims),
    ];
    for (src, share, groups_cut, width_after, dims) in cases {
        let original = Model::load(&src).unwrap();
        let mut model = original.clone();
        let spec = format!("infer-shapes,prune-channels(keep=1,heads=true,groups=[\"{share}\"])");
        let report = run(&mut model, &spec, false).unwrap();
        let groups = report.passes[1].details["groups"].as_array().unwrap().clone();
        assert_eq!(groups.len(), groups_cut, "{}: {}", src.display(), report.passes[1].summary);
        assert!(groups.iter().all(|g| g["width_after"] == width_after && g["kept_heads"].is_array()), "{groups:?}");
        let (pruned_path, zeroed_path) = (dir.path().join("pruned.onnx"), dir.path().join("zeroed.onnx"));
        model.save(&pruned_path).unwrap();
        zero_cut_heads(&original, &groups).save(&zeroed_path).unwrap();
        let feeds = random_npy_inputs(&src, dir.path(), &dims, 3);
        let (pruned_ort, pruned_ours) = both_runtimes(&pruned_path, &feeds);
        let (zeroed_ort, _) = both_runtimes(&zeroed_path, &feeds);
        let (against_zeroed, runtimes) = (relative_difference(&zeroed_ort, &pruned_ort), relative_difference(&pruned_ort, &pruned_ours));
        assert!(against_zeroed < 1e-5 && runtimes < 1e-5, "{}: against the zeroed original {against_zeroed:e}, runtimes {runtimes:e}", src.display());
        // The cut changed the outputs (the check above is not between two unchanged models).
        let (original_ort, _) = both_runtimes(&src, &feeds);
        assert!(relative_difference(&original_ort, &pruned_ort) > 1e-3, "{}", src.display());
    }
}
