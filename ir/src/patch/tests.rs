//! The patch's application: placement, re-wiring, renames, new inputs and outputs, and
//! refusals that leave the graph untouched.

use super::*;
use crate::dtype::DataType;
use crate::verify::verify_graph;

/// x -> Relu -> r -> Neg -> y (output); w is an unused initializer.
fn chain() -> (Graph, [ValueId; 4], [NodeId; 2]) {
    let mut g = Graph::new("main");
    let f32 = || Some(ValueType::tensor(DataType::Float, None));
    let value = |name: &str, def| Value { name: name.into(), ty: f32(), doc_string: None, metadata_props: vec![], def, region: Graph::MAIN, initializer: None, sparse_initializer: None };
    let x = g.add_value(value("x", ValueDef::Input));
    g.main_mut().inputs.push(x);
    let relu = g.add_node_detached(Node {
        op_type: "Relu".into(),
        domain: None,
        name: Some("relu".into()),
        overload: None,
        inputs: vec![Some(x)],
        outputs: vec![],
        attributes: vec![],
        doc_string: None,
        metadata_props: vec![],
        device_configurations: vec![],
        region: Graph::MAIN,
    });
    let r = g.add_value(value("r", ValueDef::Node { node: relu, output: 0 }));
    g.node_mut(relu).outputs = vec![Some(r)];
    let neg = g.add_node_detached(Node { op_type: "Neg".into(), name: Some("neg".into()), inputs: vec![Some(r)], ..g.node(relu).clone() });
    let y = g.add_value(value("y", ValueDef::Node { node: neg, output: 0 }));
    g.node_mut(neg).outputs = vec![Some(y)];
    g.main_mut().nodes = vec![relu, neg];
    g.main_mut().outputs.push(y);
    let mut w = value("w", ValueDef::Initializer);
    w.initializer = Some(Tensor::from_f32(&[1], &[1.0]).unwrap());
    let w = g.add_value(w);
    g.main_mut().initializers.push(w);
    verify_graph(&g).unwrap();
    (g, [x, r, y, w], [relu, neg])
}

#[test]
fn inserting_a_node_on_a_value_keeps_its_own_input() {
    let (mut g, [x, _, _, _], [relu, _]) = chain();
    let mut p = Patch::new();
    let c = p.new_value(Graph::MAIN, "x_clipped", None);
    p.node("Clip", Anchor::Before(relu)).input(x).output(c).add();
    p.replace_uses(x, c);
    let s = g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    let clip = s.new_nodes[0];
    assert_eq!(g.node(clip).inputs, vec![Some(x)]);
    assert_eq!(g.node(relu).inputs, vec![Some(s.value(c))]);
    assert_eq!(g.main().nodes, vec![clip, relu, g.main().nodes[2]]);
}

#[test]
fn replacing_a_node_keeps_the_output_value_and_its_name() {
    let (mut g, [_, r, y, _], [_, neg]) = chain();
    let mut p = Patch::new();
    p.node("Abs", Anchor::Before(neg)).input(r).output(y.into()).add();
    p.remove_node(neg);
    let s = g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    assert_eq!(g.value(y).name, "y");
    assert_eq!(g.producer(y), Some((s.new_nodes[0], 0)));
    assert_eq!(g.main().outputs, vec![y]);
    assert!(g.try_node(neg).is_none());
}

#[test]
fn bypassing_a_node_rewires_graph_outputs_too() {
    let (mut g, [_, r, y, _], [_, neg]) = chain();
    let mut p = Patch::new();
    p.replace_uses(y, r);
    p.remove_node(neg);
    g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    assert_eq!(g.main().outputs, vec![r]);
    assert!(g.try_value(y).is_none());
}

#[test]
fn a_new_input_is_read_by_new_nodes_and_its_name_must_be_free() {
    let (mut g, [_, _, y, _], [_, neg]) = chain();
    let mut p = Patch::new();
    let z = p.new_input(Graph::MAIN, "z", Some(ValueType::tensor(DataType::Float, None)));
    let sum = p.new_value(Graph::MAIN, "sum", None);
    p.node("Add", Anchor::After(neg)).input(y).input(z).output(sum).add();
    p.add_output(Graph::MAIN, sum);
    let s = g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    let z = s.value(z);
    assert_eq!((g.value(z).name.as_str(), &g.value(z).def), ("z", &ValueDef::Input));
    assert_eq!(g.main().inputs.last(), Some(&z));
    let mut p = Patch::new();
    p.new_input(Graph::MAIN, "y", None);
    assert!(g.apply(p).unwrap_err().to_string().contains("'y'"));
}

#[test]
fn a_bad_patch_leaves_the_graph_untouched() {
    let (mut g, [_, _, _, w], [relu, neg]) = chain();
    let before = crate::text::graph_to_text(&g);
    let cases: Vec<(Patch, &str)> = vec![
        (
            {
                let mut p = Patch::new();
                p.remove_node(relu);
                p
            },
            "value 'r' is removed but still used by node 'neg' (Neg)",
        ),
        (
            {
                let mut p = Patch::new();
                p.remove_node(neg);
                p
            },
            "value 'y' is removed but still used by output 0",
        ),
        (
            {
                let mut p = Patch::new();
                p.new_value(Graph::MAIN, "orphan", None);
                p
            },
            "new value 'orphan' is defined 0 times",
        ),
        (
            {
                let mut p = Patch::new();
                p.remove_node(NodeId(99));
                p
            },
            "removed node n99 does not exist",
        ),
        (
            {
                let mut p = Patch::new();
                let v = p.new_value(Graph::MAIN, "t", None);
                p.node("Neg", Anchor::After(relu)).input(w).output(v).add();
                p.remove_value(w);
                p
            },
            "reads value 'w', which the patch removes",
        ),
        (
            {
                let mut p = Patch::new();
                let y = g.main().outputs[0];
                p.node("Abs", Anchor::Before(neg)).input(w).output(y.into()).add();
                p
            },
            "its producer is not removed",
        ),
    ];
    for (patch, expected) in cases {
        let e = g.apply(patch).unwrap_err().to_string();
        assert!(e.contains(expected), "expected '{expected}' in '{e}'");
        assert_eq!(crate::text::graph_to_text(&g), before);
    }
}

#[test]
fn new_initializers_get_unique_names_and_are_listed() {
    let (mut g, [_, r, _, _], [_, neg]) = chain();
    let mut p = Patch::new();
    let one = p.new_initializer(Graph::MAIN, "w", Tensor::from_f32(&[1], &[2.0]).unwrap());
    let out = p.new_value(Graph::MAIN, "scaled", None);
    p.node("Mul", Anchor::Before(neg)).input(r).input(one).output(out).add();
    p.set_input(neg, 0, Some(out));
    let s = g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    assert_eq!(g.value(s.value(one)).name, "w_1");
    assert!(g.main().initializers.contains(&s.value(one)));
}

#[test]
fn new_values_of_one_patch_get_distinct_names() {
    let (mut g, [_, r, _, _], [_, neg]) = chain();
    let mut p = Patch::new();
    let a = p.new_initializer(Graph::MAIN, "w", Tensor::from_f32(&[1], &[2.0]).unwrap());
    let b = p.new_initializer(Graph::MAIN, "w", Tensor::from_f32(&[1], &[3.0]).unwrap());
    let (ra, rb) = (p.new_value(Graph::MAIN, "", None), p.new_value(Graph::MAIN, "", None));
    p.node("Mul", Anchor::Before(neg)).input(r).input(a).output(ra).add();
    p.node("Mul", Anchor::Before(neg)).input(ra).input(b).output(rb).add();
    p.set_input(neg, 0, Some(rb));
    let s = g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    let names: Vec<&str> = [a, b, ra, rb].iter().map(|&v| g.value(s.value(v)).name.as_str()).collect();
    assert_eq!(names, ["w_1", "w_2", "_1", "_2"]);
}

#[test]
fn attributes_types_and_initializers_change_through_a_patch() {
    let (mut g, [_, r, _, w], [relu, neg]) = chain();
    let generation = g.generation();
    let mut p = Patch::new();
    p.set_attr(relu, "alpha", AttrValue::Float(0.5));
    p.set_attr(relu, "alpha", AttrValue::Float(0.25));
    p.set_attr(neg, "gone", AttrValue::Int(1));
    p.remove_attr(neg, "gone");
    p.set_type(r, Some(ValueType::tensor(DataType::Float, Some(crate::types::Shape::known(&[2, 3])))));
    p.set_initializer(w, Tensor::from_f32(&[2], &[4.0, 5.0]).unwrap());
    g.apply(p).unwrap();
    verify_graph(&g).unwrap();
    assert!(g.generation() > generation, "an applied patch bumps the generation");
    assert_eq!(g.node(relu).attributes.len(), 1);
    assert_eq!(g.node(relu).attr_float("alpha"), Some(0.25));
    assert!(g.node(neg).attributes.is_empty());
    assert_eq!(g.value(r).shape().map(|s| s.rank()), Some(2));
    let t = g.value(w).initializer.clone().unwrap();
    assert_eq!((t.to_f32().unwrap(), t.proto_name()), (vec![4.0, 5.0], Some("w")));
    assert_eq!(g.value(w).shape().map(|s| s.rank()), Some(1));
    // Edits of what does not exist, or of a value that is no initializer, are refused whole.
    let before = crate::text::graph_to_text(&g);
    let mut p = Patch::new();
    p.set_attr(relu, "alpha", AttrValue::Float(9.0));
    p.set_initializer(r, Tensor::from_f32(&[1], &[1.0]).unwrap());
    assert!(g.apply(p).unwrap_err().to_string().contains("'r' gets a new tensor but is not an initializer"));
    assert_eq!(crate::text::graph_to_text(&g), before);
}
