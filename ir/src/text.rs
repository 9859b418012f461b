//! The stable text form of a model, for snapshots, `--dump-after` and debugging.
//!
//! One line per node, values written as `%name` (quoted when the name is not a plain
//! identifier), subgraphs nested in braces. The form depends only on the graph, never on
//! hash-map order or addresses, so the same graph always prints the same text.

use crate::graph::{AttrValue, Graph, NodeId, RegionId, SparseTensor, ValueDef, ValueId};
use crate::model::Model;
use crate::tensor::Tensor;
use std::fmt::Write;

/// What to include beyond the structure.
#[derive(Clone, Debug, Default)]
pub struct TextOptions {
    /// Print a digest of every tensor's data, so snapshots catch changed weights.
    pub tensor_digests: bool,
}

pub fn model_to_text(model: &Model) -> String {
    model_to_text_with(model, &TextOptions::default())
}

pub fn model_to_text_with(model: &Model, options: &TextOptions) -> String {
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
    let printer = Printer { graph: &model.graph, options };
    printer.region(&mut out, Graph::MAIN, 0, "graph");
    out
}

/// The text of one graph (the main region and its subgraphs).
pub fn graph_to_text(graph: &Graph) -> String {
    let mut out = String::new();
    Printer { graph, options: &TextOptions::default() }.region(&mut out, Graph::MAIN, 0, "graph");
    out
}

struct Printer<'a> {
    graph: &'a Graph,
    options: &'a TextOptions,
}

fn is_plain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_./:-".contains(c))
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

impl Printer<'_> {
    fn value_ref(&self, v: ValueId) -> String {
        match self.graph.try_value(v) {
            Some(value) if is_plain(&value.name) => format!("%{}", value.name),
            Some(value) if !value.name.is_empty() => format!("%{}", quote(&value.name)),
            _ => format!("%{v}"),
        }
    }

    fn typed(&self, v: ValueId) -> String {
        let r = self.value_ref(v);
        match self.graph.try_value(v).and_then(|v| v.ty.as_ref()) {
            Some(t) => format!("{r}: {t}"),
            None => r,
        }
    }

    fn region(&self, out: &mut String, r: RegionId, depth: usize, keyword: &str) {
        let pad = "  ".repeat(depth);
        let region = self.graph.region(r);
        let name = region.name.as_deref().unwrap_or("");
        let _ = writeln!(out, "{keyword} {} {{", if is_plain(name) { name.to_string() } else { quote(name) });
        for &v in &region.inputs {
            let init = if self.graph.value(v).initializer.is_some() { " (with default initializer)" } else { "" };
            let _ = writeln!(out, "{pad}  input {}{init}", self.typed(v));
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
            "" => node.op_type.clone(),
            d => format!("{d}::{}", node.op_type),
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
                        Some(r) => format!("@{r}"),
                        None => "undefined".into(),
                    },
                    other => self.attr_value(other),
                };
                Some(format!("{}={text}", a.name))
            })
            .collect();
        if !scalar_attrs.is_empty() {
            let _ = write!(out, " {{{}}}", scalar_attrs.join(", "));
        }
        if let Some(name) = node.name.as_deref().filter(|n| !n.is_empty()) {
            let _ = write!(out, "  # {name}");
        }
        out.push('\n');
        for (attr, regions) in subgraphs {
            for r in regions {
                let _ = write!(out, "{pad}  {attr}: ");
                self.region(out, r, depth + 1, "graph");
            }
        }
    }

    fn attr_value(&self, v: &AttrValue) -> String {
        fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
            format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
        }
        let string = |s: &bytes::Bytes| quote(&String::from_utf8_lossy(s));
        match v {
            AttrValue::Float(f) => format!("{f:?}"),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::String(s) => string(s),
            AttrValue::Tensor(t) => self.tensor(t),
            AttrValue::SparseTensor(s) => self.sparse(s),
            AttrValue::Type(t) => format!("type {t}"),
            AttrValue::Floats(v) => list(v, |f| format!("{f:?}")),
            AttrValue::Ints(v) => list(v, i64::to_string),
            AttrValue::Strings(v) => list(v, string),
            AttrValue::Tensors(v) => list(v, |t| self.tensor(t)),
            AttrValue::SparseTensors(v) => list(v, |s| self.sparse(s)),
            AttrValue::Types(v) => list(v, |t| format!("type {t}")),
            AttrValue::Graph(_) | AttrValue::Graphs(_) | AttrValue::Undefined => String::new(),
        }
    }

    fn tensor(&self, t: &Tensor) -> String {
        let dims: Vec<String> = t.dims().iter().map(u64::to_string).collect();
        let mut s = format!("tensor<{}[{}]>", t.dtype(), dims.join(","));
        if let Some(ext) = t.external() {
            let _ = write!(s, " external({}@{}+{})", quote(&ext.location), ext.offset, ext.length);
        } else if t.len() <= 8 {
            if let Ok(v) = t.to_i64() {
                let _ = write!(s, "{v:?}");
            } else if let Ok(v) = t.to_f32() {
                let _ = write!(s, "{v:?}");
            } else if let Ok(v) = t.strings() {
                let _ = write!(s, "[{}]", v.iter().map(|b| quote(&String::from_utf8_lossy(b))).collect::<Vec<_>>().join(", "));
            }
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
