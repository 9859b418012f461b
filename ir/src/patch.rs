//! Structural edits, applied atomically.
//!
//! A pass describes an edit as a [`Patch`] (new values and initializers, new nodes placed
//! relative to existing ones, removed nodes and values, re-wired uses, renames) and hands it to
//! [`Graph::apply`]. The patch is checked as a whole first; if anything is wrong the graph is
//! left exactly as it was and the error says what. Only then is it applied.
//!
//! Re-wiring (`replace_uses`) changes the uses that exist *before* the patch, so inserting a node
//! on a value — `y = Cast(x)`, then every old use of `x` reads `y` — needs no special care: the
//! new Cast still reads `x`.

use crate::graph::{AttrValue, Attribute, Graph, Node, NodeId, RegionId, SparseTensor, Use, Value, ValueDef, ValueId};
use crate::tensor::Tensor;
use crate::types::ValueType;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A value in a patch: one that exists, or the `n`-th one the patch creates.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PValue {
    Existing(ValueId),
    New(u32),
}

impl From<ValueId> for PValue {
    fn from(v: ValueId) -> Self {
        PValue::Existing(v)
    }
}

/// Where a new node goes in its region's order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// Right before this node (also allowed when the patch removes it: the new node takes its place).
    Before(NodeId),
    After(NodeId),
    /// At the end of the region.
    End(RegionId),
}

#[derive(Clone, Debug)]
struct NewValue {
    name_hint: String,
    ty: Option<ValueType>,
    region: RegionId,
    initializer: Option<Tensor>,
    sparse: Option<SparseTensor>,
    /// A new input of its region (named exactly `name_hint`).
    input: bool,
}

/// A node the patch creates; build it with [`Patch::node`].
#[derive(Clone, Debug)]
pub struct NewNode {
    pub op_type: String,
    pub domain: Option<String>,
    pub name: Option<String>,
    pub inputs: Vec<Option<PValue>>,
    /// `New` values, or `Existing` values whose producer this patch removes (the new node takes
    /// them over, keeping their name, type and uses).
    pub outputs: Vec<Option<PValue>>,
    pub attributes: Vec<Attribute>,
    pub anchor: Anchor,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid patch: {0}")]
pub struct PatchError(pub String);

/// What an applied patch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchSummary {
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub values_added: usize,
    pub values_removed: usize,
    /// The ids the patch's new values received, in creation order.
    pub new_values: Vec<ValueId>,
    /// The ids of the new nodes, in creation order.
    pub new_nodes: Vec<NodeId>,
}

impl PatchSummary {
    /// The id a `PValue` of the applied patch ended up with.
    pub fn value(&self, v: PValue) -> ValueId {
        match v {
            PValue::Existing(id) => id,
            PValue::New(i) => self.new_values[i as usize],
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Patch {
    values: Vec<NewValue>,
    nodes: Vec<NewNode>,
    removed_nodes: BTreeSet<NodeId>,
    removed_values: BTreeSet<ValueId>,
    rewires: Vec<(ValueId, PValue)>,
    input_changes: Vec<(NodeId, usize, Option<PValue>)>,
    renames: Vec<(PValue, String)>,
    /// Attribute edits of existing nodes, in order: `Some` sets (replacing one of that name),
    /// `None` removes.
    attribute_edits: Vec<(NodeId, String, Option<AttrValue>)>,
    /// New declared types of existing values.
    type_changes: Vec<(PValue, Option<ValueType>)>,
    /// New doc strings of existing values.
    doc_changes: Vec<(ValueId, Option<String>)>,
    /// New tensors of existing initializers (same name and uses).
    initializer_changes: Vec<(ValueId, Tensor)>,
    /// Values appended to a region's outputs.
    new_outputs: Vec<(RegionId, PValue)>,
}

/// Builder for a new node; finish with [`NodeBuilder::add`].
pub struct NodeBuilder<'p> {
    patch: &'p mut Patch,
    node: NewNode,
}

impl NodeBuilder<'_> {
    pub fn domain(mut self, domain: &str) -> Self {
        self.node.domain = Some(domain.to_string());
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.node.name = Some(name.into());
        self
    }

    pub fn input(mut self, v: impl Into<PValue>) -> Self {
        self.node.inputs.push(Some(v.into()));
        self
    }

    /// An omitted optional input.
    pub fn no_input(mut self) -> Self {
        self.node.inputs.push(None);
        self
    }

    pub fn output(mut self, v: PValue) -> Self {
        self.node.outputs.push(Some(v));
        self
    }

    pub fn attr(mut self, name: &str, value: AttrValue) -> Self {
        self.node.attributes.push(Attribute::new(name, value));
        self
    }

    /// Adds the node to the patch; returns its index among the patch's new nodes.
    pub fn add(self) -> usize {
        self.patch.nodes.push(self.node);
        self.patch.nodes.len() - 1
    }
}

impl Patch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.nodes.is_empty()
            && self.removed_nodes.is_empty()
            && self.removed_values.is_empty()
            && self.rewires.is_empty()
            && self.input_changes.is_empty()
            && self.renames.is_empty()
            && self.attribute_edits.is_empty()
            && self.type_changes.is_empty()
            && self.doc_changes.is_empty()
            && self.initializer_changes.is_empty()
            && self.new_outputs.is_empty()
    }

    /// A new value, to be produced by a new node. Its name is `name_hint`, made unique.
    pub fn new_value(&mut self, region: RegionId, name_hint: &str, ty: Option<ValueType>) -> PValue {
        self.values.push(NewValue { name_hint: name_hint.to_string(), ty, region, initializer: None, sparse: None, input: false });
        PValue::New(self.values.len() as u32 - 1)
    }

    /// A new initializer of `region`.
    pub fn new_initializer(&mut self, region: RegionId, name_hint: &str, tensor: Tensor) -> PValue {
        let ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
        self.values.push(NewValue { name_hint: name_hint.to_string(), ty, region, initializer: Some(tensor.with_name(None)), sparse: None, input: false });
        PValue::New(self.values.len() as u32 - 1)
    }

    /// A new sparse initializer of `region` (a dense value to its readers) of element type
    /// `values.dtype()` and shape `dims`.
    pub fn new_sparse_initializer(&mut self, region: RegionId, name_hint: &str, sparse: SparseTensor) -> PValue {
        let ty = sparse.values.as_ref().map(|v| ValueType::tensor(v.dtype(), Some(crate::types::Shape::known(&sparse.dims))));
        self.values.push(NewValue { name_hint: name_hint.to_string(), ty, region, initializer: None, sparse: Some(sparse), input: false });
        PValue::New(self.values.len() as u32 - 1)
    }

    /// A new input of `region`, appended to its inputs, named exactly `name` (the patch is
    /// refused when a value of that name exists).
    pub fn new_input(&mut self, region: RegionId, name: &str, ty: Option<ValueType>) -> PValue {
        self.values.push(NewValue { name_hint: name.to_string(), ty, region, initializer: None, sparse: None, input: true });
        PValue::New(self.values.len() as u32 - 1)
    }

    /// Starts a new node of the default domain placed at `anchor`.
    pub fn node(&mut self, op_type: &str, anchor: Anchor) -> NodeBuilder<'_> {
        NodeBuilder { patch: self, node: NewNode { op_type: op_type.to_string(), domain: None, name: None, inputs: Vec::new(), outputs: Vec::new(), attributes: Vec::new(), anchor } }
    }

    pub fn remove_node(&mut self, node: NodeId) {
        self.removed_nodes.insert(node);
    }

    /// Removes a value that will have no uses once the patch is applied (an initializer, say).
    pub fn remove_value(&mut self, value: ValueId) {
        self.removed_values.insert(value);
    }

    /// Every use of `from` that exists before the patch (node inputs and graph outputs) reads `to` instead.
    pub fn replace_uses(&mut self, from: ValueId, to: impl Into<PValue>) {
        self.rewires.push((from, to.into()));
    }

    /// Sets one input of an existing node (past the last input: the inputs in between are omitted ones).
    pub fn set_input(&mut self, node: NodeId, index: usize, value: Option<PValue>) {
        self.input_changes.push((node, index, value));
    }

    /// Gives a value (existing or new) an exact name, after everything else is applied — so a
    /// new value can take the name of one the patch removes.
    pub fn rename(&mut self, value: impl Into<PValue>, name: impl Into<String>) {
        self.renames.push((value.into(), name.into()));
    }

    /// Appends `value` to the outputs of `region` (a new graph output when it is the main one).
    pub fn add_output(&mut self, region: RegionId, value: impl Into<PValue>) {
        self.new_outputs.push((region, value.into()));
    }

    /// Sets an attribute of an existing node (replacing one of the same name, else appended).
    pub fn set_attr(&mut self, node: NodeId, name: &str, value: AttrValue) {
        self.attribute_edits.push((node, name.to_string(), Some(value)));
    }

    /// Removes an attribute of an existing node (nothing if it has none of that name).
    pub fn remove_attr(&mut self, node: NodeId, name: &str) {
        self.attribute_edits.push((node, name.to_string(), None));
    }

    /// Sets the declared type of an existing value (`None`: unknown).
    pub fn set_type(&mut self, value: impl Into<PValue>, ty: Option<ValueType>) {
        self.type_changes.push((value.into(), ty));
    }

    /// Sets the doc string of an existing value.
    pub fn set_doc_string(&mut self, value: ValueId, doc: Option<String>) {
        self.doc_changes.push((value, doc));
    }

    /// Replaces the tensor of an existing initializer; its name, uses and place stay, its type
    /// becomes the new tensor's.
    pub fn set_initializer(&mut self, value: ValueId, tensor: Tensor) {
        self.initializer_changes.push((value, tensor));
    }
}

fn err(message: impl Into<String>) -> PatchError {
    PatchError(message.into())
}

impl Graph {
    /// Applies a patch, all or nothing.
    pub fn apply(&mut self, patch: Patch) -> Result<PatchSummary, PatchError> {
        self.check_patch(&patch)?;
        Ok(self.apply_checked(patch))
    }

    fn check_patch(&self, patch: &Patch) -> Result<(), PatchError> {
        let live_node = |n: NodeId, what: &str| self.try_node(n).map(|_| ()).ok_or_else(|| err(format!("{what} {n} does not exist")));
        let live_value = |v: ValueId, what: &str| self.try_value(v).map(|_| ()).ok_or_else(|| err(format!("{what} {v} does not exist")));
        let new_index = |v: PValue| -> Result<(), PatchError> {
            match v {
                PValue::Existing(id) => live_value(id, "value"),
                PValue::New(i) if (i as usize) < patch.values.len() => Ok(()),
                PValue::New(i) => Err(err(format!("new value #{i} was never created"))),
            }
        };
        for &n in &patch.removed_nodes {
            live_node(n, "removed node")?;
        }
        for &v in &patch.removed_values {
            live_value(v, "removed value")?;
        }
        for v in &patch.values {
            if self.try_region(v.region).is_none() {
                return Err(err(format!("new value '{}' is in region {}, which does not exist", v.name_hint, v.region)));
            }
        }
        // Every new value is defined exactly once: as an initializer or by one new node.
        let mut defined: Vec<usize> = patch.values.iter().map(|v| (v.initializer.is_some() || v.sparse.is_some() || v.input) as usize).collect();
        if patch.values.iter().any(|v| v.input) {
            let names = self.value_names();
            if let Some(v) = patch.values.iter().find(|v| v.input && names.contains(&v.name_hint)) {
                return Err(err(format!("new input '{}': a value of that name exists", v.name_hint)));
            }
        }
        let mut rehomed: BTreeSet<ValueId> = BTreeSet::new();
        for node in &patch.nodes {
            match node.anchor {
                Anchor::Before(n) | Anchor::After(n) => live_node(n, "anchor node")?,
                Anchor::End(r) if self.try_region(r).is_none() => return Err(err(format!("anchor region {r} does not exist"))),
                Anchor::End(_) => {}
            }
            if matches!(node.anchor, Anchor::After(n) if patch.removed_nodes.contains(&n)) {
                return Err(err(format!(
                    "new {} is placed after {}, which the patch removes",
                    node.op_type,
                    match node.anchor {
                        Anchor::After(n) => n,
                        _ => unreachable!(),
                    }
                )));
            }
            for v in node.inputs.iter().flatten() {
                new_index(*v)?;
            }
            for out in node.outputs.iter().flatten() {
                new_index(*out)?;
                match *out {
                    PValue::New(i) => defined[i as usize] += 1,
                    PValue::Existing(v) => {
                        let producer = self.producer(v).map(|(p, _)| p);
                        if !producer.is_some_and(|p| patch.removed_nodes.contains(&p)) {
                            return Err(err(format!("new {} takes over value '{}', but its producer is not removed by the patch", node.op_type, self.value(v).name)));
                        }
                        if !rehomed.insert(v) {
                            return Err(err(format!("value '{}' is taken over twice", self.value(v).name)));
                        }
                    }
                }
            }
        }
        for (i, count) in defined.iter().enumerate() {
            if *count != 1 {
                return Err(err(format!("new value '{}' is defined {count} times (must be once)", patch.values[i].name_hint)));
            }
        }
        for (from, to) in &patch.rewires {
            live_value(*from, "re-wired value")?;
            new_index(*to)?;
        }
        for (node, _, value) in &patch.input_changes {
            live_node(*node, "node whose input changes")?;
            if let Some(v) = value {
                new_index(*v)?;
            }
        }
        for (v, _) in &patch.renames {
            new_index(*v)?;
        }
        for (r, v) in &patch.new_outputs {
            if self.try_region(*r).is_none() {
                return Err(err(format!("output region {r} does not exist")));
            }
            new_index(*v)?;
        }
        for (n, _, _) in &patch.attribute_edits {
            live_node(*n, "node whose attribute changes")?;
        }
        for (v, _) in &patch.type_changes {
            new_index(*v)?;
        }
        for (v, _) in &patch.doc_changes {
            live_value(*v, "value whose doc string changes")?;
        }
        for (v, _) in &patch.initializer_changes {
            live_value(*v, "initializer")?;
            if self.value(*v).initializer.is_none() {
                return Err(err(format!("'{}' gets a new tensor but is not an initializer", self.value(*v).name)));
            }
            if patch.removed_values.contains(v) {
                return Err(err(format!("initializer '{}' gets a new tensor and is removed", self.value(*v).name)));
            }
        }

        // What disappears: removed values and the outputs of removed nodes no new node takes over.
        let mut vanishing: BTreeSet<ValueId> = patch.removed_values.clone();
        for &n in &patch.removed_nodes {
            vanishing.extend(self.node(n).outputs.iter().flatten().filter(|v| !rehomed.contains(v)));
        }
        // Nodes that go: the removed ones and everything inside their subgraphs.
        let mut gone: BTreeSet<NodeId> = BTreeSet::new();
        let mut stack: Vec<NodeId> = patch.removed_nodes.iter().copied().collect();
        while let Some(n) = stack.pop() {
            if gone.insert(n) {
                for r in self.node(n).subgraphs() {
                    stack.extend(self.region(r).nodes.iter().copied());
                }
            }
        }
        // None of them may still be used after the patch.
        let rewired: HashMap<ValueId, PValue> = patch.rewires.iter().copied().collect();
        let changed_inputs: BTreeSet<(NodeId, usize)> = patch.input_changes.iter().map(|(n, i, _)| (*n, *i)).collect();
        let uses = self.uses();
        for &v in &vanishing {
            if rewired.contains_key(&v) {
                continue;
            }
            for u in uses.of(v) {
                let survives = match *u {
                    Use::Node { node, input } => !gone.contains(&node) && !changed_inputs.contains(&(node, input as usize)),
                    Use::Output { region, .. } => self.region(region).owner.is_none_or(|o| !gone.contains(&o)),
                };
                if survives {
                    let by = match *u {
                        Use::Node { node, .. } => self.node(node).label(node),
                        Use::Output { region, index } => format!("output {index} of region {region}"),
                    };
                    return Err(err(format!("value '{}' is removed but still used by {by}", self.value(v).name)));
                }
            }
        }
        let reads_vanishing = |v: &PValue| matches!(v, PValue::Existing(id) if vanishing.contains(id));
        for node in &patch.nodes {
            if let Some(v) = node.inputs.iter().flatten().find(|v| reads_vanishing(v)) {
                return Err(err(format!("new {} reads value '{}', which the patch removes", node.op_type, self.value(self_id(*v)).name)));
            }
        }
        for (from, to) in &patch.rewires {
            if reads_vanishing(to) {
                return Err(err(format!("uses of '{}' are re-wired to '{}', which the patch removes", self.value(*from).name, self.value(self_id(*to)).name)));
            }
        }
        for (_, _, v) in &patch.input_changes {
            if v.as_ref().is_some_and(reads_vanishing) {
                return Err(err(format!("an input is set to '{}', which the patch removes", self.value(self_id(v.unwrap())).name)));
            }
        }
        Ok(())
    }

    fn apply_checked(&mut self, patch: Patch) -> PatchSummary {
        let mut summary = PatchSummary::default();
        // 1. New values.
        let mut taken = if patch.values.is_empty() { Default::default() } else { self.value_names() };
        for v in &patch.values {
            let name = crate::graph::fresh_name_among(&v.name_hint, |n| taken.contains(n));
            taken.insert(name.clone());
            let def = match (&v.initializer, &v.sparse) {
                (Some(_), _) => ValueDef::Initializer,
                (None, Some(_)) => ValueDef::SparseInitializer,
                (None, None) if v.input => ValueDef::Input,
                (None, None) => ValueDef::Annotation,
            };
            let id = self.add_value(Value {
                name,
                ty: v.ty.clone(),
                doc_string: None,
                metadata_props: Vec::new(),
                def,
                region: v.region,
                initializer: v.initializer.clone(),
                sparse_initializer: v.sparse.clone(),
            });
            if v.initializer.is_some() {
                self.region_mut(v.region).initializers.push(id);
            } else if v.sparse.is_some() {
                self.region_mut(v.region).sparse_initializers.push(id);
            } else if v.input {
                self.region_mut(v.region).inputs.push(id);
            }
            summary.new_values.push(id);
        }
        summary.values_added = summary.new_values.len();
        let resolve = |v: PValue, new: &[ValueId]| match v {
            PValue::Existing(id) => id,
            PValue::New(i) => new[i as usize],
        };
        // 2. Re-wire the uses that exist now (new nodes are not there yet, so they keep their inputs).
        for (from, to) in &patch.rewires {
            let to = resolve(*to, &summary.new_values);
            self.replace_uses(*from, to);
        }
        for (node, index, value) in &patch.input_changes {
            let value = value.map(|v| resolve(v, &summary.new_values));
            let inputs = &mut self.node_mut(*node).inputs;
            if inputs.len() <= *index {
                inputs.resize(*index + 1, None);
            }
            inputs[*index] = value;
        }
        // 3. New nodes, placed around their anchors.
        let mut before: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        let mut after: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        let mut at_end: BTreeMap<RegionId, Vec<NodeId>> = BTreeMap::new();
        for spec in patch.nodes {
            let region = match spec.anchor {
                Anchor::Before(n) | Anchor::After(n) => self.node(n).region,
                Anchor::End(r) => r,
            };
            let id = self.add_node_detached(Node {
                op_type: spec.op_type,
                domain: spec.domain,
                name: spec.name,
                overload: None,
                inputs: spec.inputs.iter().map(|v| v.map(|v| resolve(v, &summary.new_values))).collect(),
                outputs: spec.outputs.iter().map(|v| v.map(|v| resolve(v, &summary.new_values))).collect(),
                attributes: spec.attributes,
                doc_string: None,
                metadata_props: Vec::new(),
                device_configurations: Vec::new(),
                region,
            });
            for (k, out) in self.node(id).outputs.clone().into_iter().enumerate() {
                if let Some(v) = out {
                    let value = self.value_mut(v);
                    value.def = ValueDef::Node { node: id, output: k as u32 };
                    value.region = region;
                }
            }
            match spec.anchor {
                Anchor::Before(n) => before.entry(n).or_default().push(id),
                Anchor::After(n) => after.entry(n).or_default().push(id),
                Anchor::End(r) => at_end.entry(r).or_default().push(id),
            }
            summary.new_nodes.push(id);
        }
        summary.nodes_added = summary.new_nodes.len();
        let touched: BTreeSet<RegionId> =
            before.keys().chain(after.keys()).map(|&n| self.node(n).region).chain(at_end.keys().copied()).chain(patch.removed_nodes.iter().map(|&n| self.node(n).region)).collect();
        for r in touched {
            let old = std::mem::take(&mut self.region_mut(r).nodes);
            let mut order = Vec::with_capacity(old.len());
            for n in old {
                order.extend(before.remove(&n).unwrap_or_default());
                if !patch.removed_nodes.contains(&n) {
                    order.push(n);
                }
                order.extend(after.remove(&n).unwrap_or_default());
            }
            order.extend(at_end.remove(&r).unwrap_or_default());
            self.region_mut(r).nodes = order;
        }
        // 4. Removed nodes (with their subgraphs) and the outputs nobody took over.
        for &n in &patch.removed_nodes {
            let outputs: Vec<ValueId> = self.node(n).outputs.iter().flatten().copied().collect();
            let subgraphs: Vec<RegionId> = self.node(n).subgraphs().collect();
            for v in outputs {
                if matches!(self.value(v).def, ValueDef::Node { node, .. } if node == n) {
                    self.remove_value(v);
                    summary.values_removed += 1;
                }
            }
            for sub in subgraphs {
                self.remove_region(sub);
            }
            self.remove_node(n);
            summary.nodes_removed += 1;
        }
        for v in patch.removed_values {
            if self.try_value(v).is_some() {
                self.remove_value(v);
                summary.values_removed += 1;
            }
        }
        for (v, name) in patch.renames {
            let v = resolve(v, &summary.new_values);
            self.value_mut(v).name = name;
        }
        // 5. Edits of what stays (a node or value the patch removed takes no edits).
        for (n, name, value) in patch.attribute_edits {
            if self.try_node(n).is_none() {
                continue;
            }
            match value {
                Some(value) => self.node_mut(n).set_attr(&name, value),
                None => self.node_mut(n).attributes.retain(|a| a.name != name),
            }
        }
        for (v, ty) in patch.type_changes {
            let v = resolve(v, &summary.new_values);
            if self.try_value(v).is_some() {
                self.value_mut(v).ty = ty;
            }
        }
        for (v, doc) in patch.doc_changes {
            if self.try_value(v).is_some() {
                self.value_mut(v).doc_string = doc;
            }
        }
        for (v, tensor) in patch.initializer_changes {
            let value = self.value_mut(v);
            value.ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
            value.initializer = Some(tensor.with_name(Some(value.name.clone())));
        }
        for (r, v) in patch.new_outputs {
            let v = resolve(v, &summary.new_values);
            self.region_mut(r).outputs.push(v);
        }
        summary
    }
}

/// The id of an `Existing` patch value (only called on those).
fn self_id(v: PValue) -> ValueId {
    match v {
        PValue::Existing(id) => id,
        PValue::New(_) => unreachable!("only existing values vanish"),
    }
}

#[cfg(test)]
mod tests;
