//! The bundled runtime behind the passes: constant folding evaluates nodes on it, and
//! calibration runs batches through it, so passes carry no kernels of their own.

use compactor_ir::model::OpsetImport;
use compactor_ir::{Graph, Model, Node, Tensor, Value, ValueDef, ValueId};
use compactor_passes::{Activation, Calibrator, ConstantEvaluator, Progress};
use compactor_runtime::{CapturedValue, RuntimeError, Session, SessionOptions, TensorValue, ValueRef};
use std::path::{Path, PathBuf};

/// Evaluates single nodes with the runtime (one thread: the tensors are small).
pub struct RuntimeEvaluator {
    options: SessionOptions,
}

impl Default for RuntimeEvaluator {
    fn default() -> Self {
        RuntimeEvaluator { options: SessionOptions { threads: 1, ..Default::default() } }
    }
}

impl ConstantEvaluator for RuntimeEvaluator {
    fn evaluate(&self, node: &Node, inputs: &[Option<Tensor>], opsets: &[OpsetImport]) -> Result<Vec<Tensor>, String> {
        if node.subgraphs().next().is_some() {
            return Err("nodes with subgraphs are not evaluated alone".into());
        }
        // A model of just this node: its constant inputs as initializers, its outputs as outputs.
        let mut graph = Graph::new("constant");
        let value = |name: String, def| Value { name, ty: None, doc_string: None, metadata_props: Vec::new(), def, region: Graph::MAIN, initializer: None, sparse_initializer: None };
        let mut input_ids = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            input_ids.push(input.as_ref().map(|tensor| {
                let id = graph.add_value(Value { initializer: Some(tensor.clone()), ..value(format!("input_{i}"), ValueDef::Initializer) });
                graph.main_mut().initializers.push(id);
                id
            }));
        }
        let id = graph.add_node_detached(Node { inputs: input_ids, outputs: Vec::new(), region: Graph::MAIN, ..node.clone() });
        let outputs: Vec<Option<ValueId>> =
            node.outputs.iter().enumerate().map(|(k, out)| out.map(|_| graph.add_value(value(format!("output_{k}"), ValueDef::Node { node: id, output: k as u32 })))).collect();
        graph.node_mut(id).outputs = outputs.clone();
        graph.main_mut().nodes.push(id);
        graph.main_mut().outputs = outputs.iter().flatten().copied().collect();
        let mut model = Model::new(graph, 0);
        model.opset_import = opsets.to_vec();
        let opset = model.opset_version("").unwrap_or(21);
        model.ir_version = Some(compactor_passes::passes::upgrade_opset::min_ir_version(opset));
        let session = Session::new(&model, &self.options).map_err(|e| e.to_string())?;
        let values = session.run(&[]).map_err(|e| e.to_string())?;
        values.into_iter().map(|(_, v)| v.to_ir().map_err(|e| e.to_string())).collect()
    }
}

/// The part of `model` that computes `values`, with them as its outputs: calibrating the first
/// layers of a large model runs (and loads the weights of) only those layers. `None` when a
/// value is not computed by a node of the main graph (the whole model is then run).
fn slice_for(model: &Model, values: &[ValueId]) -> Option<Model> {
    let g = &model.graph;
    let computed = |v: ValueId| g.try_value(v).is_some_and(|value| value.region == Graph::MAIN && matches!(value.def, ValueDef::Node { .. }));
    if values.is_empty() || !values.iter().all(|&v| computed(v)) {
        return None;
    }
    let mut sliced = model.clone();
    let mut outputs: Vec<ValueId> = Vec::new();
    for &v in values {
        if !outputs.contains(&v) {
            outputs.push(v);
        }
    }
    sliced.graph.main_mut().outputs = outputs;
    compactor_passes::passes::eliminate_dead_code::remove_dead(&mut sliced.graph).ok()?;
    Some(sliced)
}

/// Calibration batches run through the runtime; captured values are streamed to the pass.
pub struct RuntimeCalibrator {
    batches: Vec<Vec<(String, TensorValue)>>,
    options: SessionOptions,
}

/// Why calibration data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("{dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl RuntimeCalibrator {
    /// Batches from `.npy` files named after the model's inputs: `DIR/<input>.npy` is one
    /// batch; subdirectories `DIR/<batch>/<input>.npy` are one batch each, in name order.
    pub fn from_dir(dir: &Path, options: SessionOptions) -> Result<Self, CalibrationError> {
        let err = |reason: String| CalibrationError::Dir { dir: dir.to_path_buf(), reason };
        let read_batch = |d: &Path| -> Result<Vec<(String, TensorValue)>, CalibrationError> {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(d).map_err(|e| err(e.to_string()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "npy")).collect();
            files.sort();
            files.iter().map(|f| Ok((f.file_stem().unwrap_or_default().to_string_lossy().into_owned(), compactor_runtime::npy::read_npy(f)?))).collect()
        };
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        subdirs.sort();
        let batches = if subdirs.is_empty() { vec![read_batch(dir)?] } else { subdirs.iter().map(|d| read_batch(d)).collect::<Result<_, _>>()? };
        if batches.iter().any(Vec::is_empty) {
            return Err(err("holds no .npy inputs (expected <input>.npy, or one subdirectory of them per batch)".into()));
        }
        Ok(RuntimeCalibrator { batches, options })
    }

    /// `count` batches of deterministic random inputs of the model's declared shapes (symbolic
    /// dimensions from `options.dims`); token ids stay below their embedding's vocabulary.
    pub fn random(model: &Model, count: usize, seed: u64, options: SessionOptions) -> Result<Self, CalibrationError> {
        let batches = (0..count as u64).map(|i| compactor_runtime::inputs::random_inputs(model, &options.dims, seed.wrapping_add(i))).collect::<Result<_, _>>()?;
        Ok(RuntimeCalibrator { batches, options })
    }
}

impl Calibrator for RuntimeCalibrator {
    fn batches(&self) -> usize {
        self.batches.len()
    }

    fn capture(&mut self, model: &Model, values: &[ValueId], progress: &dyn Progress, sink: &mut dyn FnMut(ValueId, Activation<'_>)) -> Result<(), String> {
        let sliced = slice_for(model, values);
        let session = Session::new(sliced.as_ref().unwrap_or(model), &self.options).map_err(|e| e.to_string())?;
        drop(sliced);
        let wanted: Vec<ValueRef> = values.iter().map(|&v| ValueRef::Id(v)).collect();
        for batch in &self.batches {
            let inputs: Vec<(&str, TensorValue)> = batch.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
            let mut forward = |c: &CapturedValue<'_>| -> Result<(), RuntimeError> {
                let data = c.value.to_f32()?;
                let data = data.as_standard_layout();
                sink(c.id, Activation { shape: c.value.shape(), data: data.as_slice().expect("standard layout is contiguous") });
                Ok(())
            };
            session.run_with_capture(&inputs, &wanted, &mut forward).map_err(|e| e.to_string())?;
            progress.advance(1);
        }
        Ok(())
    }
}
