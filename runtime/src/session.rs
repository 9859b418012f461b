//! Sessions: a lowered model prepared by tract, run on named inputs, optionally capturing
//! intermediate values for calibration.

use crate::capture::{CaptureSink, CapturedValue, ValueRef};
use crate::error::{RuntimeError, tract_reason};
use crate::interpret::{Interpreter, needs_interpreter};
use crate::lower::{Lowered, LoweringReport, lower, model_name};
use crate::value::{RuntimeValue, TensorValue, carrier_type};
use compactor_ir::{DataType, Dim, Graph, Model, NodeId, Shape, TypeKind, ValueId};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

mod specialize;

use specialize::*;

/// How a session is prepared.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Threads for tract's matmul executor and the fused kernels; defaults to the number of cores.
    pub threads: usize,
    /// Run tract's optimiser (`into_optimized`); off gives the decluttered model only.
    pub optimize: bool,
    /// Values for symbolic input dimensions (`batch`, `seq`), fixed before tract sees the model
    /// so it can plan for concrete shapes. Dimensions not listed stay symbolic.
    pub dims: Vec<(String, i64)>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { threads: default_threads(), optimize: true, dims: Vec::new() }
    }
}

/// The number of cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Has the allocator keep freed tensors for reuse instead of handing them back to the system
/// (glibc only; process-wide, done once; every [`Session`] calls it).
///
/// A run allocates and frees its large intermediates (MiniLM at batch 8: 6 MiB of attention
/// scores per layer). glibc maps blocks above its mmap threshold afresh and unmaps them on free,
/// and trims the top of its heap, so each run page-faulted its intermediates in again: a quarter
/// of MiniLM's time at batch 8 (onnxruntime keeps its own arena). Raised thresholds keep freed
/// blocks in the heap for the next run; blocks over 32 MiB (the largest threshold glibc takes,
/// weights mostly) are still mapped and unmapped.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only sets allocator parameters; glibc takes its arena lock for it.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        });
    }
}

/// Raises the size from which tract spreads an elementwise op, reduction, softmax or norm over
/// the session's threads (process-wide, done once; every [`Session`] calls it).
///
/// tract's default, 32768 elements, threads ops on MiniLM's `[128, 384]` activations (49152
/// elements) at batch 1, where handing out the work costs more than it saves: on two threads
/// those ops took 3.5 ms per run against 1.8 ms with the threshold at 131072 (which still
/// threads the `[128, 1536]` GELU and everything at batch 8, where it pays).
pub fn tune_tract_threading() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tract_linalg::multithread::set_threading_element_threshold(1 << 17));
}

/// A graph input or output as declared in the model.
#[derive(Clone, Debug)]
pub struct IoSpec {
    pub name: String,
    pub id: ValueId,
    /// The ONNX element type (`None` when the model does not say).
    pub dtype: Option<DataType>,
    pub shape: Option<Shape>,
}

type Plan = Arc<TypedRunnableModel>;

/// Outputs with their names, in graph order.
pub type NamedValues = Vec<(String, TensorValue)>;

/// How far a plan is specialized to the values of one run. tract plans most graphs once for
/// all inputs (shapes symbolic). Some it can only type with concrete shapes (MiniLM's Flatten
/// of `batch × seq`), some only with an axes, shape, scale or condition input known: those
/// runs get a plan of their own, cached by what it was specialized on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlanKind {
    /// One plan for every input value.
    Generic,
    /// Input shapes fixed to this run's.
    Shapes,
    /// Shapes fixed, and inputs feeding parameter slots (axes, shapes, pads, scales, If
    /// conditions) baked in as constants.
    Parameters,
    /// Every input baked in: tract plans (and largely folds) the graph for these values.
    Values,
    /// Run node by node by the runtime's interpreter (sequences, optionals, loops, or a graph
    /// tract cannot plan as a whole), each ordinary node a one-node tract plan.
    Interpreted,
}

/// A model ready to run. `Session` is `Send + Sync`; runs do not share mutable state.
pub struct Session {
    name: String,
    lowered: Model,
    report: LoweringReport,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    options: SessionOptions,
    executor: Executor,
    /// The plan for every input value, when tract could make one.
    generic: Result<Plan, String>,
    /// Specialized plans and plans with captured values as extra outputs.
    plans: Mutex<HashMap<Vec<u8>, Specialization>>,
    /// Runs the graph node by node when tract cannot plan it (none for the one-node sessions
    /// the interpreter itself makes).
    interpreter: Option<Interpreter>,
    /// The graph handles sequences, optionals or loops: every run is interpreted.
    interpret_only: bool,
    /// The least specialized [`PlanKind`] (as a number) whose plans ran: plans tract made
    /// but could not run are not made again.
    least_runnable_kind: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("model", &self.name).field("inputs", &self.inputs).field("outputs", &self.outputs).finish()
    }
}

impl Session {
    /// Lowers `model` and prepares it with tract.
    pub fn new(model: &Model, options: &SessionOptions) -> Result<Session, RuntimeError> {
        Self::build(model, options, true)
    }

    /// A session for one node of a graph the interpreter runs: no interpreter of its own.
    pub(crate) fn for_one_node(model: &Model, options: &SessionOptions) -> Result<Session, RuntimeError> {
        Self::build(model, options, false)
    }

    fn build(model: &Model, options: &SessionOptions, may_interpret: bool) -> Result<Session, RuntimeError> {
        keep_freed_memory();
        tune_tract_threading();
        let name = model_name(model);
        let interpret_only = may_interpret && needs_interpreter(model);
        let interpreter = may_interpret.then(|| Interpreter::new(model, &name, options));
        let lowered = if interpret_only { Lowered { model: model.clone(), report: LoweringReport::default() } } else { lower(model)? };
        let mut lowered_model = lowered.model;
        bind_dims(&mut lowered_model.graph, &options.dims);
        let g = &model.graph;
        let spec = |id: ValueId| {
            let v = g.value(id);
            IoSpec { name: v.name.clone(), id, dtype: v.elem(), shape: v.shape().cloned() }
        };
        let inputs: Vec<IoSpec> = g.main().inputs.iter().copied().filter(|&v| g.value(v).initializer.is_none()).map(spec).collect();
        let outputs: Vec<IoSpec> = g.main().outputs.iter().copied().map(spec).collect();
        let executor = if options.threads > 1 { Executor::multithread(options.threads) } else { Executor::SingleThread };
        let generic = match if interpret_only {
            Err(RuntimeError::Prepare { model: name.clone(), reason: "the graph handles sequences, optionals or loops".into() })
        } else {
            prepare(&name, &lowered_model, options, &executor)
        } {
            Ok(plan) => Ok(plan),
            // Without inputs there is nothing to specialize on: the error is final.
            Err(e) if inputs.is_empty() && interpreter.is_none() => return Err(e),
            Err(RuntimeError::Prepare { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        };
        Ok(Session {
            name,
            lowered: lowered_model,
            report: lowered.report,
            inputs,
            outputs,
            options: options.clone(),
            executor,
            generic,
            plans: Mutex::new(HashMap::new()),
            interpreter,
            interpret_only,
            least_runnable_kind: Default::default(),
        })
    }

    /// Loads a model file and prepares it.
    pub fn from_path(path: impl AsRef<std::path::Path>, options: &SessionOptions) -> Result<Session, RuntimeError> {
        let model = Model::load(path)?;
        Self::new(&model, options)
    }

    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// What lowering did to the model.
    pub fn lowering_report(&self) -> &LoweringReport {
        &self.report
    }

    /// The model as handed to tract (after lowering).
    pub fn lowered_model(&self) -> &Model {
        &self.lowered
    }

    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// True when tract could plan the graph once for all input values; otherwise each run is
    /// planned for its shapes or values (see [`PlanKind`]).
    pub fn has_generic_plan(&self) -> bool {
        self.generic.is_ok()
    }

    /// Runs the model; returns every graph output, in graph order, with its name.
    ///
    /// Inputs are matched by name; one of another numeric type than declared is converted.
    pub fn run(&self, inputs: &[(&str, TensorValue)]) -> Result<NamedValues, RuntimeError> {
        if !self.interpret_only {
            match self.run_planned(inputs, &[]) {
                Err(RuntimeError::Prepare { .. }) if self.interpreter.is_some() => {}
                other => return Ok(other?.0),
            }
        }
        let values: Vec<(&str, RuntimeValue)> = inputs.iter().map(|(n, t)| (*n, RuntimeValue::Tensor(t.clone()))).collect();
        self.interpret(&values)?
            .into_iter()
            .map(|(name, value)| match value {
                RuntimeValue::Tensor(t) => Ok((name, t)),
                other => Err(RuntimeError::Execution { model: self.name.clone(), reason: format!("output '{name}' is {}: run it with run_values", other.kind()) }),
            })
            .collect()
    }

    /// Runs the model on inputs that may be sequences or optionals; returns every graph output
    /// in graph order with its name.
    pub fn run_values(&self, inputs: &[(&str, RuntimeValue)]) -> Result<Vec<(String, RuntimeValue)>, RuntimeError> {
        let tensors: Option<Vec<(&str, TensorValue)>> = inputs
            .iter()
            .map(|(n, v)| match v {
                RuntimeValue::Tensor(t) => Some((*n, t.clone())),
                _ => None,
            })
            .collect();
        match tensors {
            Some(tensors) if !self.interpret_only => Ok(self.run(&tensors)?.into_iter().map(|(n, t)| (n, RuntimeValue::Tensor(t))).collect()),
            _ => self.interpret(inputs),
        }
    }

    /// How [`Session::run`] plans for these inputs (building the plan if needed).
    pub fn plan_kind(&self, inputs: &[(&str, TensorValue)]) -> Result<PlanKind, RuntimeError> {
        if self.interpret_only {
            return Ok(PlanKind::Interpreted);
        }
        let ordered = self.order_inputs(inputs)?;
        match self.plan_for(&ordered, &[]) {
            Ok(spec) => Ok(spec.kind),
            Err(RuntimeError::Prepare { .. }) if self.interpreter.is_some() => Ok(PlanKind::Interpreted),
            Err(e) => Err(e),
        }
    }

    /// [`Session::plan_kind`] for inputs that may be sequences or optionals.
    pub fn plan_kind_of_values(&self, inputs: &[(&str, RuntimeValue)]) -> Result<PlanKind, RuntimeError> {
        let tensors: Option<Vec<(&str, TensorValue)>> = inputs
            .iter()
            .map(|(n, v)| match v {
                RuntimeValue::Tensor(t) => Some((*n, t.clone())),
                _ => None,
            })
            .collect();
        match tensors {
            Some(tensors) => self.plan_kind(&tensors),
            None => Ok(PlanKind::Interpreted),
        }
    }

    /// Runs the graph on the interpreter; tensor inputs are checked and converted as for a plan.
    fn interpret(&self, inputs: &[(&str, RuntimeValue)]) -> Result<Vec<(String, RuntimeValue)>, RuntimeError> {
        let interpreter = self.interpreter.as_ref().ok_or_else(|| RuntimeError::Execution { model: self.name.clone(), reason: "tract cannot plan this graph".into() })?;
        for (name, _) in inputs {
            if !self.inputs.iter().any(|s| s.name == *name) {
                let known = self.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(RuntimeError::UnknownInput { model: self.name.clone(), name: name.to_string(), known });
            }
        }
        let mut bound = Vec::new();
        for spec in &self.inputs {
            let Some((_, value)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
                return Err(RuntimeError::MissingInput { model: self.name.clone(), name: spec.name.clone() });
            };
            let value = match value {
                RuntimeValue::Tensor(t) => RuntimeValue::Tensor(self.wrap(spec.id, self.check_input(spec, t)?.into_arc_tensor())?),
                other => other.clone(),
            };
            bound.push((spec.id, value));
        }
        let outputs = interpreter.run(bound)?;
        Ok(self.outputs.iter().map(|s| s.name.clone()).zip(outputs).collect())
    }

    /// Runs with `extra` values as additional outputs; returns the graph outputs and the extras.
    fn run_planned(&self, inputs: &[(&str, TensorValue)], extra: &[ValueId]) -> Result<(NamedValues, Vec<Tensor>), RuntimeError> {
        let ordered = self.order_inputs(inputs)?;
        let results = loop {
            let spec = self.plan_for(&ordered, extra)?;
            let free: TVec<TValue> = spec.free.iter().map(|&i| ordered[i].clone()).collect();
            match self.execute(&spec.plan, free) {
                // A plan tract made but cannot run (a Slice whose bounds are inputs loses its
                // symbols' scope): from now on, runs are planned with more of their inputs fixed.
                Err(e) if spec.kind < PlanKind::Values => {
                    let next = spec.kind as u8 + 1;
                    self.least_runnable_kind.fetch_max(next, std::sync::atomic::Ordering::Relaxed);
                    if self.plan_for(&ordered, extra).is_err() {
                        return Err(e);
                    }
                }
                other => break other?,
            }
        };
        let mut results = results.into_iter();
        let outputs = self.wrap_outputs(results.by_ref().take(self.outputs.len()))?;
        Ok((outputs, results.map(TValue::into_tensor).collect()))
    }

    /// Runs the model and hands each value of `capture` (intermediates, inputs or outputs of
    /// the main graph) to `sink` as soon as the run is done, one at a time. Nothing captured is
    /// kept after the sink returns, so memory stays bounded by one batch however many batches
    /// are run: accumulate statistics in the sink (see [`crate::capture`]).
    ///
    /// Returns the graph outputs like [`Session::run`].
    pub fn run_with_capture(&self, inputs: &[(&str, TensorValue)], capture: &[ValueRef], sink: &mut dyn CaptureSink) -> Result<NamedValues, RuntimeError> {
        let ids = capture.iter().map(|r| self.resolve(r)).collect::<Result<Vec<ValueId>, _>>()?;
        let g = &self.lowered.graph;
        let mut extra: Vec<ValueId> = Vec::new();
        for &id in &ids {
            let computed = matches!(g.value(id).def, compactor_ir::ValueDef::Node { .. });
            if computed && !g.main().outputs.contains(&id) && !extra.contains(&id) {
                extra.push(id);
            }
        }
        extra.sort();
        let input_values: HashMap<ValueId, TensorValue> = self.inputs.iter().zip(inputs_by_spec(&self.inputs, inputs)).map(|(s, v)| (s.id, v)).collect();
        let (outputs, extra_tensors) = self.run_planned(inputs, &extra)?;
        let extra_values: HashMap<ValueId, Tensor> = extra.iter().copied().zip(extra_tensors).collect();
        for (r, &id) in capture.iter().zip(&ids) {
            let name = &self.lowered.graph.value(id).name;
            let value = if let Some(v) = input_values.get(&id) {
                v.clone()
            } else if let Some(i) = self.outputs.iter().position(|o| o.id == id) {
                outputs[i].1.clone()
            } else if let Some(t) = extra_values.get(&id) {
                self.wrap(id, Arc::new(t.clone()))?
            } else if let Some(t) = self.lowered.graph.constant(id) {
                TensorValue::from_ir(&t)?
            } else {
                return Err(RuntimeError::Capture { model: self.name.clone(), value: name.clone(), reason: "no value was computed for it".into() });
            };
            sink.observe(&CapturedValue { name, id, requested: r, value: &value })?;
        }
        Ok(outputs)
    }

    fn resolve(&self, r: &ValueRef) -> Result<ValueId, RuntimeError> {
        let g = &self.lowered.graph;
        let fail = |value: String, reason: &str| RuntimeError::Capture { model: self.name.clone(), value, reason: reason.into() };
        let id = match r {
            ValueRef::Id(id) => {
                if g.try_value(*id).is_none() {
                    return Err(fail(id.to_string(), "not in the model after lowering (removed, or folded into a fused kernel)"));
                }
                *id
            }
            ValueRef::Name(name) => {
                g.value_ids().find(|&v| g.value(v).name == *name && g.value(v).region == Graph::MAIN).ok_or_else(|| fail(name.clone(), "no value of the main graph has that name after lowering"))?
            }
        };
        let v = g.value(id);
        if v.region != Graph::MAIN {
            return Err(fail(v.name.clone(), "only values of the main graph can be captured, not of subgraphs"));
        }
        if v.name.is_empty() {
            return Err(fail(id.to_string(), "the value has no name"));
        }
        Ok(id)
    }

    fn order_inputs(&self, inputs: &[(&str, TensorValue)]) -> Result<TVec<TValue>, RuntimeError> {
        for (name, _) in inputs {
            if !self.inputs.iter().any(|s| s.name == *name) {
                let known = self.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(RuntimeError::UnknownInput { model: self.name.clone(), name: name.to_string(), known });
            }
        }
        let mut ordered = TVec::new();
        for spec in &self.inputs {
            let Some((_, value)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
                return Err(RuntimeError::MissingInput { model: self.name.clone(), name: spec.name.clone() });
            };
            ordered.push(self.check_input(spec, value)?);
        }
        Ok(ordered)
    }

    /// Converts an input to the declared element type and checks its shape against the
    /// declaration. An input of the declared type is shared with the caller, not copied.
    fn check_input(&self, spec: &IoSpec, value: &TensorValue) -> Result<TValue, RuntimeError> {
        let bad = |reason: String| RuntimeError::BadInput { model: self.name.clone(), name: spec.name.clone(), reason };
        if let Some(shape) = &spec.shape {
            let got = value.shape();
            if shape.rank() != got.len() {
                return Err(bad(format!("has shape {got:?}, the model declares {shape}")));
            }
            for (d, (want, &have)) in shape.dims.iter().zip(got).enumerate() {
                let fixed = match want {
                    // Some exporters write -1 for "any size".
                    Dim::Known(n) if *n >= 0 => Some(*n),
                    Dim::Known(_) => None,
                    Dim::Sym(s) => self.options.dims.iter().find(|(name, _)| name == s).map(|(_, n)| *n),
                    Dim::Unknown => None,
                };
                if let Some(n) = fixed
                    && n != have as i64
                {
                    return Err(bad(format!("has shape {got:?}, the model declares {shape} (dimension {d} must be {n})")));
                }
            }
        }
        let Some(dtype) = spec.dtype else { return Ok(value.tvalue()) };
        let want = carrier_type(dtype).ok_or_else(|| bad(format!("element type {dtype} is not supported by the runtime")))?;
        let tensor = value.tract();
        if tensor.datum_type() == want {
            return Ok(value.tvalue());
        }
        let numeric = |dt: DatumType| dt.is_number() || dt == DatumType::Bool;
        if !numeric(tensor.datum_type()) || !numeric(want) {
            return Err(bad(format!("is {}, the model wants {dtype}", value.dtype())));
        }
        Ok(tensor.cast_to_dt(want).map_err(|e| bad(format!("cannot convert {} to {dtype}: {e}", value.dtype())))?.into_owned().into_tvalue())
    }

    fn execute(&self, plan: &Plan, inputs: TVec<TValue>) -> Result<TVec<TValue>, RuntimeError> {
        let scoped = || tract_linalg::multithread::multithread_tract_scope(self.executor.clone(), || plan.run(inputs));
        // The plan runs on one of the pool's own threads: a kernel's parallel loop then starts
        // in place and only wakes the other workers, instead of putting the caller to sleep and
        // waking it again for every parallel op (a decode step has about 200 of them).
        let run = || match &self.executor {
            Executor::MultiThread(pool) => pool.install(scoped),
            _ => scoped(),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(RuntimeError::Execution { model: self.name.clone(), reason: tract_reason(&e) }),
            Err(panic) => Err(RuntimeError::Execution { model: self.name.clone(), reason: format!("tract panicked: {}", panic_message(&panic)) }),
        }
    }

    fn wrap(&self, id: ValueId, t: Arc<Tensor>) -> Result<TensorValue, RuntimeError> {
        // Shape computations come out as symbolic dims; the graph says int64.
        let t = if t.datum_type() == DatumType::TDim {
            Arc::new(t.cast_to::<i64>().map_err(|e| RuntimeError::Execution { model: self.name.clone(), reason: format!("a shape output is not numeric: {e}") })?.into_owned())
        } else {
            t
        };
        // The original model's declared type (e.g. INT4) names what the widened tensor stands for.
        let declared = self.declared_type(id);
        match declared {
            Some(dt) if carrier_type(dt) == Some(t.datum_type()) => TensorValue::shared_with_onnx_type(t, dt),
            _ => TensorValue::from_shared(t),
        }
    }

    fn declared_type(&self, id: ValueId) -> Option<DataType> {
        self.outputs.iter().chain(&self.inputs).find(|s| s.id == id).and_then(|s| s.dtype)
    }

    fn wrap_outputs(&self, results: impl Iterator<Item = TValue>) -> Result<Vec<(String, TensorValue)>, RuntimeError> {
        self.outputs
            .iter()
            .zip(results)
            .map(|(spec, t)| {
                let value = self.wrap(spec.id, t.into_arc_tensor()).map_err(|e| RuntimeError::Execution { model: self.name.clone(), reason: format!("output '{}': {e}", spec.name) })?;
                Ok((spec.name.clone(), value))
            })
            .collect()
    }
}

fn inputs_by_spec(specs: &[IoSpec], inputs: &[(&str, TensorValue)]) -> Vec<TensorValue> {
    specs.iter().filter_map(|s| inputs.iter().find(|(n, _)| *n == s.name).map(|(_, v)| v.clone())).collect()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into())
}

/// Replaces named symbolic dimensions by numbers in the type of every value (inputs, outputs,
/// intermediates' value_info, subgraphs): one name is one size throughout a model.
fn bind_dims(graph: &mut Graph, dims: &[(String, i64)]) {
    if dims.is_empty() {
        return;
    }
    let values: Vec<ValueId> = graph.value_ids().collect();
    for id in values {
        if let Some(ty) = &mut graph.value_mut(id).ty
            && let TypeKind::Tensor { shape: Some(shape), .. } = &mut ty.kind
        {
            for d in shape.dims.iter_mut() {
                if let Dim::Sym(s) = d
                    && let Some((_, n)) = dims.iter().find(|(name, _)| name == s)
                {
                    *d = Dim::Known(*n);
                }
            }
        }
    }
}

/// The op register: tract's ONNX ops, MatMulNBits replaced by the fused kernel, plus CumProd,
/// BitCast, LinearAttention, StringConcat, ReverseSequence, Det, Col2Im, LabelEncoder,
/// RegexFullMatch, TensorScatter, Unique, StringSplit, AffineGrid, StringNormalizer,
/// TfIdfVectorizer, DeformConv, TreeEnsemble, MaxUnpool and Upsample (as Resize), and the
/// forms of GroupQueryAttention and RotaryEmbedding that the lowering keeps, and MoE.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert("MatMulNBits", crate::kernels::nbits::build_matmul_nbits);
    onnx.op_register.insert("CumProd", crate::kernels::extra_ops::build_cumprod);
    onnx.op_register.insert("BitCast", crate::kernels::extra_ops::build_bitcast);
    onnx.op_register.insert("LinearAttention", crate::kernels::linear_attention::build_linear_attention);
    onnx.op_register.insert("GroupQueryAttention", crate::kernels::group_query_attention::build_group_query_attention);
    onnx.op_register.insert("MoE", crate::kernels::moe::build_moe);
    let _ = crate::kernels::layer_norm::TRACT_LAYER_NORMALIZATION.set(onnx.op_register.0.get("LayerNormalization").copied());
    onnx.op_register.insert("LayerNormalization", crate::kernels::layer_norm::build_layer_normalization);
    // The standard op of the same name keeps tract's builder, which the contrib one delegates to.
    let _ = crate::kernels::rotary_embedding::STANDARD_ROTARY_EMBEDDING.set(onnx.op_register.0.get("RotaryEmbedding").copied());
    onnx.op_register.insert("RotaryEmbedding", crate::kernels::rotary_embedding::build_rotary_embedding);
    onnx.op_register.insert("StringConcat", crate::kernels::extra_ops::build_string_concat);
    onnx.op_register.insert("ReverseSequence", crate::kernels::extra_ops::build_reverse_sequence);
    onnx.op_register.insert("Det", crate::kernels::extra_ops::build_det);
    onnx.op_register.insert("Col2Im", crate::kernels::extra_ops::build_col2im);
    onnx.op_register.insert("LabelEncoder", crate::kernels::extra_ops::build_label_encoder);
    onnx.op_register.insert("RegexFullMatch", crate::kernels::extra_ops::build_regex_full_match);
    onnx.op_register.insert("TensorScatter", crate::kernels::extra_ops::build_tensor_scatter);
    onnx.op_register.insert("Unique", crate::kernels::extra_ops::build_unique);
    onnx.op_register.insert("StringSplit", crate::kernels::extra_ops::build_string_split);
    onnx.op_register.insert("AffineGrid", crate::kernels::extra_ops::build_affine_grid);
    onnx.op_register.insert("StringNormalizer", crate::kernels::extra_ops::build_string_normalizer);
    onnx.op_register.insert("TfIdfVectorizer", crate::kernels::tfidf_vectorizer::build_tfidf_vectorizer);
    onnx.op_register.insert("DeformConv", crate::kernels::deform_conv::build_deform_conv);
    onnx.op_register.insert("TreeEnsemble", crate::kernels::tree_ensemble::build_tree_ensemble);
    onnx.op_register.insert("MaxUnpool", crate::kernels::max_unpool::build_max_unpool);
    onnx.op_register.insert("Upsample", crate::kernels::upsample::build_upsample);
    onnx
}

/// Serializes the lowered model and has tract parse, type, optimise and plan it.
fn prepare(name: &str, model: &Model, options: &SessionOptions, executor: &Executor) -> Result<Plan, RuntimeError> {
    let bytes = model.to_bytes()?;
    // The serialized copy is all tract needs: weights mapped from the model's files go back to
    // the page cache rather than staying resident beside it.
    for v in model.graph.value_ids() {
        if let Some(tensor) = &model.graph.value(v).initializer {
            tensor.release_pages();
        }
    }
    let fail = |reason: String| RuntimeError::Prepare { model: name.to_string(), reason };
    let build = move || -> TractResult<Plan> {
        // Decoded here rather than by `model_for_read` (which copies the bytes first), and each
        // copy dropped as soon as the next exists: the weights are in memory at most twice.
        let proto = {
            use prost::Message;
            tract_onnx::pb::ModelProto::decode(&bytes[..])?
        };
        drop(bytes);
        let inference = framework().model_for_proto_model(&proto)?;
        drop(proto);
        let mut typed = if options.optimize { crate::kernels::optimize(inference.into_typed()?)? } else { inference.into_typed()?.into_decluttered()? };
        crate::kernels::bound_symbols::bind_symbolic_inputs(&mut typed)?;
        typed.into_runnable_with_options(&RunOptions { executor: Some(executor.clone()), ..Default::default() })
    };
    match catch_unwind(AssertUnwindSafe(build)) {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(e)) => Err(fail(tract_reason(&e))),
        Err(panic) => Err(fail(format!("tract panicked: {}", panic_message(&panic)))),
    }
}
