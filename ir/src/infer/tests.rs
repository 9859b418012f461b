//! Whole-graph checks of the driver: data propagation, opset-dependent rules, If merging,
//! refinement and conflicts, value_info recording.

use super::{InferOptions, InferReport, infer_shapes, record_value_info};
use crate::dtype::DataType;
use crate::graph::{AttrValue, Attribute, Graph, Node, Region, RegionId, Value, ValueDef, ValueId};
use crate::model::Model;
use crate::tensor::Tensor;
use crate::types::{Dim, Shape, ValueType};

/// Builds small graphs for the tests.
struct Builder {
    graph: Graph,
}

fn f32_of(dims: &[Dim]) -> ValueType {
    ValueType::tensor(DataType::Float, Some(Shape::new(dims.to_vec())))
}

fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

fn k(n: i64) -> Dim {
    Dim::Known(n)
}

impl Builder {
    fn new() -> Self {
        Builder { graph: Graph::new("test") }
    }

    fn value(&mut self, name: &str, def: ValueDef, region: RegionId) -> ValueId {
        self.graph.add_value(Value { name: name.into(), ty: None, doc_string: None, metadata_props: Vec::new(), def, region, initializer: None, sparse_initializer: None })
    }

    fn input_in(&mut self, region: RegionId, name: &str, ty: ValueType) -> ValueId {
        let v = self.value(name, ValueDef::Input, region);
        self.graph.value_mut(v).ty = Some(ty);
        self.graph.region_mut(region).inputs.push(v);
        v
    }

    fn input(&mut self, name: &str, ty: ValueType) -> ValueId {
        self.input_in(Graph::MAIN, name, ty)
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> ValueId {
        let v = self.value(name, ValueDef::Initializer, Graph::MAIN);
        let t = Tensor::from_i64(&[values.len() as u64], values).unwrap();
        self.graph.value_mut(v).ty = Some(ValueType::tensor(DataType::Int64, Some(t.shape())));
        self.graph.value_mut(v).initializer = Some(t);
        self.graph.region_mut(Graph::MAIN).initializers.push(v);
        v
    }

    fn node_in(&mut self, region: RegionId, op: &str, inputs: &[Option<ValueId>], outputs: usize, attributes: Vec<Attribute>) -> Vec<ValueId> {
        let id = self.graph.add_node_detached(Node {
            op_type: op.into(),
            domain: None,
            name: Some(format!("{op}_{}", self.graph.node_count())),
            overload: None,
            inputs: inputs.to_vec(),
            outputs: Vec::new(),
            attributes,
            doc_string: None,
            metadata_props: Vec::new(),
            device_configurations: Vec::new(),
            region,
        });
        let outs: Vec<ValueId> = (0..outputs).map(|i| self.value(&format!("{op}_{}_out{i}", id.0), ValueDef::Node { node: id, output: i as u32 }, region)).collect();
        self.graph.node_mut(id).outputs = outs.iter().map(|&v| Some(v)).collect();
        self.graph.region_mut(region).nodes.push(id);
        outs
    }

    fn node(&mut self, op: &str, inputs: &[ValueId], attributes: Vec<Attribute>) -> ValueId {
        let inputs: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        self.node_in(Graph::MAIN, op, &inputs, 1, attributes)[0]
    }

    fn output(&mut self, v: ValueId) {
        self.graph.region_mut(Graph::MAIN).outputs.push(v);
    }

    fn infer(self, opset: i64) -> (Model, InferReport) {
        let mut model = Model::new(self.graph, opset);
        let report = infer_shapes(&mut model, &InferOptions::default());
        (model, report)
    }
}

fn ints_attr(name: &str, v: &[i64]) -> Attribute {
    Attribute::new(name, AttrValue::Ints(v.to_vec()))
}

fn int_attr(name: &str, v: i64) -> Attribute {
    Attribute::new(name, AttrValue::Int(v))
}

fn type_of(model: &Model, v: ValueId) -> String {
    model.graph.value(v).ty.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "untyped".into())
}

#[test]
fn shape_computations_give_reshape_a_symbolic_shape() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[sym("batch"), sym("seq"), k(384)]));
    let shape = b.node("Shape", &[x], vec![]);
    let zero = b.ints("zero", &[0]);
    let one = b.ints("one", &[1]);
    let heads = b.ints("heads", &[12, 32]);
    let batch = b.node("Gather", &[shape, zero], vec![]);
    let seq = b.node("Gather", &[shape, one], vec![]);
    let target = b.node("Concat", &[batch, seq, heads], vec![int_attr("axis", 0)]);
    let reshaped = b.node("Reshape", &[x, target], vec![]);
    // [batch, seq, 12, 32] back to [batch, -1, 384]: the -1 is seq once batch and 384 cancel.
    let minus_one = b.ints("minus_one", &[-1, 384]);
    let back_target = b.node("Concat", &[batch, minus_one], vec![int_attr("axis", 0)]);
    let back = b.node("Reshape", &[reshaped, back_target], vec![]);
    let (model, report) = b.infer(17);
    assert_eq!(type_of(&model, target), "i64[4]");
    assert_eq!(type_of(&model, reshaped), "f32[batch,seq,12,32]");
    assert_eq!(type_of(&model, back), "f32[batch,seq,384]");
    assert!(report.failures.is_empty() && report.conflicts.is_empty(), "{report}");
}

#[test]
fn squeeze_and_unsqueeze_take_axes_from_the_opset_in_force() {
    for opset in [11, 13] {
        let mut b = Builder::new();
        let x = b.input("x", f32_of(&[k(3), k(1), sym("n")]));
        let axes = b.ints("axes", &[1]);
        let new_axes = b.ints("new_axes", &[0, -1]);
        let (squeezed, unsqueezed) = if opset < 13 {
            (b.node("Squeeze", &[x], vec![ints_attr("axes", &[1])]), b.node("Unsqueeze", &[x], vec![ints_attr("axes", &[0, -1])]))
        } else {
            (b.node("Squeeze", &[x, axes], vec![]), b.node("Unsqueeze", &[x, new_axes], vec![]))
        };
        let all = b.node("Squeeze", &[x], vec![]);
        let (model, report) = b.infer(opset);
        assert_eq!(type_of(&model, squeezed), "f32[3,n]", "opset {opset}");
        assert_eq!(type_of(&model, unsqueezed), "f32[1,3,1,n,1]", "opset {opset}");
        // Without axes every 1 goes; the symbol is taken to be more than 1.
        assert_eq!(type_of(&model, all), "f32[3,n]", "opset {opset}");
        assert!(report.failures.is_empty(), "{report}");
    }
    // Axes given the old way in a new opset are not read: the input is missing.
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(3), k(1)]));
    let unsqueezed = b.node("Unsqueeze", &[x], vec![ints_attr("axes", &[0])]);
    let (model, report) = b.infer(13);
    assert_eq!(type_of(&model, unsqueezed), "untyped");
    assert_eq!(report.failures.len(), 1, "{report}");
}

#[test]
fn reductions_read_axes_by_op_and_opset() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(2), k(3), k(4)]));
    let axes = b.ints("axes", &[1]);
    let sum = b.node("ReduceSum", &[x, axes], vec![int_attr("keepdims", 0)]);
    let mean_attr = b.node("ReduceMean", &[x], vec![ints_attr("axes", &[1])]);
    let mean_none = b.node("ReduceMean", &[x], vec![int_attr("keepdims", 0)]);
    let (model, _) = b.infer(13);
    assert_eq!(type_of(&model, sum), "f32[2,4]");
    // ReduceMean still takes an axes attribute at opset 13.
    assert_eq!(type_of(&model, mean_attr), "f32[2,1,4]");
    assert_eq!(type_of(&model, mean_none), "f32[]");

    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(2), k(3), k(4)]));
    let axes = b.ints("axes", &[-1]);
    let mean = b.node("ReduceMean", &[x, axes], vec![]);
    let noop = b.node("ReduceMax", &[x], vec![int_attr("noop_with_empty_axes", 1)]);
    let (model, _) = b.infer(18);
    assert_eq!(type_of(&model, mean), "f32[2,3,1]");
    assert_eq!(type_of(&model, noop), "f32[2,3,4]");
}

#[test]
fn slices_clamp_negative_and_out_of_range_bounds() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(10), k(20), sym("n")]));
    let starts = b.ints("starts", &[-3, 25, 0]);
    let ends = b.ints("ends", &[i64::MAX, 30, i64::MAX]);
    let axes = b.ints("axes", &[0, 1, 2]);
    let sliced = b.node("Slice", &[x, starts, ends, axes], vec![]);
    let reverse_starts = b.ints("rs", &[-1]);
    let reverse_ends = b.ints("re", &[i64::MIN]);
    let reverse_axes = b.ints("ra", &[1]);
    let steps = b.ints("steps", &[-3]);
    let reversed = b.node("Slice", &[x, reverse_starts, reverse_ends, reverse_axes, steps], vec![]);
    // The shape of x, its last two entries: [20, n].
    let shape = b.node("Shape", &[x], vec![]);
    let tail_start = b.ints("ts", &[-2]);
    let tail_end = b.ints("te", &[100]);
    let tail = b.node("Slice", &[shape, tail_start, tail_end], vec![]);
    let filled = b.node("ConstantOfShape", &[tail], vec![]);
    let (model, report) = b.infer(13);
    assert_eq!(type_of(&model, sliced), "f32[3,0,n]");
    assert_eq!(type_of(&model, reversed), "f32[10,7,n]");
    assert_eq!(type_of(&model, filled), "f32[20,n]");
    assert!(report.failures.is_empty(), "{report}");
}

/// An If whose branches return a constant-shaped value each.
fn if_with_branches(then_dims: &[i64], else_dims: &[i64]) -> (Model, ValueId) {
    let mut b = Builder::new();
    let cond = b.input("cond", ValueType::tensor(DataType::Bool, Some(Shape::new(vec![]))));
    let if_node = b.node_in(Graph::MAIN, "If", &[Some(cond)], 1, vec![]);
    let owner = match b.graph.value(if_node[0]).def {
        ValueDef::Node { node, .. } => node,
        _ => unreachable!(),
    };
    let mut branches = Vec::new();
    for (name, dims) in [("then_branch", then_dims), ("else_branch", else_dims)] {
        let r = b.graph.add_region(Region { name: Some(name.into()), owner: Some(owner), ..Default::default() });
        let t = Tensor::from_f32(&dims.iter().map(|&d| d as u64).collect::<Vec<_>>(), &vec![0.0; dims.iter().product::<i64>() as usize]).unwrap();
        let out = b.node_in(r, "Constant", &[], 1, vec![Attribute::new("value", AttrValue::Tensor(t))])[0];
        b.graph.region_mut(r).outputs.push(out);
        branches.push(Attribute::new(name, AttrValue::Graph(r)));
    }
    b.graph.node_mut(owner).attributes = branches;
    b.output(if_node[0]);
    let (model, report) = b.infer(17);
    assert!(report.failures.is_empty(), "{report}");
    (model, if_node[0])
}

#[test]
fn if_outputs_keep_what_both_branches_agree_on() {
    let (model, out) = if_with_branches(&[2, 3], &[2, 3]);
    assert_eq!(type_of(&model, out), "f32[2,3]");
    let (model, out) = if_with_branches(&[2, 3], &[2, 4]);
    assert_eq!(type_of(&model, out), "f32[2,?]");
    let (model, out) = if_with_branches(&[2, 3], &[6]);
    assert_eq!(type_of(&model, out), "f32[..]");
}

#[test]
fn declared_types_are_refined_and_contradictions_reported() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(2), k(3)]));
    let y = b.node("Relu", &[x], vec![]);
    let z = b.node("Sigmoid", &[y], vec![]);
    b.graph.value_mut(y).ty = Some(f32_of(&[Dim::Unknown, k(3)]));
    b.graph.value_mut(z).ty = Some(f32_of(&[k(2), k(4)]));
    b.output(z);
    let (model, report) = b.infer(17);
    assert_eq!(report.refined, vec![y]);
    assert_eq!(type_of(&model, y), "f32[2,3]");
    assert_eq!(report.conflicts.len(), 1, "{report}");
    let conflict = &report.conflicts[0];
    assert_eq!((conflict.value, conflict.value_name.as_str()), (z, model.graph.value(z).name.as_str()));
    assert!(conflict.node.contains("Sigmoid"), "{conflict}");
    // The declared type stays.
    assert_eq!(type_of(&model, z), "f32[2,4]");
}

#[test]
fn unsorted_nodes_and_unknown_ops_are_handled() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(4)]));
    let a = b.node("Relu", &[x], vec![]);
    let c = b.node("Neg", &[a], vec![]);
    let custom = b.node("MyOp", &[c], vec![]);
    // Listed consumer-first, as some files are.
    b.graph.main_mut().nodes.reverse();
    let (model, report) = b.infer(17);
    assert_eq!(type_of(&model, c), "f32[4]");
    assert_eq!(type_of(&model, custom), "untyped");
    assert_eq!(report.unsupported_ops.get("MyOp"), Some(&1));
    assert_eq!(report.typed, vec![a, c]);
}

#[test]
fn recorded_value_info_lists_typed_intermediates_only() {
    let mut b = Builder::new();
    let x = b.input("x", f32_of(&[k(4)]));
    let a = b.node("Relu", &[x], vec![]);
    let c = b.node("Neg", &[a], vec![]);
    b.output(c);
    let (mut model, _) = b.infer(17);
    assert!(model.graph.main().value_info.is_empty(), "inference itself does not add value_info");
    record_value_info(&mut model.graph);
    assert_eq!(model.graph.main().value_info, vec![a]);
    record_value_info(&mut model.graph);
    assert_eq!(model.graph.main().value_info, vec![a], "recording twice adds nothing");
}
