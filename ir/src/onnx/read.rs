//! Reading ONNX: the `ModelProto` decoded with prost and turned into the IR, names resolved to
//! ids scope by scope, external data checked and mapped lazily.

use super::*;

pub(super) fn decode(bytes: Bytes, origin: Origin, base_dir: Option<&Path>, options: &LoadOptions) -> Result<Model> {
    if bytes.is_empty() {
        return Err(IrError::NotOnnx { origin, reason: "the file is empty".into() });
    }
    let proto =
        proto::ModelProto::decode(bytes).map_err(|e| IrError::NotOnnx { origin: origin.clone(), reason: format!("protobuf decoding failed ({e}); the file is truncated or is not an ONNX model") })?;
    let Some(graph) = proto.graph else {
        return Err(IrError::NotOnnx { origin, reason: "it has no graph (a protobuf message, but not an ONNX ModelProto)".into() });
    };
    let mut reader = Reader { origin: origin.clone(), base_dir, external_files: HashMap::new(), graph: Graph::default(), errors: Vec::new() };
    let mut scopes = Vec::new();
    reader.region(graph, None, &mut scopes)?;
    if !reader.errors.is_empty() {
        let count = reader.errors.len();
        let mut reason = reader.errors.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        if count > 10 {
            reason.push_str(&format!("; and {} more", count - 10));
        }
        return Err(IrError::Structure { origin, location: "graph".into(), reason });
    }
    let mut model = Model {
        ir_version: proto.ir_version,
        opset_import: proto.opset_import,
        producer_name: proto.producer_name,
        producer_version: proto.producer_version,
        domain: proto.domain,
        model_version: proto.model_version,
        doc_string: proto.doc_string,
        graph: reader.graph,
        metadata_props: proto.metadata_props,
        training_info: proto.training_info,
        functions: proto.functions,
        configuration: proto.configuration,
        origin,
    };
    if options.lift_constants {
        lift_constants(&mut model.graph);
    }
    Ok(model)
}

struct Reader<'a> {
    origin: Origin,
    base_dir: Option<&'a Path>,
    external_files: HashMap<PathBuf, Arc<ExternalFile>>,
    graph: Graph,
    /// Unresolved references, reported together.
    errors: Vec<String>,
}

type Scope = HashMap<String, ValueId>;

impl Reader<'_> {
    fn structure(&self, location: String, reason: String) -> IrError {
        IrError::Structure { origin: self.origin.clone(), location, reason }
    }

    fn tensor(&mut self, proto: proto::TensorProto) -> Result<Tensor> {
        let name = proto.name.clone().unwrap_or_default();
        let external = if proto.data_location == Some(proto::tensor_proto::DataLocation::External as i32) { Some(self.external_source(&proto, &name)?) } else { None };
        Tensor::from_proto(proto, external).map_err(|e| match e {
            IrError::TensorData { tensor, reason } => IrError::Tensor { origin: self.origin.clone(), tensor, reason },
            other => other,
        })
    }

    fn external_source(&mut self, proto: &proto::TensorProto, name: &str) -> Result<ExternalSource> {
        let tensor_err = |reason: String| IrError::Tensor { origin: self.origin.clone(), tensor: name.to_string(), reason };
        let (location, offset, length) = parse_external_entries(&proto.external_data).map_err(tensor_err)?;
        let ext_err = |file: PathBuf, reason: String| IrError::ExternalData { origin: self.origin.clone(), tensor: name.to_string(), file, reason };
        let relative = Path::new(&location);
        if relative.is_absolute() || relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(ext_err(relative.to_path_buf(), "must be a relative path inside the model's directory".into()));
        }
        let Some(base) = self.base_dir else {
            return Err(ext_err(relative.to_path_buf(), "cannot be resolved: the model was not read from a file".into()));
        };
        let path = base.join(relative);
        let file = match self.external_files.get(&path) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(ExternalFile::open(path.clone()).map_err(|e| {
                    let reason = if e.kind() == std::io::ErrorKind::NotFound { "does not exist".to_string() } else { format!("cannot be read: {e}") };
                    ext_err(path.clone(), reason)
                })?);
                self.external_files.insert(path.clone(), f.clone());
                f
            }
        };
        let length = match length {
            Some(l) => l,
            None => {
                let count = proto.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?));
                let dtype = proto.data_type.and_then(DataType::from_code);
                count.zip(dtype).and_then(|(c, t)| t.storage_bytes(c)).ok_or_else(|| tensor_err("external data without 'length' and with no computable size".into()))?
            }
        };
        match offset.checked_add(length) {
            Some(end) if end <= file.len() => Ok(ExternalSource::new(location, offset, length, file)),
            _ => Err(ext_err(path, format!("holds {} bytes, but the tensor needs bytes [{offset}, {offset}+{length})", file.len()))),
        }
    }

    fn sparse(&mut self, proto: proto::SparseTensorProto) -> Result<SparseTensor> {
        Ok(SparseTensor { values: proto.values.map(|t| self.tensor(t)).transpose()?, indices: proto.indices.map(|t| self.tensor(t)).transpose()?, dims: proto.dims })
    }

    fn value_type(&self, ty: Option<proto::TypeProto>, name: &str) -> Result<Option<ValueType>> {
        ty.map(|t| type_from_proto(t).map_err(|reason| self.structure(format!("value '{name}'"), reason))).transpose()
    }

    fn new_value(&mut self, name: String, def: ValueDef, region: RegionId) -> ValueId {
        self.graph.add_value(Value { name, ty: None, doc_string: None, metadata_props: Vec::new(), def, region, initializer: None, sparse_initializer: None })
    }

    fn define(&self, scope: &mut Scope, name: &str, id: ValueId, what: &str) -> Result<()> {
        if let Some(prev) = scope.insert(name.to_string(), id) {
            let before = describe_def(&self.graph, prev);
            return Err(self.structure(format!("value '{name}'"), format!("defined twice: by {before} and by {what} (ONNX graphs must be in SSA form)")));
        }
        Ok(())
    }

    fn region(&mut self, gp: proto::GraphProto, owner: Option<NodeId>, scopes: &mut Vec<Scope>) -> Result<RegionId> {
        let rid = self.graph.add_region(Region {
            name: gp.name,
            doc_string: gp.doc_string,
            quantization_annotation: gp.quantization_annotation,
            metadata_props: gp.metadata_props,
            owner,
            ..Default::default()
        });
        let graph_label = self.graph.region(rid).name.clone().unwrap_or_default();
        let mut scope = Scope::new();
        for vi in gp.input {
            let name = vi.name.unwrap_or_default();
            let ty = self.value_type(vi.r#type, &name)?;
            let id = self.new_value(name.clone(), ValueDef::Input, rid);
            let v = self.graph.value_mut(id);
            (v.ty, v.doc_string, v.metadata_props) = (ty, vi.doc_string, vi.metadata_props);
            self.define(&mut scope, &name, id, "a graph input")?;
            self.graph.region_mut(rid).inputs.push(id);
        }
        for tp in gp.initializer {
            let name = tp.name.clone().unwrap_or_default();
            let tensor = self.tensor(tp)?;
            let id = match scope.get(&name) {
                // IR < 4: an initializer named like an input is that input's default value.
                Some(&id) if self.graph.value(id).def == ValueDef::Input && self.graph.value(id).initializer.is_none() => id,
                _ => {
                    let id = self.new_value(name.clone(), ValueDef::Initializer, rid);
                    self.graph.value_mut(id).ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
                    self.define(&mut scope, &name, id, "an initializer")?;
                    id
                }
            };
            self.graph.value_mut(id).initializer = Some(tensor);
            self.graph.region_mut(rid).initializers.push(id);
        }
        for sp in gp.sparse_initializer {
            let sparse = self.sparse(sp)?;
            let name = sparse.values.as_ref().and_then(|t| t.proto_name()).unwrap_or_default().to_string();
            let id = self.new_value(name.clone(), ValueDef::SparseInitializer, rid);
            if let Some(values) = &sparse.values {
                let shape = Shape::known(&sparse.dims);
                self.graph.value_mut(id).ty = Some(ValueType::tensor(values.dtype(), Some(shape)));
            }
            self.graph.value_mut(id).sparse_initializer = Some(sparse);
            self.define(&mut scope, &name, id, "a sparse initializer")?;
            self.graph.region_mut(rid).sparse_initializers.push(id);
        }
        // Every node's outputs are defined before any input is resolved: ONNX files are not
        // always topologically sorted, and subgraphs may capture values defined later.
        let mut pending = Vec::with_capacity(gp.node.len());
        for np in gp.node {
            let id = self.graph.add_node_detached(Node {
                op_type: np.op_type.clone().unwrap_or_default(),
                domain: np.domain.clone(),
                name: np.name.clone(),
                overload: np.overload.clone(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                attributes: Vec::new(),
                doc_string: np.doc_string.clone(),
                metadata_props: np.metadata_props.clone(),
                device_configurations: np.device_configurations.clone(),
                region: rid,
            });
            let mut outputs = Vec::with_capacity(np.output.len());
            for (k, out) in np.output.iter().enumerate() {
                if out.is_empty() {
                    outputs.push(None);
                    continue;
                }
                let vid = self.new_value(out.clone(), ValueDef::Node { node: id, output: k as u32 }, rid);
                let what = self.graph.node(id).label(id);
                self.define(&mut scope, out, vid, &what)?;
                outputs.push(Some(vid));
            }
            self.graph.node_mut(id).outputs = outputs;
            self.graph.region_mut(rid).nodes.push(id);
            pending.push((id, np));
        }
        scopes.push(scope);
        let result = self.region_body(rid, &graph_label, pending, gp.output, gp.value_info, scopes);
        scopes.pop();
        result.map(|_| rid)
    }

    fn region_body(
        &mut self,
        rid: RegionId,
        graph_label: &str,
        pending: Vec<(NodeId, proto::NodeProto)>,
        outputs: Vec<proto::ValueInfoProto>,
        value_info: Vec<proto::ValueInfoProto>,
        scopes: &mut Vec<Scope>,
    ) -> Result<()> {
        for (id, np) in pending {
            let mut inputs = Vec::with_capacity(np.input.len());
            for name in &np.input {
                if name.is_empty() {
                    inputs.push(None);
                } else if let Some(v) = resolve(scopes, name) {
                    inputs.push(Some(v));
                } else {
                    let label = self.graph.node(id).label(id);
                    self.errors.push(format!("{label}: input '{name}' is not defined in graph '{graph_label}' or an enclosing graph"));
                    inputs.push(None);
                }
            }
            self.graph.node_mut(id).inputs = inputs;
            let mut attributes = Vec::with_capacity(np.attribute.len());
            for ap in np.attribute {
                attributes.push(self.attribute(ap, id, scopes)?);
            }
            self.graph.node_mut(id).attributes = attributes;
        }
        for vi in outputs {
            let name = vi.name.unwrap_or_default();
            let ty = self.value_type(vi.r#type, &name)?;
            let Some(id) = resolve(scopes, &name) else {
                self.errors.push(format!("graph '{graph_label}': output '{name}' is not defined"));
                continue;
            };
            let v = self.graph.value_mut(id);
            (v.ty, v.doc_string, v.metadata_props) = (ty, vi.doc_string, vi.metadata_props);
            self.graph.region_mut(rid).outputs.push(id);
        }
        for vi in value_info {
            let name = vi.name.unwrap_or_default();
            let type_as_read = vi.r#type.clone();
            let ty = self.value_type(vi.r#type, &name)?;
            let id = match resolve(scopes, &name) {
                Some(id) => id,
                None => self.new_value(name, ValueDef::Annotation, rid),
            };
            let region = self.graph.region(rid);
            let declared = region.inputs.contains(&id) || region.outputs.contains(&id);
            if declared && self.graph.value(id).ty != ty {
                let entry = proto::ValueInfoProto { name: Some(self.graph.value(id).name.clone()), r#type: type_as_read, doc_string: vi.doc_string, metadata_props: vi.metadata_props };
                let region = self.graph.region_mut(rid);
                region.value_info_as_read.insert(id, entry);
                region.value_info.push(id);
                continue;
            }
            let v = self.graph.value_mut(id);
            (v.ty, v.doc_string, v.metadata_props) = (ty, vi.doc_string, vi.metadata_props);
            self.graph.region_mut(rid).value_info.push(id);
        }
        Ok(())
    }

    fn attribute(&mut self, ap: proto::AttributeProto, node: NodeId, scopes: &mut Vec<Scope>) -> Result<Attribute> {
        use proto::attribute_proto::AttributeType as T;
        let name = ap.name.clone().unwrap_or_default();
        let kind = match ap.r#type {
            Some(code) => T::try_from(code).map_err(|_| {
                let label = self.graph.node(node).label(node);
                self.structure(label, format!("attribute '{name}' has unknown type {code}"))
            })?,
            None => infer_attr_type(&ap),
        };
        let value = match kind {
            T::Float => AttrValue::Float(ap.f.unwrap_or_default()),
            T::Int => AttrValue::Int(ap.i.unwrap_or_default()),
            T::String => AttrValue::String(ap.s.unwrap_or_default()),
            T::Tensor => match ap.t {
                Some(t) => AttrValue::Tensor(self.tensor(t)?),
                None => AttrValue::Undefined,
            },
            T::Graph => match ap.g {
                Some(g) => AttrValue::Graph(self.region(g, Some(node), scopes)?),
                None => AttrValue::Undefined,
            },
            T::SparseTensor => match ap.sparse_tensor {
                Some(s) => AttrValue::SparseTensor(self.sparse(s)?),
                None => AttrValue::Undefined,
            },
            T::TypeProto => match ap.tp {
                Some(tp) => AttrValue::Type(self.value_type(Some(tp), &name)?.expect("given Some")),
                None => AttrValue::Undefined,
            },
            T::Floats => AttrValue::Floats(ap.floats),
            T::Ints => AttrValue::Ints(ap.ints),
            T::Strings => AttrValue::Strings(ap.strings),
            T::Tensors => AttrValue::Tensors(ap.tensors.into_iter().map(|t| self.tensor(t)).collect::<Result<_>>()?),
            T::Graphs => AttrValue::Graphs(ap.graphs.into_iter().map(|g| self.region(g, Some(node), scopes)).collect::<Result<_>>()?),
            T::SparseTensors => AttrValue::SparseTensors(ap.sparse_tensors.into_iter().map(|s| self.sparse(s)).collect::<Result<_>>()?),
            T::TypeProtos => AttrValue::Types(ap.type_protos.into_iter().map(|tp| Ok(self.value_type(Some(tp), &name)?.expect("given Some"))).collect::<Result<_>>()?),
            T::Undefined => AttrValue::Undefined,
        };
        Ok(Attribute { name, value, ref_attr_name: ap.ref_attr_name, doc_string: ap.doc_string, proto_type: ap.r#type })
    }
}

fn resolve(scopes: &[Scope], name: &str) -> Option<ValueId> {
    scopes.iter().rev().find_map(|s| s.get(name).copied())
}

fn describe_def(graph: &Graph, id: ValueId) -> String {
    match graph.value(id).def {
        ValueDef::Input => "a graph input".into(),
        ValueDef::Initializer => "an initializer".into(),
        ValueDef::SparseInitializer => "a sparse initializer".into(),
        ValueDef::Node { node, .. } => graph.node(node).label(node),
        ValueDef::Annotation => "a value_info entry".into(),
    }
}

/// The kind of an attribute whose `type` field is unset, from the field that holds a value.
fn infer_attr_type(ap: &proto::AttributeProto) -> proto::attribute_proto::AttributeType {
    use proto::attribute_proto::AttributeType as T;
    if ap.f.is_some() {
        T::Float
    } else if ap.i.is_some() {
        T::Int
    } else if ap.s.is_some() {
        T::String
    } else if ap.t.is_some() {
        T::Tensor
    } else if ap.g.is_some() {
        T::Graph
    } else if ap.sparse_tensor.is_some() {
        T::SparseTensor
    } else if ap.tp.is_some() {
        T::TypeProto
    } else if !ap.floats.is_empty() {
        T::Floats
    } else if !ap.ints.is_empty() {
        T::Ints
    } else if !ap.strings.is_empty() {
        T::Strings
    } else if !ap.tensors.is_empty() {
        T::Tensors
    } else if !ap.graphs.is_empty() {
        T::Graphs
    } else if !ap.sparse_tensors.is_empty() {
        T::SparseTensors
    } else if !ap.type_protos.is_empty() {
        T::TypeProtos
    } else {
        T::Undefined
    }
}

fn dtype_from_code(code: Option<i32>) -> Result<Option<DataType>, String> {
    code.map(|c| DataType::from_code(c).ok_or_else(|| format!("unknown data type {c}"))).transpose()
}

fn shape_from_proto(shape: proto::TensorShapeProto) -> Shape {
    let has_denotations = shape.dim.iter().any(|d| d.denotation.is_some());
    let mut denotations = Vec::new();
    let dims = shape
        .dim
        .into_iter()
        .map(|d| {
            if has_denotations {
                denotations.push(d.denotation);
            }
            match d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Dim::Known(v),
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Sym(p),
                None => Dim::Unknown,
            }
        })
        .collect();
    Shape { dims, denotations }
}

pub(crate) fn type_from_proto(tp: proto::TypeProto) -> Result<ValueType, String> {
    let sub = |t: Option<Box<proto::TypeProto>>| -> Result<Option<Box<ValueType>>, String> { t.map(|t| type_from_proto(*t).map(Box::new)).transpose() };
    let kind = match tp.value {
        None => TypeKind::Unset,
        Some(type_proto::Value::TensorType(t)) => TypeKind::Tensor { elem: dtype_from_code(t.elem_type)?, shape: t.shape.map(shape_from_proto) },
        Some(type_proto::Value::SparseTensorType(t)) => TypeKind::SparseTensor { elem: dtype_from_code(t.elem_type)?, shape: t.shape.map(shape_from_proto) },
        Some(type_proto::Value::SequenceType(s)) => TypeKind::Sequence(sub(s.elem_type)?),
        Some(type_proto::Value::OptionalType(o)) => TypeKind::Optional(sub(o.elem_type)?),
        Some(type_proto::Value::MapType(m)) => TypeKind::Map { key: dtype_from_code(m.key_type)?, value: sub(m.value_type)? },
        Some(type_proto::Value::OpaqueType(o)) => TypeKind::Opaque { domain: o.domain, name: o.name },
    };
    Ok(ValueType { kind, denotation: tp.denotation })
}

/// Turns `Constant` nodes that hold one tensor into initializers of their region.
pub fn lift_constants(graph: &mut Graph) -> usize {
    let mut lifted = 0;
    for id in graph.all_nodes() {
        let node = graph.node(id);
        if !node.is("Constant") || node.outputs.len() != 1 {
            continue;
        }
        let (Some(out), Some(tensor)) = (node.output(0), constant_node_tensor(node)) else { continue };
        let region = node.region;
        graph.remove_node(id);
        let v = graph.value_mut(out);
        v.def = ValueDef::Initializer;
        v.initializer = Some(tensor.with_name(None));
        if v.ty.is_none() {
            v.ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
        }
        graph.region_mut(region).initializers.push(out);
        lifted += 1;
    }
    lifted
}
