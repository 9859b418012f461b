//! The one verifier: checks a graph's structure and types and collects every problem with
//! its location, instead of stopping at the first.

use crate::dtype::DataType;
use crate::graph::{Graph, NodeId, RegionId, ValueDef, ValueId};
use crate::model::Model;
use crate::types::{Dim, TypeKind};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// One problem found by the verifier.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Where: `graph 'main' / node 'Add_3' (Add)`, `value 'x'`, ...
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// All problems of a model; an error when there is at least one.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the graph has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Ops whose listed inputs must all have the same element type (ONNX type constraint `T`).
fn same_type_inputs(op: &str) -> Option<&'static [usize]> {
    Some(match op {
        "Add" | "Sub" | "Mul" | "Div" | "MatMul" | "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "PRelu" => &[0, 1],
        "Gemm" => &[0, 1, 2],
        "Where" => &[1, 2],
        "LayerNormalization" => &[0, 1, 2],
        "Concat" | "Sum" | "Max" | "Min" | "Mean" => &[0, 1, 2, 3, 4, 5, 6, 7],
        _ => return None,
    })
}

/// Checks everything; `Ok` when the graph is sound.
pub fn verify(model: &Model) -> Result<(), Problems> {
    verify_graph(&model.graph)
}

pub fn verify_graph(graph: &Graph) -> Result<(), Problems> {
    let mut v = Verifier { graph, problems: Vec::new() };
    v.run();
    if v.problems.is_empty() { Ok(()) } else { Err(Problems(v.problems)) }
}

struct Verifier<'a> {
    graph: &'a Graph,
    problems: Vec<Problem>,
}

impl Verifier<'_> {
    fn report(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { location: location.into(), message: message.into() });
    }

    fn region_label(&self, r: RegionId) -> String {
        let name = self.graph.region(r).name.as_deref().unwrap_or("");
        if r == Graph::MAIN { format!("graph '{name}'") } else { format!("subgraph '{name}' ({r})") }
    }

    fn node_label(&self, n: NodeId) -> String {
        let node = self.graph.node(n);
        format!("{} / {}", self.region_label(node.region), node.label(n))
    }

    fn value_label(&self, v: ValueId) -> String {
        match self.graph.try_value(v) {
            Some(value) => format!("value '{}' ({v})", value.name),
            None => format!("value {v}"),
        }
    }

    fn run(&mut self) {
        let g = self.graph;
        // Position of each node in its region's order, and which region lists it.
        let mut position: HashMap<NodeId, usize> = HashMap::new();
        for r in g.region_ids() {
            let region = g.region(r);
            if let Some(owner) = region.owner {
                match g.try_node(owner) {
                    None => self.report(self.region_label(r), format!("owner {owner} was removed")),
                    Some(n) if !n.subgraphs().any(|s| s == r) => self.report(self.region_label(r), format!("owner {} does not hold it", n.label(owner))),
                    _ => {}
                }
            }
            for (i, &n) in region.nodes.iter().enumerate() {
                match g.try_node(n) {
                    None => self.report(self.region_label(r), format!("lists removed node {n}")),
                    Some(node) if node.region != r => self.report(self.region_label(r), format!("lists {} of {}", node.label(n), node.region)),
                    Some(_) => {
                        if position.insert(n, i).is_some() {
                            self.report(self.region_label(r), format!("lists node {n} twice"));
                        }
                    }
                }
            }
        }
        for n in g.node_ids() {
            if !position.contains_key(&n) {
                let node = g.node(n);
                self.report(node.label(n), format!("is in no region's node order (its region is {})", node.region));
            }
        }
        self.check_values();
        self.check_region_lists();
        self.check_names();
        for n in g.node_ids() {
            if position.contains_key(&n) {
                self.check_node(n, &position);
            }
        }
        self.check_outputs(&position);
    }

    fn check_values(&mut self) {
        let g = self.graph;
        for v in g.value_ids() {
            let value = g.value(v);
            if g.try_region(value.region).is_none() {
                self.report(self.value_label(v), format!("belongs to removed region {}", value.region));
                continue;
            }
            match value.def {
                ValueDef::Node { node, output } => match g.try_node(node) {
                    None => self.report(self.value_label(v), format!("is produced by removed node {node}")),
                    Some(n) if n.output(output as usize) != Some(v) => self.report(self.value_label(v), format!("claims to be output {output} of {}, which does not list it", n.label(node))),
                    Some(n) if n.region != value.region => self.report(self.value_label(v), format!("is in {} but its producer is in {}", value.region, n.region)),
                    _ => {}
                },
                ValueDef::Initializer if value.initializer.is_none() => self.report(self.value_label(v), "is an initializer without a tensor"),
                ValueDef::SparseInitializer if value.sparse_initializer.is_none() => self.report(self.value_label(v), "is a sparse initializer without data"),
                _ => {}
            }
            if let (Some(t), Some(ty)) = (&value.initializer, &value.ty)
                && let TypeKind::Tensor { elem, shape } = &ty.kind
            {
                if elem.is_some_and(|e| e != t.dtype()) {
                    self.report(self.value_label(v), format!("is declared {} but its initializer is {}", elem.expect("checked"), t.dtype()));
                }
                if let Some(shape) = shape {
                    let dims = t.dims();
                    let fits = shape.rank() == dims.len() && shape.dims.iter().zip(dims).all(|(d, &n)| !matches!(d, Dim::Known(k) if *k as u64 != n));
                    if !fits {
                        self.report(self.value_label(v), format!("is declared {shape} but its initializer has dims {dims:?}"));
                    }
                }
            }
        }
    }

    fn check_region_lists(&mut self) {
        let g = self.graph;
        for r in g.region_ids() {
            let region = g.region(r);
            let lists: [(&str, &[ValueId]); 5] = [
                ("input", &region.inputs),
                ("initializer", &region.initializers),
                ("sparse initializer", &region.sparse_initializers),
                ("value_info entry", &region.value_info),
                ("output", &region.outputs),
            ];
            for (what, list) in lists {
                for &v in list {
                    let Some(value) = g.try_value(v) else {
                        self.report(self.region_label(r), format!("{what} {v} was removed"));
                        continue;
                    };
                    let ok = match what {
                        "input" => value.def == ValueDef::Input && value.region == r,
                        "initializer" => value.initializer.is_some() && value.region == r,
                        "sparse initializer" => value.def == ValueDef::SparseInitializer && value.region == r,
                        _ => true,
                    };
                    if !ok {
                        self.report(self.region_label(r), format!("{what} '{}' ({v}) is defined as {:?} in {}", value.name, value.def, value.region));
                    }
                }
            }
            let mut seen = HashSet::new();
            for &v in &region.initializers {
                if !seen.insert(v) {
                    self.report(self.region_label(r), format!("lists initializer {} twice", self.value_label(v)));
                }
            }
            for v in g.value_ids() {
                let value = g.value(v);
                if value.region != r {
                    continue;
                }
                if value.def == ValueDef::Input && !region.inputs.contains(&v) {
                    self.report(self.value_label(v), "is an input but not listed in its graph's inputs");
                }
                if value.def == ValueDef::Initializer && !region.initializers.contains(&v) {
                    self.report(self.value_label(v), "is an initializer but not listed in its graph's initializers");
                }
            }
        }
    }

    /// ONNX names must be unique within a graph and may not shadow names of enclosing graphs.
    fn check_names(&mut self) {
        let g = self.graph;
        let mut by_region: HashMap<RegionId, HashMap<&str, ValueId>> = HashMap::new();
        for v in g.value_ids() {
            let value = g.value(v);
            if value.def == ValueDef::Annotation {
                continue;
            }
            if value.name.is_empty() {
                self.report(self.value_label(v), "has an empty name");
                continue;
            }
            if let Some(prev) = by_region.entry(value.region).or_default().insert(&value.name, v) {
                self.report(format!("value '{}'", value.name), format!("defined twice in {} ({prev} and {v})", self.region_label(value.region)));
            }
        }
        for r in g.region_ids() {
            let Some(names) = by_region.get(&r) else { continue };
            for outer in g.ancestors(r).into_iter().skip(1) {
                let Some(outer_names) = by_region.get(&outer) else { continue };
                for (name, v) in names {
                    if outer_names.contains_key(name) {
                        self.report(self.value_label(*v), format!("in {} shadows the same name in {}", self.region_label(r), self.region_label(outer)));
                    }
                }
            }
        }
    }

    /// `v` is usable at node `n` when it is defined in `n`'s region or an enclosing one, before
    /// `n` (or before the node that owns `n`'s region).
    fn check_visible(&mut self, user: &str, v: ValueId, region: RegionId, at: Option<NodeId>, position: &HashMap<NodeId, usize>) {
        let g = self.graph;
        let Some(value) = g.try_value(v) else {
            self.report(user, format!("uses removed value {v}"));
            return;
        };
        let chain = g.ancestors(region);
        let Some(level) = chain.iter().position(|&r| r == value.region) else {
            self.report(user, format!("uses {} of {}, which is not in scope", self.value_label(v), self.region_label(value.region)));
            return;
        };
        if let ValueDef::Node { node: producer, .. } = value.def {
            // The node in `value.region` at which the use happens: `at` itself, or the owner of
            // the subgraph that contains it.
            let mut anchor = at;
            for &r in &chain[..level] {
                anchor = g.region(r).owner;
            }
            let before = match (position.get(&producer), anchor.and_then(|a| position.get(&a))) {
                (Some(p), Some(a)) => p < a,
                (Some(_), None) => true, // a region output: every node precedes it
                _ => false,
            };
            if !before {
                self.report(user, format!("uses {} before {} produces it (nodes are not in topological order)", self.value_label(v), g.node(producer).label(producer)));
            }
        }
        if value.def == ValueDef::Annotation {
            self.report(user, format!("uses {}, which nothing defines", self.value_label(v)));
        }
    }

    fn check_node(&mut self, n: NodeId, position: &HashMap<NodeId, usize>) {
        let g = self.graph;
        let node = g.node(n);
        let label = self.node_label(n);
        if node.op_type.is_empty() {
            self.report(&label, "has no op_type");
        }
        for v in node.inputs.iter().flatten() {
            self.check_visible(&label, *v, node.region, Some(n), position);
        }
        for (k, out) in node.outputs.iter().enumerate() {
            let Some(v) = out else { continue };
            match g.try_value(*v) {
                None => self.report(&label, format!("output {k} is removed value {v}")),
                Some(value) if value.def != (ValueDef::Node { node: n, output: k as u32 }) => {
                    self.report(&label, format!("lists output {} that is defined as {:?}", self.value_label(*v), value.def));
                }
                Some(_) => {}
            }
        }
        if !node.domain().is_empty() {
            return;
        }
        if let Some(indices) = same_type_inputs(&node.op_type) {
            let types: Vec<(usize, DataType)> = indices.iter().filter_map(|&i| node.input(i).map(|v| (i, v))).filter_map(|(i, v)| g.try_value(v).and_then(|v| v.elem()).map(|t| (i, t))).collect();
            if let Some(&(_, first)) = types.first()
                && let Some(&(i, other)) = types.iter().find(|(_, t)| *t != first)
            {
                self.report(&label, format!("input {i} is {other} but input {} is {first}; {} needs one element type", types[0].0, node.op_type));
            }
        }
    }

    fn check_outputs(&mut self, position: &HashMap<NodeId, usize>) {
        let g = self.graph;
        for r in g.region_ids() {
            for (k, &v) in g.region(r).outputs.iter().enumerate() {
                let label = format!("{} / output {k}", self.region_label(r));
                self.check_visible(&label, v, r, None, position);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, Value};
    use crate::types::ValueType;

    fn value(name: &str, def: ValueDef) -> Value {
        Value { name: name.into(), ty: Some(ValueType::tensor(DataType::Float, None)), doc_string: None, metadata_props: vec![], def, region: Graph::MAIN, initializer: None, sparse_initializer: None }
    }

    fn node(op: &str, inputs: Vec<Option<ValueId>>) -> Node {
        Node {
            op_type: op.into(),
            domain: None,
            name: Some(op.to_lowercase()),
            overload: None,
            inputs,
            outputs: vec![],
            attributes: vec![],
            doc_string: None,
            metadata_props: vec![],
            device_configurations: vec![],
            region: Graph::MAIN,
        }
    }

    #[test]
    fn reports_every_problem_with_a_location() {
        let mut g = Graph::new("main");
        let x = g.add_value(value("x", ValueDef::Input));
        g.main_mut().inputs.push(x);
        // b uses a's output, but is placed first: not topologically sorted.
        let b = g.add_node_detached(node("Relu", vec![]));
        let a = g.add_node_detached(node("Relu", vec![Some(x)]));
        let a_out = g.add_value(value("a_out", ValueDef::Node { node: a, output: 0 }));
        g.node_mut(a).outputs = vec![Some(a_out)];
        g.node_mut(b).inputs = vec![Some(a_out)];
        let b_out = g.add_value(value("x", ValueDef::Node { node: b, output: 0 }));
        g.node_mut(b).outputs = vec![Some(b_out)];
        g.main_mut().nodes = vec![b, a];
        let mut int_input = value("i", ValueDef::Input);
        int_input.ty = Some(ValueType::tensor(DataType::Int64, None));
        let i = g.add_value(int_input);
        g.main_mut().inputs.push(i);
        let add = g.add_node_detached(node("Add", vec![Some(x), Some(i)]));
        g.main_mut().nodes.push(add);
        g.main_mut().outputs.push(b_out);

        let problems = verify_graph(&g).unwrap_err().0;
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("node 'relu' (Relu): uses value 'a_out'") && has("not in topological order"), "{text:#?}");
        assert!(has("value 'x': defined twice"), "{text:#?}");
        assert!(has("node 'add' (Add): input 1 is i64 but input 0 is f32"), "{text:#?}");
        assert_eq!(problems.len(), 3, "{text:#?}");
    }

    #[test]
    fn a_node_whose_output_was_removed_is_reported() {
        let mut g = Graph::new("main");
        let constant = g.add_node_detached(node("Constant", vec![]));
        let c = g.add_value(value("c", ValueDef::Node { node: constant, output: 0 }));
        g.node_mut(constant).outputs = vec![Some(c)];
        g.main_mut().nodes = vec![constant];
        verify_graph(&g).unwrap();
        g.remove_value(c);
        let problems: Vec<String> = verify_graph(&g).unwrap_err().0.iter().map(|p| p.to_string()).collect();
        assert!(problems.iter().any(|p| p.contains("node 'constant' (Constant): output 0 is removed value")), "{problems:#?}");
    }
}
