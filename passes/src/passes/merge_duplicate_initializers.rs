//! Initializers with the same type, shape and bytes become one.

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{DataType, Graph, Patch, ValueDef, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeDuplicateInitializers {}

impl PassDef for MergeDuplicateInitializers {
    const NAME: &'static str = "merge-duplicate-initializers";
    const SUMMARY: &'static str = "Merge initializers of equal type, shape and content into one";
    const KIND: PassKind = PassKind::Transform;
}

impl Pass for MergeDuplicateInitializers {
    fn run(&self, graph: &mut Graph, _ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let ir_err = |e| PassError::ir(Self::NAME, e);
        let mut patch = Patch::new();
        let mut merged = 0;
        let mut saved_bytes = 0u64;
        for region in graph.region_ids().collect::<Vec<_>>() {
            let r = graph.region(region);
            // An initializer that is also an input or an output is part of the interface: keep it.
            let outputs: Vec<ValueId> = r.outputs.clone();
            let mut kept: HashMap<(DataType, Vec<u64>, u64), Vec<ValueId>> = HashMap::new();
            for &v in &r.initializers {
                let value = graph.value(v);
                if value.def != ValueDef::Initializer || outputs.contains(&v) {
                    continue;
                }
                let tensor = value.initializer.as_ref().expect("initializers hold tensors");
                if tensor.dtype() == DataType::String {
                    continue;
                }
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                tensor.raw_data().map_err(ir_err)?.hash(&mut hasher);
                let key = (tensor.dtype(), tensor.dims().to_vec(), hasher.finish());
                let candidates = kept.entry(key).or_default();
                let mut duplicate_of = None;
                for &k in candidates.iter() {
                    if graph.value(k).initializer.as_ref().expect("kept initializers").content_eq(tensor).map_err(ir_err)? {
                        duplicate_of = Some(k);
                        break;
                    }
                }
                match duplicate_of {
                    Some(k) => {
                        patch.replace_uses(v, k);
                        patch.remove_value(v);
                        merged += 1;
                        saved_bytes += tensor.data_bytes();
                    }
                    None => candidates.push(v),
                }
            }
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        Ok(PassOutcome::counted(merged, format!("merged {merged} duplicate initializers ({saved_bytes} bytes)")))
    }
}
