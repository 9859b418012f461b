//! Shape and type inference.
//!
//! [`infer_shapes`] walks every region (the main graph, then If branches and Loop/Scan bodies
//! as their owner is reached) in topological order and gives each node output the type its
//! op's rule derives from the input types. A value without a type gets the inferred one; a
//! declared type that says less (unknown dims, unknown rank, unset element type) is refined;
//! a declared type that contradicts the inferred one is kept and reported as a [`Conflict`].
//!
//! Rules live in one file per op family (`elementwise`, `shape_ops`, `nn`, `reduce`,
//! `control`, `sequence`, `signal`, `text`, `ml`) and are found through `rule_for`, a table
//! from (domain, op type) to rule. Each rule reads its inputs through a `NodeCtx` and sets
//! output types, and, for small integer tensors, their values.
//!
//! ## Data propagation
//!
//! Like onnx's `data_prop=True`, small int64/int32/bool tensors of rank 0 or 1 (the outputs of
//! `Shape` and what shape computations do to them) are tracked element by element as
//! `Vec<Dim>`: a number, a symbol (a dimension of some tensor, such as `batch`) or unknown.
//! `Reshape`, `Expand`, `ConstantOfShape`, `Slice`, `Tile`, ... read these to produce symbolic
//! output shapes.
//!
//! ## Symbols
//!
//! Symbolic dimensions are assumed to be sizes greater than one, the usual convention for
//! dynamic dimensions (a dimension that is always 1 is written as 1). This is what lets
//! broadcasting `[batch, seq]` with `[1, ?]` give `[batch, seq]`, and `Squeeze` without axes
//! keep a symbolic dimension. No fresh symbols are invented: what is not known stays unknown.

mod contrib;
mod control;
mod conv;
mod elementwise;
mod ml;
mod nn;
mod reduce;
mod sequence;
mod shape_ops;
mod signal;
#[cfg(test)]
mod tests;
mod text;

use crate::dtype::DataType;
use crate::graph::{Graph, Node, NodeId, RegionId, ValueDef, ValueId};
use crate::model::Model;
use crate::types::{Dim, Shape, TypeKind, ValueType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The highest default-domain opset this inference knows; a model that imports no default
/// domain is treated as using it.
pub const LATEST_OPSET: i64 = 27;

/// The largest rank a shape read from a value (rather than from a declared type) may have;
/// a 1-D shape input claiming more elements is treated as unknown.
pub(crate) const MAX_RANK: usize = 256;

#[derive(Clone, Debug)]
pub struct InferOptions {
    /// Track the values of small integer tensors through shape computations.
    pub data_propagation: bool,
    /// Largest number of elements of a tracked (or constant) tensor whose values are read.
    pub max_tracked_elements: usize,
    /// Infer inside If/Loop/Scan bodies.
    pub subgraphs: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions { data_propagation: true, max_tracked_elements: 1024, subgraphs: true }
    }
}

/// Why a rule could not type a node: the node's inputs or attributes are inconsistent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    #[error("input {index} is required but missing")]
    MissingInput { index: usize },
    #[error("input {index} has rank {rank}, expected {expected}")]
    Rank { index: usize, rank: usize, expected: String },
    #[error("axis {axis} is out of range for rank {rank}")]
    Axis { axis: i64, rank: usize },
    #[error("dimensions {a} and {b} cannot be broadcast together")]
    Broadcast { a: Dim, b: Dim },
    #[error("{what}: dimensions {a} and {b} must be equal")]
    DimMismatch { what: &'static str, a: Dim, b: Dim },
    #[error("attribute '{name}': {reason}")]
    Attribute { name: &'static str, reason: String },
    #[error("input {index}: {reason}")]
    InputValue { index: usize, reason: String },
    #[error("element types {a} and {b} must be equal")]
    ElemMismatch { a: DataType, b: DataType },
    #[error("{0}")]
    Invalid(String),
}

/// A declared type the inferred one contradicts. The declared type is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// The node that produces (or, for a subgraph input, owns) the value.
    pub node: String,
    pub value: ValueId,
    pub value_name: String,
    pub declared: ValueType,
    pub inferred: ValueType,
    pub reason: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: value '{}' is declared {} but inferred {} ({})", self.node, self.value_name, self.declared, self.inferred, self.reason)
    }
}

/// A node whose rule found its inputs or attributes inconsistent.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFailure {
    pub node: String,
    pub error: InferError,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.error)
    }
}

/// What [`infer_shapes`] did.
#[derive(Clone, Debug, Default)]
pub struct InferReport {
    /// Values that had no type and got one.
    pub typed: Vec<ValueId>,
    /// Values whose declared type was made more precise.
    pub refined: Vec<ValueId>,
    pub conflicts: Vec<Conflict>,
    /// Ops with no inference rule, as `op` (default domain) or `domain:op`, with node counts.
    pub unsupported_ops: BTreeMap<String, usize>,
    pub failures: Vec<NodeFailure>,
}

impl fmt::Display for InferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} values typed, {} refined, {} conflicts, {} failures", self.typed.len(), self.refined.len(), self.conflicts.len(), self.failures.len())?;
        for c in &self.conflicts {
            writeln!(f, "  conflict: {c}")?;
        }
        for e in &self.failures {
            writeln!(f, "  failure: {e}")?;
        }
        if !self.unsupported_ops.is_empty() {
            let ops: Vec<String> = self.unsupported_ops.iter().map(|(op, n)| format!("{op} x{n}")).collect();
            writeln!(f, "  no rule: {}", ops.join(", "))?;
        }
        Ok(())
    }
}

/// Infers types and shapes of every value of `model` it can; see the module documentation.
pub fn infer_shapes(model: &mut Model, options: &InferOptions) -> InferReport {
    let opset = model.opset_version("").unwrap_or(LATEST_OPSET);
    infer_graph_shapes(&mut model.graph, opset, options)
}

/// [`infer_shapes`] for a graph whose default-domain opset is `opset` (for passes, which get
/// the graph and the opsets separately).
pub fn infer_graph_shapes(graph: &mut Graph, opset: i64, options: &InferOptions) -> InferReport {
    let mut engine = Engine { graph, opset, options, data: HashMap::new(), report: InferReport::default() };
    engine.infer_region(Graph::MAIN);
    engine.report
}

/// Appends every typed node output that is not a region output and not yet listed to its
/// region's `value_info`, in node order, so a written model carries the inferred shapes.
pub fn record_value_info(graph: &mut Graph) {
    let regions: Vec<RegionId> = graph.region_ids().collect();
    for r in regions {
        let region = graph.region(r);
        let listed: HashSet<ValueId> = region.value_info.iter().chain(&region.outputs).copied().collect();
        let mut add = Vec::new();
        for node in region.nodes.iter().filter_map(|&n| graph.try_node(n)) {
            for v in node.outputs.iter().flatten() {
                if !listed.contains(v) && graph.try_value(*v).is_some_and(|v| v.ty.is_some()) && !add.contains(v) {
                    add.push(*v);
                }
            }
        }
        graph.region_mut(r).value_info.extend(add);
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

/// An inference rule: reads the node through the context and sets its outputs.
pub(crate) type Rule = fn(&mut NodeCtx<'_>) -> Result<(), InferError>;

/// The rule of an op, if there is one.
fn rule_for(domain: &str, op: &str) -> Option<Rule> {
    match domain {
        "" => elementwise::rule(op)
            .or_else(|| shape_ops::rule(op))
            .or_else(|| nn::rule(op))
            .or_else(|| conv::rule(op))
            .or_else(|| reduce::rule(op))
            .or_else(|| control::rule(op))
            .or_else(|| sequence::rule(op))
            .or_else(|| signal::rule(op))
            .or_else(|| text::rule(op))
            .or_else(|| contrib::default_domain_rule(op)),
        "ai.onnx.ml" => ml::ml_rule(op),
        "ai.onnx.preview.training" => ml::training_rule(op),
        "ai.onnx.preview" => nn::preview_rule(op),
        "com.microsoft" => contrib::rule(op),
        _ => None,
    }
}

struct Engine<'a> {
    graph: &'a mut Graph,
    opset: i64,
    options: &'a InferOptions,
    /// Tracked values of small integer tensors (see the module documentation).
    data: HashMap<ValueId, Vec<Dim>>,
    report: InferReport,
}

impl Engine<'_> {
    fn infer_region(&mut self, region: RegionId) {
        for id in topological_order(self.graph, region) {
            self.infer_node(id);
        }
    }

    fn infer_node(&mut self, id: NodeId) {
        let node = self.graph.node(id);
        let subgraphs: Vec<RegionId> = node.subgraphs().collect();
        if self.options.subgraphs && !subgraphs.is_empty() {
            for (value, ty) in control::subgraph_input_types(self.graph, id, self.opset) {
                self.apply(id, value, ty, None);
            }
            for r in subgraphs {
                self.infer_region(r);
            }
        }
        let node = self.graph.node(id);
        let Some(rule) = rule_for(node.domain(), &node.op_type) else {
            let key = if node.domain().is_empty() { node.op_type.clone() } else { format!("{}:{}", node.domain(), node.op_type) };
            *self.report.unsupported_ops.entry(key).or_default() += 1;
            return;
        };
        let mut ctx = NodeCtx::new(self.graph, id, self.opset, &self.data, self.options);
        match rule(&mut ctx) {
            Ok(()) => {
                let (types, data) = (ctx.outputs, ctx.out_data);
                for (k, (ty, data)) in types.into_iter().zip(data).enumerate() {
                    let (Some(ty), Some(value)) = (ty, self.graph.node(id).output(k)) else { continue };
                    self.apply(id, value, ty, data);
                }
            }
            Err(error) => {
                let node = self.graph.node(id);
                self.report.failures.push(NodeFailure { node: node.label(id), error });
            }
        }
    }

    /// Gives `value` the inferred type (merged with a declared one) and records what happened.
    fn apply(&mut self, node: NodeId, value: ValueId, inferred: ValueType, data: Option<Vec<Dim>>) {
        let Some(declared) = self.graph.try_value(value).map(|v| v.ty.clone()) else { return };
        let final_type = match declared {
            None => {
                self.report.typed.push(value);
                self.graph.value_mut(value).ty = Some(inferred);
                self.graph.value(value).ty.clone()
            }
            Some(declared) => match merge_types(&declared, &inferred) {
                Ok(merged) => {
                    if merged != declared {
                        self.report.refined.push(value);
                        self.graph.value_mut(value).ty = Some(merged.clone());
                    }
                    Some(merged)
                }
                Err(reason) => {
                    let label = self.graph.node(node).label(node);
                    let value_name = self.graph.value(value).name.clone();
                    self.report.conflicts.push(Conflict { node: label, value, value_name, declared, inferred, reason });
                    return;
                }
            },
        };
        if let (Some(data), Some(ty)) = (data, final_type)
            && self.options.data_propagation
            && data_fits_type(&data, &ty)
        {
            self.data.insert(value, data);
        }
    }
}

/// Tracked data must have exactly as many elements as its (rank 0 or 1) type says.
fn data_fits_type(data: &[Dim], ty: &ValueType) -> bool {
    match ty.shape().map(|s| s.dims.as_slice()) {
        Some([]) => data.len() == 1,
        Some([Dim::Known(n)]) => usize::try_from(*n).is_ok_and(|n| n == data.len()),
        _ => false,
    }
}

/// The nodes of a region in an order where every node comes after the producers of its
/// inputs and of the outer values its subgraphs use. Files are not always sorted; nodes on
/// a cycle (an invalid graph) keep their listed order at the end.
fn topological_order(graph: &Graph, region: RegionId) -> Vec<NodeId> {
    let Some(region) = graph.try_region(region) else { return Vec::new() };
    // Ids of removed nodes are skipped (a graph mid-rewrite may still list them).
    let nodes: Vec<NodeId> = region.nodes.iter().copied().filter(|&n| graph.try_node(n).is_some()).collect();
    let position: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut pending: Vec<usize> = vec![0; nodes.len()];
    for (i, &n) in nodes.iter().enumerate() {
        let mut used = Vec::new();
        collect_used_values(graph, n, &mut used);
        let mut producers: Vec<usize> = used
            .into_iter()
            .filter_map(|v| graph.try_value(v))
            .filter_map(|v| match v.def {
                ValueDef::Node { node, .. } => position.get(&node).copied(),
                _ => None,
            })
            .filter(|&p| p != i)
            .collect();
        producers.sort_unstable();
        producers.dedup();
        pending[i] = producers.len();
        for p in producers {
            dependents[p].push(i);
        }
    }
    // Kahn's algorithm, always taking the earliest listed ready node so sorted input keeps its order.
    let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    let mut done = vec![false; nodes.len()];
    while let Some(i) = ready.pop_first() {
        order.push(nodes[i]);
        done[i] = true;
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order.extend(nodes.iter().enumerate().filter(|(i, _)| !done[*i]).map(|(_, &n)| n));
    order
}

/// Inputs of a node and every value used inside its subgraphs (including their outputs).
fn collect_used_values(graph: &Graph, node: NodeId, out: &mut Vec<ValueId>) {
    let n = graph.node(node);
    out.extend(n.inputs.iter().flatten());
    for r in n.subgraphs() {
        let Some(region) = graph.try_region(r) else { continue };
        out.extend(region.outputs.iter());
        for &inner in &region.nodes {
            if graph.try_node(inner).is_some() {
                collect_used_values(graph, inner, out);
            }
        }
    }
}

/// Merges an inferred type into a declared one: the declared type with its unknown parts
/// filled in, or why the two contradict each other.
pub(crate) fn merge_types(declared: &ValueType, inferred: &ValueType) -> Result<ValueType, String> {
    let kind = match (&declared.kind, &inferred.kind) {
        (TypeKind::Unset, _) => inferred.kind.clone(),
        (TypeKind::Tensor { elem: de, shape: ds }, TypeKind::Tensor { elem: ie, shape: is }) => {
            let elem = match (de, ie) {
                (Some(d), Some(i)) if d != i => return Err(format!("element type {d} vs {i}")),
                (Some(d), _) => Some(*d),
                (None, i) => *i,
            };
            let shape = match (ds, is) {
                (Some(d), Some(i)) => Some(merge_shapes(d, i)?),
                (Some(d), None) => Some(d.clone()),
                (None, i) => i.clone(),
            };
            TypeKind::Tensor { elem, shape }
        }
        (TypeKind::Sequence(d), TypeKind::Sequence(i)) => TypeKind::Sequence(merge_inner(d, i)?),
        (TypeKind::Optional(d), TypeKind::Optional(i)) => TypeKind::Optional(merge_inner(d, i)?),
        (d, i) if std::mem::discriminant(d) == std::mem::discriminant(i) => d.clone(),
        _ => return Err("different kinds of type".into()),
    };
    Ok(ValueType { kind, denotation: declared.denotation.clone() })
}

fn merge_inner(declared: &Option<Box<ValueType>>, inferred: &Option<Box<ValueType>>) -> Result<Option<Box<ValueType>>, String> {
    Ok(match (declared, inferred) {
        (Some(d), Some(i)) => Some(Box::new(merge_types(d, i)?)),
        (Some(d), None) => Some(d.clone()),
        (None, i) => i.clone(),
    })
}

fn merge_shapes(declared: &Shape, inferred: &Shape) -> Result<Shape, String> {
    if declared.rank() != inferred.rank() {
        return Err(format!("rank {} vs {}", declared.rank(), inferred.rank()));
    }
    let mut dims = Vec::with_capacity(declared.rank());
    for (i, (d, n)) in declared.dims.iter().zip(&inferred.dims).enumerate() {
        dims.push(match (d, n) {
            (Dim::Known(a), Dim::Known(b)) if a != b => return Err(format!("dimension {i} is {a} vs {b}")),
            // A declared symbol or number is information; only an unknown dim is filled in.
            (Dim::Unknown, n) => n.clone(),
            (d, _) => d.clone(),
        });
    }
    Ok(Shape { dims, denotations: declared.denotations.clone() })
}

// ---------------------------------------------------------------------------------------------
// What a rule sees

/// One node's inputs, attributes and opset, and the outputs its rule sets.
pub(crate) struct NodeCtx<'a> {
    pub graph: &'a Graph,
    pub node: &'a Node,
    pub opset: i64,
    data: &'a HashMap<ValueId, Vec<Dim>>,
    options: &'a InferOptions,
    outputs: Vec<Option<ValueType>>,
    out_data: Vec<Option<Vec<Dim>>>,
}

impl<'a> NodeCtx<'a> {
    fn new(graph: &'a Graph, id: NodeId, opset: i64, data: &'a HashMap<ValueId, Vec<Dim>>, options: &'a InferOptions) -> Self {
        let node = graph.node(id);
        let n = node.outputs.len();
        NodeCtx { graph, node, opset, data, options, outputs: vec![None; n], out_data: vec![None; n] }
    }

    pub fn input_count(&self) -> usize {
        self.node.inputs.len()
    }

    pub fn output_count(&self) -> usize {
        self.node.outputs.len()
    }

    /// Whether input `i` is given (not omitted).
    pub fn has_input(&self, i: usize) -> bool {
        self.node.input(i).is_some()
    }

    pub fn require(&self, i: usize) -> Result<ValueId, InferError> {
        self.node.input(i).ok_or(InferError::MissingInput { index: i })
    }

    pub fn input_type(&self, i: usize) -> Option<&'a ValueType> {
        let v = self.node.input(i)?;
        self.graph.try_value(v)?.ty.as_ref()
    }

    pub fn elem(&self, i: usize) -> Option<DataType> {
        self.input_type(i).and_then(ValueType::elem)
    }

    /// The dims of input `i`, if it is a tensor of known rank.
    pub fn dims(&self, i: usize) -> Option<&'a [Dim]> {
        self.input_type(i).and_then(ValueType::shape).map(|s| s.dims.as_slice())
    }

    pub fn rank(&self, i: usize) -> Option<usize> {
        self.dims(i).map(<[Dim]>::len)
    }

    /// The tracked values of input `i` (a small integer tensor), flattened.
    pub fn data(&self, i: usize) -> Option<Vec<Dim>> {
        if !self.options.data_propagation {
            return self.ints(i).map(|v| v.into_iter().map(Dim::Known).collect());
        }
        let v = self.node.input(i)?;
        if let Some(d) = self.data.get(&v) {
            return Some(d.clone());
        }
        self.ints(i).map(|v| v.into_iter().map(Dim::Known).collect())
    }

    /// The values of input `i` when all are known: a small integer constant or tracked data.
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        let v = self.node.input(i)?;
        if self.options.data_propagation
            && let Some(d) = self.data.get(&v)
        {
            return d.iter().map(Dim::known).collect();
        }
        let t = self.graph.constant(v)?;
        if t.len() > self.options.max_tracked_elements as u64 || !(t.dtype().is_integer() || t.dtype() == DataType::Bool) {
            return None;
        }
        t.to_i64().ok()
    }

    /// The values of input `i` as floats, when it is a small constant of any numeric type.
    pub fn floats(&self, i: usize) -> Option<Vec<f64>> {
        let v = self.node.input(i)?;
        let t = self.graph.constant(v)?;
        if t.len() > self.options.max_tracked_elements as u64 {
            return None;
        }
        if t.dtype() == DataType::Double {
            let raw = t.raw_data().ok()?;
            return Some(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect());
        }
        if t.dtype().is_integer() {
            return self.ints(i).map(|v| v.into_iter().map(|x| x as f64).collect());
        }
        t.to_f32().ok().map(|v| v.into_iter().map(f64::from).collect())
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.node.attr_int(name)
    }

    pub fn attr_int_or(&self, name: &str, default: i64) -> i64 {
        self.node.attr_int(name).unwrap_or(default)
    }

    pub fn attr_ints(&self, name: &str) -> Option<&'a [i64]> {
        self.node.attr_ints(name)
    }

    pub fn attr_floats(&self, name: &str) -> Option<&'a [f32]> {
        match self.node.attr(name)? {
            crate::graph::AttrValue::Floats(v) => Some(v),
            _ => None,
        }
    }

    pub fn attr_string(&self, name: &str) -> Option<&'a str> {
        self.node.attr_string(name)
    }

    /// An element type given by an int attribute (`to`, `dtype`, ...).
    pub fn attr_dtype(&self, name: &'static str) -> Result<Option<DataType>, InferError> {
        match self.attr_int(name) {
            None => Ok(None),
            Some(code) => i32::try_from(code)
                .ok()
                .and_then(DataType::from_code)
                .filter(|t| *t != DataType::Undefined)
                .map(Some)
                .ok_or(InferError::Attribute { name, reason: format!("{code} is not an element type") }),
        }
    }

    /// Sets output `i` to a tensor type (nothing is set when both parts are unknown).
    pub fn set(&mut self, i: usize, elem: Option<DataType>, dims: Option<Vec<Dim>>) {
        if elem.is_none() && dims.is_none() {
            return;
        }
        if let Some(slot) = self.outputs.get_mut(i) {
            *slot = Some(tensor_type(elem, dims));
        }
    }

    pub fn set_type(&mut self, i: usize, ty: ValueType) {
        if let Some(slot) = self.outputs.get_mut(i) {
            *slot = Some(ty);
        }
    }

    /// Records the values of output `i` (when data propagation is on and they are few enough).
    pub fn set_data(&mut self, i: usize, data: Vec<Dim>) {
        if self.options.data_propagation
            && data.len() <= self.options.max_tracked_elements
            && let Some(slot) = self.out_data.get_mut(i)
        {
            *slot = Some(data);
        }
    }

    /// Output `i` takes input `j`'s type unchanged.
    pub fn pass_through(&mut self, j: usize, i: usize) {
        if let Some(ty) = self.input_type(j) {
            self.set_type(i, ty.clone());
        }
    }
}

pub(crate) fn tensor_type(elem: Option<DataType>, dims: Option<Vec<Dim>>) -> ValueType {
    ValueType { kind: TypeKind::Tensor { elem, shape: dims.map(Shape::new) }, denotation: None }
}

/// `axis` (negative: from the end) as an index into `rank` axes, or the error naming both.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, InferError> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(InferError::Axis { axis, rank });
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Normalises a list of axes; duplicates are an error.
pub(crate) fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, InferError> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = normalize_axis(a, rank)?;
        if out.contains(&n) {
            return Err(InferError::Invalid(format!("axis {a} is repeated")));
        }
        out.push(n);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Dimension arithmetic and broadcasting

/// Numpy (multidirectional) broadcasting of several shapes.
pub(crate) fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, InferError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for k in 0..rank {
        let column: Vec<&Dim> = shapes.iter().filter_map(|s| (k + s.len()).checked_sub(rank).map(|i| &s[i])).collect();
        out.push(broadcast_dims(&column)?);
    }
    Ok(out)
}

/// One broadcast output dimension. A number other than 1 wins (two different ones are an
/// error); otherwise a single symbol wins over 1 and unknown (symbols are taken to be > 1).
pub(crate) fn broadcast_dims(dims: &[&Dim]) -> Result<Dim, InferError> {
    let mut known: Option<i64> = None;
    let mut symbol: Option<&str> = None;
    let mut several_symbols = false;
    let mut unknown = false;
    for d in dims {
        match d {
            Dim::Known(1) => {}
            Dim::Known(n) => match known {
                Some(k) if k != *n => return Err(InferError::Broadcast { a: Dim::Known(k), b: Dim::Known(*n) }),
                _ => known = Some(*n),
            },
            Dim::Sym(s) => match symbol {
                Some(t) if t != s => several_symbols = true,
                _ => symbol = Some(s),
            },
            Dim::Unknown => unknown = true,
        }
    }
    Ok(match (known, symbol) {
        (Some(n), _) => Dim::Known(n),
        (None, Some(_)) if several_symbols => Dim::Unknown,
        (None, Some(s)) => Dim::Sym(s.to_string()),
        (None, None) if unknown => Dim::Unknown,
        (None, None) => Dim::Known(1),
    })
}

/// Two dims that must be equal: the more precise one (a number, then a symbol).
pub(crate) fn unify(what: &'static str, a: &Dim, b: &Dim) -> Result<Dim, InferError> {
    Ok(match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => return Err(InferError::DimMismatch { what, a: a.clone(), b: b.clone() }),
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Sym(_), _) => a.clone(),
        _ => b.clone(),
    })
}

/// Dims equal in both stay, others become unknown (for merging alternatives, e.g. If branches).
pub(crate) fn join_dim(a: &Dim, b: &Dim) -> Dim {
    if a == b { a.clone() } else { Dim::Unknown }
}

pub(crate) fn dim_add(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_add(*y).map_or(Dim::Unknown, Dim::Known),
        (d, Dim::Known(0)) | (Dim::Known(0), d) => d.clone(),
        _ => Dim::Unknown,
    }
}

pub(crate) fn dim_sub(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_sub(*y).map_or(Dim::Unknown, Dim::Known),
        (d, Dim::Known(0)) => d.clone(),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Known(0),
        _ => Dim::Unknown,
    }
}

pub(crate) fn dim_mul(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_mul(*y).map_or(Dim::Unknown, Dim::Known),
        (d, Dim::Known(1)) | (Dim::Known(1), d) => d.clone(),
        (_, Dim::Known(0)) | (Dim::Known(0), _) => Dim::Known(0),
        _ => Dim::Unknown,
    }
}

/// Integer division as ONNX does it for sizes (non-negative operands; truncating).
pub(crate) fn dim_div(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_div(*y).map_or(Dim::Unknown, Dim::Known),
        (d, Dim::Known(1)) => d.clone(),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Known(1),
        _ => Dim::Unknown,
    }
}

/// The product of dims: a number when all are known; a symbol when it is the only factor
/// other than ones; otherwise unknown (or 0 when a factor is 0).
pub(crate) fn dim_product<'d>(dims: impl IntoIterator<Item = &'d Dim>) -> Dim {
    dims.into_iter().fold(Dim::Known(1), |acc, d| dim_mul(&acc, d))
}

/// Length of a slice of a dimension of size `dim` from `start` to `end` by `step`, with ONNX's
/// clamping of out-of-range and negative indices.
pub(crate) fn slice_len(dim: i64, start: i64, end: i64, step: i64) -> Option<i64> {
    if step == 0 || dim < 0 {
        return None;
    }
    let resolve = |i: i64| if i < 0 { i.saturating_add(dim) } else { i };
    let (s, e) = (resolve(start), resolve(end));
    let len = if step > 0 {
        let (s, e) = (s.clamp(0, dim), e.clamp(0, dim));
        if e <= s { 0 } else { (e - s - 1) / step + 1 }
    } else {
        // Not `clamp`: for an empty dimension the bounds cross.
        let (s, e) = (s.max(0).min(dim - 1), e.max(-1).min(dim - 1));
        if s <= e { 0 } else { (s - e - 1) / step.checked_neg()? + 1 }
    };
    Some(len)
}

/// `ceil(a / b)` for b > 0.
pub(crate) fn ceil_div(a: i64, b: i64) -> Option<i64> {
    if b <= 0 {
        return None;
    }
    Some(a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0))
}

/// `floor(a / b)` for b > 0.
pub(crate) fn floor_div(a: i64, b: i64) -> Option<i64> {
    if b <= 0 {
        return None;
    }
    Some(a.div_euclid(b))
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    #[test]
    fn broadcasting_follows_numpy_and_keeps_symbols() {
        let k = Dim::Known;
        assert_eq!(broadcast(&[&[k(2), k(1), k(4)], &[k(3), k(1)]]).unwrap(), vec![k(2), k(3), k(4)]);
        assert_eq!(broadcast(&[&[sym("batch"), k(1)], &[k(5)]]).unwrap(), vec![sym("batch"), k(5)]);
        assert_eq!(broadcast(&[&[sym("batch"), sym("seq")], &[k(1), Dim::Unknown]]).unwrap(), vec![sym("batch"), sym("seq")]);
        assert_eq!(broadcast(&[&[sym("a")], &[sym("b")]]).unwrap(), vec![Dim::Unknown]);
        assert_eq!(broadcast(&[&[Dim::Unknown], &[k(1)]]).unwrap(), vec![Dim::Unknown]);
        assert_eq!(broadcast(&[&[Dim::Unknown], &[k(7)]]).unwrap(), vec![k(7)]);
        assert_eq!(broadcast(&[&[], &[k(0)]]).unwrap(), vec![k(0)]);
        assert!(matches!(broadcast(&[&[k(2)], &[k(3)]]), Err(InferError::Broadcast { .. })));
    }

    #[test]
    fn slice_lengths_clamp_like_onnx() {
        assert_eq!(slice_len(10, 0, i64::MAX, 1), Some(10));
        assert_eq!(slice_len(10, -3, i64::MAX, 1), Some(3));
        assert_eq!(slice_len(10, 2, -2, 3), Some(2));
        assert_eq!(slice_len(10, -1, i64::MIN, -1), Some(10));
        assert_eq!(slice_len(10, 20, 30, 1), Some(0));
        assert_eq!(slice_len(10, 5, 1, -2), Some(2));
        assert_eq!(slice_len(10, 0, 5, 0), None);
    }

    #[test]
    fn declared_types_are_refined_never_contradicted() {
        let declared = tensor_type(Some(DataType::Float), Some(vec![sym("batch"), Dim::Unknown, Dim::Known(4)]));
        let inferred = tensor_type(Some(DataType::Float), Some(vec![Dim::Known(2), Dim::Known(3), Dim::Known(4)]));
        let merged = merge_types(&declared, &inferred).unwrap();
        assert_eq!(merged.shape().unwrap().dims, vec![sym("batch"), Dim::Known(3), Dim::Known(4)]);
        let wrong = tensor_type(Some(DataType::Float), Some(vec![Dim::Known(2), Dim::Known(3), Dim::Known(5)]));
        assert!(merge_types(&declared, &wrong).is_err());
        let other_elem = tensor_type(Some(DataType::Int64), None);
        assert!(merge_types(&declared, &other_elem).is_err());
        let no_rank = tensor_type(None, None);
        assert_eq!(merge_types(&no_rank, &inferred).unwrap(), inferred);
    }
}
