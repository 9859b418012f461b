//! onnxruntime's `com.microsoft.nchwc` ops (what its layout optimizer writes at
//! ORT_ENABLE_ALL on x86): convolutions and pools on channel-blocked tensors.
//!
//! onnxruntime stores such a tensor as `[N, C/B, H, W, B]` in memory but declares it
//! `[N, Cp, H, W]`, `Cp` being the channels rounded up to the block size `B` (8 with AVX2, 16
//! with AVX-512). Read logically, it is an NCHW tensor of `Cp` channels whose padding channels
//! no later weight reads. So: `ReorderInput` pads the channels with zeros to `Cp`,
//! `ReorderOutput` slices them back (and transposes to NHWC when asked), pools are the
//! standard ones, and a `Conv` is the standard convolution (then the sum input, then the fused
//! activation) on its filter put back from onnxruntime's blocked order (`OIHWBiBo` when its
//! input is blocked, `OIHWBo` for depthwise ones and plain inputs) into OIHW.
//!
//! The block size is not written in the model: it is read off the padding, from a
//! `ReorderOutput`'s channel count and the padded channels of the convolution feeding it.

use super::fused_conv::CONV_ATTRIBUTES;
use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{Graph, NodeId, Tensor, ValueId};

const DOMAIN: &str = "com.microsoft.nchwc";

fn is_nchwc(g: &Graph, v: ValueId) -> bool {
    g.producer(v).is_some_and(|(n, _)| g.node(n).domain() == DOMAIN && g.node(n).op_type != "ReorderOutput")
}

/// The block size consistent with every `ReorderOutput(Conv)` pair: channels `c` stored as
/// `p` means `p == round_up(c, B)`, and every blocked convolution has a multiple of `B` outputs.
fn block_size(g: &Graph, nodes: &[NodeId]) -> Result<usize, String> {
    let mut padded_outputs = Vec::new();
    let mut pairs = Vec::new();
    for &id in nodes {
        let n = g.node(id);
        if n.op_type == "Conv"
            && let Some(w) = n.input(1).and_then(|w| g.constant(w))
        {
            padded_outputs.push(w.dims()[0] as usize);
        }
        if n.op_type == "ReorderOutput"
            && let (Some(c), Some(x)) = (n.attr_int("channels"), n.input(0))
            && let Some((conv, _)) = g.producer(x)
            && g.node(conv).op_type == "Conv"
            && let Some(w) = g.node(conv).input(1).and_then(|w| g.constant(w))
        {
            pairs.push((c as usize, w.dims()[0] as usize));
        }
    }
    let fits: Vec<usize> = [4, 8, 16, 32].into_iter().filter(|&b| padded_outputs.iter().all(|p| p % b == 0) && pairs.iter().all(|&(c, p)| c.div_ceil(b) * b == p)).collect();
    match fits[..] {
        [b] => Ok(b),
        [] => Err("no channel block size fits the padded channel counts".into()),
        _ => Err(format!("the channel block size cannot be told from the model (any of {fits:?} fits its channel counts)")),
    }
}

/// A filter in onnxruntime's blocked order back in OIHW order (same dims): `[O/B][I/B][k][Bi][Bo]`
/// when `input_blocked`, else `[O/B][I][k][Bo]`.
fn unblock_filter(w: &Tensor, block: usize, input_blocked: bool) -> Result<Tensor, String> {
    let dims: Vec<usize> = w.dims().iter().map(|&d| d as usize).collect();
    if dims.len() < 3 {
        return Err(format!("filter of shape {dims:?}"));
    }
    let (o_count, i_count, k_count) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
    if o_count % block != 0 || (input_blocked && i_count % block != 0) {
        return Err(format!("filter of shape {dims:?} is not blocked by {block}"));
    }
    let src = w.to_f32().map_err(|e| e.to_string())?;
    let mut out = vec![0f32; src.len()];
    for o in 0..o_count {
        let (ob, bo) = (o / block, o % block);
        for i in 0..i_count {
            for k in 0..k_count {
                let from = if input_blocked {
                    let (ib, bi) = (i / block, i % block);
                    (((ob * (i_count / block) + ib) * k_count + k) * block + bi) * block + bo
                } else {
                    ((ob * i_count + i) * k_count + k) * block + bo
                };
                out[(o * i_count + i) * k_count + k] = src[from];
            }
        }
    }
    Tensor::from_f32(w.dims(), &out).map_err(|e| e.to_string())
}

impl Lowering {
    pub(super) fn expand_nchwc_ops(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).domain() == DOMAIN).collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let block = block_size(self.graph(), &nodes).map_err(|e| self.err(label(self.graph(), nodes[0]), e))?;
        // Whether each convolution's input is blocked, decided before any node is rewritten.
        let blocked_inputs: Vec<bool> = nodes.iter().map(|&id| self.graph().node(id).input(0).is_some_and(|x| is_nchwc(self.graph(), x))).collect();
        for (&id, &input_blocked) in nodes.iter().zip(&blocked_inputs) {
            let lbl = label(self.graph(), id);
            self.expand_nchwc(id, block, input_blocked).map_err(|e| self.err(lbl, e))?;
        }
        Ok(())
    }

    fn expand_nchwc(&mut self, id: NodeId, block: usize, input_blocked: bool) -> Result<(), String> {
        let node = self.graph().node(id).clone();
        let (Some(x), Some(out)) = (node.input(0), node.output(0)) else { return Err("needs an input and an output".into()) };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let channels_last = node.attr_int("channels_last").unwrap_or(0) != 0;
        match node.op_type.as_str() {
            "Conv" => {
                let w = node.input(1).and_then(|w| self.graph().constant(w)).ok_or("the filter must be a constant")?;
                let depthwise = node.attr_int("group").unwrap_or(1) > 1;
                let filter = unblock_filter(&w, block, input_blocked && !depthwise)?;
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.unblocked", lbl_name(&node, out)) };
                let w_v = b.constant("W", filter);
                let conv_inputs: Vec<ValueId> = [Some(x), Some(w_v), node.input(2)].into_iter().flatten().collect();
                let attributes = node.attributes.iter().filter(|a| CONV_ATTRIBUTES.contains(&a.name.as_str())).cloned().collect();
                let mut y = b.op("Conv", &conv_inputs, attributes);
                if let Some(sum) = node.input(3) {
                    y = b.op("Add", &[y, sum], vec![]);
                }
                b.fused_activation(&node, y, Some(out))?;
            }
            "ReorderInput" => {
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.padded", lbl_name(&node, out)) };
                let x = if channels_last { b.op("Transpose", &[x], vec![Attribute::new("perm", AttrValue::Ints(vec![0, 3, 1, 2]))]) } else { x };
                // Zeros [N, round_up(C, B) - C, H, W] after the channels.
                let shape = b.op("Shape", &[x], vec![]);
                let (first, second, rest, end) = (b.constant_i64("n", &[1], &[0]), b.constant_i64("c", &[1], &[1]), b.constant_i64("hw", &[1], &[2]), b.constant_i64("end", &[1], &[i64::MAX]));
                let n = b.op("Gather", &[shape, first], vec![]);
                let c = b.op("Gather", &[shape, second], vec![]);
                let spatial = b.op("Slice", &[shape, rest, end], vec![]);
                let (below, block_v) = (b.constant_i64("below", &[1], &[block as i64 - 1]), b.constant_i64("block", &[1], &[block as i64]));
                let rounded = b.op("Add", &[c, below], vec![]);
                let blocks = b.op("Div", &[rounded, block_v], vec![]);
                let padded = b.op("Mul", &[blocks, block_v], vec![]);
                let extra = b.op("Sub", &[padded, c], vec![]);
                let zeros_shape = b.op("Concat", &[n, extra, spatial], vec![Attribute::new("axis", AttrValue::Int(0))]);
                // Blocked tensors are f32.
                let zero = Tensor::from_f32(&[1], &[0.0]).expect("one value fits");
                let zeros = b.op("ConstantOfShape", &[zeros_shape], vec![Attribute::new("value", AttrValue::Tensor(zero))]);
                b.op_into("Concat", &[x, zeros], vec![Attribute::new("axis", AttrValue::Int(1))], out);
            }
            "ReorderOutput" => {
                let channels = node.attr_int("channels").ok_or("needs channels")?;
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.sliced", lbl_name(&node, out)) };
                let (start, end, axis) = (b.constant_i64("start", &[1], &[0]), b.constant_i64("end", &[1], &[channels]), b.constant_i64("axis", &[1], &[1]));
                if channels_last {
                    let y = b.op("Slice", &[x, start, end, axis], vec![]);
                    b.op_into("Transpose", &[y], vec![Attribute::new("perm", AttrValue::Ints(vec![0, 2, 3, 1]))], out);
                } else {
                    b.op_into("Slice", &[x, start, end, axis], vec![], out);
                }
            }
            "MaxPool" | "AveragePool" | "GlobalMaxPool" | "GlobalAveragePool" => {
                let n = self.model.graph.node_mut(id);
                n.domain = None;
                return Ok(());
            }
            other => return Err(format!("{DOMAIN}.{other} is not supported")),
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
