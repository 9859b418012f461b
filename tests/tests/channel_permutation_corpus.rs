//! Channel permutation on the convolutional, vision-transformer and voice-activity models of
//! the corpus, on their realistic inputs: every movable group reordered (after
//! `lift-constants`, which turns Constant nodes into initializers the transform can rewrite),
//! the outputs unchanged to 1e-5 of their magnitude in each runtime (or, on a deep network, no
//! more than the two runtimes differ from each other on the original).

use compactor::Pipeline;
use compactor_ir::Model;
use compactor_passes::RunOptions;
use compactor_tests::{both_runtimes, corpus_data, relative_difference};

/// The corpus's inputs for `name`, as `name=path.npy`.
fn corpus_inputs(name: &str) -> Vec<String> {
    let dir = corpus_data().join("corpus-inputs").join(name);
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("inputs.json")).unwrap()).unwrap();
    index.as_object().unwrap().iter().map(|(input, file)| format!("{input}={}", dir.join(file.as_str().unwrap()).display())).collect()
}

#[test]
fn permutation_is_exact_on_the_corpus_cnns_and_vit() {
    let dir = tempfile::tempdir().unwrap();
    // (model, the fewest groups it must reorder)
    // silero-vad: its convolutions sit in the branches of an If (one per sampling rate).
    let cases = [("rapidocr-det", 30), ("rapidocr-rec", 20), ("rapidocr-cls", 20), ("mtcnn-onet", 4), ("magika", 1), ("vit-s-focus", 24), ("silero-vad", 6)];
    for (name, at_least) in cases {
        let src = corpus_data().join("corpus").join(format!("{name}.onnx"));
        let feeds = corpus_inputs(name);
        let (ort_before, ours_before) = both_runtimes(&src, &feeds);
        let mut model = Model::load(&src).unwrap();
        let report = Pipeline::parse("cleanup,infer-shapes,permute-channels").unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
        assert!(report.passes[report.passes.len() - 1].changed, "{name}: {}", report.passes[report.passes.len() - 1].summary);
        let reordered = report.passes[report.passes.len() - 1].details["groups"].as_array().unwrap().len();
        assert!(reordered >= at_least, "{name}: {}", report.passes[report.passes.len() - 1].summary);
        let out = dir.path().join(format!("{name}.onnx"));
        model.save(&out).unwrap();
        let (ort, ours) = both_runtimes(&out, &feeds);
        let (in_ort, in_ours, between) = (relative_difference(&ort_before, &ort), relative_difference(&ours_before, &ours), relative_difference(&ort_before, &ours_before));
        eprintln!("{name}: {reordered} groups; onnxruntime {in_ort:e}, bundled runtime {in_ours:e}, the runtimes on the original {between:e}");
        // Another order of float sums: 1e-5, or on a deep network (DBNet's ~100 layers) no more
        // than the two runtimes differ on the original model. A wrong permutation is off by O(1).
        let bound = between.max(1e-5);
        assert!(in_ort <= bound && in_ours <= bound, "{name}: onnxruntime {in_ort:e}, bundled runtime {in_ours:e} (bound {bound:e})");
    }
}

/// Pruning the CNNs to 75% of their channels (depthwise convolutions keep one group per kept
/// channel): the models verify, get smaller, and onnxruntime and the bundled runtime run them
/// alike.
#[test]
fn pruned_corpus_cnns_run_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["rapidocr-det", "rapidocr-rec", "rapidocr-cls", "mtcnn-onet"] {
        let src = corpus_data().join("corpus").join(format!("{name}.onnx"));
        let feeds = corpus_inputs(name);
        let mut model = Model::load(&src).unwrap();
        let report = Pipeline::parse("cleanup,infer-shapes,prune-channels(keep=0.75)").unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
        assert!(report.passes[report.passes.len() - 1].changed, "{name}: {}", report.passes[report.passes.len() - 1].summary);
        let out = dir.path().join(format!("{name}.onnx"));
        model.save(&out).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() < std::fs::metadata(&src).unwrap().len(), "{name}");
        let (ort, ours) = both_runtimes(&out, &feeds);
        // In absolute terms: a pruned detector's map can collapse to ~0 (DBNet at 75% does), where
        // a difference relative to its largest value means nothing.
        let difference = ort.iter().zip(&ours).map(|(a, b)| a.to_f64_vec().unwrap().iter().zip(b.to_f64_vec().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)).fold(0.0, f64::max);
        let scale = ort.iter().map(|a| a.to_f64_vec().unwrap().iter().fold(0.0f64, |m, v| m.max(v.abs()))).fold(1.0, f64::max);
        assert!(difference < 1e-4 * scale, "{name}: the runtimes differ by {difference:e}");
    }
}
