//! A small builder of ONNX op chains inside a [`Patch`], for the subgraphs token reduction
//! inserts (selection, gathers, scatters). It hides what changed between opsets (reduction
//! and squeeze axes as attributes or inputs) and names every node and value after one label.

use compactor_ir::{Anchor, AttrValue, DataType, PValue, Patch, RegionId, Tensor};

pub(crate) struct Emitter<'p> {
    pub patch: &'p mut Patch,
    region: RegionId,
    pub anchor: Anchor,
    label: String,
    opset: i64,
    count: usize,
}

impl<'p> Emitter<'p> {
    pub fn new(patch: &'p mut Patch, region: RegionId, anchor: Anchor, label: &str, opset: i64) -> Self {
        Emitter { patch, region, anchor, label: label.to_string(), opset, count: 0 }
    }

    fn next_name(&mut self, op: &str) -> String {
        self.count += 1;
        format!("{}/{}_{}", self.label, op, self.count)
    }

    /// A node with one output.
    pub fn op(&mut self, op: &str, inputs: &[PValue], attrs: &[(&str, AttrValue)]) -> PValue {
        self.op_n(op, inputs, attrs, 1)[0]
    }

    /// A node with `outputs` outputs.
    pub fn op_n(&mut self, op: &str, inputs: &[PValue], attrs: &[(&str, AttrValue)], outputs: usize) -> Vec<PValue> {
        let name = self.next_name(op);
        let outs: Vec<PValue> = (0..outputs).map(|i| self.patch.new_value(self.region, &format!("{name}_out{i}"), None)).collect();
        let mut node = self.patch.node(op, self.anchor).name(name);
        for &i in inputs {
            node = node.input(i);
        }
        for &o in &outs {
            node = node.output(o);
        }
        for (k, v) in attrs {
            node = node.attr(k, v.clone());
        }
        node.add();
        outs
    }

    pub fn i64s(&mut self, values: &[i64]) -> PValue {
        let name = self.next_name("const");
        self.patch.new_initializer(self.region, &name, Tensor::from_i64(&[values.len() as u64], values).expect("a 1-D tensor"))
    }

    pub fn i64_scalar(&mut self, value: i64) -> PValue {
        let name = self.next_name("const");
        self.patch.new_initializer(self.region, &name, Tensor::scalar_i64(value))
    }

    pub fn f32_scalar(&mut self, value: f32) -> PValue {
        let name = self.next_name("const");
        self.patch.new_initializer(self.region, &name, Tensor::from_f32(&[], &[value]).expect("a scalar"))
    }

    pub fn cast(&mut self, x: PValue, to: DataType) -> PValue {
        self.op("Cast", &[x], &[("to", AttrValue::Int(to as i64))])
    }

    /// ReduceSum/ReduceMean/ReduceMax over `axes` (attribute or input, by opset).
    pub fn reduce(&mut self, op: &str, x: PValue, axes: &[i64], keepdims: bool) -> PValue {
        let keep = ("keepdims", AttrValue::Int(keepdims as i64));
        let axes_as_input = if op == "ReduceSum" { self.opset >= 13 } else { self.opset >= 18 };
        if axes_as_input {
            let a = self.i64s(axes);
            self.op(op, &[x, a], &[keep])
        } else {
            self.op(op, &[x], &[("axes", AttrValue::Ints(axes.to_vec())), keep])
        }
    }

    pub fn unsqueeze(&mut self, x: PValue, axes: &[i64]) -> PValue {
        self.axes_op("Unsqueeze", x, axes)
    }

    pub fn squeeze(&mut self, x: PValue, axes: &[i64]) -> PValue {
        self.axes_op("Squeeze", x, axes)
    }

    fn axes_op(&mut self, op: &str, x: PValue, axes: &[i64]) -> PValue {
        if self.opset >= 13 {
            let a = self.i64s(axes);
            self.op(op, &[x, a], &[])
        } else {
            self.op(op, &[x], &[("axes", AttrValue::Ints(axes.to_vec()))])
        }
    }

    /// `x[starts:ends]` along `axes` (steps of one).
    pub fn slice(&mut self, x: PValue, starts: &[i64], ends: &[i64], axes: &[i64]) -> PValue {
        let (s, e, a) = (self.i64s(starts), self.i64s(ends), self.i64s(axes));
        self.op("Slice", &[x, s, e, a], &[])
    }

    /// `Shape(x)[start..end]`.
    pub fn dims(&mut self, x: PValue, start: i64, end: i64) -> PValue {
        let shape = self.op("Shape", &[x], &[]);
        self.slice(shape, &[start], &[end], &[0])
    }

    /// TopK along `axis`, largest first, sorted: (values, indices).
    pub fn top_k(&mut self, x: PValue, k: PValue, axis: i64) -> (PValue, PValue) {
        let outs = self.op_n("TopK", &[x, k], &[("axis", AttrValue::Int(axis)), ("largest", AttrValue::Int(1)), ("sorted", AttrValue::Int(1))], 2);
        (outs[0], outs[1])
    }
}
