//! Inputs tract reads more strictly than ONNX (and onnxruntime) define them:
//! - `ConstantOfShape` without a `value` attribute makes float32 zeros; tract makes f64 ones,
//!   which then spread through its type unification (an f32 × f64 MatMul it refuses). The
//!   default is written out.
//! - `Range`'s start, limit and delta and `Pad`'s constant value are scalars; exporters also
//!   pass one-element vectors, which onnxruntime takes and tract refuses. They are reshaped to
//!   scalars unless already known to be.
//! - `Flatten` of leading dimensions that are two or more symbols (MiniLM's `[batch, seq]`
//!   attention mask flattened at axis 2): tract's inference cannot type a product of symbols and
//!   the model then has no plan for every length. When the trailing dimensions are known it is
//!   the Reshape to `[-1, their product]`, which tract types.

use super::{Builder, Lowering, lbl_name};
use compactor_ir::graph::AttrValue;
use compactor_ir::{NodeId, Tensor};

impl Lowering {
    pub(super) fn meet_tract_strictness(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes();
        for id in nodes {
            let node = self.graph().node(id);
            if node.is("Flatten") {
                self.flatten_as_reshape(id);
                continue;
            }
            if node.is("ConstantOfShape") && node.attr("value").is_none() {
                let zero = Tensor::from_f32(&[1], &[0.0]).expect("one value");
                self.model.graph.node_mut(id).set_attr("value", AttrValue::Tensor(zero));
                continue;
            }
            let scalars: &[usize] = if node.is("Range") {
                &[0, 1, 2]
            } else if node.is("Pad") {
                &[2]
            } else {
                continue;
            };
            let slots: Vec<usize> = scalars.iter().copied().filter(|&i| node.input(i).is_some_and(|v| self.value_rank(v) != Some(0))).collect();
            if slots.is_empty() {
                continue;
            }
            let node = node.clone();
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let label = node.output(0).map_or_else(|| node.op_type.clone(), |out| lbl_name(&node, out));
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{label}.scalar") };
            let scalar_shape = b.constant_i64("shape", &[0], &[]);
            let mut inputs = node.inputs.clone();
            for i in slots {
                let v = node.input(i).expect("filtered");
                inputs[i] = Some(b.op("Reshape", &[v, scalar_shape], vec![]));
            }
            self.model.graph.node_mut(id).inputs = inputs;
            self.report.expanded_functions += 1;
        }
    }

    /// `Flatten(x, axis)` as `Reshape(x, [-1, P])`, P the product of `x`'s dimensions from `axis`
    /// on, when those are known and not 0 (`-1` would be ambiguous), and axis is not 0.
    fn flatten_as_reshape(&mut self, id: NodeId) {
        let node = self.graph().node(id).clone();
        let Some(x) = node.input(0) else { return };
        // x's shape is read from x, or from what x is a Cast of (an undeclared intermediate).
        let source = if self.value_rank(x).is_some() {
            x
        } else {
            let Some((producer, _)) = self.graph().producer(x) else { return };
            let p = self.graph().node(producer);
            match p.input(0) {
                Some(v) if p.is("Cast") => v,
                _ => return,
            }
        };
        let Some(rank) = self.value_rank(source) else { return };
        let axis = node.attr_int("axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        if axis <= 0 || axis > rank as i64 {
            return;
        }
        let trailing: Option<Vec<i64>> = (axis..rank as i64).map(|d| self.known_dim(source, d)).collect();
        let Some(product) = trailing.map(|t| t.iter().product::<i64>()) else { return };
        if product == 0 {
            return;
        }
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let label = node.output(0).map_or_else(|| node.op_type.clone(), |out| lbl_name(&node, out));
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{label}.flatten") };
        let shape = b.constant_i64("shape", &[2], &[-1, product]);
        let n = self.model.graph.node_mut(id);
        n.op_type = "Reshape".into();
        n.domain = None;
        n.attributes.clear();
        n.inputs = vec![Some(x), Some(shape)];
        self.report.expanded_functions += 1;
    }
}
