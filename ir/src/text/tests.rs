//! The parser against the printer: hand-written models with every construct, exact values,
//! fills, and errors with their positions.

use super::*;
use crate::graph::AttrValue;
use crate::verify;

/// Parses, prints, and checks that the printed text reads back to the same text.
fn round_trip(text: &str) -> String {
    let model = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let printed = model_to_text(&model);
    let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(model_to_text(&again), printed);
    printed
}

const EVERYTHING: &str = r#"model ir_version=10 opset=[ai.onnx=21, com.microsoft=1]
graph main {
  input %x: f32[batch,4]
  input %"odd name": ?[..]
  input %seqs: seq<map<i64,opt<f32[?,"3x"]>>>
  input %t: sparse f16[2,2]
  input %o: opaque<"dom", "thing">
  input %u: ?
  input %d: f64[2] = tensor<f64[2]>[0.1, -0.0]
  init %w = tensor<f32[4,2]>[1.0, -2.5, 1e-7, 3.4028235e38, inf, -inf, nan(0x7fc00000), nan(0xffc00001)]
  init %zeros = tensor<f32[2]>[0.0, -0.0]
  init %small = tensor<f32[2]>[0.1, 0.2]
  init %big = tensor<f32[16,16]>
  init %h = tensor<f16[3]>[0.1, 65504.0, nan(0x7e01)]
  init %b = tensor<bf16[2]>[1.5, -3.0]
  init %q = tensor<i4[5]>[-8, 7, 0, -1, 3]
  init %u2 = tensor<u2[3]>[0, 3, 1]
  init %f8 = tensor<f8e4m3fn[3]>[448.0, -0.0, nan(0xff)]
  init %f4 = tensor<f4e2m1[2]>[6.0, -0.5]
  init %flags = tensor<bool[2]>[1, 0]
  init %big_u = tensor<u64[1]>[18446744073709551615]
  init %c = tensor<c64[1]>[1.0, -1.0]
  init %s = tensor<str[3]>["a", "\"q\"\n", "\xff\x00"]
  init %sp = sparse[2, 3](values=tensor<f32[2]>[1.5, -2.0], indices=tensor<i64[2]>[1, 5])
  %y: f32[batch,4] = MatMul(%x, %w)  # fc/MatMul
  %z, _ = com.microsoft::Thing(%y, _, %small) {f=1.5, i=-3, s="hi", fs=[1.0, nan(0x7fc00000)], is=[1, 2], ss=["a", "b"], t=tensor<i64[1]>[4], ts=[tensor<i64[1]>[4]], st=sparse[2](values=tensor<f32[1]>[1.0], indices=tensor<i64[1]>[0]), ty=type f32[2,?], tys=[type seq<?>], e=floats[], ei=ints[], es=strings[], et=tensors[], esp=sparse_tensors[], etp=types[], r=@ref, un=undefined}  # "name with \"quotes\""
  %cond = Constant() {value=tensor<bool[]>[1]}
  %r: f32[batch,4] = If(%cond)  #  spaced
    then_branch: graph then {
      %a = Relu(%y)
      output %a
    }
    else_branch: graph "" {
      output %z
    }
  %l1, %l2 = Loop(_, %cond, %y)
    body: graph body {
      input %i: i64[]
      input %c_in: bool[]
      input %acc: f32[batch,4]
      %acc2 = Add(%acc, %small)
      output %c_in, %acc2
    }
  %k = Custom(%y)
    input: graph "" {
      output %y
    }
  = Print(%l2)
  output %r: f32[batch,4], %l1, %big
}
"#;

#[test]
fn every_construct_reads_back_and_prints_the_same() {
    let printed = round_trip(EVERYTHING);
    // Canonical spellings the printer chooses.
    assert!(printed.contains("input %seqs: seq<map<i64,opt<f32[?,\"3x\"]>>>"), "{printed}");
    assert!(printed.contains("init %big = tensor<f32[16,16]>\n"), "{printed}");
    assert!(printed.contains("nan(0xffc00001)"), "{printed}");
    assert!(printed.contains("init %s = tensor<str[3]>[\"a\", \"\\\"q\\\"\\n\", \"\\xff\\u{0}\"]"), "{printed}");
    assert!(printed.contains("}  # name with \"quotes\"\n"), "{printed}");
    assert!(printed.contains("  # spaced\n"), "{printed}");
    assert!(printed.contains("  = Print(%l2)\n"), "{printed}");
    assert!(printed.contains("  %k = Custom(%y)\n    input: graph \"\" {\n"), "{printed}");
    let model = parse(EVERYTHING).unwrap();
    let g = &model.graph;
    assert_eq!(model.opset_version(""), Some(21));
    assert_eq!(model.opset_version("com.microsoft"), Some(1));
    // Values are exact, bit for bit.
    let w = g.value(g.main().initializers[1]).initializer.clone().unwrap();
    let bits: Vec<u32> = w.to_f32().unwrap().iter().map(|f| f.to_bits()).collect();
    assert_eq!(bits, [1.0f32.to_bits(), (-2.5f32).to_bits(), 1e-7f32.to_bits(), f32::MAX.to_bits(), f32::INFINITY.to_bits(), f32::NEG_INFINITY.to_bits(), 0x7fc0_0000, 0xffc0_0001]);
    let q = g.main().initializers.iter().map(|&v| g.value(v)).find(|v| v.name == "q").unwrap();
    assert_eq!(q.initializer.as_ref().unwrap().to_i64().unwrap(), vec![-8, 7, 0, -1, 3]);
    let h = g.main().initializers.iter().map(|&v| g.value(v)).find(|v| v.name == "h").unwrap();
    assert_eq!(h.initializer.as_ref().unwrap().raw_data().unwrap().as_ref(), &[0x66, 0x2e, 0xff, 0x7b, 0x01, 0x7e]);
    assert_eq!(q.ty, Some(crate::ValueType::tensor(crate::DataType::Int4, Some(crate::Shape::known(&[5])))), "initializers are typed from their tensors");
    let big = g.main().initializers.iter().map(|&v| g.value(v)).find(|v| v.name == "big").unwrap();
    assert!(big.initializer.as_ref().unwrap().to_f32().unwrap().iter().all(|&v| v == 0.0));
    // The If's branches are regions owned by it, reading %y and %z from the main graph.
    let if_node = g.main().nodes.iter().map(|&n| g.node(n)).find(|n| n.op_type == "If").unwrap();
    assert_eq!(if_node.subgraphs().count(), 2);
    assert_eq!(if_node.name.as_deref(), Some("spaced"));
    let thing = g.main().nodes.iter().map(|&n| g.node(n)).find(|n| n.op_type == "Thing").unwrap();
    assert_eq!(thing.domain.as_deref(), Some("com.microsoft"));
    assert_eq!(thing.outputs[1], None);
    assert_eq!(thing.inputs[1], None);
    assert!(matches!(thing.attr("e"), Some(AttrValue::Floats(v)) if v.is_empty()));
    assert_eq!(thing.attributes.iter().find(|a| a.name == "r").unwrap().ref_attr_name.as_deref(), Some("ref"));
    assert_eq!(thing.name.as_deref(), Some("name with \"quotes\""));
}

#[test]
fn parsed_models_pass_the_verifier_and_keep_scopes() {
    let text = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2]\n  input %c: bool[]\n  %r: f32[2] = If(%c)\n    then_branch: graph t {\n      %a = Relu(%x)\n      output %a\n    }\n    else_branch: graph e {\n      %a = Neg(%x)\n      output %a\n    }\n  output %r: f32[2]\n}\n";
    let model = parse(text).unwrap();
    verify(&model).unwrap();
    assert_eq!(model_to_text(&model), text);
    assert_eq!(model.graph.region_ids().count(), 3);
}

#[test]
fn fills_are_deterministic_and_in_range() {
    let text = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  init %a = tensor<f32[64]> fill=seeded(42)\n  init %b = tensor<f32[64]> fill=seeded(42, 2.0, 3.0)\n  init %c = tensor<i64[10]> fill=iota\n  init %d = tensor<i8[100]> fill=seeded(1, -4, 4)\n  init %e = tensor<f16[4]> fill=zeros\n  output %a, %b, %c, %d, %e\n}\n";
    let m1 = parse(text).unwrap();
    let m2 = parse(text).unwrap();
    let g = &m1.graph;
    let t = |m: &crate::Model, i: usize| m.graph.value(m.graph.main().initializers[i]).initializer.clone().unwrap();
    assert_eq!(t(&m1, 0).raw_data().unwrap(), t(&m2, 0).raw_data().unwrap());
    let a = t(&m1, 0).to_f32().unwrap();
    assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    assert!(a.iter().any(|&v| v < -0.5) && a.iter().any(|&v| v > 0.5), "{a:?}");
    // The generator is part of the format: these numbers must never change.
    assert_eq!(&a[..3], &[0.48312977f32, -0.68017924, -0.44279775]);
    assert!(t(&m1, 1).to_f32().unwrap().iter().all(|v| (2.0..3.0).contains(v)));
    assert_eq!(t(&m1, 2).to_i64().unwrap(), (0..10).collect::<Vec<i64>>());
    let d = t(&m1, 3).to_i64().unwrap();
    assert!(d.iter().all(|v| (-4..4).contains(v)) && d.contains(&-4) && d.contains(&3));
    assert_eq!(t(&m1, 4).to_f32().unwrap(), vec![0.0; 4]);
    assert_eq!(g.main().outputs.len(), 5);
}

fn error(text: &str) -> (usize, usize, String) {
    let e = parse(text).err().unwrap_or_else(|| panic!("parsed: {text}"));
    let (line, column) = e.position();
    (line, column, e.to_string())
}

#[test]
fn errors_say_where_and_what_was_expected() {
    let head = "model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n";
    let (l, c, e) = error(&format!("{head}  input %x: f32[2]\n  %y = Relu(%nope)\n  output %y\n}}\n"));
    assert_eq!((l, c), (4, 13), "{e}");
    assert!(e.contains("%nope is not defined"), "{e}");
    let (l, c, e) = error(&format!("{head}  input %x: f32[2]\n  %y = Relu(%x\n  output %y\n}}\n"));
    assert_eq!((l, c), (5, 3), "{e}");
    assert_eq!(e, "line 5, column 3: expected ',', found 'output'");
    let (_, _, e) = error(&format!("{head}  init %w = tensor<f32[3]>[1.0, 2.0]\n  output %w\n}}\n"));
    assert!(e.contains("2 values for 3 elements"), "{e}");
    let (_, _, e) = error(&format!("{head}  init %w = tensor<i4[1]>[8]\n  output %w\n}}\n"));
    assert!(e.contains("8 is outside [-8, 7]"), "{e}");
    let (_, _, e) = error(&format!("{head}  init %w = tensor<f32[100000,100000]> fill=zeros\n  output %w\n}}\n"));
    assert!(e.contains("more than"), "{e}");
    let (_, _, e) = error(&format!("{head}  input %x: f32[2]\n  input %x: f32[2]\n  output %x\n}}\n"));
    assert!(e.contains("%x is defined twice"), "{e}");
    let (_, _, e) = error(&format!("{head}  input %x: f32[2]\n  then_branch: graph t {{\n  output %x\n}}\n  output %x\n}}\n"));
    assert!(e.contains("does not follow a node"), "{e}");
    let (_, _, e) = error(&format!("{head}  init %w = tensor<f32[2]>[1.0, 2.0] #00\n  output %w\n}}\n"));
    assert!(e.contains("digests"), "{e}");
    let (l, _, e) = error(&format!("{head}  %y = Relu(%x) {{s=\"open\n  output %y\n}}\n"));
    assert_eq!(l, 3, "{e}");
    let (_, _, e) = error("model ir_version=8 opset=[ai.onnx=17]\nfunction a::b (1 nodes)\ngraph g {\n output\n}\n");
    assert!(e.contains("functions"), "{e}");
    assert!(error("").2.contains("expected 'model', found end of input"));
    let (_, _, e) = error(&format!("{head}  %y = Relu() {{v=[]}}\n  output %y\n}}\n"));
    assert!(e.contains("ints[]"), "{e}");
}

#[test]
fn truncated_and_garbled_text_gives_errors_not_panics() {
    let printed = model_to_text(&parse(EVERYTHING).unwrap());
    for end in 0..printed.len() {
        if printed.is_char_boundary(end) {
            let _ = parse(&printed[..end]);
        }
    }
    for (i, _) in printed.char_indices().step_by(7) {
        let mut garbled = printed.clone();
        garbled.replace_range(i..i + printed[i..].chars().next().map_or(0, char::len_utf8), "\"");
        let _ = parse(&garbled);
    }
}
