//! The printer: one line per node, `%values`, subgraphs nested in braces.

use super::scalar::{format_elements, format_f32, is_plain, name, quote, quote_bytes};
use crate::dtype::DataType;
use crate::graph::{AttrValue, Graph, NodeId, RegionId, SparseTensor, ValueDef, ValueId};
use crate::model::Model;
use crate::tensor::Tensor;
use crate::types::{Dim, Shape, TypeKind, ValueType};
use std::fmt::Write;

/// What to include beyond the structure.
#[derive(Clone, Debug, Default)]
pub struct TextOptions {
    /// Print a digest of every tensor's data, so snapshots catch changed weights.
    pub tensor_digests: bool,
}

/// Tensors with at most this many elements are written with their values; larger ones as
/// dtype and shape only (read back as zeros).
pub const INLINE_ELEMENTS: u64 = 8;

pub fn model_to_text(model: &Model) -> String {
    model_to_text_with(model, &TextOptions::default())
}

pub fn model_to_text_with(model: &Model, options: &TextOptions) -> String {
    print_model(model, options, INLINE_ELEMENTS)
}

/// The text form with every tensor's values written out, so parsing it gives back the same
/// weights (for converting small models to text and back).
pub fn model_to_text_with_data(model: &Model) -> String {
    print_model(model, &TextOptions::default(), u64::MAX)
}

fn print_model(model: &Model, options: &TextOptions, inline_limit: u64) -> String {
    let mut out = String::new();
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| {
            let d = o.domain.as_deref().unwrap_or("");
            format!("{}={}", if d.is_empty() { "ai.onnx" } else { d }, o.version.unwrap_or(0))
        })
        .collect();
    let _ = writeln!(out, "model ir_version={} opset=[{}]", model.ir_version.unwrap_or(0), opsets.join(", "));
    for f in &model.functions {
        let _ = writeln!(out, "function {}::{} ({} nodes)", f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or(""), f.node.len());
    }
    let printer = Printer { graph: &model.graph, options, inline_limit };
    printer.region(&mut out, Graph::MAIN, 0, "graph");
    out
}

/// The text of one graph (the main region and its subgraphs).
pub fn graph_to_text(graph: &Graph) -> String {
    let mut out = String::new();
    Printer { graph, options: &TextOptions::default(), inline_limit: INLINE_ELEMENTS }.region(&mut out, Graph::MAIN, 0, "graph");
    out
}

struct Printer<'a> {
    graph: &'a Graph,
    options: &'a TextOptions,
    inline_limit: u64,
}

/// A value type as written: like its `Display`, but with symbolic dimensions quoted when
/// they could be read as something else.
pub(crate) fn type_text(t: &ValueType) -> String {
    fn elem(e: &Option<DataType>) -> &'static str {
        e.map(|t| t.short_name()).unwrap_or("?")
    }
    fn inner(t: &Option<Box<ValueType>>) -> String {
        t.as_deref().map(type_text).unwrap_or_else(|| "?".into())
    }
    fn shape(s: &Option<Shape>) -> String {
        let Some(s) = s else { return "[..]".into() };
        let dims: Vec<String> = s
            .dims
            .iter()
            .map(|d| match d {
                Dim::Known(n) => n.to_string(),
                Dim::Unknown => "?".into(),
                // A symbol that looks like a number or `..` is quoted.
                Dim::Sym(s) if is_plain(s) && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') => s.clone(),
                Dim::Sym(s) => quote(s),
            })
            .collect();
        format!("[{}]", dims.join(","))
    }
    match &t.kind {
        TypeKind::Tensor { elem: e, shape: s } => format!("{}{}", elem(e), shape(s)),
        TypeKind::SparseTensor { elem: e, shape: s } => format!("sparse {}{}", elem(e), shape(s)),
        TypeKind::Sequence(t) => format!("seq<{}>", inner(t)),
        TypeKind::Map { key, value } => format!("map<{},{}>", elem(key), inner(value)),
        TypeKind::Optional(t) => format!("opt<{}>", inner(t)),
        TypeKind::Opaque { domain, name } => format!("opaque<{}, {}>", quote(domain.as_deref().unwrap_or("")), quote(name.as_deref().unwrap_or(""))),
        TypeKind::Unset => "?".into(),
    }
}

/// A node name after `#`: as is, unless reading it to the end of the line would change it.
fn node_name(n: &str) -> String {
    let raw_ok = !n.starts_with(['"', ' ']) && !n.ends_with(' ') && !n.chars().any(char::is_control);
    if raw_ok { n.to_string() } else { quote(n) }
}

impl Printer<'_> {
    fn value_ref(&self, v: ValueId) -> String {
        match self.graph.try_value(v) {
            Some(value) if !value.name.is_empty() => format!("%{}", name(&value.name)),
            _ => format!("%{v}"),
        }
    }

    fn typed(&self, v: ValueId) -> String {
        let r = self.value_ref(v);
        match self.graph.try_value(v).and_then(|v| v.ty.as_ref()) {
            Some(t) => format!("{r}: {}", type_text(t)),
            None => r,
        }
    }

    fn region(&self, out: &mut String, r: RegionId, depth: usize, keyword: &str) {
        let pad = "  ".repeat(depth);
        let region = self.graph.region(r);
        let _ = writeln!(out, "{keyword} {} {{", name(region.name.as_deref().unwrap_or("")));
        for &v in &region.inputs {
            let default = match &self.graph.value(v).initializer {
                Some(t) => format!(" = {}", self.tensor(t)),
                None => String::new(),
            };
            let _ = writeln!(out, "{pad}  input {}{default}", self.typed(v));
        }
        for &v in &region.initializers {
            let value = self.graph.value(v);
            if value.def == ValueDef::Input {
                continue;
            }
            let t = value.initializer.as_ref().expect("initializers hold tensors");
            let _ = writeln!(out, "{pad}  init {} = {}", self.value_ref(v), self.tensor(t));
        }
        for &v in &region.sparse_initializers {
            let s = self.graph.value(v).sparse_initializer.as_ref().expect("sparse initializers hold data");
            let _ = writeln!(out, "{pad}  init {} = {}", self.value_ref(v), self.sparse(s));
        }
        for &n in &region.nodes {
            self.node(out, n, depth + 1);
        }
        let outputs: Vec<String> = region.outputs.iter().map(|&v| self.typed(v)).collect();
        let _ = writeln!(out, "{pad}  output {}", outputs.join(", "));
        let _ = writeln!(out, "{pad}}}");
    }

    fn node(&self, out: &mut String, n: NodeId, depth: usize) {
        let pad = "  ".repeat(depth);
        let node = self.graph.node(n);
        let outputs: Vec<String> = node.outputs.iter().map(|o| o.map(|v| self.typed(v)).unwrap_or_else(|| "_".into())).collect();
        let inputs: Vec<String> = node.inputs.iter().map(|i| i.map(|v| self.value_ref(v)).unwrap_or_else(|| "_".into())).collect();
        let op = match node.domain() {
            "" => name(&node.op_type),
            d => format!("{}::{}", name(d), name(&node.op_type)),
        };
        let _ = write!(out, "{pad}{} = {op}({})", outputs.join(", "), inputs.join(", "));
        let mut subgraphs = Vec::new();
        let scalar_attrs: Vec<String> = node
            .attributes
            .iter()
            .filter_map(|a| {
                let text = match &a.value {
                    AttrValue::Graph(r) => {
                        subgraphs.push((a.name.clone(), vec![*r]));
                        return None;
                    }
                    AttrValue::Graphs(rs) => {
                        subgraphs.push((a.name.clone(), rs.clone()));
                        return None;
                    }
                    AttrValue::Undefined => match &a.ref_attr_name {
                        Some(r) => format!("@{}", name(r)),
                        None => "undefined".into(),
                    },
                    other => self.attr_value(other),
                };
                Some(format!("{}={text}", name(&a.name)))
            })
            .collect();
        if !scalar_attrs.is_empty() {
            let _ = write!(out, " {{{}}}", scalar_attrs.join(", "));
        }
        if let Some(n) = node.name.as_deref().filter(|n| !n.is_empty()) {
            let _ = write!(out, "  # {}", node_name(n));
        }
        out.push('\n');
        for (attr, regions) in subgraphs {
            for r in regions {
                let _ = write!(out, "{pad}  {}: ", name(&attr));
                self.region(out, r, depth + 1, "graph");
            }
        }
    }

    fn attr_value(&self, v: &AttrValue) -> String {
        /// A list; an empty one says its kind, since `[]` alone would not.
        fn list<T>(kind: &str, items: &[T], f: impl Fn(&T) -> String) -> String {
            if items.is_empty() {
                return format!("{kind}[]");
            }
            format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
        }
        let string = |s: &bytes::Bytes| quote_bytes(s);
        match v {
            AttrValue::Float(f) => format_f32(*f),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::String(s) => string(s),
            AttrValue::Tensor(t) => self.tensor(t),
            AttrValue::SparseTensor(s) => self.sparse(s),
            AttrValue::Type(t) => format!("type {}", type_text(t)),
            AttrValue::Floats(v) => list("floats", v, |f| format_f32(*f)),
            AttrValue::Ints(v) => list("ints", v, i64::to_string),
            AttrValue::Strings(v) => list("strings", v, string),
            AttrValue::Tensors(v) => list("tensors", v, |t| self.tensor(t)),
            AttrValue::SparseTensors(v) => list("sparse_tensors", v, |s| self.sparse(s)),
            AttrValue::Types(v) => list("types", v, |t| format!("type {}", type_text(t))),
            AttrValue::Graph(_) | AttrValue::Graphs(_) | AttrValue::Undefined => String::new(),
        }
    }

    fn tensor(&self, t: &Tensor) -> String {
        let dims: Vec<String> = t.dims().iter().map(u64::to_string).collect();
        let mut s = format!("tensor<{}[{}]>", t.dtype(), dims.join(","));
        if let Some(ext) = t.external() {
            let _ = write!(s, " external({}@{}+{})", quote(&ext.location), ext.offset, ext.length);
        } else if t.len() <= self.inline_limit
            && let Some(values) = format_elements(t)
        {
            let _ = write!(s, "[{}]", values.join(", "));
        }
        if self.options.tensor_digests
            && let Ok(raw) = t.raw_data()
        {
            let _ = write!(s, " #{:016x}", fnv1a(&raw));
        }
        s
    }

    fn sparse(&self, s: &SparseTensor) -> String {
        let part = |t: &Option<Tensor>| t.as_ref().map(|t| self.tensor(t)).unwrap_or_else(|| "none".into());
        format!("sparse{:?}(values={}, indices={})", s.dims, part(&s.values), part(&s.indices))
    }
}

/// FNV-1a, 64 bit: a stable digest for snapshots (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
