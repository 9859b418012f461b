//! Facts about a model for `compactor inspect`: structure, parameters, storage.

use crate::dtype::DataType;
use crate::graph::{AttrValue, Graph, ValueDef, ValueId};
use crate::model::Model;
use crate::tensor::Tensor;
use crate::verify::{Problem, verify};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub ir_version: Option<i64>,
    pub opsets: Vec<Opset>,
    pub producer: Option<String>,
    pub producer_version: Option<String>,
    pub graph_name: Option<String>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    /// Nodes in the main graph and all subgraphs.
    pub nodes: usize,
    pub subgraphs: usize,
    /// `domain::op` (or `op` for the default domain) with counts, most frequent first.
    pub ops: Vec<OpCount>,
    pub weights: WeightStats,
    pub largest_tensors: Vec<TensorInfo>,
    pub external_files: Vec<ExternalFile>,
    pub functions: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// What the verifier found (empty for a sound graph).
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct Io {
    pub name: String,
    /// `f32[batch,seq]`, or `?` when undeclared.
    pub ty: String,
    pub dtype: Option<DataType>,
    /// Dimensions: numbers, symbol names, or null for unknown; null for unknown rank.
    pub shape: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize)]
pub struct OpCount {
    pub op: String,
    pub count: usize,
}

/// Tensors held as initializers or in `Constant` nodes.
#[derive(Debug, Serialize, Default)]
pub struct WeightStats {
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
    pub by_dtype: Vec<DtypeStats>,
}

#[derive(Debug, Serialize)]
pub struct DtypeStats {
    pub dtype: DataType,
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<u64>,
    pub bytes: u64,
    /// `location` of its external data file, if any.
    pub external: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExternalFile {
    pub location: String,
    pub tensors: usize,
    pub bytes: u64,
}

/// Every weight tensor of a graph with the name it goes by: initializers (dense and the
/// values of sparse ones) and the tensors of `Constant` nodes, in a stable order.
pub fn weights(graph: &Graph) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for r in graph.region_ids() {
        for &v in &graph.region(r).initializers {
            if let Some(t) = &graph.value(v).initializer {
                out.push((graph.value(v).name.clone(), t.clone()));
            }
        }
        for &v in &graph.region(r).sparse_initializers {
            if let Some(t) = graph.value(v).sparse_initializer.as_ref().and_then(|s| s.values.clone()) {
                out.push((graph.value(v).name.clone(), t));
            }
        }
    }
    for n in graph.all_nodes() {
        let node = graph.node(n);
        if node.is("Constant")
            && let Some(AttrValue::Tensor(t)) = node.attr("value")
        {
            let name = node.output(0).map(|v| graph.value(v).name.clone()).unwrap_or_default();
            out.push((name, t.clone()));
        }
    }
    out
}

fn io(graph: &Graph, v: ValueId) -> Io {
    let value = graph.value(v);
    let shape = value.shape().map(|s| {
        s.dims
            .iter()
            .map(|d| match d {
                crate::types::Dim::Known(n) => serde_json::Value::from(*n),
                crate::types::Dim::Sym(s) => serde_json::Value::from(s.clone()),
                crate::types::Dim::Unknown => serde_json::Value::Null,
            })
            .collect()
    });
    Io { name: value.name.clone(), ty: value.ty.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into()), dtype: value.elem(), shape }
}

pub fn summarize(model: &Model, largest: usize) -> Summary {
    let graph = &model.graph;
    let main = graph.main();
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    let all = graph.all_nodes();
    for &n in &all {
        let node = graph.node(n);
        let key = match node.domain() {
            "" => node.op_type.clone(),
            d => format!("{d}::{}", node.op_type),
        };
        *ops.entry(key).or_default() += 1;
    }
    let mut ops: Vec<OpCount> = ops.into_iter().map(|(op, count)| OpCount { op, count }).collect();
    ops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.op.cmp(&b.op)));

    let weights = weights(graph);
    let mut stats = WeightStats::default();
    let mut by_dtype: BTreeMap<DataType, DtypeStats> = BTreeMap::new();
    let mut external: BTreeMap<String, ExternalFile> = BTreeMap::new();
    let mut tensors = Vec::with_capacity(weights.len());
    for (name, t) in &weights {
        let bytes = t.data_bytes();
        stats.tensors += 1;
        stats.elements += t.len();
        stats.bytes += bytes;
        let d = by_dtype.entry(t.dtype()).or_insert(DtypeStats { dtype: t.dtype(), tensors: 0, elements: 0, bytes: 0 });
        d.tensors += 1;
        d.elements += t.len();
        d.bytes += bytes;
        if let Some(ext) = t.external() {
            let f = external.entry(ext.location.clone()).or_insert(ExternalFile { location: ext.location.clone(), tensors: 0, bytes: 0 });
            f.tensors += 1;
            f.bytes += ext.length;
        }
        tensors.push(TensorInfo { name: name.clone(), dtype: t.dtype(), dims: t.dims().to_vec(), bytes, external: t.external().map(|e| e.location.clone()) });
    }
    stats.by_dtype = by_dtype.into_values().collect();
    stats.by_dtype.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.dtype.cmp(&b.dtype)));
    tensors.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    tensors.truncate(largest);

    Summary {
        ir_version: model.ir_version,
        opsets: model
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: match o.domain.as_deref().unwrap_or("") {
                    "" => "ai.onnx".into(),
                    d => d.into(),
                },
                version: o.version.unwrap_or(0),
            })
            .collect(),
        producer: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        graph_name: main.name.clone(),
        inputs: main.inputs.iter().filter(|&&v| graph.value(v).def == ValueDef::Input && graph.value(v).initializer.is_none()).map(|&v| io(graph, v)).collect(),
        outputs: main.outputs.iter().map(|&v| io(graph, v)).collect(),
        nodes: all.len(),
        subgraphs: graph.region_ids().count() - 1,
        ops,
        weights: stats,
        largest_tensors: tensors,
        external_files: external.into_values().collect(),
        functions: model.functions.iter().map(|f| format!("{}::{}", f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or(""))).collect(),
        metadata: model.metadata_props.iter().map(|p| (p.key.clone().unwrap_or_default(), p.value.clone().unwrap_or_default())).collect(),
        problems: verify(model).err().map(|p| p.0).unwrap_or_default(),
    }
}
