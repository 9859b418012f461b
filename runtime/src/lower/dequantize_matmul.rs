//! Step 1 of lowering: `DequantizeLinear(constant 2-D weight) -> MatMul` (directly, or through a
//! `Transpose` for an `[N, K]` weight) fused into `com.microsoft.MatMulNBits`, which the runtime
//! registers with its own kernel that keeps the weight packed.

use super::quant_params::{QuantLayout, check_scale_shape, dims_usize, quant_layout, quant_type, scale_index};
use super::{Lowering, label};
use crate::error::RuntimeError;
use bytes::Bytes;
use compactor_ir::graph::{AttrValue, Attribute, Use};
use compactor_ir::pattern::{WeightStep, weight_readers};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    /// Step 1: `DequantizeLinear(constant W) -> [Transpose] -> MatMul(A, .)` into MatMulNBits.
    pub(super) fn fuse_dequantize_matmul(&mut self) -> Result<(), RuntimeError> {
        let uses = self.graph().uses();
        let candidates: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).is("DequantizeLinear")).collect();
        for dq in candidates {
            let Some(plan) = self.fusion_plan(dq, &uses) else { continue };
            self.apply_fusion(dq, plan)?;
        }
        Ok(())
    }

    /// Which MatMuls a dequantized constant weight feeds, and in which orientation.
    fn fusion_plan(&self, dq: NodeId, uses: &compactor_ir::UseMap) -> Option<FusionPlan> {
        let g = self.graph();
        let node = g.node(dq);
        let out = node.output(0)?;
        let x = g.constant(node.input(0)?)?;
        quant_type(x.dtype())?;
        if x.dims().len() != 2 {
            return None;
        }
        let scale = g.constant(node.input(1)?)?;
        if !matches!(scale.dtype(), DataType::Float | DataType::Float16 | DataType::Bfloat16) {
            return None;
        }
        let zero = match node.input(2) {
            Some(z) => Some(g.constant(z)?),
            None => None,
        };
        if node.attr_int("output_dtype").is_some_and(|t| t != 0 && t != scale.dtype().code() as i64) {
            return None;
        }
        let layout = quant_layout(node, 2, scale.dims().len()).ok()?;
        check_scale_shape(layout, &dims_usize(&x), &dims_usize(&scale)).ok()?;
        // A zero point must have the scale's shape and the weight's type; anything else is left
        // to the plain path, which reports it.
        if zero.as_ref().is_some_and(|z| z.dims() != scale.dims() || z.dtype() != x.dtype()) {
            return None;
        }
        // Every use must be a MatMul's right operand, directly (W is [K, N]) or through a
        // 2-D Transpose (W is [N, K]); anything else keeps the plain dequantization.
        let readers = weight_readers(g, uses, out, &[WeightStep::Transpose]);
        if readers.is_output {
            return None;
        }
        let mut matmuls = Vec::new();
        for r in &readers.readers {
            if !g.node(r.node).is("MatMul") || r.input != 1 || r.chain.len() > 1 {
                return None;
            }
            matmuls.push((r.node, r.transposed(g)));
        }
        // Every Transpose of the weight goes with it (one nothing reads, too).
        let transposes: Vec<NodeId> = uses.of(out).iter().filter_map(|u| if let Use::Node { node, .. } = *u { Some(node) } else { None }).filter(|&n| g.node(n).is("Transpose")).collect();
        if matmuls.is_empty() {
            return None;
        }
        // Orientation decides which axis is K; the quantization must not vary along K within a block
        // of the kernel's layout, i.e. it must be blocked along K, per output channel, or per tensor.
        for &(_, transposed) in &matmuls {
            let k_axis = if transposed { 1 } else { 0 };
            let fits = match layout {
                QuantLayout::PerTensor => true,
                QuantLayout::PerAxis { axis } => axis != k_axis,
                QuantLayout::Blocked { axis, .. } => axis == k_axis,
            };
            if !fits {
                return None;
            }
        }
        Some(FusionPlan { x, scale, zero, layout, matmuls, transposes })
    }

    fn apply_fusion(&mut self, dq: NodeId, plan: FusionPlan) -> Result<(), RuntimeError> {
        let dq_label = label(self.graph(), dq);
        let qt = quant_type(plan.x.dtype()).expect("checked by fusion_plan");
        let dims = dims_usize(&plan.x);
        let codes = plan.x.to_i64().map_err(|e| self.err(dq_label.clone(), e.to_string()))?;
        let scales = plan.scale.to_f32().map_err(|e| self.err(dq_label.clone(), e.to_string()))?;
        let zeros: Vec<i64> = match &plan.zero {
            Some(z) => z.to_i64().map_err(|e| self.err(dq_label.clone(), e.to_string()))?,
            None => vec![0; scales.len()],
        };
        let scale_dims = dims_usize(&plan.scale);
        // One packed weight per orientation in use (usually just one).
        for transposed in [false, true] {
            let users: Vec<NodeId> = plan.matmuls.iter().filter(|m| m.1 == transposed).map(|m| m.0).collect();
            if users.is_empty() {
                continue;
            }
            let (k, n) = if transposed { (dims[1], dims[0]) } else { (dims[0], dims[1]) };
            let block = match plan.layout {
                QuantLayout::Blocked { block, .. } => block.min(k),
                _ => k,
            };
            let k_blocks = k.div_ceil(block);
            let per_block = (block * qt.bits as usize).div_ceil(8);
            let mut packed = vec![0u8; n * k_blocks * per_block];
            let mut block_scales = Vec::with_capacity(n * k_blocks);
            let mut block_zeros = Vec::with_capacity(n * k_blocks);
            for col in 0..n {
                for b in 0..k_blocks {
                    // The element of x at (k = b * block, n = col) says which scale the block uses.
                    let first = if transposed { [col, b * block] } else { [b * block, col] };
                    let s = scale_index(plan.layout, &first, &scale_dims);
                    block_scales.push(scales[s]);
                    block_zeros.push((zeros[s] + qt.offset) as u8);
                }
                for kk in 0..k {
                    let flat = if transposed { col * dims[1] + kk } else { kk * dims[1] + col };
                    let code = (codes[flat] + qt.offset) as u8;
                    let (b, i) = (kk / block, kk % block);
                    let bit = i * qt.bits as usize;
                    packed[(col * k_blocks + b) * per_block + bit / 8] |= code << (bit % 8);
                }
            }
            let zp_per_col = (k_blocks * qt.bits as usize).div_ceil(8);
            let mut zp_packed = vec![0u8; n * zp_per_col];
            for col in 0..n {
                for b in 0..k_blocks {
                    let bit = b * qt.bits as usize;
                    zp_packed[col * zp_per_col + bit / 8] |= block_zeros[col * k_blocks + b] << (bit % 8);
                }
            }
            let scale_tensor = if plan.scale.dtype() == DataType::Float16 {
                let halves: Vec<u8> = block_scales.iter().flat_map(|&s| half::f16::from_f32(s).to_le_bytes()).collect();
                Tensor::from_raw(DataType::Float16, &[(n * k_blocks) as u64], Bytes::from(halves))
            } else {
                Tensor::from_f32(&[(n * k_blocks) as u64], &block_scales)
            }
            .map_err(|e| self.err(dq_label.clone(), e.to_string()))?;
            let region = self.graph().node(users[0]).region;
            let base = self.graph().value(self.graph().node(dq).output(0).expect("fusion_plan checked")).name.clone();
            let b_value = self.add_initializer(
                region,
                &format!("{base}.packed"),
                Tensor::from_raw(DataType::Uint8, &[n as u64, k_blocks as u64, per_block as u64], Bytes::from(packed)).map_err(|e| self.err(dq_label.clone(), e.to_string()))?,
            );
            let s_value = self.add_initializer(region, &format!("{base}.block_scales"), scale_tensor);
            let z_value = self.add_initializer(
                region,
                &format!("{base}.block_zeros"),
                Tensor::from_raw(DataType::Uint8, &[(n * zp_per_col) as u64], Bytes::from(zp_packed)).map_err(|e| self.err(dq_label.clone(), e.to_string()))?,
            );
            for mm in users {
                let node = self.model.graph.node_mut(mm);
                let a = node.inputs[0];
                node.op_type = "MatMulNBits".into();
                node.domain = Some("com.microsoft".into());
                node.inputs = vec![a, Some(b_value), Some(s_value), Some(z_value)];
                node.attributes = vec![
                    Attribute::new("K", AttrValue::Int(k as i64)),
                    Attribute::new("N", AttrValue::Int(n as i64)),
                    Attribute::new("bits", AttrValue::Int(qt.bits as i64)),
                    Attribute::new("block_size", AttrValue::Int(block as i64)),
                ];
                self.report.fused_matmuls += 1;
            }
        }
        if self.model.opset_version("com.microsoft").is_none() {
            self.model.set_opset_version("com.microsoft", 1);
        }
        // The dequantize (and transposes) now have no users.
        for t in plan.transposes {
            self.remove_node_and_outputs(t);
        }
        self.remove_node_and_outputs(dq);
        Ok(())
    }

    fn remove_node_and_outputs(&mut self, id: NodeId) {
        let outputs: Vec<ValueId> = self.graph().node(id).outputs.iter().flatten().copied().collect();
        self.model.graph.remove_node(id);
        for v in outputs {
            self.model.graph.remove_value(v);
        }
    }
}

struct FusionPlan {
    x: Tensor,
    scale: Tensor,
    zero: Option<Tensor>,
    layout: QuantLayout,
    /// (MatMul node, weight reaches it through a Transpose)
    matmuls: Vec<(NodeId, bool)>,
    transposes: Vec<NodeId>,
}
