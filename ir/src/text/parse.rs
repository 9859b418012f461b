//! The parser: reads what the printer writes (and hand-written files in the same form).

use super::TextError;
use super::lex::Cursor;
use super::scalar::{Element, Fill, Scalar, element_bits, fill_bits, pack};
use crate::dtype::DataType;
use crate::graph::{AttrValue, Attribute, Graph, Node, NodeId, Region, RegionId, SparseTensor, Value, ValueDef, ValueId};
use crate::model::{Model, OpsetImport};
use crate::proto::TensorProto;
use crate::tensor::Tensor;
use crate::types::{Dim, Shape, TypeKind, ValueType};
use std::collections::HashMap;

/// The most elements one tensor of the text form may have (a fill of more is refused rather
/// than allocated).
pub const MAX_ELEMENTS: u64 = 1 << 27;

/// Reads a model from its text form.
pub fn parse(text: &str) -> Result<Model, TextError> {
    let mut p = Parser { cur: Cursor::new(text), graph: Graph::new(""), scopes: Vec::new() };
    p.model()
}

struct Parser<'s> {
    cur: Cursor<'s>,
    graph: Graph,
    /// Names visible at this point, innermost region last.
    scopes: Vec<HashMap<String, ValueId>>,
}

/// A value named in an output list, before its definition exists.
struct Def {
    name: String,
    ty: Option<ValueType>,
    pos: usize,
}

impl Parser<'_> {
    fn model(&mut self) -> Result<Model, TextError> {
        self.cur.keyword("model")?;
        self.cur.keyword("ir_version")?;
        self.cur.expect(b'=')?;
        let ir_version = self.int("an IR version")?;
        self.cur.keyword("opset")?;
        self.cur.expect(b'=')?;
        self.cur.expect(b'[')?;
        let mut opset_import = Vec::new();
        while !self.cur.eat(b']') {
            if !opset_import.is_empty() {
                self.cur.expect(b',')?;
            }
            let domain = self.cur.name("an opset domain")?;
            self.cur.expect(b'=')?;
            let version = self.int("an opset version")?;
            let domain = if domain == "ai.onnx" { String::new() } else { domain };
            opset_import.push(OpsetImport { domain: Some(domain), version: Some(version) });
        }
        if self.cur.peek_word() == Some("function") {
            let pos = self.cur.pos;
            return Err(self.cur.invalid_at(pos, "model-local functions are printed as a summary only and cannot be read back"));
        }
        self.cur.keyword("graph")?;
        let name = self.cur.name("a graph name")?;
        self.graph.main_mut().name = (!name.is_empty()).then_some(name);
        self.region_body(Graph::MAIN)?;
        if !self.cur.at_end() {
            return Err(self.cur.expected("the end of the model"));
        }
        let mut model = Model::new(std::mem::take(&mut self.graph), 0);
        model.ir_version = Some(ir_version);
        model.opset_import = opset_import;
        Ok(model)
    }

    fn int(&mut self, what: &str) -> Result<i64, TextError> {
        self.cur.skip_ws();
        let pos = self.cur.pos;
        let w = self.cur.expect_word(what)?;
        w.parse().map_err(|_| self.cur.invalid_at(pos, format!("expected {what}, found '{w}'")))
    }

    /// `{ statements... output ... }` of region `r`.
    fn region_body(&mut self, r: RegionId) -> Result<(), TextError> {
        self.cur.expect(b'{')?;
        self.scopes.push(HashMap::new());
        let mut last_node = None;
        loop {
            // `name: graph` is a subgraph attribute, whatever the name (even `input` or `_`).
            let word_then_colon = self.cur.peek_word().is_some_and(|w| self.cur.src[self.cur.pos + w.len()..].starts_with(':'));
            match self.cur.peek() {
                Some(b'%' | b'=') => last_node = Some(self.node(r)?),
                Some(b'"') => self.subgraph_attr(last_node)?,
                _ if word_then_colon => self.subgraph_attr(last_node)?,
                _ => match self.cur.peek_word() {
                    Some("_") => last_node = Some(self.node(r)?),
                    Some("input") => {
                        self.cur.word();
                        self.input(r)?;
                    }
                    Some("init") => {
                        self.cur.word();
                        self.init(r)?;
                    }
                    Some("output") => {
                        self.cur.word();
                        self.outputs(r)?;
                        self.cur.expect(b'}')?;
                        self.record_value_info(r);
                        self.scopes.pop();
                        return Ok(());
                    }
                    Some(_) => self.subgraph_attr(last_node)?,
                    None => return Err(self.cur.expected("'input', 'init', a node, a subgraph attribute or 'output'")),
                },
            }
        }
    }

    /// Node outputs declared with a type (other than the region's outputs, whose entries carry
    /// theirs) get a `value_info` entry, so the type is kept when the model is saved as ONNX.
    fn record_value_info(&mut self, r: RegionId) {
        let region = self.graph.region(r);
        let typed: Vec<ValueId> =
            region.nodes.iter().flat_map(|&n| self.graph.node(n).outputs.iter().flatten().copied()).filter(|&v| self.graph.value(v).ty.is_some() && !region.outputs.contains(&v)).collect();
        self.graph.region_mut(r).value_info = typed;
    }

    fn define(&mut self, def: &Def, value: Value) -> Result<ValueId, TextError> {
        let scope = self.scopes.last_mut().expect("a region is open");
        if scope.contains_key(&def.name) {
            return Err(self.cur.invalid_at(def.pos, format!("%{} is defined twice in this graph", def.name)));
        }
        let id = self.graph.add_value(value);
        self.scopes.last_mut().expect("a region is open").insert(def.name.clone(), id);
        Ok(id)
    }

    fn lookup(&self, name: &str, pos: usize) -> Result<ValueId, TextError> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied()).ok_or_else(|| self.cur.invalid_at(pos, format!("%{name} is not defined before this use")))
    }

    /// `%name`, its position.
    fn value_name(&mut self) -> Result<(String, usize), TextError> {
        self.cur.skip_ws();
        let pos = self.cur.pos;
        if !self.cur.eat(b'%') {
            return Err(self.cur.expected("a value (%name)"));
        }
        if matches!(self.cur.src.as_bytes().get(self.cur.pos), Some(b' ' | b'\t' | b'\n')) {
            return Err(self.cur.expected("a value name right after '%'"));
        }
        Ok((self.cur.name("a value name")?, pos))
    }

    /// `%name` with an optional `: type`.
    fn typed_def(&mut self) -> Result<Def, TextError> {
        let (name, pos) = self.value_name()?;
        let ty = if self.cur.eat(b':') { Some(self.value_type()?) } else { None };
        Ok(Def { name, ty, pos })
    }

    fn new_value(&self, def: &Def, kind: ValueDef, region: RegionId) -> Value {
        Value { name: def.name.clone(), ty: def.ty.clone(), doc_string: None, metadata_props: Vec::new(), def: kind, region, initializer: None, sparse_initializer: None }
    }

    /// `input %x: type` with an optional `= tensor` default.
    fn input(&mut self, r: RegionId) -> Result<(), TextError> {
        let def = self.typed_def()?;
        let mut value = self.new_value(&def, ValueDef::Input, r);
        if self.cur.eat(b'=') {
            self.cur.keyword("tensor")?;
            value.initializer = Some(self.tensor_after_keyword()?);
        }
        let has_default = value.initializer.is_some();
        let id = self.define(&def, value)?;
        let region = self.graph.region_mut(r);
        region.inputs.push(id);
        if has_default {
            region.initializers.push(id);
        }
        Ok(())
    }

    /// `init %w = tensor<...>...` or `init %w = sparse[...](...)`.
    fn init(&mut self, r: RegionId) -> Result<(), TextError> {
        let (name, pos) = self.value_name()?;
        let def = Def { name, ty: None, pos };
        self.cur.expect(b'=')?;
        match self.cur.word() {
            Some("tensor") => {
                let mut value = self.new_value(&def, ValueDef::Initializer, r);
                let tensor = self.tensor_after_keyword()?;
                // Typed from its tensor, as the ONNX loader types initializers.
                value.ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
                value.initializer = Some(tensor);
                let id = self.define(&def, value)?;
                self.graph.region_mut(r).initializers.push(id);
            }
            Some("sparse") => {
                let mut value = self.new_value(&def, ValueDef::SparseInitializer, r);
                let sparse = self.sparse_after_keyword()?;
                value.ty = sparse.values.as_ref().map(|v| ValueType::tensor(v.dtype(), Some(Shape::known(&sparse.dims))));
                value.sparse_initializer = Some(sparse);
                let id = self.define(&def, value)?;
                self.graph.region_mut(r).sparse_initializers.push(id);
            }
            _ => return Err(self.cur.expected("'tensor<...>' or 'sparse[...]'")),
        }
        Ok(())
    }

    fn outputs(&mut self, r: RegionId) -> Result<(), TextError> {
        if self.cur.peek() == Some(b'}') {
            return Ok(());
        }
        loop {
            let def = self.typed_def()?;
            let v = self.lookup(&def.name, def.pos)?;
            if let Some(ty) = def.ty {
                let value = self.graph.value_mut(v);
                match &value.ty {
                    Some(old) if *old != ty => return Err(self.cur.invalid_at(def.pos, format!("%{}: the output's type differs from the value's type where it is defined", def.name))),
                    _ => value.ty = Some(ty),
                }
            }
            self.graph.region_mut(r).outputs.push(v);
            if !self.cur.eat(b',') {
                return Ok(());
            }
        }
    }

    /// `%a: t, _ = domain::Op(%x, _) {attr=...}  # name`
    fn node(&mut self, r: RegionId) -> Result<NodeId, TextError> {
        let mut outs: Vec<Option<Def>> = Vec::new();
        if self.cur.peek() != Some(b'=') {
            loop {
                if self.cur.peek_word() == Some("_") {
                    self.cur.word();
                    outs.push(None);
                } else {
                    outs.push(Some(self.typed_def()?));
                }
                if !self.cur.eat(b',') {
                    break;
                }
            }
        }
        self.cur.expect(b'=')?;
        let (domain, op_type) = self.op_name()?;
        self.cur.expect(b'(')?;
        let mut inputs = Vec::new();
        while !self.cur.eat(b')') {
            if !inputs.is_empty() {
                self.cur.expect(b',')?;
            }
            if self.cur.peek_word() == Some("_") {
                self.cur.word();
                inputs.push(None);
            } else {
                let (name, pos) = self.value_name()?;
                inputs.push(Some(self.lookup(&name, pos)?));
            }
        }
        let mut attributes = Vec::new();
        if self.cur.eat(b'{') {
            while !self.cur.eat(b'}') {
                if !attributes.is_empty() {
                    self.cur.expect(b',')?;
                }
                attributes.push(self.attribute()?);
            }
        }
        self.cur.skip_inline_ws();
        let name = if self.cur.eat_str("#") {
            self.cur.skip_inline_ws();
            if self.cur.src[self.cur.pos..].starts_with('"') { Some(self.cur.name("a node name")?) } else { Some(self.cur.rest_of_line().to_string()) }
        } else {
            None
        };
        let node = Node { op_type, domain, name, overload: None, inputs, outputs: Vec::new(), attributes, doc_string: None, metadata_props: Vec::new(), device_configurations: Vec::new(), region: r };
        let id = self.graph.add_node_detached(node);
        self.graph.region_mut(r).nodes.push(id);
        let mut outputs = Vec::with_capacity(outs.len());
        for (k, def) in outs.iter().enumerate() {
            outputs.push(match def {
                None => None,
                Some(def) => {
                    let value = self.new_value(def, ValueDef::Node { node: id, output: k as u32 }, r);
                    Some(self.define(def, value)?)
                }
            });
        }
        self.graph.node_mut(id).outputs = outputs;
        Ok(id)
    }

    /// `Op`, `domain::Op`, or either part quoted.
    fn op_name(&mut self) -> Result<(Option<String>, String), TextError> {
        self.cur.skip_ws();
        if self.cur.peek() == Some(b'"') {
            let first = self.cur.name("an op type")?;
            if self.cur.eat_str("::") {
                return Ok((Some(first), self.cur.name("an op type")?));
            }
            return Ok((None, first));
        }
        let w = self.cur.expect_word("an op type")?;
        match w.rsplit_once("::") {
            Some((d, op)) if !op.is_empty() => Ok((Some(d.to_string()), op.to_string())),
            Some((d, _)) => Ok((Some(d.to_string()), self.cur.name("an op type")?)),
            None => Ok((None, w.to_string())),
        }
    }

    /// `attr: graph name { ... }` after a node.
    fn subgraph_attr(&mut self, node: Option<NodeId>) -> Result<(), TextError> {
        self.cur.skip_ws();
        let pos = self.cur.pos;
        let attr = self.cur.name("a statement")?;
        if !self.cur.eat(b':') || self.cur.peek_word() != Some("graph") {
            return Err(self.cur.invalid_at(pos, format!("expected 'input', 'init', a node, 'output' or a subgraph attribute ('name: graph ...'), found '{attr}'")));
        }
        let Some(node) = node else {
            return Err(self.cur.invalid_at(pos, format!("subgraph attribute '{attr}' does not follow a node")));
        };
        self.cur.word();
        let name = self.cur.name("a graph name")?;
        let r = self.graph.add_region(Region { name: (!name.is_empty()).then_some(name), owner: Some(node), ..Default::default() });
        self.region_body(r)?;
        let attributes = &mut self.graph.node_mut(node).attributes;
        match attributes.last_mut() {
            Some(a) if a.name == attr && matches!(a.value, AttrValue::Graph(_) | AttrValue::Graphs(_)) => {
                let value = match &a.value {
                    AttrValue::Graph(first) => AttrValue::Graphs(vec![*first, r]),
                    AttrValue::Graphs(rs) => AttrValue::Graphs(rs.iter().copied().chain([r]).collect()),
                    _ => unreachable!("matched above"),
                };
                *a = Attribute::new(attr, value);
            }
            _ => attributes.push(Attribute::new(attr, AttrValue::Graph(r))),
        }
        Ok(())
    }

    fn attribute(&mut self) -> Result<Attribute, TextError> {
        let name = self.cur.name("an attribute name")?;
        self.cur.expect(b'=')?;
        if self.cur.eat(b'@') {
            let mut a = Attribute::new(name, AttrValue::Undefined);
            a.ref_attr_name = Some(self.cur.name("a referenced attribute name")?);
            return Ok(a);
        }
        let value = self.attr_value()?;
        Ok(Attribute::new(name, value))
    }

    fn attr_value(&mut self) -> Result<AttrValue, TextError> {
        const WHAT: &str = "an attribute value";
        match self.cur.peek() {
            Some(b'"') => return Ok(AttrValue::String(self.cur.string()?.into())),
            Some(b'[') => return self.attr_list(),
            _ => {}
        }
        self.cur.skip_ws();
        let pos = self.cur.pos;
        match self.cur.word() {
            Some("undefined") => Ok(AttrValue::Undefined),
            Some("tensor") => Ok(AttrValue::Tensor(self.tensor_after_keyword()?)),
            Some("sparse") => Ok(AttrValue::SparseTensor(self.sparse_after_keyword()?)),
            Some("type") => Ok(AttrValue::Type(self.value_type()?)),
            Some(kind @ ("floats" | "ints" | "strings" | "tensors" | "sparse_tensors" | "types")) => {
                if !(self.cur.eat_str("[") && self.cur.eat(b']')) {
                    return Err(self.cur.expected(&format!("'[]' after '{kind}'")));
                }
                Ok(match kind {
                    "floats" => AttrValue::Floats(Vec::new()),
                    "ints" => AttrValue::Ints(Vec::new()),
                    "strings" => AttrValue::Strings(Vec::new()),
                    "tensors" => AttrValue::Tensors(Vec::new()),
                    "sparse_tensors" => AttrValue::SparseTensors(Vec::new()),
                    _ => AttrValue::Types(Vec::new()),
                })
            }
            Some(w) => match self.number(w, pos)? {
                Number::Int(i) => Ok(AttrValue::Int(i)),
                Number::Float(f) => Ok(AttrValue::Float(f)),
            },
            None => Err(self.cur.expected(WHAT)),
        }
    }

    /// An integer, or a float when written with `.`, an exponent, `inf` or `nan`.
    fn number(&mut self, w: &str, pos: usize) -> Result<Number, TextError> {
        let is_float = w.contains(['.', 'e', 'E']) || matches!(w, "inf" | "-inf" | "nan");
        if !is_float {
            return w.parse().map(Number::Int).map_err(|_| self.cur.invalid_at(pos, format!("expected an attribute value, found '{w}'")));
        }
        let e = self.element_after_word(w)?;
        let bits = element_bits(Scalar::F32, &e).map_err(|reason| self.cur.invalid_at(pos, reason))?;
        Ok(Number::Float(f32::from_bits(bits as u32)))
    }

    /// A number word, with the `(0xBITS)` that may follow `nan`.
    fn element_after_word(&mut self, w: &str) -> Result<Element, TextError> {
        let mut nan_bits = None;
        if w == "nan" && self.cur.eat_str("(") {
            let pos = self.cur.pos;
            let hex = self.cur.expect_word("a NaN bit pattern (0x...)")?;
            let bits = hex.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok());
            nan_bits = Some(bits.ok_or_else(|| self.cur.invalid_at(pos, format!("expected a NaN bit pattern (0x...), found '{hex}'")))?);
            self.cur.expect(b')')?;
        }
        Ok(Element::Number { text: w.to_string(), nan_bits })
    }

    fn attr_list(&mut self) -> Result<AttrValue, TextError> {
        self.cur.expect(b'[')?;
        if self.cur.peek() == Some(b']') {
            return Err(self.cur.expected("a list item (an empty list is written with its kind: ints[], floats[], ...)"));
        }
        let mut items = Vec::new();
        loop {
            self.cur.skip_ws();
            let pos = self.cur.pos;
            let item = self.attr_value()?;
            if let Some(first) = items.first()
                && std::mem::discriminant(first) != std::mem::discriminant(&item)
            {
                return Err(self.cur.invalid_at(pos, "list items of different kinds"));
            }
            items.push(item);
            if !self.cur.eat(b',') {
                break;
            }
        }
        self.cur.expect(b']')?;
        let items = items.into_iter();
        macro_rules! all {
            ($variant:ident, $list:ident) => {
                AttrValue::$list(items.map(|i| if let AttrValue::$variant(v) = i { v } else { unreachable!("one kind") }).collect())
            };
        }
        Ok(match items.as_slice()[0] {
            AttrValue::Float(_) => all!(Float, Floats),
            AttrValue::Int(_) => all!(Int, Ints),
            AttrValue::String(_) => all!(String, Strings),
            AttrValue::Tensor(_) => all!(Tensor, Tensors),
            AttrValue::SparseTensor(_) => all!(SparseTensor, SparseTensors),
            AttrValue::Type(_) => all!(Type, Types),
            _ => return Err(self.cur.expected("numbers, strings, tensors or types in a list")),
        })
    }

    /// `<dtype[dims]>` and then values `[...]`, `fill=...`, or nothing (zeros).
    fn tensor_after_keyword(&mut self) -> Result<Tensor, TextError> {
        self.cur.expect(b'<')?;
        self.cur.skip_ws();
        let pos = self.cur.pos;
        let dtype_word = self.cur.expect_word("an element type (f32, i64, ...)")?;
        let dtype = DataType::parse(dtype_word).ok_or_else(|| self.cur.invalid_at(pos, format!("unknown element type '{dtype_word}'")))?;
        self.cur.expect(b'[')?;
        let mut dims = Vec::new();
        while !self.cur.eat(b']') {
            if !dims.is_empty() {
                self.cur.expect(b',')?;
            }
            self.cur.skip_ws();
            let pos = self.cur.pos;
            let d = self.int("a dimension")?;
            dims.push(u64::try_from(d).map_err(|_| self.cur.invalid_at(pos, format!("negative dimension {d}")))?);
        }
        self.cur.expect(b'>')?;
        let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
        let count = count.ok_or_else(|| self.cur.invalid_at(pos, format!("tensor of dims {dims:?} has more than {MAX_ELEMENTS} elements")))?;
        let scalar = Scalar::of(dtype);
        self.cur.skip_ws();
        let data_pos = self.cur.pos;
        let data = match self.cur.peek() {
            Some(b'[') => Data::Elements(self.elements()?),
            _ => match self.cur.peek_word() {
                Some("fill") => {
                    self.cur.word();
                    self.cur.expect(b'=')?;
                    Data::Fill(self.fill(dtype)?)
                }
                Some("external") => return Err(self.cur.invalid_at(data_pos, "external data cannot be read from the text form")),
                _ => Data::Fill(Fill::Zeros),
            },
        };
        self.cur.skip_inline_ws();
        if self.cur.src[self.cur.pos..].starts_with('#') {
            return Err(self.cur.invalid_at(self.cur.pos, "tensor digests are not read back (print without them)"));
        }
        let invalid = |reason: String| self.cur.invalid_at(data_pos, reason);
        if scalar == Scalar::Str {
            let strings = match data {
                Data::Fill(Fill::Zeros) => vec![bytes::Bytes::new(); count as usize],
                Data::Fill(_) => return Err(invalid("string tensors are filled only with zeros (empty strings)".into())),
                Data::Elements(elements) => {
                    if elements.len() as u64 != count {
                        return Err(invalid(format!("{} values for {count} elements", elements.len())));
                    }
                    elements.into_iter().map(|e| if let Element::Str(s) = e { Ok(s.into()) } else { Err(invalid("a number in a string tensor".into())) }).collect::<Result<_, _>>()?
                }
            };
            let proto = TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type: Some(dtype.code()), string_data: strings, ..Default::default() };
            return Tensor::from_proto(proto, None).map_err(|e| invalid(e.to_string()));
        }
        let bits = match data {
            Data::Fill(fill) => fill_bits(dtype, count, &fill).map_err(invalid)?,
            Data::Elements(elements) => {
                let want = count * Scalar::per_element(dtype);
                if elements.len() as u64 != want {
                    return Err(invalid(format!("{} values for {want} elements", elements.len())));
                }
                elements.iter().enumerate().map(|(i, e)| element_bits(scalar, e).map_err(|r| invalid(format!("value {i}: {r}")))).collect::<Result<Vec<_>, _>>()?
            }
        };
        Tensor::from_raw(dtype, &dims, pack(scalar, &bits).into()).map_err(|e| invalid(e.to_string()))
    }

    /// `[v, v, ...]`: numbers or strings.
    fn elements(&mut self) -> Result<Vec<Element>, TextError> {
        self.cur.expect(b'[')?;
        let mut out = Vec::new();
        while !self.cur.eat(b']') {
            if !out.is_empty() {
                self.cur.expect(b',')?;
            }
            if self.cur.peek() == Some(b'"') {
                out.push(Element::Str(self.cur.string()?));
            } else {
                let w = self.cur.expect_word("a value")?;
                out.push(self.element_after_word(w)?);
            }
        }
        Ok(out)
    }

    /// `zeros`, `iota`, `seeded(SEED)` or `seeded(SEED, LOW, HIGH)`.
    fn fill(&mut self, dtype: DataType) -> Result<Fill, TextError> {
        match self.cur.word() {
            Some("zeros") => Ok(Fill::Zeros),
            Some("iota") => Ok(Fill::Iota),
            Some("seeded") => {
                self.cur.expect(b'(')?;
                self.cur.skip_ws();
                let pos = self.cur.pos;
                let seed = self.cur.expect_word("a seed")?;
                let seed = seed.parse::<u64>().map_err(|_| self.cur.invalid_at(pos, format!("expected a seed (a non-negative integer), found '{seed}'")))?;
                let (low, high) = if self.cur.eat(b',') {
                    let low = self.float("the low end of the range")?;
                    self.cur.expect(b',')?;
                    (low, self.float("the high end of the range")?)
                } else {
                    Fill::default_range(dtype)
                };
                self.cur.expect(b')')?;
                Ok(Fill::Seeded { seed, low, high })
            }
            _ => Err(self.cur.expected("a fill: zeros, iota or seeded(SEED[, LOW, HIGH])")),
        }
    }

    fn float(&mut self, what: &str) -> Result<f64, TextError> {
        self.cur.skip_ws();
        let pos = self.cur.pos;
        let w = self.cur.expect_word(what)?;
        w.parse().map_err(|_| self.cur.invalid_at(pos, format!("expected {what}, found '{w}'")))
    }

    /// `sparse[dims](values=TENSOR|none, indices=TENSOR|none)`
    fn sparse_after_keyword(&mut self) -> Result<SparseTensor, TextError> {
        self.cur.expect(b'[')?;
        let mut dims = Vec::new();
        while !self.cur.eat(b']') {
            if !dims.is_empty() {
                self.cur.expect(b',')?;
            }
            dims.push(self.int("a dimension")?);
        }
        self.cur.expect(b'(')?;
        self.cur.keyword("values")?;
        self.cur.expect(b'=')?;
        let values = self.optional_tensor()?;
        self.cur.expect(b',')?;
        self.cur.keyword("indices")?;
        self.cur.expect(b'=')?;
        let indices = self.optional_tensor()?;
        self.cur.expect(b')')?;
        Ok(SparseTensor { values, indices, dims })
    }

    fn optional_tensor(&mut self) -> Result<Option<Tensor>, TextError> {
        match self.cur.word() {
            Some("none") => Ok(None),
            Some("tensor") => Ok(Some(self.tensor_after_keyword()?)),
            _ => Err(self.cur.expected("'tensor<...>' or 'none'")),
        }
    }

    fn elem_type(&mut self) -> Result<Option<DataType>, TextError> {
        if self.cur.eat(b'?') {
            return Ok(None);
        }
        self.cur.skip_ws();
        let pos = self.cur.pos;
        let w = self.cur.expect_word("an element type (f32, i64, ...) or '?'")?;
        DataType::parse(w).map(Some).ok_or_else(|| self.cur.invalid_at(pos, format!("unknown element type '{w}'")))
    }

    /// `f32[4,batch]`, `?[..]`, `sparse f32[..]`, `seq<T>`, `map<K,T>`, `opt<T>`, `opaque<"d", "n">`, `?`.
    fn value_type(&mut self) -> Result<ValueType, TextError> {
        let kind = match self.cur.peek_word() {
            Some("sparse") => {
                self.cur.word();
                let elem = self.elem_type()?;
                TypeKind::SparseTensor { elem, shape: self.shape()? }
            }
            Some(w @ ("seq" | "opt")) => {
                self.cur.word();
                self.cur.expect(b'<')?;
                let inner = self.inner_type()?;
                self.cur.expect(b'>')?;
                if w == "seq" { TypeKind::Sequence(inner) } else { TypeKind::Optional(inner) }
            }
            Some("map") => {
                self.cur.word();
                self.cur.expect(b'<')?;
                let key = self.elem_type()?;
                self.cur.expect(b',')?;
                let value = self.inner_type()?;
                self.cur.expect(b'>')?;
                TypeKind::Map { key, value }
            }
            Some("opaque") => {
                self.cur.word();
                self.cur.expect(b'<')?;
                let domain = self.cur.name("an opaque type's domain")?;
                self.cur.expect(b',')?;
                let name = self.cur.name("an opaque type's name")?;
                self.cur.expect(b'>')?;
                TypeKind::Opaque { domain: (!domain.is_empty()).then_some(domain), name: (!name.is_empty()).then_some(name) }
            }
            _ => {
                let elem = self.elem_type()?;
                if elem.is_none() && self.cur.peek() != Some(b'[') { TypeKind::Unset } else { TypeKind::Tensor { elem, shape: self.shape()? } }
            }
        };
        Ok(ValueType { kind, denotation: None })
    }

    fn inner_type(&mut self) -> Result<Option<Box<ValueType>>, TextError> {
        let t = self.value_type()?;
        Ok((t.kind != TypeKind::Unset).then(|| Box::new(t)))
    }

    /// `[..]` (unknown rank) or `[d, ...]` with numbers, symbols and `?`.
    fn shape(&mut self) -> Result<Option<Shape>, TextError> {
        self.cur.expect(b'[')?;
        if self.cur.peek_word() == Some("..") {
            self.cur.word();
            self.cur.expect(b']')?;
            return Ok(None);
        }
        let mut dims = Vec::new();
        while !self.cur.eat(b']') {
            if !dims.is_empty() {
                self.cur.expect(b',')?;
            }
            if self.cur.eat(b'?') {
                dims.push(Dim::Unknown);
            } else if self.cur.peek() == Some(b'"') {
                dims.push(Dim::Sym(self.cur.name("a dimension")?));
            } else {
                let w = self.cur.expect_word("a dimension (a number, a name or '?')")?;
                dims.push(match w.parse::<i64>() {
                    Ok(n) => Dim::Known(n),
                    Err(_) => Dim::Sym(w.to_string()),
                });
            }
        }
        Ok(Some(Shape::new(dims)))
    }
}

enum Number {
    Int(i64),
    Float(f32),
}

enum Data {
    Elements(Vec<Element>),
    Fill(Fill),
}
