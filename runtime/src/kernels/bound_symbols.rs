//! Symbolic shape values made concrete before the ops that read them.
//!
//! A plan made for every input shape keeps a `Shape` of a symbolic input as a tensor of
//! symbolic dimensions (`[batch_size, 1, 56, 56]`). tract binds the symbols from the inputs'
//! shapes at the start of each run, but some of its ops read such a tensor as plain numbers
//! without those bindings (a `Resize` taking its `sizes`, a graph output that is a shape) and
//! fail on the first symbol. [`bind_symbolic_inputs`] wraps every op that takes symbolic
//! dimensions as values in [`BoundSymbols`], which evaluates them with the run's bindings
//! first, and has graph outputs of symbolic dimensions cast to int64 the same way.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Runs `inner` on its inputs with every symbolic dimension value (a `TDim` tensor) evaluated
/// with the run's symbol bindings.
#[derive(Debug, Clone)]
pub struct BoundSymbols {
    pub inner: Box<dyn TypedOp>,
}

impl PartialEq for BoundSymbols {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_op() == other.inner.as_op()
    }
}

impl Eq for BoundSymbols {}

/// `TDim` tensors among `inputs` with each element evaluated under `symbols`.
fn bind(symbols: &SymbolValues, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
    inputs
        .into_iter()
        .map(|t| {
            if t.datum_type() != TDim::datum_type() {
                return Ok(t);
            }
            let mut bound = t.into_tensor();
            bound.try_as_plain_ram_mut()?.as_slice_mut::<TDim>()?.iter_mut().for_each(|d| *d = d.eval(symbols));
            Ok(bound.into_tvalue())
        })
        .collect()
}

impl Op for BoundSymbols {
    fn name(&self) -> StaticName {
        self.inner.name()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.inner.info()?;
        info.push("symbolic dimension inputs bound per run".into());
        Ok(info)
    }

    fn validation(&self) -> Validation {
        self.inner.validation()
    }

    fn mints_runtime_symbols(&self) -> bool {
        self.inner.mints_runtime_symbols()
    }

    fn required_bound_symbols(&self, inputs: &[&TypedFact]) -> TVec<Symbol> {
        self.inner.required_bound_symbols(inputs)
    }

    op_as_typed_op!();
}

impl EvalOp for BoundSymbols {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.inner.eval(ctx, bind(ctx.symbols, inputs)?)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        self.inner.eval_out_of_plan(inputs)
    }

    fn forwards_input(&self) -> Option<usize> {
        self.inner.forwards_input()
    }

    fn drop_session(&self, session: SessionId, node_id: usize) {
        self.inner.drop_session(session, node_id)
    }
}

impl TypedOp for BoundSymbols {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    fn axes_mapping(&self, inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
        self.inner.axes_mapping(inputs, outputs)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.inner.cost(inputs)
    }

    as_op!();
}

/// True when a fact is a tensor of dimensions that may hold symbols.
fn symbolic_dims(fact: &TypedFact) -> bool {
    if fact.datum_type != TDim::datum_type() {
        return false;
    }
    match fact.konst.as_deref().and_then(|t| t.try_as_plain_ram().ok().and_then(|v| v.as_slice::<TDim>().ok().map(|s| s.to_vec()))) {
        Some(values) => values.iter().any(|d| !d.symbols().is_empty()),
        None => true,
    }
}

/// Wraps the stateless ops of a finished (optimised or decluttered) model that take symbolic
/// dimensions as values in [`BoundSymbols`], and casts graph outputs of symbolic dimensions
/// to int64 (tract's `Cast` evaluates them with the run's bindings).
pub fn bind_symbolic_inputs(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = &model.nodes()[id];
        if node.op_is::<BoundSymbols>() || node.op.state(&EvalContext::out_of_plan())?.is_some() {
            continue;
        }
        if !model.node_input_facts(id)?.iter().any(|f| symbolic_dims(f)) {
            continue;
        }
        let inner = model.nodes()[id].op.clone();
        model.nodes_mut()[id].op = Box::new(BoundSymbols { inner });
    }
    for slot in 0..model.outputs.len() {
        let outlet = model.outputs[slot];
        let fact = model.outlet_fact(outlet)?;
        if !symbolic_dims(fact) {
            continue;
        }
        let name = format!("{}.as_i64", model.node(outlet.node).name);
        let cast = model.wire_node(name, tract_onnx::tract_core::ops::cast::cast(i64::datum_type()), &[outlet])?[0];
        model.outputs[slot] = cast;
    }
    Ok(())
}
