//! Raises the default-domain opset, rewriting the ops whose meaning or signature changed on
//! the way so the model computes the same thing (most newer op versions only add types).
//!
//! Handled, by the version that changed them: Upsample's scales to an input and
//! BatchNormalization's `spatial` dropped (9); Slice's starts/ends/axes and TopK's k to
//! inputs, Upsample to Resize with the same (asymmetric) sampling (10); Clip's min/max and
//! Pad's pads/value to inputs, Resize-10 to Resize-11 with its sampling spelled out, Scatter
//! renamed ScatterElements (11); Dropout ratio to an input (12); Split,
//! Squeeze/Unsqueeze and ReduceSum axes to inputs, and Softmax/LogSoftmax/Hardmax from
//! "flatten at axis" to "along axis" (13); RoiAlign's new default coordinate mode (16); the
//! other Reduce* axes to inputs and Split's `num_outputs` for equal parts (18); GridSample mode names and DFT's axis input (20);
//! GroupNormalization scale/bias from per-group to per-channel (21). Opsets 22 to 25 only add
//! types (bfloat16, 4- and 2-bit, fp8/fp4) and new ops. What has no equivalent is refused
//! with a clear error: Scan-8's batch axis, BatchNormalization with `spatial=0`, a Dropout
//! mask whose type changes while something reads it, and Upsample/Scatter in a model already
//! past the opset that deprecated them. Reaching 21, int8 activation Q/DQ pairs become uint8
//! ones (`upgrade_opset/unsigned_qdq.rs` says why).

mod unsigned_qdq;

use crate::analysis::Uses;
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Anchor, AttrValue, DataType, Graph, NodeId, PValue, Patch, Tensor, ValueId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeOpset {
    /// The default-domain opset to upgrade to (from 7 or newer, up to 25; models already at or above it are left alone).
    pub version: i64,
}

impl Default for UpgradeOpset {
    fn default() -> Self {
        UpgradeOpset { version: 21 }
    }
}

/// Lowest opset this pass upgrades from.
const OLDEST: i64 = 7;
/// Newest opset whose changes this pass knows (22 to 25 only add types and new ops).
const NEWEST: i64 = 25;

impl PassDef for UpgradeOpset {
    const NAME: &'static str = "upgrade-opset";
    const SUMMARY: &'static str = "Raise the default-domain opset, rewriting ops whose semantics or signature changed";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !(OLDEST + 1..=NEWEST).contains(&self.version) {
            return Err(OptionError::new("version", format!("must be between {} and {NEWEST}", OLDEST + 1)));
        }
        Ok(())
    }
}

/// The IR version a default-domain opset needs (onnx's VERSION_TABLE).
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        _ => 13,
    }
}

const REDUCE_18: &[&str] = &["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"];

struct Upgrade<'g> {
    graph: &'g Graph,
    /// A copy of the graph with inferred types, for rewrites that need an element type the
    /// model does not annotate (Clip and Pad bounds at 11); the ids are the graph's.
    typed: Option<Graph>,
    patch: Patch,
    from: i64,
    to: i64,
    rewritten: usize,
}

impl Upgrade<'_> {
    fn crosses(&self, version: i64) -> bool {
        self.from < version && version <= self.to
    }

    fn fail(&self, node: NodeId, reason: impl Into<String>) -> PassError {
        PassError::failed(UpgradeOpset::NAME, self.graph.node(node).label(node), reason)
    }

    /// Moves an int-list attribute to an int64 input at `index` (no input when the attribute is absent: the default carries over).
    fn ints_attr_to_input(&mut self, node: NodeId, attr: &'static str, index: usize) -> Result<(), PassError> {
        let n = self.graph.node(node);
        if let Some(values) = n.attr_ints(attr) {
            let tensor = Tensor::from_i64(&[values.len() as u64], values).map_err(|e| PassError::ir(UpgradeOpset::NAME, e))?;
            let hint = format!("{}_{attr}", n.name.clone().unwrap_or_else(|| n.op_type.to_lowercase()));
            let c = self.patch.new_initializer(n.region, &hint, tensor);
            self.patch.set_input(node, index, Some(c));
            self.patch.remove_attr(node, attr);
            self.rewritten += 1;
        }
        Ok(())
    }

    fn scalar_input(&mut self, node: NodeId, index: usize, hint: &str, tensor: Tensor) {
        let region = self.graph.node(node).region;
        let c = self.patch.new_initializer(region, hint, tensor);
        self.patch.set_input(node, index, Some(c));
        self.rewritten += 1;
    }

    /// Softmax-family before 13 flattened to 2-D at `axis` (default 1); from 13 it works along one axis.
    fn softmax(&mut self, node: NodeId) -> Result<(), PassError> {
        let n = self.graph.node(node);
        let axis = n.attr_int("axis").unwrap_or(1);
        let (Some(x), Some(out)) = (n.input(0), n.output(0)) else { return Ok(()) };
        let rank = self.graph.value(x).shape().map(|s| s.rank() as i64);
        if let Some(rank) = rank {
            let a = if axis < 0 { axis + rank } else { axis };
            if a == rank - 1 {
                self.patch.set_attr(node, "axis", AttrValue::Int(-1));
                self.rewritten += 1;
                return Ok(());
            }
        }
        // Flatten at the old axis, normalise the last axis, reshape back.
        let region = n.region;
        let hint = n.name.clone().unwrap_or_else(|| n.op_type.to_lowercase());
        let flat = self.patch.new_value(region, &format!("{hint}_flat"), None);
        let shape = self.patch.new_value(region, &format!("{hint}_shape"), None);
        let result = self.patch.new_value(region, &format!("{hint}_2d"), None);
        self.patch.node("Flatten", Anchor::Before(node)).input(x).output(flat).attr("axis", AttrValue::Int(axis)).add();
        self.patch.node("Shape", Anchor::Before(node)).input(x).output(shape).add();
        let op = n.op_type.clone();
        let mut softmax = self.patch.node(&op, Anchor::Before(node)).input(flat).output(result).attr("axis", AttrValue::Int(-1));
        if let Some(name) = &n.name {
            softmax = softmax.name(name.clone());
        }
        softmax.add();
        self.patch.node("Reshape", Anchor::Before(node)).input(result).input(shape).output(PValue::Existing(out)).add();
        self.patch.remove_node(node);
        self.rewritten += 1;
        Ok(())
    }

    /// GroupNormalization-21 takes per-channel scale and bias; 18 took one per group.
    fn group_norm(&mut self, node: NodeId) -> Result<(), PassError> {
        let n = self.graph.node(node);
        let groups = n.attr_int("num_groups").ok_or_else(|| self.fail(node, "GroupNormalization without num_groups"))?;
        let channels = n.input(0).and_then(|x| self.graph.value(x).shape()).and_then(|s| s.dims.get(1)).and_then(|d| d.known());
        let Some(channels) = channels.filter(|&c| groups > 0 && c % groups == 0) else {
            return Err(self.fail(node, "cannot upgrade GroupNormalization to opset 21: the channel count is unknown"));
        };
        for index in [1, 2] {
            let v: ValueId = n.input(index).ok_or_else(|| self.fail(node, "GroupNormalization without scale/bias"))?;
            let tensor = self.graph.constant(v).ok_or_else(|| self.fail(node, "cannot upgrade GroupNormalization to opset 21: scale/bias are not constants"))?;
            let per_group = tensor.to_f32().map_err(|e| PassError::ir(UpgradeOpset::NAME, e))?;
            let per_channel: Vec<f32> = (0..channels).map(|c| per_group[(c / (channels / groups)) as usize]).collect();
            let t = Tensor::from_f32(&[channels as u64], &per_channel).map_err(|e| PassError::ir(UpgradeOpset::NAME, e))?;
            let hint = format!("{}_per_channel", self.graph.value(v).name);
            let c = self.patch.new_initializer(n.region, &hint, t);
            self.patch.set_input(node, index, Some(c));
        }
        self.rewritten += 1;
        Ok(())
    }

    /// Replaces `node` by a node of another op type (or version) that reads `inputs` and
    /// writes the same outputs; `attrs` are its attributes.
    fn replace_node(&mut self, node: NodeId, op: &str, inputs: Vec<Option<PValue>>, attrs: Vec<(&'static str, AttrValue)>) {
        let n = self.graph.node(node);
        let mut b = self.patch.node(op, Anchor::Before(node));
        for input in inputs {
            b = match input {
                Some(v) => b.input(v),
                None => b.no_input(),
            };
        }
        // The ops replaced this way have one output.
        for out in n.outputs.iter().flatten() {
            b = b.output(PValue::Existing(*out));
        }
        for (name, value) in attrs {
            b = b.attr(name, value);
        }
        if let Some(name) = &n.name {
            b = b.name(name.clone());
        }
        b.add();
        self.patch.remove_node(node);
        self.rewritten += 1;
    }

    fn inputs_of(&self, node: NodeId) -> Vec<Option<PValue>> {
        self.graph.node(node).inputs.iter().map(|i| i.map(PValue::Existing)).collect()
    }

    fn hint(&self, node: NodeId, what: &str) -> String {
        let n = self.graph.node(node);
        format!("{}_{what}", n.name.clone().unwrap_or_else(|| n.op_type.to_lowercase()))
    }

    /// A scalar of the floating-point element type of `node`'s first input (Clip and Pad
    /// bounds are attributes of type float before 11, inputs of the data's type from 11).
    fn float_scalar_like_input(&self, node: NodeId, value: f32) -> Result<Tensor, PassError> {
        let x = self.graph.node(node).input(0);
        let elem = x.and_then(|x| self.graph.value(x).elem()).or_else(|| self.typed.as_ref().and_then(|g| g.value(x?).elem()));
        let bytes: Vec<u8> = match elem {
            Some(DataType::Float) => value.to_le_bytes().to_vec(),
            Some(DataType::Double) => (value as f64).to_le_bytes().to_vec(),
            Some(DataType::Float16) => half::f16::from_f32(value).to_le_bytes().to_vec(),
            other => return Err(self.fail(node, format!("cannot move a float attribute to an input: the data's element type is {}", other.map_or("unknown".to_string(), |t| format!("{t:?}"))))),
        };
        Tensor::from_raw(elem.expect("matched above"), &[], bytes.into()).map_err(|e| PassError::ir(UpgradeOpset::NAME, e))
    }

    /// Upsample (7: scales attribute; 9: scales input) as Resize: nearest sampling takes
    /// the floor of `out / scale`, linear interpolates at `out / scale`, which Resize-10
    /// means by default and Resize-11 spells `asymmetric` (+ `floor` for nearest).
    fn upsample(&mut self, node: NodeId) -> Result<(), PassError> {
        let n = self.graph.node(node);
        let mode = match n.attr_string("mode").unwrap_or("nearest") {
            "nearest" => "nearest",
            "linear" | "bilinear" => "linear",
            other => return Err(self.fail(node, format!("Upsample mode '{other}' has no Resize equivalent"))),
        };
        let x = n.input(0).ok_or_else(|| self.fail(node, "Upsample without an input"))?;
        let scales_attr = n.attr("scales").and_then(|a| match a {
            AttrValue::Floats(f) => Some(f.clone()),
            _ => None,
        });
        let scales = match (n.input(1), scales_attr) {
            (Some(s), _) => PValue::Existing(s),
            (None, Some(values)) => {
                let t = Tensor::from_f32(&[values.len() as u64], &values).map_err(|e| PassError::ir(UpgradeOpset::NAME, e))?;
                let hint = self.hint(node, "scales");
                self.patch.new_initializer(n.region, &hint, t)
            }
            (None, None) => return Err(self.fail(node, "Upsample without scales")),
        };
        self.resize(node, x, scales, mode)
    }

    /// Writes a Resize for the target opset reading `x` and `scales`, with Upsample's and
    /// Resize-10's asymmetric sampling.
    fn resize(&mut self, node: NodeId, x: ValueId, scales: PValue, mode: &str) -> Result<(), PassError> {
        let mut attrs: Vec<(&'static str, AttrValue)> = vec![("mode", AttrValue::String(mode.to_string().into()))];
        let inputs = if self.to >= 11 {
            attrs.push(("coordinate_transformation_mode", AttrValue::String("asymmetric".into())));
            if mode == "nearest" {
                attrs.push(("nearest_mode", AttrValue::String("floor".into())));
            }
            // Resize-11 requires the roi input (unused unless tf_crop_and_resize); 13 makes it optional.
            let roi = if self.to >= 13 {
                None
            } else {
                let region = self.graph.node(node).region;
                let hint = self.hint(node, "roi");
                Some(self.patch.new_initializer(region, &hint, Tensor::from_f32(&[0], &[]).expect("empty")))
            };
            vec![Some(PValue::Existing(x)), roi, Some(scales)]
        } else {
            vec![Some(PValue::Existing(x)), Some(scales)]
        };
        self.replace_node(node, "Resize", inputs, attrs);
        Ok(())
    }

    /// Upgrades before 11 that are not expressible as the newer ops' defaults.
    fn before_11(&mut self, node: NodeId) -> Result<bool, PassError> {
        let n = self.graph.node(node);
        match n.op_type.as_str() {
            "Scan" if self.crosses(9) => Err(self.fail(node, "Scan-8 has a batch axis that Scan-9 and later do not; upgrading it is not supported")),
            "BatchNormalization" if self.crosses(9) && n.attr("spatial").is_some() => {
                if n.attr_int("spatial") == Some(0) {
                    return Err(self.fail(node, "BatchNormalization with spatial=0 (per-element statistics) has no equivalent from opset 9"));
                }
                self.patch.remove_attr(node, "spatial");
                self.rewritten += 1;
                Ok(true)
            }
            "Upsample" if self.crosses(10) => {
                self.upsample(node)?;
                Ok(true)
            }
            "Dropout" if self.crosses(10) => {
                // Dropout-10's mask is bool; before, it had the data's type.
                if let Some(mask) = n.output(1)
                    && self.graph.uses().is_used(mask)
                {
                    return Err(self.fail(node, "Dropout's mask output is read, and its type changes at opset 10"));
                }
                Ok(false)
            }
            "Slice" if self.crosses(10) => {
                if n.attr_ints("starts").is_none() || n.attr_ints("ends").is_none() {
                    return Err(self.fail(node, "Slice without starts or ends"));
                }
                self.ints_attr_to_input(node, "starts", 1)?;
                self.ints_attr_to_input(node, "ends", 2)?;
                self.ints_attr_to_input(node, "axes", 3)?;
                Ok(true)
            }
            "TopK" if self.crosses(10) => {
                let k = n.attr_int("k").ok_or_else(|| self.fail(node, "TopK without k"))?;
                let hint = self.hint(node, "k");
                self.scalar_input(node, 1, &hint, Tensor::from_i64(&[1], &[k]).expect("one value"));
                self.patch.remove_attr(node, "k");
                Ok(true)
            }
            "Resize" if self.crosses(11) => {
                let mode = n.attr_string("mode").unwrap_or("nearest").to_string();
                let (Some(x), Some(scales)) = (n.input(0), n.input(1)) else { return Err(self.fail(node, "Resize-10 without its two inputs")) };
                self.resize(node, x, PValue::Existing(scales), &mode)?;
                Ok(true)
            }
            "Clip" if self.crosses(11) => {
                for (attr, index) in [("min", 1), ("max", 2)] {
                    if let Some(v) = n.attr_float(attr) {
                        let t = self.float_scalar_like_input(node, v)?;
                        let hint = self.hint(node, attr);
                        self.scalar_input(node, index, &hint, t);
                        self.patch.remove_attr(node, attr);
                    }
                }
                Ok(true)
            }
            "Pad" if self.crosses(11) => {
                let pads = n.attr_ints("pads").ok_or_else(|| self.fail(node, "Pad without pads"))?.to_vec();
                let hint = self.hint(node, "pads");
                self.scalar_input(node, 1, &hint, Tensor::from_i64(&[pads.len() as u64], &pads).map_err(|e| PassError::ir(UpgradeOpset::NAME, e))?);
                self.patch.remove_attr(node, "pads");
                if let Some(v) = n.attr_float("value") {
                    self.patch.remove_attr(node, "value");
                    if v != 0.0 {
                        let t = self.float_scalar_like_input(node, v)?;
                        let hint = self.hint(node, "value");
                        self.scalar_input(node, 2, &hint, t);
                    }
                }
                Ok(true)
            }
            "Scatter" if self.crosses(11) => {
                // ScatterElements-11 is Scatter-9 under its new name.
                let inputs = self.inputs_of(node);
                let attrs = n.attr_int("axis").map(|axis| ("axis", AttrValue::Int(axis))).into_iter().collect();
                self.replace_node(node, "ScatterElements", inputs, attrs);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn node(&mut self, node: NodeId) -> Result<(), PassError> {
        let n = self.graph.node(node);
        if !n.domain().is_empty() {
            return Ok(());
        }
        if self.before_11(node)? {
            return Ok(());
        }
        let op = n.op_type.clone();
        match op.as_str() {
            // Deprecated at 10 and 11: valid until then, rewritten when crossing (above).
            "Upsample" | "Scatter" if self.from >= if op == "Upsample" { 10 } else { 11 } => {
                return Err(self.fail(node, format!("{op} is deprecated and the model is already past the opset that deprecated it; replace it (Resize / ScatterElements) first")));
            }
            "Dropout" if self.crosses(12) => {
                if let Some(ratio) = n.attr_float("ratio") {
                    self.scalar_input(node, 1, "dropout_ratio", Tensor::from_f32(&[], &[ratio]).expect("scalar"));
                    self.patch.remove_attr(node, "ratio");
                }
            }
            "Split" if self.crosses(13) || self.crosses(18) => {
                if self.crosses(13) {
                    self.ints_attr_to_input(node, "split", 1)?;
                }
                // Split-18 needs `split` or `num_outputs`; before, neither meant equal parts, one per output.
                let n = self.graph.node(node);
                if self.crosses(18) && n.input(1).is_none() && n.attr_ints("split").is_none() && n.attr("num_outputs").is_none() {
                    self.patch.set_attr(node, "num_outputs", AttrValue::Int(n.outputs.len() as i64));
                    self.rewritten += 1;
                }
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" if self.crosses(13) => self.ints_attr_to_input(node, "axes", 1)?,
            "Softmax" | "LogSoftmax" | "Hardmax" if self.crosses(13) => self.softmax(node)?,
            "RoiAlign" if self.crosses(16) && n.attr("coordinate_transformation_mode").is_none() => {
                self.patch.set_attr(node, "coordinate_transformation_mode", AttrValue::String("output_half_pixel".into()));
                self.rewritten += 1;
            }
            r if REDUCE_18.contains(&r) && self.crosses(18) => self.ints_attr_to_input(node, "axes", 1)?,
            "GridSample" if self.crosses(20) => {
                let renamed = match n.attr_string("mode") {
                    Some("bilinear") => Some("linear"),
                    Some("bicubic") => Some("cubic"),
                    _ => None,
                };
                if let Some(mode) = renamed {
                    self.patch.set_attr(node, "mode", AttrValue::String(mode.into()));
                    self.rewritten += 1;
                }
            }
            "DFT" if self.crosses(20) => {
                // DFT-17's axis attribute defaulted to 1; DFT-20's axis input defaults to -2.
                let axis = n.attr_int("axis").unwrap_or(1);
                self.scalar_input(node, 2, "dft_axis", Tensor::scalar_i64(axis));
                self.patch.remove_attr(node, "axis");
            }
            "GroupNormalization" if self.crosses(21) => self.group_norm(node)?,
            _ => {}
        }
        Ok(())
    }
}

impl Pass for UpgradeOpset {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let from = ctx.opset("").ok_or_else(|| PassError::failed(Self::NAME, "model", "the model imports no default-domain opset"))?;
        if from >= self.version {
            return Ok(PassOutcome::unchanged(format!("already at opset {from}")));
        }
        if from < OLDEST {
            return Err(PassError::failed(Self::NAME, "model", format!("upgrading from opset {from} is not supported (opset {OLDEST} or newer)")));
        }
        let typed = (from < 11 && self.version >= 11).then(|| {
            let mut copy = graph.clone();
            ctx.infer_shapes(&mut copy);
            copy
        });
        let mut up = Upgrade { graph, typed, patch: Patch::new(), from, to: self.version, rewritten: 0 };
        for node in graph.all_nodes() {
            up.node(node)?;
        }
        if up.crosses(21) {
            let uses = ctx.analyses.get::<Uses>(graph);
            up.rewritten += unsigned_qdq::unsigned_activation_qdq(graph, &uses, &mut up.patch);
        }
        let Upgrade { patch, rewritten, .. } = up;
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        ctx.set_opset("", self.version);
        ctx.require_ir_version(min_ir_version(self.version));
        Ok(PassOutcome::changed(format!("opset {from} -> {}: rewrote {rewritten} nodes", self.version)))
    }
}
