//! The one registry of passes and presets, which the CLI lists and validates against.

use crate::pass::{Pass, PassDef, PassError, PassKind};
use serde::Serialize;
use serde_json::{Map, Value};

/// Builds a pass from its options (a JSON object of option names to values).
type BuildFn = fn(&Map<String, Value>) -> Result<Box<dyn Pass>, PassError>;

/// A registered pass: how to describe it and how to build it from options.
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub kind: PassKind,
    schema: fn() -> schemars::Schema,
    defaults: fn() -> Value,
    build: BuildFn,
}

/// One option of a pass, as listed by `compactor passes`.
#[derive(Clone, Debug, Serialize)]
pub struct OptionInfo {
    pub name: String,
    /// `integer`, `string`, `boolean`, `number`, `array`, or the allowed values `rtn|mse|gptq`.
    pub ty: String,
    pub default: Value,
    pub description: String,
}

fn build<P: PassDef>(options: &Map<String, Value>) -> Result<Box<dyn Pass>, PassError> {
    let pass: P = serde_path_to_error::deserialize(Value::Object(options.clone())).map_err(|e| {
        let option = e.path().to_string();
        let option = if option == "." { options.keys().next().cloned().unwrap_or_default() } else { option };
        PassError::BadOption { pass: P::NAME.into(), option, reason: e.into_inner().to_string() }
    })?;
    pass.validate().map_err(|e| PassError::BadOption { pass: P::NAME.into(), option: e.option, reason: e.reason })?;
    Ok(Box::new(pass))
}

impl PassInfo {
    pub fn of<P: PassDef>() -> Self {
        PassInfo {
            name: P::NAME,
            summary: P::SUMMARY,
            kind: P::KIND,
            schema: || schemars::schema_for!(P),
            defaults: || serde_json::to_value(P::default()).expect("options serialize"),
            build: build::<P>,
        }
    }

    /// The pass's options with their types, defaults and descriptions, in declaration order.
    pub fn options(&self) -> Vec<OptionInfo> {
        let schema = (self.schema)();
        let defaults = (self.defaults)();
        let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
        props
            .iter()
            .map(|(name, prop)| OptionInfo {
                name: name.clone(),
                ty: describe_type(prop, &schema),
                default: defaults.get(name).cloned().unwrap_or(Value::Null),
                description: prop.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " "),
            })
            .collect()
    }

    /// The default options as a JSON object.
    pub fn defaults(&self) -> Value {
        (self.defaults)()
    }

    /// Builds the pass, rejecting unknown options with the list of valid ones.
    pub fn build(&self, options: &Map<String, Value>) -> Result<Box<dyn Pass>, PassError> {
        let valid = self.options();
        if let Some(unknown) = options.keys().find(|k| !valid.iter().any(|o| &o.name == *k)) {
            let names: Vec<&str> = valid.iter().map(|o| o.name.as_str()).collect();
            return Err(PassError::UnknownOption { pass: self.name.into(), option: unknown.clone(), valid: if names.is_empty() { "(none)".into() } else { names.join(", ") } });
        }
        (self.build)(options)
    }
}

fn describe_type(prop: &Value, root: &schemars::Schema) -> String {
    // Enums are referenced definitions: list their values.
    let resolved = prop.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")).and_then(|name| root.get("$defs").and_then(|d| d.get(name))).unwrap_or(prop);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        return values.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("|");
    }
    if let Some(variants) = resolved.get("oneOf").and_then(Value::as_array) {
        let names: Vec<&str> = variants.iter().filter_map(|v| v.get("const").and_then(Value::as_str).or_else(|| v.get("enum").and_then(|e| e.get(0)).and_then(Value::as_str))).collect();
        if !names.is_empty() {
            return names.join("|");
        }
    }
    match resolved.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = resolved.get("items").map(|i| describe_type(i, root)).unwrap_or_else(|| "value".into());
            format!("list of {item}")
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join("|"),
        _ => "value".into(),
    }
}

/// A named pipeline.
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    pub spec: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "cleanup",
        summary: "Every cleanup pass, in an order where each one's result helps the next",
        spec: "lift-constants,eliminate-identity,fold-shapes,fold-constants,eliminate-identity,eliminate-dead-code,merge-duplicate-initializers,fuse-matmul-add,eliminate-dead-code",
    },
    Preset {
        name: "int8-linear-int4-embeddings",
        summary: "RTN, no calibration data: MatMul/Gemm weights int8 per output channel, embedding tables int4 in blocks of 32 with f16 scales (for encoders whose embedding table is a large share of the weights; all-MiniLM-L6-v2: 5.1x smaller, sentence cosine 0.996)",
        spec: "quantize(bits=8,block=0,ops=[MatMul,Gemm]),quantize(bits=4,block=32,scale_dtype=f16,ops=[Gather]),eliminate-dead-code",
    },
];

/// Every pass, in the order `compactor passes` lists them.
pub fn passes() -> Vec<PassInfo> {
    use crate::passes::*;
    vec![
        PassInfo::of::<infer_shapes::InferShapes>(),
        PassInfo::of::<lift_constants::LiftConstants>(),
        PassInfo::of::<eliminate_identity::EliminateIdentity>(),
        PassInfo::of::<fold_shapes::FoldShapes>(),
        PassInfo::of::<fold_constants::FoldConstants>(),
        PassInfo::of::<eliminate_dead_code::EliminateDeadCode>(),
        PassInfo::of::<merge_duplicate_initializers::MergeDuplicateInitializers>(),
        PassInfo::of::<fuse_matmul_add::FuseMatMulAdd>(),
        PassInfo::of::<upgrade_opset::UpgradeOpset>(),
        PassInfo::of::<quantize::Quantize>(),
        PassInfo::of::<factorize::Factorize>(),
        PassInfo::of::<find_layers::FindLayers>(),
        PassInfo::of::<channel_groups::ChannelGroupsPass>(),
        PassInfo::of::<permute_channels::PermuteChannels>(),
        PassInfo::of::<prune_channels::PruneChannels>(),
        PassInfo::of::<micro_expert_scores::MicroExpertScores>(),
        PassInfo::of::<prune_micro_experts::PruneMicroExperts>(),
        PassInfo::of::<prune_tokens::PruneTokens>(),
        PassInfo::of::<quantize_micro_experts::QuantizeMicroExperts>(),
    ]
}

pub fn find_pass(name: &str) -> Option<PassInfo> {
    passes().into_iter().find(|p| p.name == name)
}

pub fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// "a, b, c" of every pass and preset name, for error messages.
pub fn valid_names() -> String {
    let mut names: Vec<&str> = passes().iter().map(|p| p.name).collect();
    names.extend(PRESETS.iter().map(|p| p.name));
    names.join(", ")
}
