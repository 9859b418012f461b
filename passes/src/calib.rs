//! The calibration driver: a pass names the activations it needs statistics of, the driver runs
//! the calibration batches once through the pipeline's [`Calibrator`] and accumulates the
//! statistics batch by batch (no activation is kept), and hands them back per value.
//!
//! Statistics are over the *rows* of an activation: the vectors of `k` inputs a layer reads
//! (the last axis of a MatMul input; the channels at each position a 1x1 convolution reads).
//! Sums are accumulated in f64 in batch order, so results do not depend on thread counts.

use crate::pass::{Activation, PassCtx, PassError};
use crate::quant::{Hessian, HessianAccumulator};
use compactor_ir::{Graph, ValueId};
use std::collections::BTreeMap;

/// How an activation holds the rows of `k` inputs its readers multiply.
#[derive(Clone, Debug, PartialEq)]
pub enum RowLayout {
    /// On the last axis (MatMul, Gemm).
    LastAxis,
    /// `[B, C, spatial...]` with C = k, one row per position a 1x1 convolution reads: every
    /// `strides[i]`-th along each spatial axis.
    Channels { strides: Vec<usize> },
    /// Attention probabilities `[..., queries, keys]` (a Softmax output): statistics per key
    /// position, whose count follows the input's length (`k` is not used; give 0).
    Attention,
}

impl RowLayout {
    /// The rows (`[rows, k]`, row-major) of one captured activation.
    pub fn rows<'a>(&self, shape: &[usize], data: &'a [f32], k: usize) -> Result<std::borrow::Cow<'a, [f32]>, String> {
        match self {
            RowLayout::LastAxis if shape.last() == Some(&k) => Ok(data.into()),
            RowLayout::Channels { strides } if shape.len() == strides.len() + 2 && shape[1] == k => {
                let spatial = &shape[2..];
                let positions: usize = spatial.iter().product();
                // Flat spatial indices of the positions read, in row-major order.
                let mut read: Vec<usize> = vec![0];
                for (&extent, &stride) in spatial.iter().zip(strides) {
                    read = read.iter().flat_map(|&base| (0..extent).step_by(stride.max(1)).map(move |i| base * extent + i)).collect();
                }
                let mut rows = Vec::with_capacity(shape[0] * read.len() * k);
                for image in data.chunks_exact(k * positions) {
                    for &p in &read {
                        rows.extend((0..k).map(|c| image[c * positions + p]));
                    }
                }
                Ok(rows.into())
            }
            RowLayout::Attention => Err("holds attention probabilities, not rows of inputs".into()),
            RowLayout::LastAxis => Err(format!("has shape {shape:?}, expected last dimension {k}")),
            RowLayout::Channels { strides } => Err(format!("has shape {shape:?}, expected [batch, {k}] and {} spatial dimensions", strides.len())),
        }
    }
}

/// Which statistics of an activation's rows to accumulate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The Gram matrix `XᵀX` (as GPTQ's Hessian `(2/n) XᵀX`).
    pub gram: bool,
    /// Mean |x| per input (AWQ, ASVD).
    pub mean_abs: bool,
    /// Max |x| per input (outlier and range analyses).
    pub max_abs: bool,
    /// Mean x² per input (channel norms, saliency).
    pub mean_square: bool,
    /// Mean x per input (the bias a cut input leaves behind).
    pub mean: bool,
    /// With [`RowLayout::Attention`]: the mean probability each key position receives, over
    /// every query (and over the first query alone, a classification token's view).
    pub attention: bool,
}

impl Wanted {
    fn any(self) -> bool {
        self.gram || self.mean_abs || self.max_abs || self.mean_square || self.mean || self.attention
    }

    fn union(self, other: Wanted) -> Wanted {
        Wanted {
            gram: self.gram || other.gram,
            mean_abs: self.mean_abs || other.mean_abs,
            max_abs: self.max_abs || other.max_abs,
            mean_square: self.mean_square || other.mean_square,
            mean: self.mean || other.mean,
            attention: self.attention || other.attention,
        }
    }
}

/// Statistics wanted of one activation.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub value: ValueId,
    pub layout: RowLayout,
    /// Inputs per row.
    pub k: usize,
    pub wanted: Wanted,
    /// Each row multiplied by the matching element of this value first (one per row, e.g. a
    /// `[tokens, 1]` routing weight): statistics of `g(x)·x` rather than `x`.
    pub row_scale: Option<ValueId>,
}

/// The statistics of one activation's rows, as requested.
#[derive(Default)]
pub struct Stats {
    pub rows: u64,
    pub gram: Option<Hessian>,
    pub mean_abs: Option<Vec<f32>>,
    pub max_abs: Option<Vec<f32>>,
    pub mean_square: Option<Vec<f32>>,
    pub mean: Option<Vec<f32>>,
    /// Attention: the mean probability each key position receives over every query, and from
    /// the first query alone; as long as the longest input seen (a position only shorter
    /// inputs lack is averaged over the inputs that have it).
    pub attention_received: Option<Vec<f32>>,
    pub attention_from_first: Option<Vec<f32>>,
}

/// Per-key-position sums of attention probabilities, and how many rows each sum holds.
#[derive(Default)]
struct AttentionSums {
    received: Vec<(f64, u64)>,
    from_first: Vec<(f64, u64)>,
}

impl AttentionSums {
    fn add(&mut self, shape: &[usize], data: &[f32]) -> Result<(), String> {
        let [.., queries, keys] = shape[..] else { return Err(format!("has shape {shape:?}, expected [..., queries, keys] attention probabilities")) };
        if keys == 0 || queries == 0 {
            return Ok(());
        }
        for sums in [&mut self.received, &mut self.from_first] {
            if sums.len() < keys {
                sums.resize(keys, (0.0, 0));
            }
        }
        for matrix in data.chunks_exact(queries * keys) {
            for (q, row) in matrix.chunks_exact(keys).enumerate() {
                for (k, &p) in row.iter().enumerate() {
                    self.received[k].0 += p as f64;
                    self.received[k].1 += 1;
                    if q == 0 {
                        self.from_first[k].0 += p as f64;
                        self.from_first[k].1 += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn means(sums: &[(f64, u64)]) -> Vec<f32> {
        sums.iter().map(|&(s, n)| (s / n.max(1) as f64) as f32).collect()
    }
}

/// Per-input running sums of one activation.
struct Accumulator {
    k: usize,
    layout: RowLayout,
    gram: Option<HessianAccumulator>,
    abs_sums: Option<Vec<f64>>,
    max_abs: Option<Vec<f32>>,
    square_sums: Option<Vec<f64>>,
    sums: Option<Vec<f64>>,
    attention: Option<AttentionSums>,
    rows: u64,
}

impl Accumulator {
    fn new(k: usize, layout: RowLayout, wanted: Wanted) -> Self {
        Accumulator {
            k,
            layout,
            gram: wanted.gram.then(|| HessianAccumulator::new(k)),
            abs_sums: wanted.mean_abs.then(|| vec![0.0; k]),
            max_abs: wanted.max_abs.then(|| vec![0.0; k]),
            square_sums: wanted.mean_square.then(|| vec![0.0; k]),
            sums: wanted.mean.then(|| vec![0.0; k]),
            attention: wanted.attention.then(AttentionSums::default),
            rows: 0,
        }
    }

    /// Adds one captured value: rows of inputs, or attention probabilities.
    fn add_captured(&mut self, shape: &[usize], data: &[f32]) -> Result<(), String> {
        if self.layout == RowLayout::Attention {
            return match &mut self.attention {
                Some(sums) => sums.add(shape, data),
                None => Ok(()),
            };
        }
        let rows = self.layout.rows(shape, data, self.k)?;
        self.add(&rows)
    }

    /// Adds one captured value's rows, each multiplied by its entry of `scale` (one per row).
    fn add_scaled(&mut self, shape: &[usize], data: &[f32], scale: &[f32]) -> Result<(), String> {
        let rows = self.layout.rows(shape, data, self.k)?;
        if scale.len() * self.k != rows.len() {
            return Err(format!("has {} rows, its row scale {} values", rows.len() / self.k.max(1), scale.len()));
        }
        let scaled: Vec<f32> = rows.chunks_exact(self.k).zip(scale).flat_map(|(row, &g)| row.iter().map(move |&x| x * g)).collect();
        self.add(&scaled)
    }

    fn add(&mut self, data: &[f32]) -> Result<(), String> {
        let k = self.k;
        let rows = data.len() / k;
        if let Some(gram) = &mut self.gram {
            gram.add_batch(data, rows).map_err(|e| e.to_string())?;
        }
        for row in data.chunks_exact(k) {
            if let Some(sums) = &mut self.abs_sums {
                for (s, &x) in sums.iter_mut().zip(row) {
                    *s += x.abs() as f64;
                }
            }
            if let Some(max) = &mut self.max_abs {
                for (m, &x) in max.iter_mut().zip(row) {
                    // NaN wins, so a NaN activation shows in the result.
                    if x.abs() > *m || x.is_nan() {
                        *m = x.abs();
                    }
                }
            }
            if let Some(sums) = &mut self.square_sums {
                for (s, &x) in sums.iter_mut().zip(row) {
                    *s += x as f64 * x as f64;
                }
            }
            if let Some(sums) = &mut self.sums {
                for (s, &x) in sums.iter_mut().zip(row) {
                    *s += x as f64;
                }
            }
        }
        self.rows += rows as u64;
        Ok(())
    }

    fn finish(self) -> Result<Stats, String> {
        let n = self.rows.max(1) as f64;
        let mean = |sums: Vec<f64>| sums.iter().map(|&s| (s / n) as f32).collect();
        Ok(Stats {
            rows: self.rows,
            gram: self.gram.map(|g| g.hessian()).transpose().map_err(|e| e.to_string())?,
            mean_abs: self.abs_sums.map(mean),
            max_abs: self.max_abs,
            mean_square: self.square_sums.map(mean),
            mean: self.sums.map(mean),
            attention_received: self.attention.as_ref().map(|a| AttentionSums::means(&a.received)),
            attention_from_first: self.attention.as_ref().map(|a| AttentionSums::means(&a.from_first)),
        })
    }
}

/// Runs the calibration batches once and returns the statistics of every requested activation.
///
/// Requests for one value are merged; a value asked for with two row layouts or widths (rare)
/// gets no statistics, and its readers fall back to data-free methods. With nothing to
/// measure, no calibration runs (and none is needed). `pass` and `needs` name who asks and
/// why, for the error when the pipeline has no calibration data.
pub fn collect(graph: &Graph, ctx: &mut PassCtx<'_, '_>, pass: &str, needs: &str, requests: &[Request]) -> Result<BTreeMap<ValueId, Stats>, PassError> {
    collect_with(graph, ctx, pass, needs, requests, &mut [])
}

/// Values a statistic needs together: each batch's captures of `values` are handed to `visit`
/// at once, in the order listed (e.g. a MoE node's input and router logits, from which the
/// statistics of its experts' neurons are computed). Only the batch in flight is kept.
pub struct Joint<'a> {
    pub values: Vec<ValueId>,
    pub visit: JointVisit<'a>,
}

/// What a [`Joint`] does with one batch's captures of its values.
pub type JointVisit<'a> = Box<dyn FnMut(&[Activation<'_>]) -> Result<(), String> + 'a>;

/// A joint's captures of the batches in flight, by arrival: (shape, values) per value.
type Pending = BTreeMap<usize, Vec<Option<(Vec<usize>, Vec<f32>)>>>;

/// Hands a capture of `v` to every joint that needs it, and each completed batch to its joint.
fn arrive_joint(joints: &mut [Joint<'_>], pending: &mut [Pending], arrivals: &mut BTreeMap<ValueId, usize>, v: ValueId, a: &Activation<'_>) -> Result<(), String> {
    if !joints.iter().any(|j| j.values.contains(&v)) {
        return Ok(());
    }
    let arrival = {
        let n = arrivals.entry(v).or_default();
        *n += 1;
        *n - 1
    };
    for (joint, pending) in joints.iter_mut().zip(pending.iter_mut()) {
        for (slot, _) in joint.values.iter().enumerate().filter(|(_, w)| **w == v) {
            let batch = pending.entry(arrival).or_insert_with(|| vec![None; joint.values.len()]);
            batch[slot] = Some((a.shape.to_vec(), a.data.to_vec()));
        }
        if pending.get(&arrival).is_some_and(|b| b.iter().all(Option::is_some)) {
            let batch = pending.remove(&arrival).expect("complete");
            let activations: Vec<Activation<'_>> = batch.iter().flatten().map(|(shape, data)| Activation { shape, data }).collect();
            (joint.visit)(&activations)?;
        }
    }
    Ok(())
}

/// [`collect`], and each [`Joint`] visited with its values batch by batch in the same run.
pub fn collect_with(graph: &Graph, ctx: &mut PassCtx<'_, '_>, pass: &str, needs: &str, requests: &[Request], joints: &mut [Joint<'_>]) -> Result<BTreeMap<ValueId, Stats>, PassError> {
    let mut accumulators: BTreeMap<ValueId, (usize, RowLayout, Wanted, Option<ValueId>)> = BTreeMap::new();
    let mut conflicting = Vec::new();
    for r in requests.iter().filter(|r| r.wanted.any()) {
        let entry = accumulators.entry(r.value).or_insert_with(|| (r.k, r.layout.clone(), r.wanted, r.row_scale));
        if entry.0 != r.k || entry.1 != r.layout || entry.3 != r.row_scale {
            conflicting.push(r.value);
        }
        entry.2 = entry.2.union(r.wanted);
    }
    for v in conflicting {
        accumulators.remove(&v);
    }
    if accumulators.is_empty() && joints.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Rows scaled by another value's entries need both captures of a batch: a joint of the two
    // per such activation, its accumulator moved into the joint's visitor.
    let scales: BTreeMap<ValueId, ValueId> = accumulators.iter().filter_map(|(&v, entry)| entry.3.map(|scale| (v, scale))).collect();
    let mut accumulators: BTreeMap<ValueId, Accumulator> = accumulators.into_iter().map(|(v, (k, layout, wanted, _))| (v, Accumulator::new(k, layout, wanted))).collect();
    let mut scaled: BTreeMap<ValueId, Accumulator> = scales.keys().filter_map(|v| accumulators.remove_entry(v)).collect();
    let model = ctx.snapshot(graph);
    let Some(calibrator) = ctx.calibrator.as_deref_mut() else {
        return Err(PassError::NeedsCalibration { pass: pass.into(), why: needs.into() });
    };
    let mut scaled_joints: Vec<Joint<'_>> =
        scaled.iter_mut().map(|(v, acc)| Joint { values: vec![*v, scales[v]], visit: Box::new(move |a: &[Activation<'_>]| acc.add_scaled(a[0].shape, a[0].data, a[1].data)) }).collect();
    let mut values: Vec<ValueId> = accumulators.keys().copied().collect();
    for v in joints.iter().chain(scaled_joints.iter()).flat_map(|j| j.values.iter().copied()) {
        if !values.contains(&v) {
            values.push(v);
        }
    }
    let mut pending: Vec<Pending> = vec![BTreeMap::new(); joints.len()];
    let mut scaled_pending: Vec<Pending> = vec![BTreeMap::new(); scaled_joints.len()];
    let (mut joint_arrivals, mut scaled_arrivals) = (BTreeMap::new(), BTreeMap::new());
    let mut error = None;
    let mut sink = |v: ValueId, a: Activation<'_>| {
        let result = arrive_joint(joints, &mut pending, &mut joint_arrivals, v, &a)
            .and_then(|()| arrive_joint(&mut scaled_joints, &mut scaled_pending, &mut scaled_arrivals, v, &a))
            .and_then(|()| accumulators.get_mut(&v).map_or(Ok(()), |acc| acc.add_captured(a.shape, a.data)));
        if let Err(e) = result {
            error.get_or_insert_with(|| format!("captured '{}' {e}", graph.value(v).name));
        }
    };
    ctx.progress.begin("calibrating", calibrator.batches() as u64);
    let result = calibrator.capture(&model, &values, ctx.progress, &mut sink);
    ctx.progress.end();
    result.map_err(|e| PassError::failed(pass, "calibration", e))?;
    if let Some(e) = error {
        return Err(PassError::failed(pass, "calibration", e));
    }
    drop(scaled_joints);
    accumulators.extend(scaled);
    accumulators.into_iter().map(|(v, acc)| acc.finish().map(|s| (v, s)).map_err(|e| PassError::failed(pass, format!("calibration of '{}'", graph.value(v).name), e))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Analyses;
    use crate::pass::{Calibrator, Progress, Silent};
    use compactor_ir::Model;

    /// Hands out fixed activations for every requested value, in two batches.
    struct Fixed(Vec<(Vec<usize>, Vec<f32>)>);

    impl Calibrator for Fixed {
        fn batches(&self) -> usize {
            self.0.len()
        }

        fn capture(&mut self, _: &Model, values: &[ValueId], _: &dyn Progress, sink: &mut dyn FnMut(ValueId, Activation<'_>)) -> Result<(), String> {
            for (shape, data) in &self.0 {
                for &v in values {
                    sink(v, Activation { shape, data });
                }
            }
            Ok(())
        }
    }

    fn graph() -> (Model, ValueId) {
        let model = compactor_ir::text::parse("model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,2]\n  %y = Relu(%x)\n  output %y\n}\n").unwrap();
        let x = model.graph.main().inputs[0];
        (model, x)
    }

    #[test]
    fn statistics_are_accumulated_over_every_batch() {
        let (mut model, x) = graph();
        // Rows (1, -2), (3, 0) and (-5, 4).
        let mut calibrator = Fixed(vec![(vec![2, 2], vec![1.0, -2.0, 3.0, 0.0]), (vec![1, 2], vec![-5.0, 4.0])]);
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: Some(&mut calibrator), analyses: &mut analyses };
        let all = Wanted { gram: true, mean_abs: true, max_abs: true, mean_square: true, mean: true, ..Default::default() };
        let stats = collect(&model.graph, &mut ctx, "test", "testing", &[Request { row_scale: None, value: x, layout: RowLayout::LastAxis, k: 2, wanted: all }]).unwrap();
        let s = &stats[&x];
        assert_eq!(s.rows, 3);
        assert_eq!(s.mean_abs.as_deref(), Some(&[3.0, 2.0][..]));
        assert_eq!(s.max_abs.as_deref(), Some(&[5.0, 4.0][..]));
        assert_eq!(s.mean_square.as_deref(), Some(&[35.0 / 3.0, 20.0 / 3.0][..]));
        assert_eq!(s.mean.as_deref(), Some(&[-1.0 / 3.0, 2.0 / 3.0][..]));
        // GPTQ's Hessian is (2/n) XᵀX: XᵀX = [[35, -22], [-22, 20]].
        let h = s.gram.as_ref().unwrap();
        let expected = [[35.0, -22.0], [-22.0, 20.0]];
        for (r, row) in expected.iter().enumerate() {
            for (c, &e) in row.iter().enumerate() {
                assert!((h.get(r, c) - 2.0 * e / 3.0).abs() < 1e-9, "({r}, {c}): {}", h.get(r, c));
            }
        }
    }

    #[test]
    fn without_calibration_data_the_error_names_the_pass_and_the_need() {
        let (mut model, x) = graph();
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: None, analyses: &mut analyses };
        let wanted = Wanted { mean_abs: true, ..Default::default() };
        let e = collect(&model.graph, &mut ctx, "factorize", "method=asvd scales by activations", &[Request { row_scale: None, value: x, layout: RowLayout::LastAxis, k: 2, wanted }]).err().unwrap();
        assert!(matches!(&e, PassError::NeedsCalibration { pass, why } if pass == "factorize" && why == "method=asvd scales by activations"), "{e}");
        assert_eq!(e.to_string(), "pass 'factorize' needs calibration data (method=asvd scales by activations), which this pipeline was not given");
        // Nothing to measure: no calibration needed.
        assert!(collect(&model.graph, &mut ctx, "factorize", "-", &[]).unwrap().is_empty());
    }

    #[test]
    fn a_value_read_two_ways_gets_no_statistics() {
        let (mut model, x) = graph();
        let mut calibrator = Fixed(vec![(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])]);
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: Some(&mut calibrator), analyses: &mut analyses };
        let wanted = Wanted { mean_abs: true, ..Default::default() };
        let requests =
            [Request { row_scale: None, value: x, layout: RowLayout::LastAxis, k: 2, wanted }, Request { row_scale: None, value: x, layout: RowLayout::Channels { strides: vec![] }, k: 2, wanted }];
        assert!(collect(&model.graph, &mut ctx, "test", "testing", &requests).unwrap().is_empty());
    }

    /// A 1x1 convolution with strides (2, 3) over x [2, 3, 5, 7] reads positions (h, w) with
    /// h in {0, 2, 4} and w in {0, 3, 6}: 2 x 3 x 3 = 18 rows of the 3 channels.
    #[test]
    fn channel_rows_are_the_positions_a_strided_pointwise_conv_reads() {
        let shape = [2, 3, 5, 7];
        let x: Vec<f32> = (0..2 * 3 * 5 * 7).map(|i| i as f32).collect();
        let rows = RowLayout::Channels { strides: vec![2, 3] }.rows(&shape, &x, 3).unwrap();
        let mut expected = Vec::new();
        for b in 0..2 {
            for h in (0..5).step_by(2) {
                for w in (0..7).step_by(3) {
                    expected.extend((0..3).map(|c| x[((b * 3 + c) * 5 + h) * 7 + w]));
                }
            }
        }
        assert_eq!(rows.as_ref(), expected.as_slice());
        // The last axis is the rows as they are; wrong shapes are errors, not panics.
        assert_eq!(RowLayout::LastAxis.rows(&[35, 6], &x, 6).unwrap().len(), x.len());
        assert!(RowLayout::LastAxis.rows(&shape, &x, 3).is_err());
        assert!(RowLayout::Channels { strides: vec![1, 1] }.rows(&shape, &x, 4).is_err());
        assert!(RowLayout::Channels { strides: vec![1] }.rows(&shape, &x, 3).is_err());
    }

    /// Two inputs of different lengths: each key position is averaged over the inputs that
    /// have it, over every head and query (and over the first query alone).
    #[test]
    fn attention_probabilities_are_averaged_per_key_position() {
        let (mut model, x) = graph();
        // [1, 2 heads, 2 queries, 2 keys], then [1, 1 head, 1 query, 3 keys].
        let first = vec![0.5, 0.5, 0.25, 0.75, 1.0, 0.0, 0.0, 1.0];
        let second = vec![0.2, 0.3, 0.5];
        let mut calibrator = Fixed(vec![(vec![1, 2, 2, 2], first), (vec![1, 1, 1, 3], second)]);
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: Some(&mut calibrator), analyses: &mut analyses };
        let wanted = Wanted { attention: true, ..Default::default() };
        let stats = collect(&model.graph, &mut ctx, "test", "testing", &[Request { row_scale: None, value: x, layout: RowLayout::Attention, k: 0, wanted }]).unwrap();
        let s = &stats[&x];
        // Key 0: (0.5 + 0.25 + 1 + 0 + 0.2) / 5, key 1: (0.5 + 0.75 + 0 + 1 + 0.3) / 5, key 2: 0.5 / 1.
        let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        let received = s.attention_received.as_deref().unwrap();
        assert!(close(received, &[0.39, 0.51, 0.5]), "{received:?}");
        // First query: head 0 (0.5, 0.5), head 1 (1, 0), the second input (0.2, 0.3, 0.5).
        let from_first = s.attention_from_first.as_deref().unwrap();
        assert!(close(from_first, &[1.7 / 3.0, 0.8 / 3.0, 0.5]), "{from_first:?}");
    }

    /// Hands out given activations (value, shape, data), batch by batch, in the order listed.
    struct Ordered(Vec<Vec<Capture>>);

    /// One capture: the value, its shape and its values.
    type Capture = (ValueId, Vec<usize>, Vec<f32>);

    impl Calibrator for Ordered {
        fn batches(&self) -> usize {
            self.0.len()
        }

        fn capture(&mut self, _: &Model, _: &[ValueId], _: &dyn Progress, sink: &mut dyn FnMut(ValueId, Activation<'_>)) -> Result<(), String> {
            for batch in &self.0 {
                for (v, shape, data) in batch {
                    sink(*v, Activation { shape, data });
                }
            }
            Ok(())
        }
    }

    /// Rows scaled by another value's per-row entries, whichever of the two is captured first
    /// in a batch.
    #[test]
    fn row_scales_pair_with_their_batch() {
        let mut model = compactor_ir::text::parse("model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,2]\n  input %g: f32[2,1]\n  %y = Mul(%x, %g)\n  output %y\n}\n").unwrap();
        let (x, g) = (model.graph.main().inputs[0], model.graph.main().inputs[1]);
        // Batch 1: scale after the rows; batch 2: before.
        let mut calibrator = Ordered(vec![vec![(x, vec![2, 2], vec![1.0, -2.0, 3.0, 4.0]), (g, vec![2, 1], vec![2.0, 0.0])], vec![(g, vec![1, 1], vec![-1.0]), (x, vec![1, 2], vec![5.0, 1.0])]]);
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: Some(&mut calibrator), analyses: &mut analyses };
        let wanted = Wanted { mean_square: true, max_abs: true, ..Default::default() };
        let stats = collect(&model.graph, &mut ctx, "test", "testing", &[Request { value: x, layout: RowLayout::LastAxis, k: 2, wanted, row_scale: Some(g) }]).unwrap();
        // Scaled rows: (2, -4), (0, 0), (-5, -1).
        let s = &stats[&x];
        assert_eq!(s.rows, 3);
        assert_eq!(s.max_abs.as_deref(), Some(&[5.0f32, 4.0][..]));
        assert_eq!(s.mean_square.as_deref(), Some(&[(4.0f32 + 25.0) / 3.0, (16.0 + 1.0) / 3.0][..]));
        assert!(!stats.contains_key(&g), "the scale itself was not asked for");
    }

    /// A joint's values come to its visitor together, batch by batch, in the order it lists
    /// them, whichever was captured first.
    #[test]
    fn joint_values_are_visited_together_per_batch() {
        let mut model = compactor_ir::text::parse("model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[2,2]\n  input %g: f32[2,1]\n  %y = Mul(%x, %g)\n  output %y\n}\n").unwrap();
        let (x, g) = (model.graph.main().inputs[0], model.graph.main().inputs[1]);
        let mut calibrator = Ordered(vec![vec![(x, vec![1, 2], vec![1.0, 2.0]), (g, vec![1, 1], vec![3.0])], vec![(g, vec![1, 1], vec![4.0]), (x, vec![1, 2], vec![5.0, 6.0])]]);
        let mut analyses = Analyses::new();
        let mut ctx = PassCtx { opsets: &mut model.opset_import, ir_version: &mut model.ir_version, progress: &Silent, evaluator: None, calibrator: Some(&mut calibrator), analyses: &mut analyses };
        let mut seen = Vec::new();
        {
            let visit: JointVisit<'_> = Box::new(|a: &[Activation<'_>]| {
                seen.push((a[0].data.to_vec(), a[1].data.to_vec()));
                Ok(())
            });
            let stats = collect_with(&model.graph, &mut ctx, "test", "testing", &[], &mut [Joint { values: vec![x, g], visit }]).unwrap();
            assert!(stats.is_empty());
        }
        assert_eq!(seen, vec![(vec![1.0, 2.0], vec![3.0]), (vec![5.0, 6.0], vec![4.0])]);
    }
}
