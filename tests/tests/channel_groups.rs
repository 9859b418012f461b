//! The channel coupling groups on real exported graphs: every attention block moves in whole
//! heads (under GQA, whole KV-head groups), every FFN's hidden width is one group, and the
//! residual stream is one group (pinned where it is the graph's output). Permuting every
//! movable group by saliency computes the same function, in onnxruntime and the bundled runtime.

use compactor::Pipeline;
use compactor_ir::Model;
use compactor_passes::RunOptions;
use compactor_tests::{both_runtimes, cache_dir, minilm, random_npy_inputs, relative_difference, repo_root};
use std::path::Path;

fn groups(path: &Path) -> Vec<serde_json::Value> {
    let mut model = Model::load(path).unwrap();
    let report = Pipeline::parse("infer-shapes,channel-groups").unwrap().run_with(&mut model, RunOptions::default()).unwrap();
    report.passes[1].details["groups"].as_array().unwrap().clone()
}

fn movable_with(groups: &[serde_json::Value], width: i64, units: i64, params: usize) -> usize {
    groups.iter().filter(|g| g["movable"] == true && g["width"] == width && g["units"] == units && g["params"].as_array().unwrap().len() == params).count()
}

#[test]
fn minilm_has_heads_ffns_and_a_pinned_residual_stream() {
    let g = groups(&minilm());
    // Six blocks: q, k, v (weights and biases) and the output projection's rows, 12 heads of 32.
    assert_eq!(movable_with(&g, 384, 12, 7), 6, "{g:#?}");
    // Six FFNs: the intermediate weight and bias and the output weight's rows.
    assert_eq!(movable_with(&g, 1536, 1536, 3), 6);
    let residual = g.iter().find(|g| g["params"].as_array().unwrap().len() > 50).unwrap();
    assert_eq!(residual["movable"], false);
    assert!(residual["pinned"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("graph output 'last_hidden_state'")));
}

#[test]
fn smollm2_moves_kv_head_groups_and_its_residual_stream() {
    let g = groups(&cache_dir().join("smollm2").join("prefill.onnx"));
    // 30 blocks of 9 query heads over 3 KV heads: q, k, v columns and o rows move in 3 units.
    assert_eq!(movable_with(&g, 576, 3, 4), 30, "{:#?}", &g[..4]);
    assert_eq!(movable_with(&g, 1536, 1536, 3), 30, "gate and up columns with the down rows");
    // The residual stream: the embedding's columns (also the tied LM head's rows), every norm's
    // scale, every projection reading or writing it; the RMSNorms reduce over it.
    let residual = g.iter().find(|g| g["params"].as_array().unwrap().len() > 200).unwrap();
    assert_eq!(residual["movable"], true);
    assert_eq!(residual["width"], 576);
    assert!(residual["params"].as_array().unwrap().iter().any(|p| p == "model.embed_tokens.weight[1]"));
    assert!(residual["reducers"].as_array().unwrap().len() >= 61, "two RMSNorms per block and the final one");
}

/// The same network in onnxruntime's fused form: GroupQueryAttention ties each KV head to its
/// query heads (3 units), RotaryEmbedding keeps heads whole, the fused norms carry the residual
/// stream (their skip sums included) and reduce over it.
#[test]
fn fused_smollm2_has_the_same_groups() {
    let g = groups(&cache_dir().join("smollm2").join("prefill_fused.onnx"));
    assert_eq!(movable_with(&g, 576, 3, 4), 30, "{:#?}", &g[..4]);
    assert_eq!(movable_with(&g, 1536, 1536, 3), 30);
    let residual = g.iter().find(|g| g["params"].as_array().unwrap().len() > 200).unwrap();
    assert_eq!((residual["movable"].clone(), residual["width"].clone()), (serde_json::json!(true), serde_json::json!(576)));
    assert!(residual["reducers"].as_array().unwrap().len() >= 61);
}

#[test]
fn tiny_bert_groups_are_snapshotted() {
    let g = groups(&repo_root().join("fixtures").join("tiny_bert.onnx"));
    insta::assert_snapshot!(serde_json::to_string_pretty(&g).unwrap());
}

/// Permuting every movable group (by each score) leaves the outputs as they were, to 1e-5 of their
/// magnitude (float sums in another order), in onnxruntime and in the bundled runtime; the
/// constants did move.
#[test]
fn permutation_is_exact_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(std::path::PathBuf, Vec<(String, i64)>); 4] = [
        (repo_root().join("fixtures").join("tiny_bert.onnx"), vec![("batch".into(), 2), ("seq".into(), 16)]),
        (minilm(), vec![("batch".into(), 2), ("seq".into(), 24)]),
        (cache_dir().join("smollm2").join("prefill.onnx"), vec![("batch_size".into(), 1), ("sequence_length".into(), 24)]),
        (cache_dir().join("smollm2").join("prefill_fused.onnx"), vec![("batch_size".into(), 1), ("sequence_length".into(), 24)]),
    ];
    for (i, (src, dims)) in cases.iter().enumerate() {
        let feeds = random_npy_inputs(src, dir.path(), dims, 3);
        let (reference, _) = both_runtimes(src, &feeds);
        // Every score on the encoders; SmolLM2 (the slow one, plain and fused) by magnitude.
        let scores: &[&str] = if i >= 2 { &["magnitude"] } else { &["magnitude", "l1", "iscs", "random"] };
        for score in scores {
            let out = dir.path().join(format!("{i}_{score}.onnx"));
            let mut model = Model::load(src).unwrap();
            let report = Pipeline::parse(&format!("infer-shapes,permute-channels(score={score})")).unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
            assert!(report.passes[1].changed, "{}: {}", src.display(), report.passes[1].summary);
            model.save(&out).unwrap();
            let (ort, ours) = both_runtimes(&out, &feeds);
            let (in_ort, in_ours) = (relative_difference(&reference, &ort), relative_difference(&reference, &ours));
            assert!(in_ort < 1e-5 && in_ours < 1e-5, "{} ({score}): onnxruntime {in_ort:e}, bundled runtime {in_ours:e}", src.display());
        }
    }
}

/// Pruning MiniLM's FFNs to 75%: the six hidden widths go from 1536 to 1152 (a multiple of 8),
/// the heads and the normalised residual stream are left with their reasons; the result runs
/// in onnxruntime and the bundled runtime alike; keep=1 changes nothing.
#[test]
fn pruned_minilm_runs_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let src = minilm();
    let feeds = random_npy_inputs(&src, dir.path(), &[("batch".into(), 2), ("seq".into(), 16)], 4);
    let mut model = Model::load(&src).unwrap();
    let report = Pipeline::parse("infer-shapes,prune-channels(keep=0.75)").unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
    let details = &report.passes[1].details;
    let groups = details["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 6);
    assert!(groups.iter().all(|g| g["width_before"] == 1536 && g["width_after"] == 1152), "{groups:?}");
    let skipped = details["skipped"].as_array().unwrap();
    assert_eq!(skipped.iter().filter(|s| s["reason"].as_str().unwrap().contains("heads")).count(), 6);
    let out = dir.path().join("pruned.onnx");
    model.save(&out).unwrap();
    let (ort, ours) = both_runtimes(&out, &feeds);
    assert!(relative_difference(&ort, &ours) < 1e-5);
    let mut model = Model::load(&src).unwrap();
    let report = Pipeline::parse("infer-shapes,prune-channels(keep=1)").unwrap().run_with(&mut model, RunOptions::default()).unwrap();
    assert!(!report.passes[1].changed);
}

/// A depthwise-separable block with a residual, pooled into a classifier: the expanded width
/// moves through the depthwise convolution as one group (both pointwise convolutions and the
/// depthwise filters), the residual width is pinned by the graph input, and global pooling and
/// Flatten carry the residual channels into the classifier's rows.
#[test]
fn depthwise_chain_groups_are_snapshotted() {
    let text = "model ir_version=8 opset=[ai.onnx=17]
graph g {
  input %x: f32[1,8,6,6]
  init %w1 = tensor<f32[16,8,1,1]> fill=seeded(1)
  init %b1 = tensor<f32[16]> fill=seeded(2)
  init %wd = tensor<f32[16,1,3,3]> fill=seeded(3)
  init %w2 = tensor<f32[8,16,1,1]> fill=seeded(4)
  init %wfc = tensor<f32[4,8]> fill=seeded(5)
  init %bfc = tensor<f32[4]> fill=seeded(6)
  %e = Conv(%x, %w1, %b1)
  %r = Relu(%e)
  %d = Conv(%r, %wd) {group=16, pads=[1, 1, 1, 1]}
  %s = Relu(%d)
  %p = Conv(%s, %w2)
  %y = Add(%p, %x)
  %g = GlobalAveragePool(%y)
  %f = Flatten(%g)
  %logits = Gemm(%f, %wfc, %bfc) {transB=1}
  output %logits
}
";
    let mut model = compactor_ir::text::parse(text).unwrap();
    let report = Pipeline::parse("infer-shapes,channel-groups").unwrap().run_with(&mut model, RunOptions::default()).unwrap();
    let groups = report.passes[1].details["groups"].as_array().unwrap().clone();
    let movable: Vec<&serde_json::Value> = groups.iter().filter(|g| g["movable"] == true).collect();
    assert_eq!(movable.len(), 1, "{groups:#?}");
    assert_eq!(movable[0]["width"], 16);
    insta::assert_snapshot!(serde_json::to_string_pretty(&groups).unwrap());
}

/// Grouped-query attention as optimum exports it (KV heads repeated by Unsqueeze, Expand and
/// Reshape): 4 query heads of 4 over 2 KV heads, so q's columns, k's and v's columns and the
/// output projection's rows move in 2 units (a KV head with its query heads), never inside a
/// head.
#[test]
fn gqa_groups_are_snapshotted() {
    let text = "model ir_version=8 opset=[ai.onnx=17]
graph g {
  input %x: f32[1,5,16]
  init %wq = tensor<f32[16,16]> fill=seeded(1)
  init %wk = tensor<f32[16,8]> fill=seeded(2)
  init %wv = tensor<f32[16,8]> fill=seeded(3)
  init %wo = tensor<f32[16,16]> fill=seeded(4)
  init %q_shape = tensor<i64[4]>[1, 5, 4, 4]
  init %kv_shape = tensor<i64[4]>[1, 5, 2, 4]
  init %axis2 = tensor<i64[1]>[2]
  init %repeat = tensor<i64[5]>[1, 2, 2, 5, 4]
  init %heads = tensor<i64[4]>[1, 4, 5, 4]
  init %merged = tensor<i64[3]>[1, 5, 16]
  %q = MatMul(%x, %wq)
  %q4 = Reshape(%q, %q_shape)
  %qh = Transpose(%q4) {perm=[0, 2, 1, 3]}
  %k = MatMul(%x, %wk)
  %k4 = Reshape(%k, %kv_shape)
  %kh = Transpose(%k4) {perm=[0, 2, 1, 3]}
  %k5 = Unsqueeze(%kh, %axis2)
  %ke = Expand(%k5, %repeat)
  %kr = Reshape(%ke, %heads)
  %v = MatMul(%x, %wv)
  %v4 = Reshape(%v, %kv_shape)
  %vh = Transpose(%v4) {perm=[0, 2, 1, 3]}
  %v5 = Unsqueeze(%vh, %axis2)
  %ve = Expand(%v5, %repeat)
  %vr = Reshape(%ve, %heads)
  %kt = Transpose(%kr) {perm=[0, 1, 3, 2]}
  %scores = MatMul(%qh, %kt)
  %probs = Softmax(%scores) {axis=-1}
  %ctx = MatMul(%probs, %vr)
  %ct = Transpose(%ctx) {perm=[0, 2, 1, 3]}
  %c = Reshape(%ct, %merged)
  %o = MatMul(%c, %wo)
  %y = Add(%o, %x)
  output %y
}
";
    let mut model = compactor_ir::text::parse(text).unwrap();
    let report = Pipeline::parse("infer-shapes,channel-groups").unwrap().run_with(&mut model, RunOptions::default()).unwrap();
    let groups = report.passes[1].details["groups"].as_array().unwrap().clone();
    let heads = groups.iter().find(|g| g["params"].as_array().unwrap().iter().any(|p| p == "wq[1]")).unwrap();
    assert_eq!((heads["movable"].clone(), heads["units"].clone()), (serde_json::json!(true), serde_json::json!(2)), "{groups:#?}");
    insta::assert_snapshot!(serde_json::to_string_pretty(&groups).unwrap());
}
