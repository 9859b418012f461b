//! The ONNX backend node tests (onnx 1.22.0, 1765 cases) on Compactor's runtime, against
//! onnxruntime on the same cases with the same comparison.
//!
//! A case passes when every output has the expected element type and shape and its values
//! satisfy `allclose(rtol = 1e-3, atol = 1e-7, equal_nan)` (onnx's backend-test tolerance);
//! integers, bools and strings must be equal. A case that errors, panics or runs longer than
//! [`CASE_TIMEOUT`] fails.
//!
//! Two checks:
//! - no case listed in `runtime/conformance/passing.txt` (the passing cases when
//!   docs/conformance.md was recorded) fails now;
//! - the runtime passes at least 99% of the cases onnxruntime passes.
//!
//! `COMPACTOR_UPDATE_CONFORMANCE=1` rewrites the passing list from this run; the regression
//! check still compares the run with the list as it was before (so a case that stopped
//! passing fails the run that drops it from the list).

use compactor_ir::proto::TensorProto;
use compactor_ir::{Model, Tensor, TypeKind, ValueType};
use compactor_runtime::metrics::allclose;
use compactor_runtime::{PlanKind, RuntimeValue, Session, SessionOptions, TensorValue};
use compactor_tests::{node_test_dirs, repo_root, run_python, test_data};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// onnx's `SequenceProto` (onnx-data.proto, which the IR does not vendor): how the node tests
/// store sequence inputs and outputs. Only sequences of tensors occur in them.
#[derive(Clone, PartialEq, prost::Message)]
struct SequenceProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    elem_type: Option<i32>,
    #[prost(message, repeated, tag = "3")]
    tensor_values: Vec<TensorProto>,
}

/// onnx's `OptionalProto`: an optional tensor or sequence, or nothing (`elem_type` 0).
#[derive(Clone, PartialEq, prost::Message)]
struct OptionalProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    elem_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    tensor_value: Option<TensorProto>,
    #[prost(message, optional, tag = "5")]
    sequence_value: Option<SequenceProto>,
}

fn tensor_of(proto: TensorProto) -> Result<TensorValue, String> {
    let tensor = Tensor::from_proto(proto, None).map_err(|e| e.to_string())?;
    TensorValue::from_ir(&tensor).map_err(|e| e.to_string())
}

fn sequence_of(proto: SequenceProto) -> Result<RuntimeValue, String> {
    Ok(RuntimeValue::Sequence(proto.tensor_values.into_iter().map(tensor_of).collect::<Result<_, _>>()?))
}

/// Reads a test `.pb` as the value the graph declares: a tensor, a sequence or an optional.
fn read_value(path: &Path, ty: Option<&ValueType>) -> Result<RuntimeValue, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |e: prost::DecodeError| format!("{}: {e}", path.display());
    match ty.map(|t| &t.kind) {
        Some(TypeKind::Sequence(_)) => sequence_of(SequenceProto::decode(&bytes[..]).map_err(bad)?),
        Some(TypeKind::Optional(_)) => {
            let proto = OptionalProto::decode(&bytes[..]).map_err(bad)?;
            let inner = match (proto.tensor_value, proto.sequence_value) {
                (Some(t), _) => Some(Box::new(RuntimeValue::Tensor(tensor_of(t)?))),
                (None, Some(s)) => Some(Box::new(sequence_of(s)?)),
                (None, None) => None,
            };
            Ok(RuntimeValue::Optional(inner))
        }
        Some(TypeKind::Tensor { .. }) | None => Ok(RuntimeValue::Tensor(tensor_of(TensorProto::decode(&bytes[..]).map_err(bad)?)?)),
        Some(other) => Err(format!("{}: values of type {other:?} are not supported", path.display())),
    }
}

/// Compares one output with its expected value: the same kind of value, tensors compared by
/// [`compare_tensors`] element by element of a sequence.
fn compare_values(name: &str, expected: &RuntimeValue, actual: &RuntimeValue) -> Result<(), String> {
    match (expected, actual) {
        (RuntimeValue::Tensor(e), RuntimeValue::Tensor(a)) => compare_tensors(name, e, a),
        (RuntimeValue::Sequence(e), RuntimeValue::Sequence(a)) => {
            if e.len() != a.len() {
                return Err(format!("output '{name}': a sequence of {} tensors, expected {}", a.len(), e.len()));
            }
            e.iter().zip(a).enumerate().try_for_each(|(k, (e, a))| compare_tensors(&format!("{name}[{k}]"), e, a))
        }
        (RuntimeValue::Optional(e), RuntimeValue::Optional(a)) => match (e, a) {
            (None, None) => Ok(()),
            (Some(e), Some(a)) => compare_values(name, e, a),
            _ => Err(format!("output '{name}': {}, expected {}", actual.kind(), expected.kind())),
        },
        _ => Err(format!("output '{name}': {}, expected {}", actual.kind(), expected.kind())),
    }
}

fn compare_tensors(name: &str, expected: &TensorValue, actual: &TensorValue) -> Result<(), String> {
    if expected.dtype() != actual.dtype() {
        return Err(format!("output '{name}': type {} != expected {}", actual.dtype(), expected.dtype()));
    }
    if expected.shape() != actual.shape() {
        return Err(format!("output '{name}': shape {:?} != expected {:?}", actual.shape(), expected.shape()));
    }
    if let Some(want) = expected.strings() {
        return if actual.strings() == Some(want) { Ok(()) } else { Err(format!("output '{name}': strings differ")) };
    }
    let (e, a) = (expected.to_f64_vec().map_err(|e| e.to_string())?, actual.to_f64_vec().map_err(|e| e.to_string())?);
    if !expected.dtype().is_float() {
        // Integers and bools exactly, bit for bit (an int64 beyond 2^53 would round through f64).
        let bytes = |t: &TensorValue| t.to_ir().and_then(|t| t.raw_data().map_err(Into::into)).map_err(|e| e.to_string());
        if bytes(expected)? == bytes(actual)? {
            return Ok(());
        }
        let i = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(0);
        return Err(format!("output '{name}': element {i} is {}, expected {} (or an int64 that differs beyond 2^53)", a.get(i).copied().unwrap_or(f64::NAN), e.get(i).copied().unwrap_or(f64::NAN)));
    }
    allclose(&e, &a, RTOL, ATOL).map_err(|(i, want, got)| format!("output '{name}': element {i} is {got}, expected {want}"))
}

/// Runs one case; `Ok` says how the run was planned, `Err` why the case fails.
fn run_case(dir: &Path) -> Result<PlanKind, String> {
    let model = Model::load(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let g = &model.graph;
    let data = dir.join("test_data_set_0");
    let mut inputs = Vec::new();
    let free_inputs: Vec<_> = g.main().inputs.iter().copied().filter(|&v| g.value(v).initializer.is_none()).collect();
    for (k, &v) in free_inputs.iter().enumerate() {
        let value = g.value(v);
        let path = data.join(format!("input_{k}.pb"));
        if path.exists() {
            inputs.push((value.name.clone(), read_value(&path, value.ty.as_ref())?));
        }
    }
    let session = Session::new(&model, &SessionOptions { threads: 1, ..Default::default() }).map_err(|e| e.to_string())?;
    let named: Vec<(&str, RuntimeValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let outputs = session.run_values(&named).map_err(|e| e.to_string())?;
    if outputs.len() != g.main().outputs.len() {
        return Err(format!("{} outputs, expected {}", outputs.len(), g.main().outputs.len()));
    }
    for (k, ((name, actual), &v)) in outputs.iter().zip(&g.main().outputs).enumerate() {
        if *name != g.value(v).name {
            return Err(format!("output {k} is '{name}', the model declares '{}'", g.value(v).name));
        }
        let expected = read_value(&data.join(format!("output_{k}.pb")), g.value(v).ty.as_ref())?;
        compare_values(name, &expected, actual)?;
    }
    session.plan_kind_of_values(&named).map_err(|e| e.to_string())
}

/// Every case on two worker threads; each case gets [`CASE_TIMEOUT`] (a case still running
/// then is abandoned and fails).
fn run_all(dirs: &[PathBuf]) -> BTreeMap<String, Result<PlanKind, String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let dirs = Arc::new(dirs.to_vec());
    let workers = 2;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for _ in 0..workers {
        let (next, results, dirs, done_tx) = (next.clone(), results.clone(), dirs.clone(), done_tx.clone());
        std::thread::spawn(move || {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(dir) = dirs.get(i) else { break };
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                // Each case on its own thread, so a runaway case can be abandoned.
                let (tx, rx) = mpsc::channel();
                let case_dir = dir.clone();
                std::thread::spawn(move || {
                    let result = std::panic::catch_unwind(|| run_case(&case_dir)).unwrap_or_else(|_| Err("panicked".into()));
                    let _ = tx.send(result);
                });
                let start = Instant::now();
                let result = rx.recv_timeout(CASE_TIMEOUT).unwrap_or_else(|_| Err(format!("timed out after {:?}", start.elapsed())));
                results.lock().unwrap().insert(name, result);
            }
            let _ = done_tx.send(());
        });
    }
    drop(done_tx);
    for _ in 0..workers {
        done_rx.recv().unwrap();
    }
    Arc::try_unwrap(results).map(|m| m.into_inner().unwrap()).unwrap_or_else(|arc| arc.lock().unwrap().clone())
}

fn passing_list() -> PathBuf {
    repo_root().join("runtime/conformance/passing.txt")
}

/// Both runs' outcomes, computed once per test process.
struct Conformance {
    /// `runtime/conformance/passing.txt` as it was before this run (which may rewrite it).
    recorded: Vec<String>,
    ours: BTreeMap<String, Result<PlanKind, String>>,
    our_pass: BTreeSet<String>,
    ort_pass: BTreeSet<String>,
    /// Cases both pass.
    both: usize,
}

fn conformance() -> &'static Conformance {
    static RESULT: OnceLock<Conformance> = OnceLock::new();
    RESULT.get_or_init(|| {
        let dirs = node_test_dirs();
        assert_eq!(dirs.len(), 1765, "the onnx 1.22.0 wheel ships 1765 node tests");
        let recorded: Vec<String> = std::fs::read_to_string(passing_list()).unwrap_or_default().lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        let start = Instant::now();
        let ours = run_all(&dirs);
        let our_time = start.elapsed();
        let root = test_data().join("onnx-node-tests");
        let ort_lines = run_python("ort_node_tests.py", &[root.as_os_str(), "1e-3".as_ref(), "1e-7".as_ref()]);
        let ort_pass: BTreeSet<String> = ort_lines.lines().filter_map(|l| l.strip_suffix("\tpass")).map(str::to_string).collect();
        assert_eq!(ort_lines.lines().count(), dirs.len(), "onnxruntime script must report every case");
        let our_pass: BTreeSet<String> = ours.iter().filter(|(_, r)| r.is_ok()).map(|(n, _)| n.clone()).collect();
        let both = our_pass.intersection(&ort_pass).count();
        let report_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime-conformance.tsv");
        let report: String = ours
            .iter()
            .map(|(n, r)| {
                let status = match r {
                    Ok(kind) => format!("pass:{kind:?}"),
                    Err(_) => "fail".to_string(),
                };
                let ort = if ort_pass.contains(n) { "ort-pass" } else { "ort-fail" };
                let reason = r.as_ref().err().map(|e| format!("\t{}", e.replace(['\n', '\t'], " "))).unwrap_or_default();
                format!("{n}\t{status}\t{ort}{reason}\n")
            })
            .collect();
        std::fs::write(&report_path, report).unwrap();
        println!(
            "conformance: ours {}/{} ({:.1}%), onnxruntime {}/{} ({:.1}%), ours on onnxruntime's passes {both}/{} ({:.1}%), {:.0}s; per-case report {}",
            our_pass.len(),
            dirs.len(),
            100.0 * our_pass.len() as f64 / dirs.len() as f64,
            ort_pass.len(),
            dirs.len(),
            100.0 * ort_pass.len() as f64 / dirs.len() as f64,
            ort_pass.len(),
            100.0 * both as f64 / ort_pass.len() as f64,
            our_time.as_secs_f64(),
            report_path.display()
        );
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        ours.values().flatten().for_each(|k| *kinds.entry(format!("{k:?}")).or_default() += 1);
        println!("passing cases by plan: {kinds:?}");
        if std::env::var_os("COMPACTOR_UPDATE_CONFORMANCE").is_some() {
            let list: String = our_pass.iter().map(|n| format!("{n}\n")).collect();
            std::fs::write(passing_list(), list).unwrap();
        }
        Conformance { recorded, ours, our_pass, ort_pass, both }
    })
}

/// The regression check: every case recorded as passing still passes.
#[test]
fn recorded_passing_node_tests_still_pass() {
    let c = conformance();
    let recorded = &c.recorded;
    assert!(!recorded.is_empty(), "runtime/conformance/passing.txt is empty; record it with COMPACTOR_UPDATE_CONFORMANCE=1");
    let regressions: Vec<String> =
        recorded.iter().filter(|n| !c.our_pass.contains(*n)).map(|n| format!("{n}: {}", c.ours.get(n).and_then(|r| r.as_ref().err()).cloned().unwrap_or_else(|| "not run".into()))).collect();
    assert!(regressions.is_empty(), "{} recorded passing cases now fail:\n{}", regressions.len(), regressions.join("\n"));
}

/// The target: at least 99% of the cases onnxruntime passes.
#[test]
fn node_tests_pass_at_least_99_percent_of_what_onnxruntime_passes() {
    let c = conformance();
    assert!(c.both as f64 >= 0.99 * c.ort_pass.len() as f64, "the runtime passes {} of the {} cases onnxruntime passes (< 99%)", c.both, c.ort_pass.len());
}
