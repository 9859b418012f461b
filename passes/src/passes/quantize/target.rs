//! Which weights the pass quantizes, and how each maps to the `[K, N]` matrix of the numerics.

use super::*;

/// A weight as the `[K, N]` f32 matrix the numerics read: a view of the model's own bytes
/// when they already are exactly that (f32, `[K, N]`, 4-byte aligned in a little-endian
/// process), else a converted copy. The view saves a copy and its page faults per weight.
pub(super) enum Matrix {
    View(bytes::Bytes),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Matrix {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // Alignment and length were checked when the view was made.
            Matrix::View(raw) => bytemuck::cast_slice(raw),
            Matrix::Owned(v) => v,
        }
    }
}

/// One weight to quantize and how it maps to the `[K, N]` matrix of the numerics.
pub(super) struct Target {
    /// The node that reads the weight (MatMul, Gemm, Conv or Gather).
    pub(super) node: NodeId,
    pub(super) op: &'static str,
    pub(super) label: String,
    /// The constant at the root of the weight chain, and the nodes between it and `node`.
    pub(super) weight: ValueId,
    pub(super) chain: Vec<NodeId>,
    pub(super) tensor: Tensor,
    /// The activation the weight multiplies; none for Gather.
    pub(super) input: Option<ValueId>,
    /// How calibration reads that activation as rows of K inputs; none where the weight is not
    /// a plain product of them (embedding tables, kxk and grouped convolutions).
    pub(super) rows: Option<RowLayout>,
    /// How the stored weight maps to `[K, N]`.
    pub(super) layout: QdqLayout,
    pub(super) k: usize,
    pub(super) n: usize,
    /// A shared weight's other readers, in execution order, each described as if it read the
    /// weight alone; `node` is the first. `chain` then holds every reader's chain and `layout`,
    /// `k` and `n` the one layout that serves them all.
    pub(super) also: Vec<Target>,
}

impl Target {
    /// The calibration Hessian of the layer's input, where calibration applies to it (for a
    /// shared weight, the sum over its readers').
    pub(super) fn hessian<'c>(&self, calibration: &'c Calibration) -> Option<&'c Hessian> {
        if !self.also.is_empty() {
            return calibration.shared_hessians.get(&self.weight);
        }
        self.rows.as_ref().and(self.input).and_then(|x| calibration.hessians.get(&x))
    }

    /// AWQ's mean |x| per input channel of the layer's input (for a shared weight, the mean
    /// over its readers', when every reader multiplies an activation).
    pub(super) fn mean_abs<'c>(&self, calibration: &'c Calibration) -> Option<&'c Vec<f32>> {
        if !self.also.is_empty() {
            return calibration.shared_mean_abs.get(&self.weight);
        }
        self.rows.as_ref().and(self.input).and_then(|x| calibration.mean_abs.get(&x))
    }

    /// This target and a shared weight's other readers.
    pub(super) fn readers(&self) -> impl Iterator<Item = &Target> {
        std::iter::once(self).chain(&self.also)
    }

    pub(super) fn elements(&self) -> u64 {
        (self.k * self.n) as u64
    }

    /// The weight as the `[K, N]` matrix.
    pub(super) fn matrix(&self) -> Result<Matrix, PassError> {
        let (k, n) = (self.k, self.n);
        if self.tensor.dtype() == DataType::Float && cfg!(target_endian = "little") {
            let raw = self.tensor.raw_data().map_err(|e| PassError::ir(Quantize::NAME, e))?;
            if raw.len() == k * n * 4 && bytemuck::try_cast_slice::<u8, f32>(&raw).is_ok() {
                // Read in place: map the pages in one call rather than a fault per page run.
                compactor_ir::tensor::prefault(&raw);
                match self.layout {
                    QdqLayout::KN => return Ok(Matrix::View(raw)),
                    QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => return Ok(Matrix::Owned(quant::transpose(bytemuck::cast_slice(&raw), n, k))),
                    QdqLayout::Conv { .. } => {}
                }
            }
        }
        let data = self.tensor.to_f32().map_err(|e| PassError::ir(Quantize::NAME, e))?;
        Ok(Matrix::Owned(match &self.layout {
            QdqLayout::KN => data,
            // Stored [N, K].
            QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => quant::transpose(&data, n, k),
            QdqLayout::Conv { out_channels, spatial } => quant::conv_weight_as_kn(&data, *out_channels, k, spatial.iter().product()),
        }))
    }
}

impl Quantize {
    /// The weights this run quantizes, in execution order (of their first reader), and the ones
    /// it leaves (with why).
    pub(super) fn select(&self, graph: &Graph, analyses: &mut Analyses) -> (Vec<Target>, Vec<Skipped>) {
        let uses = analyses.get::<Uses>(graph);
        let mut candidates: Vec<Target> = Vec::new();
        let mut skipped = Vec::new();
        let linear = analyses.get::<LinearLayers>(graph);
        // The readers this pass can rewrite, by the weight they read.
        let mut by_weight: Vec<(ValueId, Vec<Target>)> = Vec::new();
        let mut index: HashMap<ValueId, usize> = HashMap::new();
        for id in graph.all_nodes() {
            let node = graph.node(id);
            let Some(&op) = OPS.iter().find(|&&op| node.is(op)) else { continue };
            if !self.ops.iter().any(|o| o == op) {
                continue;
            }
            let target = if op == "Gather" { gather_target(graph, id) } else { linear.of_node(id).and_then(|l| linear_target(graph, &linear[l], self.block)) };
            let Some(target) = target else { continue };
            match index.get(&target.weight) {
                Some(&i) => by_weight[i].1.push(target),
                None => {
                    index.insert(target.weight, by_weight.len());
                    by_weight.push((target.weight, vec![target]));
                }
            }
        }
        for (weight, mut targets) in by_weight {
            let readers = weight_readers(graph, &uses, weight);
            let label = targets[0].label.clone();
            let target = if readers.readers.len() == 1 && !readers.is_output {
                targets.pop().expect("a weight's first reader")
            } else {
                match shared::group(graph, &readers, targets, &self.ops) {
                    Ok(target) => target,
                    Err(reason) => {
                        skipped.push(Skipped { name: label, reason });
                        continue;
                    }
                }
            };
            let mut names: Vec<&str> = target.readers().map(|r| r.label.as_str()).collect();
            names.push(graph.value(target.weight).name.as_str());
            let reason = if !self.include.is_empty() && !crate::passes::matches_any(&self.include, &names) {
                Some("not matched by include".to_string())
            } else if crate::passes::matches_any(&self.exclude, &names) {
                Some("matched by exclude".to_string())
            } else if target.elements() < self.min_elements {
                Some(format!("{} elements, fewer than min_elements", target.elements()))
            } else if !matches!(target.tensor.dtype(), DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double) {
                Some(format!("weight is {}", target.tensor.dtype()))
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(Skipped { name: target.label, reason }),
                None => candidates.push(target),
            }
        }
        skipped.extend(already_quantized::weights_left_to_their_op(graph).into_iter().map(|(name, reason)| Skipped { name, reason }));
        if self.skip_last
            && let Some(t) = candidates.pop()
        {
            skipped.push(Skipped { name: t.label, reason: "skip_last".into() });
        }
        if self.skip_first && !candidates.is_empty() {
            let t = candidates.remove(0);
            skipped.push(Skipped { name: t.label, reason: "skip_first".into() });
        }
        (candidates, skipped)
    }
}

/// `block` is the pass's block size (0: per channel), which decides a Conv weight's layout.
pub(super) fn linear_target(graph: &Graph, layer: &LinearLayer, block: usize) -> Option<Target> {
    if layer.weight.is_quantized() {
        return None;
    }
    let (op, layout) = match layer.op {
        LinearOp::MatMul => ("MatMul", if layer.weight.transposed { QdqLayout::NK } else { QdqLayout::KN }),
        LinearOp::Gemm => ("Gemm", if layer.weight.transposed { QdqLayout::NK } else { QdqLayout::KN }),
        LinearOp::Conv => {
            let dims: Vec<usize> = layer.weight.tensor.dims().iter().map(|&d| d as usize).collect();
            if quant::conv_per_output_channel(&dims, block) { ("Conv", QdqLayout::ConvPerChannel { dims }) } else { ("Conv", QdqLayout::Conv { out_channels: dims[0], spatial: dims[2..].to_vec() }) }
        }
    };
    let (k, n) = match &layout {
        QdqLayout::Conv { out_channels, spatial } => (layer.weight.tensor.dims()[1] as usize, out_channels * spatial.iter().product::<usize>()),
        QdqLayout::ConvPerChannel { dims } => (dims[1..].iter().product(), dims[0]),
        _ => (layer.in_features as usize, layer.out_features as usize),
    };
    let node = graph.node(layer.node);
    let rows = match layer.op {
        // (`linear_layers` takes Gemms without transA only: their activation is [M, K].)
        LinearOp::MatMul | LinearOp::Gemm => Some(RowLayout::LastAxis),
        LinearOp::Conv => {
            // A 1x1 convolution over all channels, without padding, is a product over the channels
            // at the positions it reads; others mix positions (or groups) into the reduction.
            let dims = layer.weight.tensor.dims();
            let spatial = dims.len() - 2;
            let ones = |name: &str, default: i64| node.attr_ints(name).is_none_or(|v| v.iter().all(|&x| x == default));
            let pointwise =
                dims[2..].iter().all(|&d| d == 1) && node.attr_int("group").unwrap_or(1) == 1 && ones("pads", 0) && node.attr_string("auto_pad").is_none_or(|p| p == "NOTSET" || p == "VALID");
            let strides = node.attr_ints("strides").map(|v| v.iter().map(|&x| x.max(1) as usize).collect()).unwrap_or_else(|| vec![1; spatial]);
            (pointwise && strides.len() == spatial).then_some(RowLayout::Channels { strides })
        }
    };
    Some(Target {
        node: layer.node,
        op,
        label: layer.label(graph),
        weight: layer.weight.value,
        chain: layer.weight.chain.iter().map(|(n, _)| *n).collect(),
        tensor: layer.weight.tensor.clone(),
        input: Some(layer.input),
        rows,
        layout,
        k,
        n,
        also: Vec::new(),
    })
}

/// An embedding lookup `Gather(table [V, D], ids)` on axis 0 with a constant table.
pub(super) fn gather_target(graph: &Graph, node: NodeId) -> Option<Target> {
    let n = graph.node(node);
    if n.attr_int("axis").unwrap_or(0) != 0 {
        return None;
    }
    let table = n.input(0)?;
    let tensor = graph.constant(table)?;
    let &[v, d] = tensor.dims() else { return None };
    Some(Target {
        node,
        op: "Gather",
        label: n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| graph.value(table).name.clone()),
        weight: table,
        chain: Vec::new(),
        tensor,
        input: None,
        rows: None,
        layout: QdqLayout::NK,
        k: d as usize,
        n: v as usize,
        also: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tensor: Tensor, layout: QdqLayout, k: usize, n: usize) -> Target {
        // Ids of a real graph (the numerics read only the tensor and layout).
        let model = compactor_ir::text::parse("model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[1]\n  %y = Relu(%x)\n  output %y\n}\n").unwrap();
        let (node, weight) = (model.graph.all_nodes()[0], model.graph.main().inputs[0]);
        Target { node, op: "MatMul", label: "w".into(), weight, chain: vec![], tensor, input: None, rows: None, layout, k, n, also: vec![] }
    }

    /// The zero-copy view and the converting copy give the same matrix, whatever the
    /// alignment of the stored bytes.
    #[test]
    fn matrix_view_and_copy_agree() {
        let (k, n) = (5, 3);
        let values: Vec<f32> = (0..k * n).map(|i| i as f32 * 0.25 - 1.0).collect();
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // The same bytes at an aligned and at an odd address.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&le);
        let shifted = bytes::Bytes::from(shifted).slice(1..);
        for raw in [bytes::Bytes::from(le.clone()), shifted] {
            let aligned = bytemuck::try_cast_slice::<u8, f32>(&raw).is_ok();
            let kn = target(Tensor::from_raw(DataType::Float, &[k as u64, n as u64], raw.clone()).unwrap(), QdqLayout::KN, k, n);
            let m = kn.matrix().unwrap();
            assert_eq!(matches!(m, Matrix::View(_)), aligned);
            assert_eq!(&*m, &values[..]);
            // Stored [N, K]: the matrix is its transpose.
            let nk = target(Tensor::from_raw(DataType::Float, &[n as u64, k as u64], raw).unwrap(), QdqLayout::NK, n, k);
            let m = nk.matrix().unwrap();
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(m[r * k + c], values[c * n + r]);
                }
            }
        }
    }
}
