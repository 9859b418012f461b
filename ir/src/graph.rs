//! The graph: one arena of nodes and values for a model's main graph and all of its
//! subgraphs, with typed ids. ONNX names are kept as metadata; identity is the id.
//!
//! Subgraphs (the bodies of If/Loop/Scan) are [`Region`]s of the same arena, so a value
//! of an outer graph used inside a branch is simply used by id: dead-code elimination,
//! rewiring and renaming need no name lookups across scopes.

use crate::dtype::DataType;
use crate::proto;
use crate::tensor::Tensor;
use crate::types::{Shape, ValueType};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        /// An arena index. Only the graph makes them (ids of one graph mean nothing in another).
        #[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        pub struct $name(pub(crate) u32);
        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}
id_type!(NodeId, "n");
id_type!(ValueId, "v");
id_type!(RegionId, "r");

pub type MetadataProp = proto::StringStringEntryProto;

/// How a value comes into being.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// A graph (or subgraph) input. It may also carry a default initializer (IR < 4 style).
    Input,
    Initializer,
    SparseInitializer,
    /// Output number `output` of `node`.
    Node {
        node: NodeId,
        output: u32,
    },
    /// Named only by a `value_info` entry; nothing defines it. Kept so a round trip loses nothing.
    Annotation,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: Option<ValueType>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataProp>,
    pub def: ValueDef,
    pub region: RegionId,
    pub initializer: Option<Tensor>,
    pub sparse_initializer: Option<SparseTensor>,
}

impl Value {
    pub fn elem(&self) -> Option<DataType> {
        self.ty.as_ref().and_then(ValueType::elem)
    }

    pub fn shape(&self) -> Option<&Shape> {
        self.ty.as_ref().and_then(ValueType::shape)
    }
}

#[derive(Clone, Debug)]
pub struct SparseTensor {
    pub values: Option<Tensor>,
    pub indices: Option<Tensor>,
    pub dims: Vec<i64>,
}

impl SparseTensor {
    /// The dense tensor: zeros with `values` placed at `indices` (either `[nnz]` linear
    /// positions or `[nnz, rank]` coordinates, as ONNX allows).
    pub fn to_dense(&self) -> Result<Tensor, crate::IrError> {
        let err = |reason: String| crate::IrError::TensorData { tensor: "<sparse>".into(), reason };
        let values = self.values.as_ref().ok_or_else(|| err("sparse tensor without values".into()))?;
        let dims: Vec<u64> = self.dims.iter().map(|&d| u64::try_from(d).map_err(|_| err(format!("negative dimension in {:?}", self.dims)))).collect::<Result<_, _>>()?;
        let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| err(format!("dims {:?} overflow", self.dims)))? as usize;
        let width = match values.dtype().bit_width() {
            Some(b) if b % 8 == 0 => (b / 8) as usize,
            _ => return Err(err(format!("{} values cannot be densified", values.dtype()))),
        };
        let nnz = values.len() as usize;
        let positions: Vec<i64> = match &self.indices {
            None if nnz == 0 => Vec::new(),
            None => return Err(err("sparse tensor without indices".into())),
            Some(idx) => {
                let flat = idx.to_i64()?;
                match idx.dims() {
                    [n] if *n as usize == nnz => flat,
                    [n, r] if *n as usize == nnz && *r as usize == dims.len() => {
                        flat.chunks(dims.len().max(1)).map(|coord| coord.iter().zip(&dims).fold(0i64, |acc, (&c, &d)| acc * d as i64 + c)).collect()
                    }
                    other => return Err(err(format!("indices of shape {other:?} do not fit {nnz} values of rank {}", dims.len()))),
                }
            }
        };
        let raw = values.raw_data()?;
        let mut dense = vec![0u8; count * width];
        for (k, &p) in positions.iter().enumerate() {
            let p = usize::try_from(p).ok().filter(|&p| p < count).ok_or_else(|| err(format!("index {p} is outside {count} elements")))?;
            dense[p * width..(p + 1) * width].copy_from_slice(&raw[k * width..(k + 1) * width]);
        }
        Tensor::from_raw(values.dtype(), &dims, dense.into())
    }
}

#[derive(Clone, Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(bytes::Bytes),
    Tensor(Tensor),
    Graph(RegionId),
    SparseTensor(SparseTensor),
    Type(ValueType),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<bytes::Bytes>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<RegionId>),
    SparseTensors(Vec<SparseTensor>),
    Types(Vec<ValueType>),
    /// No value: only `ref_attr_name` (inside functions) or an `UNDEFINED` attribute.
    Undefined,
}

#[derive(Clone, Debug)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    pub ref_attr_name: Option<String>,
    pub doc_string: Option<String>,
    /// The proto's `type` field as read; `None` when the file left it unset.
    pub proto_type: Option<i32>,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Self {
        let proto_type = Some(attr_type_code(&value));
        Attribute { name: name.into(), value, ref_attr_name: None, doc_string: None, proto_type }
    }
}

/// The `AttributeProto.AttributeType` code of a value.
pub fn attr_type_code(value: &AttrValue) -> i32 {
    use proto::attribute_proto::AttributeType as T;
    (match value {
        AttrValue::Float(_) => T::Float,
        AttrValue::Int(_) => T::Int,
        AttrValue::String(_) => T::String,
        AttrValue::Tensor(_) => T::Tensor,
        AttrValue::Graph(_) => T::Graph,
        AttrValue::SparseTensor(_) => T::SparseTensor,
        AttrValue::Type(_) => T::TypeProto,
        AttrValue::Floats(_) => T::Floats,
        AttrValue::Ints(_) => T::Ints,
        AttrValue::Strings(_) => T::Strings,
        AttrValue::Tensors(_) => T::Tensors,
        AttrValue::Graphs(_) => T::Graphs,
        AttrValue::SparseTensors(_) => T::SparseTensors,
        AttrValue::Types(_) => T::TypeProtos,
        AttrValue::Undefined => T::Undefined,
    }) as i32
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op_type: String,
    /// `None` and `Some("")` both mean the default ONNX domain; kept apart for byte-identical output.
    pub domain: Option<String>,
    pub name: Option<String>,
    pub overload: Option<String>,
    /// `None` is an omitted optional input (an empty name in ONNX).
    pub inputs: Vec<Option<ValueId>>,
    /// `None` is an unused optional output.
    pub outputs: Vec<Option<ValueId>>,
    pub attributes: Vec<Attribute>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataProp>,
    pub device_configurations: Vec<proto::NodeDeviceConfigurationProto>,
    pub region: RegionId,
}

impl Node {
    /// The domain with `ai.onnx` spelled as the empty string.
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }

    /// True for an op of the default ONNX domain named `op_type`.
    pub fn is(&self, op_type: &str) -> bool {
        self.op_type == op_type && self.domain().is_empty()
    }

    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            AttrValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    pub fn attr_string(&self, name: &str) -> Option<&str> {
        match self.attr(name)? {
            AttrValue::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    pub fn attr_tensor(&self, name: &str) -> Option<&Tensor> {
        match self.attr(name)? {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: &str, value: AttrValue) {
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(a) => {
                a.proto_type = Some(attr_type_code(&value));
                a.value = value;
            }
            None => self.attributes.push(Attribute::new(name, value)),
        }
    }

    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }

    /// Regions owned by this node's graph attributes, in attribute order.
    pub fn subgraphs(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.attributes.iter().flat_map(|a| match &a.value {
            AttrValue::Graph(r) => std::slice::from_ref(r).iter().copied(),
            AttrValue::Graphs(rs) => rs.iter().copied(),
            _ => [].iter().copied(),
        })
    }

    /// A short label for messages: `'name' (OpType)` or `n12 (OpType)`.
    pub fn label(&self, id: NodeId) -> String {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => format!("node '{n}' ({})", self.op_type),
            _ => format!("node {id} ({})", self.op_type),
        }
    }
}

/// A graph body: the main graph or a subgraph owned by a node attribute.
#[derive(Clone, Debug, Default)]
pub struct Region {
    pub name: Option<String>,
    pub doc_string: Option<String>,
    /// Nodes in execution order.
    pub nodes: Vec<NodeId>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Values with an initializer, in file order.
    pub initializers: Vec<ValueId>,
    pub sparse_initializers: Vec<ValueId>,
    /// Values with a `value_info` entry, in file order.
    pub value_info: Vec<ValueId>,
    /// `value_info` entries of graph inputs and outputs that state another type than the input
    /// or output declaration (onnxruntime's optimizer writes an output's `value_info` without
    /// its shape): kept as read and written back unchanged, while the value's type is the
    /// declaration's.
    pub value_info_as_read: BTreeMap<ValueId, proto::ValueInfoProto>,
    pub quantization_annotation: Vec<proto::TensorAnnotation>,
    pub metadata_props: Vec<MetadataProp>,
    /// The node whose attribute holds this region; `None` for the main graph.
    pub owner: Option<NodeId>,
}

/// One use of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    /// Input number `input` of `node`.
    Node { node: NodeId, input: u32 },
    /// Output number `index` of a region (graph output).
    Output { region: RegionId, index: u32 },
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Option<Node>>,
    values: Vec<Option<Value>>,
    regions: Vec<Option<Region>>,
    /// Renewed by every method that can change the graph, so analyses computed from it know
    /// when they are stale (see [`Graph::generation`]).
    generation: u64,
}

impl Graph {
    /// The main graph's region.
    pub const MAIN: RegionId = RegionId(0);

    /// A graph with an empty main region.
    pub fn new(name: impl Into<String>) -> Self {
        let mut g = Graph::default();
        g.regions.push(Some(Region { name: Some(name.into()), ..Default::default() }));
        g.touch();
        g
    }

    /// A number that changes whenever the graph may have changed: every `&mut` access
    /// (including [`Graph::apply`]) draws a fresh one from a process-wide counter. Two graphs
    /// with one generation are equal (the same graph, or a clone neither has changed since),
    /// so an analysis computed at a generation stays valid while the generation does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn touch(&mut self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        self.generation = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn main(&self) -> &Region {
        self.region(Self::MAIN)
    }

    pub fn main_mut(&mut self) -> &mut Region {
        self.region_mut(Self::MAIN)
    }

    pub fn region(&self, id: RegionId) -> &Region {
        self.regions[id.index()].as_ref().unwrap_or_else(|| panic!("region {id} was removed"))
    }

    pub fn region_mut(&mut self, id: RegionId) -> &mut Region {
        self.touch();
        self.regions[id.index()].as_mut().unwrap_or_else(|| panic!("region {id} was removed"))
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.index()].as_ref().unwrap_or_else(|| panic!("node {id} was removed"))
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.touch();
        self.nodes[id.index()].as_mut().unwrap_or_else(|| panic!("node {id} was removed"))
    }

    pub fn value(&self, id: ValueId) -> &Value {
        self.values[id.index()].as_ref().unwrap_or_else(|| panic!("value {id} was removed"))
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        self.touch();
        self.values[id.index()].as_mut().unwrap_or_else(|| panic!("value {id} was removed"))
    }

    pub fn try_node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index()).and_then(Option::as_ref)
    }

    pub fn try_value(&self, id: ValueId) -> Option<&Value> {
        self.values.get(id.index()).and_then(Option::as_ref)
    }

    pub fn try_region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(id.index()).and_then(Option::as_ref)
    }

    /// Every live region id (the main region first, then subgraphs in creation order).
    pub fn region_ids(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.regions.iter().enumerate().filter(|(_, r)| r.is_some()).map(|(i, _)| RegionId(i as u32))
    }

    /// Every live node, in arena order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().enumerate().filter(|(_, n)| n.is_some()).map(|(i, _)| NodeId(i as u32))
    }

    /// Every live value, in arena order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.values.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(i, _)| ValueId(i as u32))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// Nodes of a region in execution order.
    pub fn nodes_of(&self, region: RegionId) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.region(region).nodes.iter().map(move |&id| (id, self.node(id)))
    }

    /// Every node of the main graph and all subgraphs, each region in order, parents before children.
    pub fn all_nodes(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        self.collect_nodes(Self::MAIN, &mut out);
        out
    }

    fn collect_nodes(&self, region: RegionId, out: &mut Vec<NodeId>) {
        for &id in &self.region(region).nodes {
            out.push(id);
            for sub in self.node(id).subgraphs() {
                self.collect_nodes(sub, out);
            }
        }
    }

    /// Adds a region (for a subgraph); attach it to a node with a graph attribute.
    pub fn add_region(&mut self, region: Region) -> RegionId {
        self.touch();
        self.regions.push(Some(region));
        RegionId(self.regions.len() as u32 - 1)
    }

    /// Adds a value to the arena (it is not listed in any region list).
    pub fn add_value(&mut self, value: Value) -> ValueId {
        self.touch();
        self.values.push(Some(value));
        ValueId(self.values.len() as u32 - 1)
    }

    /// Adds a node to the arena without placing it in its region's order.
    pub fn add_node_detached(&mut self, node: Node) -> NodeId {
        self.touch();
        self.nodes.push(Some(node));
        NodeId(self.nodes.len() as u32 - 1)
    }

    /// Removes a node from the arena and from its region's order. Its outputs stay (dangling) until removed.
    pub fn remove_node(&mut self, id: NodeId) -> Node {
        self.touch();
        let node = self.nodes[id.index()].take().unwrap_or_else(|| panic!("node {id} was removed"));
        if let Some(Some(region)) = self.regions.get_mut(node.region.index()) {
            region.nodes.retain(|&n| n != id);
        }
        node
    }

    /// Removes a value from the arena and from its region's lists.
    pub fn remove_value(&mut self, id: ValueId) -> Value {
        self.touch();
        let value = self.values[id.index()].take().unwrap_or_else(|| panic!("value {id} was removed"));
        for region in self.regions.iter_mut().flatten() {
            for list in [&mut region.inputs, &mut region.initializers, &mut region.sparse_initializers, &mut region.value_info] {
                list.retain(|&v| v != id);
            }
            region.value_info_as_read.remove(&id);
        }
        value
    }

    /// Removes a region and, recursively, its nodes, values and nested regions.
    pub fn remove_region(&mut self, id: RegionId) {
        self.touch();
        let Some(region) = self.regions[id.index()].take() else { return };
        for n in region.nodes {
            let node = self.nodes[n.index()].take().expect("region nodes are live");
            for sub in node.subgraphs() {
                self.remove_region(sub);
            }
        }
        for v in self.values.iter_mut() {
            if v.as_ref().is_some_and(|v| v.region == id) {
                *v = None;
            }
        }
    }

    /// Where a value is produced, if by a node.
    pub fn producer(&self, value: ValueId) -> Option<(NodeId, u32)> {
        match self.value(value).def {
            ValueDef::Node { node, output } => Some((node, output)),
            _ => None,
        }
    }

    /// Every use of every value, in a deterministic order.
    pub fn uses(&self) -> UseMap {
        let mut map: HashMap<ValueId, Vec<Use>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            for (k, input) in node.inputs.iter().enumerate() {
                if let Some(v) = input {
                    map.entry(*v).or_default().push(Use::Node { node: NodeId(i as u32), input: k as u32 });
                }
            }
        }
        for (r, region) in self.regions.iter().enumerate() {
            let Some(region) = region else { continue };
            for (k, v) in region.outputs.iter().enumerate() {
                map.entry(*v).or_default().push(Use::Output { region: RegionId(r as u32), index: k as u32 });
            }
        }
        UseMap { map }
    }

    /// The constant a value holds: an initializer that is not also an overridable graph input,
    /// or the output of a `Constant` node.
    pub fn constant(&self, value: ValueId) -> Option<Tensor> {
        let v = self.value(value);
        match v.def {
            ValueDef::Initializer => v.initializer.clone(),
            ValueDef::Node { node, .. } => {
                let n = self.node(node);
                if n.is("Constant") { constant_node_tensor(n) } else { None }
            }
            _ => None,
        }
    }

    /// Replaces every use of `from` (node inputs and region outputs) with `to`.
    pub fn replace_uses(&mut self, from: ValueId, to: ValueId) {
        self.touch();
        for node in self.nodes.iter_mut().flatten() {
            for input in node.inputs.iter_mut() {
                if *input == Some(from) {
                    *input = Some(to);
                }
            }
        }
        for region in self.regions.iter_mut().flatten() {
            for out in region.outputs.iter_mut() {
                if *out == from {
                    *out = to;
                }
            }
        }
    }

    /// A value name not used by any live value, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let taken: std::collections::HashSet<&str> = self.values.iter().flatten().map(|v| v.name.as_str()).collect();
        fresh_name_among(base, |n| taken.contains(n))
    }

    /// The names of all live values, for naming many new values with `fresh_name_among`
    /// without collecting them again for each (that made large patches quadratic).
    pub(crate) fn value_names(&self) -> std::collections::HashSet<String> {
        self.values.iter().flatten().map(|v| v.name.clone()).collect()
    }

    /// The region chain from `region` up to the main graph (inclusive).
    pub fn ancestors(&self, region: RegionId) -> Vec<RegionId> {
        let mut chain = vec![region];
        let mut current = region;
        while let Some(owner) = self.region(current).owner {
            current = self.node(owner).region;
            chain.push(current);
        }
        chain
    }
}

/// `base` if it is free and not empty, else the first free `base_1`, `base_2`, ...
pub(crate) fn fresh_name_among(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) && !base.is_empty() {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).expect("some suffix is free")
}

/// The tensor a `Constant` node produces, for the attribute forms that hold one tensor.
pub fn constant_node_tensor(node: &Node) -> Option<Tensor> {
    let attr = node.attributes.first()?;
    match (&attr.name[..], &attr.value) {
        ("value", AttrValue::Tensor(t)) => Some(t.clone()),
        ("value_float", AttrValue::Float(f)) => Tensor::from_f32(&[], &[*f]).ok(),
        ("value_floats", AttrValue::Floats(f)) => Tensor::from_f32(&[f.len() as u64], f).ok(),
        ("value_int", AttrValue::Int(i)) => Some(Tensor::scalar_i64(*i)),
        ("value_ints", AttrValue::Ints(v)) => Tensor::from_i64(&[v.len() as u64], v).ok(),
        _ => None,
    }
}

/// Uses of values, computed on demand by [`Graph::uses`].
pub struct UseMap {
    map: HashMap<ValueId, Vec<Use>>,
}

impl UseMap {
    pub fn of(&self, value: ValueId) -> &[Use] {
        self.map.get(&value).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_used(&self, value: ValueId) -> bool {
        !self.of(value).is_empty()
    }

    /// Nodes consuming `value` (each once, in id order).
    pub fn consumers(&self, value: ValueId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .of(value)
            .iter()
            .filter_map(|u| match u {
                Use::Node { node, .. } => Some(*node),
                Use::Output { .. } => None,
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_tensors_densify_from_linear_or_coordinate_indices() {
        let values = Tensor::from_f32(&[2], &[1.5, -2.0]).unwrap();
        let linear = SparseTensor { values: Some(values.clone()), indices: Some(Tensor::from_i64(&[2], &[1, 5]).unwrap()), dims: vec![2, 3] };
        assert_eq!(linear.to_dense().unwrap().to_f32().unwrap(), vec![0.0, 1.5, 0.0, 0.0, 0.0, -2.0]);
        let coords = SparseTensor { values: Some(values.clone()), indices: Some(Tensor::from_i64(&[2, 2], &[0, 1, 1, 2]).unwrap()), dims: vec![2, 3] };
        assert_eq!(coords.to_dense().unwrap().to_f32().unwrap(), vec![0.0, 1.5, 0.0, 0.0, 0.0, -2.0]);
        let outside = SparseTensor { values: Some(values), indices: Some(Tensor::from_i64(&[2], &[1, 6]).unwrap()), dims: vec![2, 3] };
        assert!(outside.to_dense().unwrap_err().to_string().contains("index 6 is outside 6 elements"));
    }
}
