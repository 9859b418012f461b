//! The interpreter: runs a graph one node at a time, for what tract cannot plan as a whole.
//!
//! tract has no sequence or optional values and no `Loop`, and some graphs it cannot type as a
//! whole (a Scan body whose untyped values it cannot unify, a `Range` whose length it cannot
//! infer symbolically). The interpreter walks such a graph in order with every value known:
//! sequences, optionals and control flow (`If`, `Loop`, `Scan`, `SequenceMap`) it runs itself
//! ([`sequence`], [`control`]); every other node becomes a one-node model run by a [`Session`]
//! of its own (lowering, tract and the runtime's kernels, as for a whole graph), planned for
//! the shapes it meets and cached.

mod control;
mod sequence;

use crate::error::RuntimeError;
use crate::session::{Session, SessionOptions};
use crate::value::{RuntimeValue, TensorValue};
use compactor_ir::{Graph, Model, Node, NodeId, RegionId, TypeKind, Value, ValueDef, ValueId, ValueType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Ops only the interpreter runs: a graph with one of them (or with a sequence or optional
/// input or output) is interpreted from the start.
const INTERPRETED_OPS: &[&str] =
    &["SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional", "Loop"];

/// True when `model` cannot run as one tract plan because of the values it handles: sequence
/// or optional inputs or outputs, sequence ops, or loops.
pub(crate) fn needs_interpreter(model: &Model) -> bool {
    let g = &model.graph;
    let not_tensor = |v: &ValueId| g.value(*v).ty.as_ref().is_some_and(|t| !matches!(t.kind, TypeKind::Tensor { .. }));
    g.main().inputs.iter().chain(&g.main().outputs).any(not_tensor)
        || g.all_nodes().into_iter().any(|id| {
            let n = g.node(id);
            n.domain().is_empty() && INTERPRETED_OPS.contains(&n.op_type.as_str())
        })
}

/// Values computed so far, by id (ids are unique across the main graph and all subgraphs).
type Env = HashMap<ValueId, RuntimeValue>;

/// A graph run node by node.
pub(crate) struct Interpreter {
    model: Model,
    name: String,
    options: SessionOptions,
    /// One session per node and input types and shapes.
    sessions: Mutex<HashMap<(NodeId, String), Arc<Session>>>,
}

impl Interpreter {
    pub(crate) fn new(model: &Model, name: &str, options: &SessionOptions) -> Self {
        Interpreter { model: model.clone(), name: name.to_string(), options: options.clone(), sessions: Mutex::new(HashMap::new()) }
    }

    fn graph(&self) -> &Graph {
        &self.model.graph
    }

    /// Runs the main graph on its inputs (by value id); returns the graph outputs in order.
    pub(crate) fn run(&self, inputs: Vec<(ValueId, RuntimeValue)>) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let mut env: Env = inputs.into_iter().collect();
        self.run_region(Graph::MAIN, &mut env)?;
        self.graph().main().outputs.iter().map(|&v| self.get(&env, v)).collect()
    }

    fn run_region(&self, region: RegionId, env: &mut Env) -> Result<(), RuntimeError> {
        for &id in &self.graph().region(region).nodes {
            self.run_node(id, env)?;
        }
        Ok(())
    }

    /// A value computed earlier, a graph input, or a constant.
    fn get(&self, env: &Env, v: ValueId) -> Result<RuntimeValue, RuntimeError> {
        if let Some(value) = env.get(&v) {
            return Ok(value.clone());
        }
        if let Some(t) = self.graph().constant(v) {
            return Ok(RuntimeValue::Tensor(TensorValue::from_ir(&t)?));
        }
        Err(RuntimeError::Execution { model: self.name.clone(), reason: format!("value '{}' is used before it is computed", self.graph().value(v).name) })
    }

    fn fail(&self, id: NodeId, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Node { model: self.name.clone(), node: self.graph().node(id).label(id), reason: reason.into() }
    }

    fn run_node(&self, id: NodeId, env: &mut Env) -> Result<(), RuntimeError> {
        let node = self.graph().node(id);
        let inputs: Vec<Option<RuntimeValue>> = node.inputs.iter().map(|i| i.map(|v| self.get(env, v)).transpose()).collect::<Result<_, _>>()?;
        let op = if node.domain().is_empty() { node.op_type.as_str() } else { "" };
        let outputs = match op {
            "If" => self.run_if(id, &inputs, env)?,
            "Loop" => self.run_loop(id, &inputs, env)?,
            "Scan" => self.run_scan(id, &inputs, env)?,
            "SequenceMap" => self.run_sequence_map(id, &inputs, env)?,
            "Identity" => vec![inputs.into_iter().next().flatten().ok_or_else(|| self.fail(id, "no input"))?],
            "Constant" => {
                let out = node.output(0).ok_or_else(|| self.fail(id, "no output"))?;
                let t = self.graph().constant(out).ok_or_else(|| self.fail(id, "no value attribute the runtime can read"))?;
                vec![RuntimeValue::Tensor(TensorValue::from_ir(&t)?)]
            }
            op if sequence::handles(op) => sequence::run(node, &inputs).map_err(|reason| self.fail(id, reason))?,
            _ => self.run_tensor_node(id, &inputs)?,
        };
        let node = self.graph().node(id);
        for (out, value) in node.outputs.iter().zip(outputs) {
            if let Some(out) = out {
                env.insert(*out, value);
            }
        }
        Ok(())
    }

    /// Runs an ordinary node as a one-node model on tract.
    fn run_tensor_node(&self, id: NodeId, inputs: &[Option<RuntimeValue>]) -> Result<Vec<RuntimeValue>, RuntimeError> {
        let g = self.graph();
        let node = g.node(id);
        let mut tensors: Vec<(String, TensorValue)> = Vec::new();
        let mut key = String::new();
        let mut seen = std::collections::HashSet::new();
        for (slot, (v, value)) in node.inputs.iter().zip(inputs).enumerate() {
            let (Some(v), Some(value)) = (v, value) else { continue };
            // A value used twice is one input of the one-node model, named for its first slot.
            if g.constant(*v).is_some() || !seen.insert(*v) {
                continue;
            }
            let t = value.as_tensor().ok_or_else(|| self.fail(id, format!("input {slot} is {}, not a tensor", value.kind())))?;
            key.push_str(&format!("{slot}:{}{:?};", t.dtype(), t.shape()));
            tensors.push((format!("in{slot}"), t.clone()));
        }
        let session = self.node_session(id, &key, inputs)?;
        let named: Vec<(&str, TensorValue)> = tensors.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let outputs = session.run(&named).map_err(|e| self.fail(id, e.to_string()))?;
        let mut results = outputs.into_iter().map(|(_, t)| RuntimeValue::Tensor(t));
        // The one-node model's outputs are the node's present outputs, in order.
        Ok(node.outputs.iter().map(|o| if o.is_some() { results.next() } else { None }).map(|r| r.unwrap_or(RuntimeValue::Optional(None))).collect())
    }

    fn node_session(&self, id: NodeId, key: &str, inputs: &[Option<RuntimeValue>]) -> Result<Arc<Session>, RuntimeError> {
        let cache_key = (id, key.to_string());
        if let Some(s) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(s.clone());
        }
        let model = self.node_model(id, inputs)?;
        let session = Arc::new(Session::for_one_node(&model, &self.options).map_err(|e| self.fail(id, e.to_string()))?);
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, session.clone());
        Ok(session)
    }

    /// A model of node `id` alone: its constant inputs as initializers, the others as inputs
    /// `in<slot>` of the types and shapes of this run, its outputs as graph outputs.
    fn node_model(&self, id: NodeId, inputs: &[Option<RuntimeValue>]) -> Result<Model, RuntimeError> {
        let src = self.graph();
        if src.node(id).subgraphs().next().is_some() {
            return Err(self.fail(id, "the interpreter runs If, Loop, Scan and SequenceMap bodies, not this op's subgraphs"));
        }
        let mut node: Node = src.node(id).clone();
        let mut g = Graph::new(node.name.clone().unwrap_or_else(|| node.op_type.clone()));
        let mut added: HashMap<ValueId, ValueId> = HashMap::new();
        let blank = |name: String, ty: Option<ValueType>, def: ValueDef| Value {
            name,
            ty,
            doc_string: None,
            metadata_props: Vec::new(),
            def,
            region: Graph::MAIN,
            initializer: None,
            sparse_initializer: None,
        };
        for (slot, input) in node.inputs.iter_mut().enumerate() {
            let Some(v) = *input else { continue };
            if let Some(&new) = added.get(&v) {
                *input = Some(new);
                continue;
            }
            let new = if let Some(t) = src.constant(v) {
                let name = format!("const{slot}");
                let mut value = blank(name.clone(), None, ValueDef::Initializer);
                value.initializer = Some(t.with_name(Some(name)));
                let new = g.add_value(value);
                g.main_mut().initializers.push(new);
                new
            } else {
                let t = inputs[slot].as_ref().and_then(RuntimeValue::as_tensor).ok_or_else(|| self.fail(id, format!("input {slot} is not a tensor")))?;
                let shape = compactor_ir::Shape::known(&t.shape().iter().map(|&d| d as i64).collect::<Vec<_>>());
                let new = g.add_value(blank(format!("in{slot}"), Some(ValueType::tensor(t.dtype(), Some(shape))), ValueDef::Input));
                g.main_mut().inputs.push(new);
                new
            };
            added.insert(v, new);
            *input = Some(new);
        }
        // The node first (its outputs are set once they exist, as they name it).
        let outputs = std::mem::take(&mut node.outputs);
        node.region = Graph::MAIN;
        let node_id = g.add_node_detached(node);
        let mut new_outputs = Vec::with_capacity(outputs.len());
        for (k, output) in outputs.into_iter().enumerate() {
            let Some(v) = output else {
                new_outputs.push(None);
                continue;
            };
            // The declared element type names what a widened result stands for (INT4 as i8).
            let ty = src.value(v).elem().map(|dt| ValueType::tensor(dt, None));
            let new = g.add_value(blank(format!("out{k}"), ty, ValueDef::Node { node: node_id, output: k as u32 }));
            g.main_mut().outputs.push(new);
            new_outputs.push(Some(new));
        }
        g.node_mut(node_id).outputs = new_outputs;
        g.main_mut().nodes.push(node_id);
        let mut model = Model::new(g, self.model.opset_version("").unwrap_or(21));
        model.opset_import = self.model.opset_import.clone();
        model.ir_version = self.model.ir_version;
        model.functions = self.model.functions.clone();
        model.origin = self.model.origin.clone();
        Ok(model)
    }
}
