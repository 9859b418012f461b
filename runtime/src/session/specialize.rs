//! Specialized plans: which inputs tract needs as constants to type a graph, and the plans
//! made with those inputs' values baked in (cached per value), down to planning with every
//! input fixed.

use super::*;

#[derive(Clone)]
pub(super) struct Specialization {
    pub(super) plan: Plan,
    pub(super) kind: PlanKind,
    /// Indices (into the session's inputs) still fed at run time.
    pub(super) free: Vec<usize>,
}

/// How many specialized plans a session keeps before starting over.
pub(super) const SPECIALIZED_PLAN_CACHE: usize = 16;

/// Node inputs that tract needs as constants to type a graph: axes, shapes, pads, sizes,
/// quantization parameters and the like. A graph input feeding one is baked in first.
pub(super) fn is_parameter_slot(op: &str, input: u32) -> bool {
    match op {
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" | "Reshape" | "Expand" | "Tile"
        | "Split" | "Squeeze" | "Unsqueeze" | "CumSum" | "TopK" | "Upsample" | "Trilu" | "Compress" => input == 1,
        "Pad" | "Slice" | "Resize" | "QuantizeLinear" | "DequantizeLinear" | "BatchNormalization" | "Clip" | "OneHot" => input >= 1,
        "ConstantOfShape" | "Range" | "MelWeightMatrix" => true,
        "Col2Im" => input >= 1,
        "AffineGrid" => input == 1,
        "MaxUnpool" => input == 2,
        "LSTM" | "GRU" | "RNN" => input >= 1,
        // A constant condition lets lowering inline the branch taken (see `lower::inline_constant_ifs`).
        "If" => input == 0,
        "STFT" | "NonMaxSuppression" => input >= 1,
        _ => false,
    }
}

/// True when `value` reaches a parameter slot directly, or through the comparisons and logic
/// an If condition is made of (`If(Equal(sr, 16000))`).
pub(super) fn feeds_parameter(g: &Graph, uses: &compactor_ir::UseMap, value: ValueId, depth: u32) -> bool {
    uses.of(value).iter().any(|u| {
        let compactor_ir::Use::Node { node, input } = *u else { return false };
        let n = g.node(node);
        if is_parameter_slot(&n.op_type, input) {
            return true;
        }
        let logic = matches!(n.op_type.as_str(), "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "Not" | "And" | "Or" | "Cast" | "Identity");
        depth > 0 && logic && n.output(0).is_some_and(|out| feeds_parameter(g, uses, out, depth - 1))
    })
}

/// True when `v` is computed from constants and tensor shapes only (no tensor's values).
pub(super) fn shape_only(g: &Graph, v: ValueId, depth: u32) -> bool {
    if g.constant(v).is_some() {
        return true;
    }
    let Some((node, _)) = g.producer(v) else { return false };
    let node = g.node(node);
    if node.is("Shape") || node.is("Size") {
        return true;
    }
    depth > 0 && node.subgraphs().next().is_none() && node.inputs.iter().flatten().all(|&i| shape_only(g, i, depth - 1))
}

/// True when the shape of some value `v` depends on (through `Shape`/`Size`) may vary with input
/// values rather than input shapes: a data-dependent op among its ancestors, or a shape-setting
/// input (a Reshape's target, a Slice's bounds) computed from values.
pub(super) fn shapes_depend_on_values(g: &Graph, v: ValueId, budget: u32) -> bool {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if seen.len() as u32 > budget {
            return true;
        }
        let Some((node, _)) = g.producer(v) else { continue };
        let n = g.node(node);
        if n.subgraphs().next().is_some() || matches!(n.op_type.as_str(), "NonZero" | "Unique" | "Compress" | "StringSplit" | "TfIdfVectorizer" | "NonMaxSuppression") {
            return true;
        }
        for (i, input) in n.inputs.iter().enumerate() {
            let Some(input) = *input else { continue };
            if sets_shape(&n.op_type, i) && !shape_only(g, input, 64) {
                return true;
            }
            stack.push(input);
        }
    }
    false
}

/// Node inputs whose values decide the shape of the node's output.
pub(super) fn sets_shape(op: &str, input: usize) -> bool {
    match op {
        "Reshape" | "Expand" | "Tile" | "Split" | "Squeeze" | "Unsqueeze" | "TopK" | "Upsample" | "OneHot" | "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => input == 1,
        "Slice" | "Pad" | "Resize" | "CenterCropPad" | "MelWeightMatrix" | "STFT" => input >= 1,
        "MaxUnpool" => input == 2,
        "ConstantOfShape" | "Range" | "EyeLike" => true,
        _ => false,
    }
}

/// Removes the main graph's nodes that no graph output needs.
pub(super) fn keep_only_ancestors_of_outputs(g: &mut Graph) {
    let mut needed: std::collections::HashSet<ValueId> = g.main().outputs.iter().copied().collect();
    let mut keep = Vec::new();
    for &id in g.main().nodes.iter().rev() {
        let node = g.node(id);
        let mut outer_uses = Vec::new();
        node.subgraphs().for_each(|r| values_used_in(g, r, &mut outer_uses));
        if node.outputs.iter().flatten().any(|o| needed.contains(o)) {
            keep.push(id);
            needed.extend(node.inputs.iter().flatten().copied());
            needed.extend(outer_uses);
        }
    }
    keep.reverse();
    g.main_mut().nodes = keep;
}

/// Every value a region (and its nested regions) reads.
pub(super) fn values_used_in(g: &Graph, region: compactor_ir::RegionId, out: &mut Vec<ValueId>) {
    for &n in &g.region(region).nodes {
        let node = g.node(n);
        out.extend(node.inputs.iter().flatten());
        node.subgraphs().for_each(|r| values_used_in(g, r, out));
    }
    out.extend(g.region(region).outputs.iter());
}

/// Bytes identifying a tensor's type, shape and values.
pub(super) fn value_key(t: &Tensor, key: &mut Vec<u8>) {
    key.extend(format!("{:?}{:?}", t.datum_type(), t.shape()).bytes());
    if t.datum_type() == DatumType::String {
        if let Ok(v) = t.to_plain_array_view::<String>() {
            v.iter().for_each(|s| {
                key.extend((s.len() as u64).to_le_bytes());
                key.extend(s.bytes());
            });
        }
    } else {
        key.extend(t.as_bytes());
    }
}

/// A tract tensor as an IR initializer of the same (tract-native) type.
pub(super) fn to_ir_tensor(t: &Tensor, name: &str) -> Result<compactor_ir::Tensor, RuntimeError> {
    let fail = |reason: String| RuntimeError::Tensor { name: name.to_string(), reason };
    let dims: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let dtype = crate::value::onnx_type_of(t.datum_type()).ok_or_else(|| fail(format!("{:?} cannot be an initializer", t.datum_type())))?;
    if dtype == DataType::String {
        let strings = t.to_plain_array_view::<String>().map_err(|e| fail(e.to_string()))?;
        let proto = compactor_ir::proto::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype.code()),
            string_data: strings.iter().map(|s| bytes::Bytes::from(s.clone().into_bytes())).collect(),
            ..Default::default()
        };
        return compactor_ir::Tensor::from_proto(proto, None).map_err(|e| fail(e.to_string()));
    }
    compactor_ir::Tensor::from_raw(dtype, &dims, bytes::Bytes::copy_from_slice(t.as_bytes())).map_err(|e| fail(e.to_string()))
}

impl Session {
    /// The least specialized plan tract accepts for these inputs and extra outputs.
    pub(super) fn plan_for(&self, ordered: &[TValue], extra: &[ValueId]) -> Result<Specialization, RuntimeError> {
        let all: Vec<usize> = (0..self.inputs.len()).collect();
        let least = self.least_runnable_kind.load(std::sync::atomic::Ordering::Relaxed);
        let generic_runs = least <= PlanKind::Generic as u8;
        if extra.is_empty()
            && generic_runs
            && let Ok(plan) = &self.generic
        {
            return Ok(Specialization { plan: plan.clone(), kind: PlanKind::Generic, free: all });
        }
        let g = &self.lowered.graph;
        let uses = g.uses();
        let parameters: Vec<usize> = all.iter().copied().filter(|&i| feeds_parameter(g, &uses, self.inputs[i].id, 4)).collect();
        let mut kinds = Vec::new();
        if self.generic.is_ok() && generic_runs {
            kinds.push(PlanKind::Generic);
        }
        kinds.push(PlanKind::Shapes);
        if !parameters.is_empty() && parameters.len() < all.len() {
            kinds.push(PlanKind::Parameters);
        }
        kinds.push(PlanKind::Values);
        kinds.retain(|&k| k as u8 >= least);
        let mut last_error = self.generic.as_ref().err().cloned().unwrap_or_default();
        for kind in kinds {
            let baked: &[usize] = match kind {
                PlanKind::Generic | PlanKind::Shapes => &[],
                PlanKind::Parameters => &parameters,
                PlanKind::Values | PlanKind::Interpreted => &all,
            };
            let mut key = format!("{kind:?}{extra:?}{baked:?}").into_bytes();
            if kind != PlanKind::Generic {
                ordered.iter().for_each(|t| key.extend(format!("{:?}", t.shape()).bytes()));
            }
            baked.iter().for_each(|&i| value_key(&ordered[i], &mut key));
            if let Some(found) = self.plans.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                return Ok(found.clone());
            }
            let model = self.specialized_model(ordered, extra, kind, baked)?;
            match prepare(&self.name, &model, &self.options, &self.executor) {
                Ok(plan) => {
                    let spec = Specialization { plan, kind, free: all.iter().copied().filter(|i| !baked.contains(i)).collect() };
                    let mut cache = self.plans.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= SPECIALIZED_PLAN_CACHE {
                        cache.clear();
                    }
                    cache.insert(key, spec.clone());
                    return Ok(spec);
                }
                Err(RuntimeError::Prepare { reason, .. }) => last_error = reason,
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(RuntimeError::Prepare { model: self.name.clone(), reason: format!("{last_error} (also with the inputs' shapes and values fixed)") })
    }

    /// The lowered model with extra outputs, input shapes fixed (from `Shapes` on) and the
    /// `baked` inputs turned into initializers.
    pub(super) fn specialized_model(&self, ordered: &[TValue], extra: &[ValueId], kind: PlanKind, baked: &[usize]) -> Result<Model, RuntimeError> {
        let mut model = self.lowered.clone();
        for &id in extra {
            model.graph.main_mut().outputs.push(id);
            // Declared shapes of intermediates can hold symbol products tract's inference cannot
            // unify; it infers them anyway.
            model.graph.value_mut(id).ty = None;
        }
        if kind >= PlanKind::Shapes {
            // The inputs' symbols stand for the same sizes wherever the model names them
            // (outputs, value_info): bound there too, or tract meets them unbound.
            bind_dims(&mut model.graph, &self.input_symbols(ordered));
            for (spec, t) in self.inputs.iter().zip(ordered) {
                if let Some(ty) = &mut model.graph.value_mut(spec.id).ty
                    && let TypeKind::Tensor { shape, .. } = &mut ty.kind
                {
                    *shape = Some(Shape::known(&t.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()));
                }
            }
        }
        for &i in baked {
            let id = self.inputs[i].id;
            let tensor = to_ir_tensor(&ordered[i], &self.inputs[i].name)?;
            let value = model.graph.value_mut(id);
            value.def = compactor_ir::ValueDef::Initializer;
            value.initializer = Some(tensor.with_name(Some(value.name.clone())));
            model.graph.main_mut().inputs.retain(|&v| v != id);
            model.graph.main_mut().initializers.push(id);
        }
        if !baked.is_empty() {
            crate::lower::inline_constant_ifs(&mut model);
            crate::lower::expand_wrap_pads(&mut model);
        }
        if kind >= PlanKind::Shapes {
            self.fold_shape_conditions(&mut model, ordered, baked);
        }
        Ok(model)
    }

    /// The sizes the inputs' symbolic dimensions take in this run (the first input naming a
    /// symbol decides; [`Session::check_input`] has checked those fixed by the options).
    pub(super) fn input_symbols(&self, ordered: &[TValue]) -> Vec<(String, i64)> {
        let mut bound: Vec<(String, i64)> = Vec::new();
        for (spec, t) in self.inputs.iter().zip(ordered) {
            let Some(shape) = &spec.shape else { continue };
            for (d, &n) in shape.dims.iter().zip(t.shape()) {
                if let Dim::Sym(s) = d
                    && !bound.iter().any(|(name, _)| name == s)
                {
                    bound.push((s.clone(), n as i64));
                }
            }
        }
        bound
    }

    /// Settles `If` nodes whose condition depends only on tensor shapes (silero-vad's decoder
    /// tests `Shape(x)[-1] == 1`): with the input shapes fixed, a probe plan computes those
    /// conditions, which are baked in and the branches taken inlined, so tract does not have to
    /// type a branch that does not fit. The plan stays keyed by input shapes, which is all the
    /// conditions depend on (intermediates whose shape depends on values keep the If).
    /// A probe that fails leaves the model as it was.
    pub(super) fn fold_shape_conditions(&self, model: &mut Model, ordered: &[TValue], baked: &[usize]) {
        let free: TVec<TValue> = (0..self.inputs.len()).filter(|i| !baked.contains(i)).map(|i| ordered[i].clone()).collect();
        for _ in 0..8 {
            let g = &model.graph;
            let conditions: Vec<(NodeId, ValueId)> = g
                .nodes_of(Graph::MAIN)
                .filter(|(_, n)| n.is("If"))
                .filter_map(|(id, n)| n.input(0).map(|c| (id, c)))
                .filter(|&(_, c)| g.constant(c).is_none() && shape_only(g, c, 64) && !shapes_depend_on_values(g, c, 256))
                .collect();
            if conditions.is_empty() {
                return;
            }
            let mut values: Vec<ValueId> = conditions.iter().map(|&(_, c)| c).collect();
            values.sort();
            values.dedup();
            let mut probe = model.clone();
            probe.graph.main_mut().outputs = values.clone();
            values.iter().for_each(|&c| probe.graph.value_mut(c).ty = None);
            keep_only_ancestors_of_outputs(&mut probe.graph);
            let Ok(plan) = prepare(&self.name, &probe, &self.options, &self.executor) else { return };
            let Ok(results) = self.execute(&plan, free.clone()) else { return };
            for (&c, t) in values.iter().zip(results) {
                let name = model.graph.fresh_name(&format!("{}.known", model.graph.value(c).name));
                let Ok(tensor) = to_ir_tensor(&t.into_tensor(), &name) else { return };
                let id = model.graph.add_value(compactor_ir::Value {
                    name: name.clone(),
                    ty: None,
                    doc_string: None,
                    metadata_props: Vec::new(),
                    def: compactor_ir::ValueDef::Initializer,
                    region: Graph::MAIN,
                    initializer: Some(tensor.with_name(Some(name))),
                    sparse_initializer: None,
                });
                model.graph.main_mut().initializers.push(id);
                for &(node, cond) in &conditions {
                    if cond == c {
                        model.graph.node_mut(node).inputs[0] = Some(id);
                    }
                }
            }
            crate::lower::inline_constant_ifs(model);
        }
    }
}
