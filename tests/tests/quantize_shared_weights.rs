//! Weights read by several nodes are quantized once, and every reader uses the compressed
//! form: an ALBERT-style MiniLM whose six layers all read layer 0's weights, and the same with
//! a tied LM head (logits from the word-embedding table the embedding Gather reads).
//!
//! The reference for "correct" is the same function with every reader given its own copy of
//! the weight (`*_unshared.onnx`): data-free quantization of each copy gives the same codes, so
//! the shared result must compute the same outputs, at a fraction of the size.

use compactor_ir::Model;
use compactor_passes::{Pipeline, RunOptions};
use compactor_runtime::{Session, SessionOptions, TensorValue, metrics};
use compactor_tests::{both_runtimes, model_inputs, run_python, shared_weight_model};
use std::collections::BTreeSet;
use std::path::Path;

fn quantize(src: &Path, spec: &str, out: &Path) -> Vec<serde_json::Value> {
    let mut model = Model::load(src).unwrap();
    let report = Pipeline::parse(spec).unwrap().run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap();
    model.save(out).unwrap();
    report.passes[0].details["layers"].as_array().unwrap().clone()
}

fn size_ratio(original: &Path, quantized: &Path) -> f64 {
    std::fs::metadata(original).unwrap().len() as f64 / std::fs::metadata(quantized).unwrap().len() as f64
}

/// MiniLM's reference sentences (two, padded) as `name=path.npy`.
fn sentences() -> Vec<String> {
    model_inputs(&compactor_tests::minilm())
}

/// Min sentence-embedding cosine (mean pooling, as all-MiniLM-L6-v2) of `candidate` against
/// `reference`, in onnxruntime, and the max abs difference of their last hidden states.
fn sentence_cosine(reference: &Path, candidate: &Path) -> (f64, f64) {
    let mut args: Vec<&std::ffi::OsStr> = vec![reference.as_os_str(), candidate.as_os_str()];
    let inputs = sentences();
    for i in &inputs {
        args.extend([std::ffi::OsStr::new("--input"), std::ffi::OsStr::new(i)]);
    }
    let json: serde_json::Value = serde_json::from_str(&run_python("sentence_embeddings.py", &args)).unwrap();
    (json["min_cosine"].as_f64().unwrap(), json["max_abs_hidden"].as_f64().unwrap())
}

/// Every output of a model on the reference sentences in onnxruntime and in the bundled runtime.
fn outputs_in_both_runtimes(model: &Path) -> (Vec<TensorValue>, Vec<TensorValue>) {
    both_runtimes(model, &sentences())
}

/// The largest difference between two models' outputs in onnxruntime (basic optimizations: the
/// models' own semantics) on the reference sentences.
fn outputs_differ_by(a: &Path, b: &Path) -> f64 {
    let (a, _) = outputs_in_both_runtimes(a);
    let (b, _) = outputs_in_both_runtimes(b);
    a.iter().zip(&b).map(|(x, y)| metrics::compare("out", x, y).unwrap().max_abs_error).fold(0.0, f64::max)
}

/// The largest difference between the two runtimes on any output, relative to its largest value.
fn runtimes_differ_by(model: &Path) -> f64 {
    let (theirs, ours) = outputs_in_both_runtimes(model);
    assert_eq!(theirs.len(), ours.len());
    theirs
        .iter()
        .zip(&ours)
        .map(|(t, o)| {
            let scale = t.to_f64_vec().unwrap().iter().fold(1.0f64, |m, v| m.max(v.abs()));
            metrics::compare("out", t, o).unwrap().max_abs_error / scale
        })
        .fold(0.0, f64::max)
}

/// How the quantized weights appear in a model: the quantized initializers each
/// DequantizeLinear / MatMulNBits reads (by name), how many nodes read each, and which of the
/// original model's f32 matrices are still there.
struct WeightUse {
    /// Quantized initializer name -> number of DequantizeLinear / MatMulNBits nodes reading it.
    readers: std::collections::BTreeMap<String, usize>,
    dequantize_nodes: usize,
    nbits_nodes: usize,
    float_matrices_left: BTreeSet<String>,
}

/// Names of the 2-D f32 initializers of at least 1024 elements (what quantize selects).
fn float_matrices(model: &Model) -> BTreeSet<String> {
    let g = &model.graph;
    g.value_ids()
        .filter_map(|v| {
            let t = g.value(v).initializer.as_ref()?;
            (t.dtype() == compactor_ir::DataType::Float && t.dims().len() == 2 && t.dims().iter().product::<u64>() >= 1024).then(|| g.value(v).name.clone())
        })
        .collect()
}

fn weight_use(path: &Path, original: &Path) -> WeightUse {
    let model = Model::load(path).unwrap();
    let g = &model.graph;
    let mut readers = std::collections::BTreeMap::new();
    let (mut dequantize_nodes, mut nbits_nodes) = (0, 0);
    for id in g.all_nodes() {
        let node = g.node(id);
        if node.is("DequantizeLinear") {
            dequantize_nodes += 1;
        } else if node.op_type == "MatMulNBits" {
            nbits_nodes += 1;
        } else {
            continue;
        }
        let index = if node.is("DequantizeLinear") { 0 } else { 1 };
        let name = g.value(node.input(index).unwrap()).name.clone();
        *readers.entry(name).or_insert(0) += 1;
    }
    let before = float_matrices(&Model::load(original).unwrap());
    let float_matrices_left = float_matrices(&model).intersection(&before).cloned().collect();
    WeightUse { readers, dequantize_nodes, nbits_nodes, float_matrices_left }
}

/// ALBERT-style MiniLM, int4 and int8, QDQ and MatMulNBits: each of layer 0's six weight
/// matrices is quantized once and read by all six layers; the result is 5-7x smaller at int4,
/// runs in onnxruntime and the bundled runtime alike, and computes what quantizing a separate
/// copy per layer computes.
#[test]
fn albert_shared_layer_weights_are_quantized_once() {
    let (albert, unshared) = (shared_weight_model("minilm_albert.onnx"), shared_weight_model("minilm_albert_unshared.onnx"));
    let dir = tempfile::tempdir().unwrap();
    for (bits, format) in [(4, "qdq"), (4, "matmulnbits"), (8, "qdq"), (8, "matmulnbits")] {
        let spec = format!("quantize(bits={bits},format={format},ops=[MatMul,Gemm,Gather]),eliminate-dead-code");
        let (out, reference) = (dir.path().join(format!("{bits}{format}.onnx")), dir.path().join(format!("{bits}{format}_unshared.onnx")));
        let layers = quantize(&albert, &spec, &out);
        quantize(&unshared, &spec, &reference);
        // Six layer-0 matrices read by six layers each, and the word and position embeddings.
        let shared: Vec<&serde_json::Value> = layers.iter().filter(|l| l["readers"].is_array()).collect();
        assert_eq!((layers.len(), shared.len()), (8, 6), "{spec}: {layers:?}");
        for l in &shared {
            assert_eq!(l["readers"].as_array().unwrap().len(), 6, "{spec}: {l}");
            assert!(l.get("notes").is_none(), "{spec}: {l}");
        }
        let uses = weight_use(&out, &albert);
        assert!(uses.float_matrices_left.is_empty(), "{spec}: f32 matrices left: {:?}", uses.float_matrices_left);
        if format == "qdq" {
            // One DequantizeLinear per weight; the six layers read the same one.
            assert_eq!(uses.dequantize_nodes, 8, "{spec}");
            assert!(uses.readers.values().all(|&n| n == 1), "{spec}: {:?}", uses.readers);
        } else {
            // 36 MatMulNBits nodes reading 6 packed weights, 6 nodes each.
            assert_eq!((uses.nbits_nodes, uses.readers.values().filter(|&&n| n == 6).count()), (36, 6), "{spec}: {:?}", uses.readers);
        }
        let ratio = size_ratio(&albert, &out);
        let reference_ratio = size_ratio(&unshared, &reference);
        let (cosine, _) = sentence_cosine(&albert, &out);
        let (reference_cosine, _) = sentence_cosine(&unshared, &reference);
        let hidden_diff = outputs_differ_by(&reference, &out);
        let runtimes = runtimes_differ_by(&out);
        eprintln!(
            "ALBERT MiniLM int{bits} {format}: {ratio:.2}x smaller (a copy per layer: {reference_ratio:.2}x), min sentence cosine {cosine:.5} (a copy per layer: {reference_cosine:.5}), hidden states differ from the copy-per-layer result by {hidden_diff:.2e}; runtimes differ by {runtimes:.2e}"
        );
        quantize_checks(&out);
        let expected_ratio = if bits == 4 { 5.0 } else { 3.0 };
        assert!(ratio >= expected_ratio, "{spec}: only {ratio:.2}x smaller");
        // The same codes and scales as a copy per layer: the same function. (With all of
        // onnxruntime's fusions on, the copies' single-reader DequantizeLinear+MatMul pairs
        // become an int8-activation kernel, so the sentence cosines differ a little.)
        assert!(hidden_diff < 1e-5, "{spec}: differs from a copy per layer by {hidden_diff}");
        assert!(cosine >= reference_cosine - 0.005, "{spec}: {cosine} vs {reference_cosine}");
        assert!(cosine >= if bits == 4 { 0.95 } else { 0.999 }, "{spec}: {cosine}");
        assert!(runtimes < 1e-4, "{spec}: runtimes differ by {runtimes}");
    }
}

fn quantize_checks(path: &Path) {
    run_python("quantize_checks.py", &["check".as_ref(), path.as_os_str()]);
}

/// Logits (output 1) of a tied-head model: top-1 agreement and cosine against the f32 model's,
/// in onnxruntime, on the reference sentences (padding included).
fn logits_agreement(reference: &Path, candidate: &Path) -> (f64, f64) {
    let (a, _) = outputs_in_both_runtimes(reference);
    let (b, _) = outputs_in_both_runtimes(candidate);
    let c = metrics::compare("logits", &a[1], &b[1]).unwrap();
    (c.top1_agreement.unwrap(), c.cosine_similarity)
}

/// The tied LM head: the word-embedding table `E [30522, 384]` is read by the embedding Gather
/// and, transposed, by the head's MatMul. One int4 copy blocked along hidden serves both (the
/// head reads a Transpose of the dequantized table); with format=matmulnbits the table stays in
/// that shared DequantizeLinear form (a Gather cannot read MatMulNBits' packing), and the report
/// says so, while the layer weights become MatMulNBits.
#[test]
fn tied_embedding_and_lm_head_share_one_quantized_table() {
    let (tied, unshared) = (shared_weight_model("minilm_albert_tied_head.onnx"), shared_weight_model("minilm_albert_tied_head_unshared.onnx"));
    let dir = tempfile::tempdir().unwrap();
    for format in ["qdq", "matmulnbits"] {
        let spec = format!("quantize(bits=4,format={format},ops=[MatMul,Gemm,Gather]),eliminate-dead-code");
        let (out, reference) = (dir.path().join(format!("{format}.onnx")), dir.path().join(format!("{format}_unshared.onnx")));
        let layers = quantize(&tied, &spec, &out);
        quantize(&unshared, &spec, &reference);
        let table = layers.iter().find(|l| l["op"] == "Gather" && l["n"] == 30522).unwrap_or_else(|| panic!("{spec}: no table in {layers:?}"));
        let readers: Vec<&str> = table["readers"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(readers, ["/m/embeddings/word_embeddings/Gather", "/lm_head/MatMul"], "{spec}");
        assert_eq!(table["notes"].is_array(), format == "matmulnbits", "{spec}: {table}");
        let uses = weight_use(&out, &tied);
        assert!(uses.float_matrices_left.is_empty(), "{spec}: {:?}", uses.float_matrices_left);
        let table_readers = uses.readers.iter().filter(|(name, _)| name.contains("word_embeddings")).count();
        assert_eq!(table_readers, 1, "{spec}: the table is stored once: {:?}", uses.readers);
        let ratio = size_ratio(&tied, &out);
        let (top1, logit_cosine) = logits_agreement(&tied, &out);
        let (reference_top1, reference_logit_cosine) = logits_agreement(&unshared, &reference);
        let copy_diff = outputs_differ_by(&reference, &out);
        let (cosine, _) = sentence_cosine(&tied, &out);
        let runtimes = runtimes_differ_by(&out);
        eprintln!(
            "ALBERT MiniLM + tied head int4 {format}: {ratio:.2}x smaller; logits top-1 agreement {top1:.4} cosine {logit_cosine:.5} (a copy per reader: {reference_top1:.4}, {reference_logit_cosine:.5}); min sentence cosine {cosine:.5}; runtimes differ by {runtimes:.2e}"
        );
        quantize_checks(&out);
        assert!(ratio >= 5.0, "{spec}: only {ratio:.2}x smaller");
        // With matmulnbits the copy's head is a MatMulNBits, the shared table's head a
        // DequantizeLinear + Transpose + MatMul: the same codes through two kernels (measured
        // 1.1e-5 on logits of magnitude ~10).
        let bound = if format == "qdq" { 1e-5 } else { 1e-4 };
        assert!(copy_diff < bound, "{spec}: differs from a copy per reader by {copy_diff}");
        assert!((logit_cosine - reference_logit_cosine).abs() < 1e-5 && (top1 - reference_top1).abs() < 1e-9, "{spec}: not what a copy per reader gives");
        assert!(top1 >= 0.9, "{spec}: top-1 agreement {top1}");
        assert!(runtimes < 1e-4, "{spec}: runtimes differ by {runtimes}");
    }
}

/// Cosine of the last hidden state against the f32 model on held-out random-token batches (a
/// seed the calibration batches, seeds 0.., do not use), on the bundled runtime.
fn held_out_cosine(reference: &Path, candidate: &Path) -> f64 {
    let reference = Model::load(reference).unwrap();
    let options = SessionOptions { dims: vec![("batch".into(), 4), ("seq".into(), 64)], ..Default::default() };
    let inputs = compactor_runtime::inputs::random_inputs(&reference, &options.dims, 1_000_003).unwrap();
    let named: Vec<(&str, TensorValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let a = Session::new(&reference, &options).unwrap().run(&named).unwrap();
    let b = Session::new(&Model::load(candidate).unwrap(), &options).unwrap().run(&named).unwrap();
    metrics::compare("h", &a[0].1, &b[0].1).unwrap().cosine_similarity
}

/// The AWQ `Mul` nodes of a model (named after their layer, ending in `/AwqScale`).
fn awq_scalers(path: &Path) -> usize {
    let model = Model::load(path).unwrap();
    model.graph.all_nodes().into_iter().filter(|&n| model.graph.node(n).name.as_deref().is_some_and(|name| name.ends_with("/AwqScale"))).count()
}

/// Calibrated methods on the ALBERT model (random-token batches through the runtime): GPTQ
/// quantizes each shared weight once against the sum of its six readers' Hessians, AWQ scales it
/// once and divides every reader's activation by the same `s`. Both run in onnxruntime and the
/// bundled runtime alike and, on held-out batches, end closer to the f32 model than RTN.
#[test]
fn calibrated_methods_see_every_reader_of_a_shared_weight() {
    let albert = shared_weight_model("minilm_albert.onnx");
    let dir = tempfile::tempdir().unwrap();
    let rtn = dir.path().join("rtn.onnx");
    quantize(&albert, "quantize(bits=4),eliminate-dead-code", &rtn);
    let rtn_held_out = held_out_cosine(&albert, &rtn);
    for (i, spec) in ["quantize(bits=4,method=gptq)", "quantize(bits=4,method=gptq,format=matmulnbits)", "quantize(bits=4,awq=true)"].iter().enumerate() {
        let out = dir.path().join(format!("{i}.onnx"));
        let mut model = Model::load(&albert).unwrap();
        let options = SessionOptions { dims: vec![("batch".into(), 1), ("seq".into(), 64)], ..Default::default() };
        let calibration = compactor::RuntimeCalibrator::random(&model, 8, 0, options).unwrap();
        let report = compactor::Pipeline::parse(&format!("{spec},eliminate-dead-code"))
            .unwrap()
            .with_calibration(calibration)
            .run_with(&mut model, RunOptions { verify_each: true, ..Default::default() })
            .unwrap();
        model.save(&out).unwrap();
        let layers = report.passes[0].details["layers"].as_array().unwrap().clone();
        assert_eq!(layers.len(), 6, "{spec}: {layers:?}");
        for l in &layers {
            assert_eq!(l["readers"].as_array().map(Vec::len), Some(6), "{spec}: {l}");
            assert!(l["output_error"].is_number(), "{spec}: {l}");
            if spec.contains("gptq") {
                assert_eq!(l["method"], "gptq", "{spec}: {l}");
            } else {
                assert!(l["awq_alpha"].is_number(), "{spec}: {l}");
            }
        }
        if spec.contains("awq") {
            assert_eq!(awq_scalers(&out), 36, "{spec}: a Mul in front of each of the 36 readers");
        }
        quantize_checks(&out);
        let runtimes = runtimes_differ_by(&out);
        let held_out = held_out_cosine(&albert, &out);
        let (sentences, _) = sentence_cosine(&albert, &out);
        eprintln!("ALBERT MiniLM int4 {spec}: held-out cosine {held_out:.5} (RTN {rtn_held_out:.5}); min sentence cosine {sentences:.5}; runtimes differ by {runtimes:.2e}");
        assert!(runtimes < 1e-4, "{spec}: runtimes differ by {runtimes}");
        assert!(held_out > rtn_held_out, "{spec}: held-out cosine {held_out} vs RTN {rtn_held_out}");
    }
}
