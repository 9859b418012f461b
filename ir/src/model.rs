//! A whole model: the graph plus everything else a `ModelProto` holds.

use crate::error::Origin;
use crate::graph::{Graph, MetadataProp};
use crate::proto;

/// One `opset_import` entry.
pub type OpsetImport = proto::OperatorSetIdProto;

#[derive(Clone, Debug)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opset_import: Vec<OpsetImport>,
    pub producer_name: Option<String>,
    pub producer_version: Option<String>,
    pub domain: Option<String>,
    pub model_version: Option<i64>,
    pub doc_string: Option<String>,
    pub graph: Graph,
    pub metadata_props: Vec<MetadataProp>,
    /// Kept as read; no pass looks inside them.
    pub training_info: Vec<proto::TrainingInfoProto>,
    /// Model-local functions, kept as read.
    pub functions: Vec<proto::FunctionProto>,
    pub configuration: Vec<proto::DeviceConfigurationProto>,
    /// Where the model was read from (for messages).
    pub origin: Origin,
}

impl Model {
    /// An empty model around `graph` with the given default-domain opset.
    pub fn new(graph: Graph, opset: i64) -> Self {
        Model {
            ir_version: Some(10),
            opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(opset) }],
            producer_name: Some("compactor".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            domain: None,
            model_version: None,
            doc_string: None,
            graph,
            metadata_props: Vec::new(),
            training_info: Vec::new(),
            functions: Vec::new(),
            configuration: Vec::new(),
            origin: Origin::Memory,
        }
    }

    /// The imported version of an operator-set domain (`""` and `"ai.onnx"` are the same).
    pub fn opset_version(&self, domain: &str) -> Option<i64> {
        let canon = |d: &str| if d == "ai.onnx" { "" } else { d }.to_string();
        let want = canon(domain);
        self.opset_import.iter().find(|o| canon(o.domain.as_deref().unwrap_or("")) == want).and_then(|o| o.version)
    }

    /// Sets (or adds) the imported version of a domain.
    pub fn set_opset_version(&mut self, domain: &str, version: i64) {
        let canon = |d: &str| if d == "ai.onnx" { "" } else { d }.to_string();
        let want = canon(domain);
        match self.opset_import.iter_mut().find(|o| canon(o.domain.as_deref().unwrap_or("")) == want) {
            Some(o) => o.version = Some(version),
            None => self.opset_import.push(OpsetImport { domain: Some(domain.to_string()), version: Some(version) }),
        }
    }
}
