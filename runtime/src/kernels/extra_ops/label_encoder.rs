//! `ai.onnx.ml.LabelEncoder`, which tract lacks: maps each element to the value of the equal
//! key, or to the default.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// `ai.onnx.ml.LabelEncoder` attributes, loaded into tensors: keys, values, default.
pub fn build_label_encoder(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tensor_attr = |name: &str| -> TractResult<Option<Tensor>> {
        match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
            Some(proto) => Ok(Some(ctx.load_tensor(proto)?)),
            None => Ok(None),
        }
    };
    let list = |prefix: &str| -> TractResult<Option<Tensor>> {
        if let Some(v) = node.get_attr_opt_vec::<String>(&format!("{prefix}_strings"))? {
            return Ok(Some(tract_onnx::prelude::tract_ndarray::arr1(&v).into_tensor()));
        }
        if let Some(v) = node.get_attr_opt_vec::<i64>(&format!("{prefix}_int64s"))? {
            return Ok(Some(tensor1(&v)));
        }
        if let Some(v) = node.get_attr_opt_vec::<f32>(&format!("{prefix}_floats"))? {
            return Ok(Some(tensor1(&v)));
        }
        tensor_attr(&format!("{prefix}_tensor"))
    };
    let keys = list("keys")?.context("LabelEncoder: no keys")?;
    let values = list("values")?.context("LabelEncoder: no values")?;
    ensure!(keys.len() == values.len(), "LabelEncoder: {} keys but {} values", keys.len(), values.len());
    let default = match tensor_attr("default_tensor")? {
        Some(t) => t.cast_to_dt(values.datum_type())?.into_owned().into_shape(&[])?,
        None => match values.datum_type() {
            DatumType::String => tensor0(node.get_attr_opt::<String>("default_string")?.unwrap_or_else(|| "_Unused".into())),
            DatumType::I64 => tensor0(node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1)),
            DatumType::F32 => tensor0(node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0)),
            dt => Tensor::zero_scalar_dt(dt)?,
        },
    };
    Ok((expand(LabelEncoderNode(LabelEncoder { keys: Arc::new(keys), values: Arc::new(values), default: Arc::new(default) })), vec![]))
}

#[derive(Debug, Clone)]
struct LabelEncoderNode(LabelEncoder);

impl Expansion for LabelEncoderNode {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.values.datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Maps each input element to the value of the equal key, or to the default.
#[derive(Debug, Clone)]
pub struct LabelEncoder {
    keys: Arc<Tensor>,
    values: Arc<Tensor>,
    default: Arc<Tensor>,
}

impl PartialEq for LabelEncoder {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys) && Arc::ptr_eq(&self.values, &other.values) && Arc::ptr_eq(&self.default, &other.default)
    }
}
impl Eq for LabelEncoder {}

/// A key as compared: strings by content, numbers by value (floats by bit pattern of f64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Text(String),
    Int(i64),
    Float(u64),
}

fn keys_of(t: &Tensor) -> TractResult<Vec<Key>> {
    Ok(match t.datum_type() {
        DatumType::String => t.to_plain_array_view::<String>()?.iter().cloned().map(Key::Text).collect(),
        dt if dt.is_float() => t.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().map(|v| Key::Float(v.to_bits())).collect(),
        _ => t.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().map(|&v| Key::Int(v)).collect(),
    })
}

impl Op for LabelEncoder {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LabelEncoder {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let index: std::collections::HashMap<Key, usize> = keys_of(&self.keys)?.into_iter().enumerate().map(|(i, k)| (k, i)).rev().collect();
        let picked: Vec<Tensor> = keys_of(&x)?
            .iter()
            .map(|k| match index.get(k) {
                Some(&i) => self.values.nth(i),
                None => Ok((*self.default).clone()),
            })
            .collect::<TractResult<_>>()?;
        let out = if picked.is_empty() {
            Tensor::zero_dt(self.values.datum_type(), x.shape())?
        } else {
            let flat: Vec<Tensor> = picked.into_iter().map(|t| t.into_shape(&[1])).collect::<TractResult<_>>()?;
            Tensor::stack_tensors(0, &flat)?.into_shape(x.shape())?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LabelEncoder {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.values.datum_type().fact(inputs[0].shape.clone())))
    }
    as_op!();
}
