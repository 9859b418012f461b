//! Low-rank and tensor-network factorization of linear layers: truncated SVD (`svd`),
//! activation-aware SVD (`asvd`), whitened SVD (`svd-llm`) and matrix product operators
//! (`mpo`).
//!
//! A layer `x · W (+ b)` becomes `(x · A) · B (+ b)` with `A [K, r]`, `B [r, N]` (two Convs for a
//! 1x1 Conv, a MatMul and the Gemm for a Gemm), or for `mpo` a chain of Reshape, Transpose and
//! MatMul that contracts the cores one by one. A weight several layers read is factorized once
//! and every reader uses the factors. The numerics live in [`crate::lowrank`]; [`select`]
//! picks the weights and [`emit`] rewrites the graph.
//!
//! Rank choice: a fixed `rank` (the bond dimension for `mpo`), an `energy` share, a parameter
//! `ratio` per layer, or a global parameter `budget` spread over the layers by their measured
//! cost (calibration output error when there is calibration data, else the weight's own
//! error). A layer whose factors would not be smaller than its weight is left alone.

mod emit;
mod select;

use crate::calib::{self, Request, Wanted};
use crate::lowrank::{self, BondRule, Choice, Factors, Mpo, MpoShape, RankRule, Solver, Weighting};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::Graph;
use compactor_ir::ValueId;
use compactor_ir::scratch::ScratchFile;
use rayon::prelude::*;
use select::Target;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Truncated SVD of the weight (no data needed).
    Svd,
    /// SVD of the weight with input channels scaled by mean|x|^alpha (needs calibration data).
    Asvd,
    /// SVD of the weight whitened by the calibration Gram matrix's Cholesky factor: the output error on the calibration data is exactly the dropped singular values (needs calibration data).
    #[default]
    SvdLlm,
    /// Matrix product operator (tensor train): the weight split into `cores` cores by sequential SVDs.
    Mpo,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SolverChoice {
    /// Randomized for layers with at least 2048 rows and columns that keep at most a quarter of their rank (under a fixed rank or ratio), else exact.
    #[default]
    Auto,
    /// Dense eigendecomposition.
    Exact,
    /// Randomized subspace iteration (needs a fixed rank or ratio).
    Randomized,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Factorize {
    /// svd, asvd, svd-llm or mpo.
    pub method: Method,
    /// Keep this many components in every layer (for mpo: the largest bond dimension); 0: not used.
    pub rank: usize,
    /// Per layer: the fewest components whose energy reaches this share (for mpo: of every split); 0: not used.
    pub energy: f64,
    /// Per layer: the share of the layer's parameters the factors keep; 0: not used (0.8 when no other rule is given).
    pub ratio: f64,
    /// Over all selected layers: the share of their parameters kept, given to the layers where it lowers the measured error most; 0: not used.
    pub budget: f64,
    /// ASVD: the exponent of mean|x| in the channel scales.
    pub alpha: f64,
    /// MPO: the number of cores, 2 to 4.
    pub cores: usize,
    /// MPO: how K splits into the cores' input factors (for layers whose K it multiplies to; balanced factors otherwise).
    pub in_factors: Vec<usize>,
    /// MPO: how N splits into the cores' output factors (with in_factors).
    pub out_factors: Vec<usize>,
    /// How singular vectors are found: auto, exact or randomized.
    pub solver: SolverChoice,
    /// Ops whose constant weights are factorized: MatMul, Gemm, Conv (1x1 only).
    pub ops: Vec<String>,
    /// Only weights whose node or weight name matches one of these glob patterns (all when empty).
    pub include: Vec<String>,
    /// Leave weights whose node or weight name matches one of these glob patterns.
    pub exclude: Vec<String>,
    /// Leave weights with fewer elements than this.
    pub min_elements: u64,
    /// Factorize a layer even when the factors are not smaller than its weight (full-rank checks).
    pub allow_larger: bool,
}

impl Default for Factorize {
    fn default() -> Self {
        Factorize {
            method: Method::SvdLlm,
            rank: 0,
            energy: 0.0,
            ratio: 0.0,
            budget: 0.0,
            alpha: 0.5,
            cores: 2,
            in_factors: Vec::new(),
            out_factors: Vec::new(),
            solver: SolverChoice::Auto,
            ops: vec!["MatMul".into(), "Gemm".into()],
            include: Vec::new(),
            exclude: Vec::new(),
            min_elements: 4096,
            allow_larger: false,
        }
    }
}

const OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];
const DEFAULT_RATIO: f64 = 0.8;

/// The rank rule of a run.
#[derive(Clone, Copy, Debug)]
enum Rule {
    Layer(RankRule),
    Budget(f64),
}

impl PassDef for Factorize {
    const NAME: &'static str = "factorize";
    const SUMMARY: &'static str = "Low-rank (SVD, ASVD, SVD-LLM) or tensor-train (MPO) factorization of linear layers";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        let given = [self.rank != 0, self.energy != 0.0, self.ratio != 0.0, self.budget != 0.0];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(OptionError::new("rank", "give one of rank, energy, ratio and budget"));
        }
        for (option, v) in [("energy", self.energy), ("ratio", self.ratio), ("budget", self.budget)] {
            if v != 0.0 && !(v > 0.0 && v <= 1.0) {
                return Err(OptionError::new(option, format!("{v} is not a share in (0, 1]")));
            }
        }
        if !(0.0..=4.0).contains(&self.alpha) {
            return Err(OptionError::new("alpha", "must be from 0 to 4"));
        }
        if !(2..=4).contains(&self.cores) {
            return Err(OptionError::new("cores", format!("{} is not from 2 to 4", self.cores)));
        }
        if self.in_factors.is_empty() != self.out_factors.is_empty() {
            return Err(OptionError::new("in_factors", "give in_factors and out_factors together"));
        }
        for (option, factors) in [("in_factors", &self.in_factors), ("out_factors", &self.out_factors)] {
            if !factors.is_empty() && (factors.len() != self.cores || factors.iter().any(|&f| f < 2)) {
                return Err(OptionError::new(option, format!("needs {} factors (cores), each at least 2", self.cores)));
            }
        }
        if let Some(op) = self.ops.iter().find(|o| !OPS.contains(&o.as_str())) {
            return Err(OptionError::new("ops", format!("'{op}' is not one of {}", OPS.join(", "))));
        }
        super::validate_globs("include", &self.include)?;
        super::validate_globs("exclude", &self.exclude)?;
        if self.solver == SolverChoice::Randomized && (self.energy != 0.0 || self.budget != 0.0) {
            return Err(OptionError::new("solver", "randomized finds a given number of components: use it with rank or ratio"));
        }
        Ok(())
    }
}

/// What one layer became.
enum Factored {
    LowRank {
        factors: Factors,
        kept_energy: f64,
        output_error: Option<f64>,
    },
    /// With the relative error of the dense weight it represents (made once, for both errors).
    Mpo {
        mpo: Mpo,
        relative_error: f64,
        output_error: Option<f64>,
    },
}

/// Per-layer numbers of the report.
#[derive(Serialize)]
struct LayerReport {
    name: String,
    op: &'static str,
    k: usize,
    n: usize,
    /// Low rank: components kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<usize>,
    /// MPO: the factor shapes and inner bond dimensions.
    #[serde(skip_serializing_if = "Option::is_none")]
    mpo: Option<MpoShape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bonds: Option<Vec<usize>>,
    params_before: u64,
    params_after: u64,
    /// Multiply-adds per input row after (before: `params_before`).
    macs_per_row: u64,
    /// ‖W − Ŵ‖ / ‖W‖.
    relative_error: f64,
    /// ‖X(W − Ŵ)‖ / ‖XW‖ on the calibration data, when there is some.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_error: Option<f64>,
    /// The share of the energy kept (in the method's measure; for mpo, of each split).
    energy_kept: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize)]
struct Skipped {
    name: String,
    reason: String,
}

/// A target's calibration statistics: the Gram matrix of its input rows (summed over the
/// readers of a shared weight; layers reading one input share one matrix) and the mean |x| per
/// input channel.
#[derive(Default)]
struct LayerStats {
    gram: Option<Arc<Vec<f64>>>,
    mean_abs: Option<Vec<f64>>,
}

fn fail(t: &Target, e: lowrank::LowRankError) -> PassError {
    PassError::failed(Factorize::NAME, t.label.clone(), e.to_string())
}

impl Factorize {
    fn rule(&self) -> Rule {
        if self.rank != 0 {
            Rule::Layer(RankRule::Fixed(self.rank))
        } else if self.energy != 0.0 {
            Rule::Layer(RankRule::Energy(self.energy))
        } else if self.ratio != 0.0 {
            Rule::Layer(RankRule::Ratio(self.ratio))
        } else if self.budget != 0.0 {
            Rule::Budget(self.budget)
        } else {
            Rule::Layer(RankRule::Ratio(DEFAULT_RATIO))
        }
    }

    fn calibrate(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>, targets: &[Target]) -> Result<Vec<LayerStats>, PassError> {
        let needs = matches!(self.method, Method::Asvd | Method::SvdLlm);
        // Without a need, calibration data still measures each layer's output error.
        if !needs && ctx.calibrator.is_none() {
            return Ok(targets.iter().map(|_| LayerStats::default()).collect());
        }
        let wanted = Wanted { gram: true, mean_abs: self.method == Method::Asvd, ..Default::default() };
        let requests: Vec<Request> = targets.iter().flat_map(|t| t.readers.iter().map(move |r| Request { row_scale: None, value: r.input, layout: r.rows.clone(), k: t.k, wanted })).collect();
        let why = match self.method {
            Method::Asvd => "method=asvd scales by activations",
            _ => "method=svd-llm whitens by the activations' Gram matrix",
        };
        let mut stats = calib::collect(graph, ctx, Self::NAME, why, &requests)?;
        // One matrix per input, however many layers read it (q, k and v; gate and up).
        let grams: HashMap<ValueId, Arc<Vec<f64>>> = stats.iter_mut().filter_map(|(&v, s)| Some((v, Arc::new(s.gram.take()?.into_vec())))).collect();
        Ok(targets
            .iter()
            .map(|t| {
                let readers: Option<Vec<&Arc<Vec<f64>>>> = t.readers.iter().map(|r| grams.get(&r.input)).collect();
                let gram = readers.map(|g| match g.as_slice() {
                    [one] => Arc::clone(one),
                    many => Arc::new((0..t.k * t.k).map(|i| many.iter().map(|g| g[i]).sum()).collect()),
                });
                let means: Option<Vec<&Vec<f32>>> = t.readers.iter().map(|r| stats.get(&r.input).and_then(|s| s.mean_abs.as_ref())).collect();
                let mean_abs = means.map(|m| (0..t.k).map(|c| m.iter().map(|v| v[c] as f64).sum::<f64>() / m.len() as f64).collect());
                LayerStats { gram, mean_abs }
            })
            .collect())
    }

    fn solver(&self, k: usize, n: usize, rank: Option<usize>) -> Solver {
        let full = k.min(n);
        match (self.solver, rank) {
            (SolverChoice::Randomized, Some(r)) => Solver::Randomized { components: r },
            (SolverChoice::Auto, Some(r)) if full >= 2048 && 4 * r <= full => Solver::Randomized { components: r },
            _ => Solver::Exact,
        }
    }

    /// The channel scales of ASVD: `mean|x|^alpha`, with channels never seen active given the
    /// smallest positive scale (a zero scale cannot be divided out).
    fn asvd_scales(&self, mean_abs: &[f64]) -> Vec<f64> {
        let largest = mean_abs.iter().copied().fold(0.0f64, f64::max);
        let floor = if largest > 0.0 { largest * 1e-6 } else { 1.0 };
        mean_abs.iter().map(|&m| m.max(floor).powf(self.alpha)).collect()
    }

    /// The spectrum of a low-rank target under the method's weighting.
    fn spectrum(&self, t: &Target, w: &[f32], stats: &LayerStats, solver: Solver, notes: &mut Vec<String>) -> Result<lowrank::Spectrum, PassError> {
        let scales;
        let weighting = match (self.method, &stats.gram, &stats.mean_abs) {
            (Method::SvdLlm, Some(g), _) => Weighting::Gram(g.as_slice()),
            (Method::Asvd, _, Some(m)) => {
                scales = self.asvd_scales(m);
                Weighting::Channels(&scales)
            }
            (Method::SvdLlm | Method::Asvd, ..) => {
                notes.push("no calibration statistics for its input (read in two layouts): plain SVD".into());
                Weighting::Plain
            }
            _ => Weighting::Plain,
        };
        lowrank::decompose(w, t.k, t.n, weighting, stats.gram.as_ref().map(|g| g.as_slice()), solver).map_err(|e| fail(t, e))
    }

    fn mpo_shape(&self, t: &Target) -> Result<MpoShape, String> {
        if !self.in_factors.is_empty() && self.in_factors.iter().product::<usize>() == t.k && self.out_factors.iter().product::<usize>() == t.n {
            return Ok(MpoShape { in_factors: self.in_factors.clone(), out_factors: self.out_factors.clone() });
        }
        let split = |dim: usize| lowrank::balanced_factors(dim, self.cores).ok_or_else(|| format!("{dim} has no split into {} factors of at least 2", self.cores));
        Ok(MpoShape { in_factors: split(t.k)?, out_factors: split(t.n)? })
    }

    /// The MPO of a target under a bond rule, with its output error (with calibration data).
    fn mpo(&self, t: &Target, w: &[f32], shape: &MpoShape, rule: BondRule, stats: &LayerStats) -> Result<(Mpo, Vec<f32>, Option<f64>), PassError> {
        let mpo = lowrank::decompose_mpo(w, t.k, t.n, shape, rule).map_err(|e| fail(t, e))?;
        let dense = mpo.to_dense();
        let output_error = stats.gram.as_ref().map(|g| lowrank::relative_output_error(g, w, &dense, t.k, t.n));
        Ok((mpo, dense, output_error))
    }

    /// Every way a budget may store a target, and what each costs.
    fn budget_choices(&self, t: &Target, w: &[f32], stats: &LayerStats) -> Result<Vec<Choice>, PassError> {
        let dense = Choice { params: (t.k * t.n) as u64, cost: 0.0 };
        let mut choices = Vec::new();
        if self.method == Method::Mpo {
            let Ok(shape) = self.mpo_shape(t) else { return Ok(vec![dense]) };
            let largest = shape.full_bonds().into_iter().max().unwrap_or(1);
            let mut cap = 1;
            loop {
                let (mpo, approx, output_error) = self.mpo(t, w, &shape, BondRule { max_bond: Some(cap), energy: None }, stats)?;
                let cost = output_error.unwrap_or_else(|| lowrank::relative_error(w, &approx)).powi(2);
                if mpo.params() < dense.params || self.allow_larger {
                    choices.push(Choice { params: mpo.params(), cost });
                }
                if cap >= largest {
                    break;
                }
                cap = (cap * 2).min(largest);
            }
        } else {
            let spectrum = self.spectrum(t, w, stats, Solver::Exact, &mut Vec::new())?;
            let max_rank = if self.allow_larger { t.k.min(t.n) } else { lowrank::break_even_rank(t.k, t.n) };
            for (r, cost) in spectrum.costs(max_rank).into_iter().enumerate() {
                choices.push(Choice { params: ((r + 1) * (t.k + t.n)) as u64, cost });
            }
        }
        choices.push(dense);
        Ok(choices)
    }

    /// Factorizes one target (`rank`: the budget's pick, for budgets), or says why not.
    fn factorize(&self, t: &Target, w: &[f32], stats: &LayerStats, rule: Rule, budget_pick: Option<&Choice>) -> Result<Result<(Factored, Vec<String>), String>, PassError> {
        let (k, n) = (t.k, t.n);
        let dense_params = (k * n) as u64;
        let mut notes = Vec::new();
        if budget_pick.is_some_and(|c| c.params == dense_params && c.cost == 0.0) {
            return Ok(Err("the budget keeps it dense (the others lose less per parameter saved)".into()));
        }
        if self.method == Method::Mpo {
            let shape = match self.mpo_shape(t) {
                Ok(shape) => shape,
                Err(reason) => return Ok(Err(reason)),
            };
            let bond_rule = match (rule, budget_pick) {
                (Rule::Budget(_), Some(pick)) => {
                    // The cap whose parameter count the budget picked.
                    let largest = shape.full_bonds().into_iter().max().unwrap_or(1);
                    let cap = (1..=largest).find(|&c| shape.params(&shape.capped_bonds(c)) == pick.params).unwrap_or(largest);
                    BondRule { max_bond: Some(cap), energy: None }
                }
                (Rule::Layer(RankRule::Fixed(r)), _) => BondRule { max_bond: Some(r), energy: None },
                (Rule::Layer(RankRule::Energy(e)), _) => BondRule { max_bond: None, energy: Some(e) },
                (Rule::Layer(RankRule::Ratio(ratio)), _) => {
                    let largest = shape.full_bonds().into_iter().max().unwrap_or(1);
                    let fits = |c: usize| shape.params(&shape.capped_bonds(c)) as f64 <= ratio * dense_params as f64;
                    match (1..=largest).rev().find(|&c| fits(c)) {
                        Some(cap) => BondRule { max_bond: Some(cap), energy: None },
                        None => return Ok(Err(format!("even bond dimension 1 keeps more than {ratio} of its parameters"))),
                    }
                }
                (Rule::Budget(_), None) => unreachable!("budgets pick per layer"),
            };
            let (mpo, dense, output_error) = self.mpo(t, w, &shape, bond_rule, stats)?;
            let relative_error = lowrank::relative_error(w, &dense);
            if mpo.params() >= dense_params && !self.allow_larger {
                return Ok(Err(format!("bonds {:?} keep {} parameters, not fewer than the weight's {dense_params}", mpo.bonds, mpo.params())));
            }
            return Ok(Ok((Factored::Mpo { mpo, relative_error, output_error }, notes)));
        }
        let fixed_rank = match rule {
            Rule::Layer(r @ (RankRule::Fixed(_) | RankRule::Ratio(_))) => Some(r.rank(k, n, &[])),
            Rule::Budget(_) => budget_pick.map(|c| (c.params as usize / (k + n)).max(1)),
            Rule::Layer(RankRule::Energy(_)) => None,
        };
        let break_even = lowrank::break_even_rank(k, n);
        if let Some(r) = fixed_rank
            && r > break_even
            && !self.allow_larger
        {
            return Ok(Err(format!("rank {r} keeps {} parameters, not fewer than the weight's {dense_params} (break-even rank {break_even})", r * (k + n))));
        }
        let spectrum = self.spectrum(t, w, stats, self.solver(k, n, fixed_rank), &mut notes)?;
        let rank = match (rule, fixed_rank) {
            (_, Some(r)) => r.min(spectrum.components()),
            (Rule::Layer(r), None) => r.rank(k, n, &spectrum.energies),
            (Rule::Budget(_), None) => unreachable!("budgets pick a rank"),
        };
        if rank > break_even && !self.allow_larger {
            return Ok(Err(format!("rank {rank} keeps {} parameters, not fewer than the weight's {dense_params} (break-even rank {break_even})", rank * (k + n))));
        }
        if spectrum.jitter > 0.0 {
            notes.push(format!("calibration Gram matrix singular: Cholesky with a jitter of {:e} of its mean diagonal", spectrum.jitter));
        }
        let factored = Factored::LowRank { factors: spectrum.factors(rank), kept_energy: spectrum.kept_energy(rank), output_error: spectrum.output_error(rank) };
        Ok(Ok((factored, notes)))
    }
}

fn layer_report(t: &Target, w: &[f32], factored: &Factored, notes: Vec<String>) -> LayerReport {
    let (k, n) = (t.k, t.n);
    let base = |rank, mpo, bonds, params_after, macs_per_row, relative_error, output_error, energy_kept| LayerReport {
        name: t.label.clone(),
        op: t.op_name(),
        k,
        n,
        rank,
        mpo,
        bonds,
        params_before: (k * n) as u64,
        params_after,
        macs_per_row,
        relative_error,
        output_error,
        energy_kept,
        notes: notes.clone(),
    };
    match factored {
        Factored::LowRank { factors, kept_energy, output_error } => {
            let params = (factors.rank * (k + n)) as u64;
            base(Some(factors.rank), None, None, params, params, lowrank::relative_error(w, &factors.product(k, n)), *output_error, vec![*kept_energy])
        }
        Factored::Mpo { mpo, relative_error, output_error } => {
            base(None, Some(mpo.shape.clone()), Some(mpo.bonds.clone()), mpo.params(), mpo.shape.macs_per_row(&mpo.bonds), *relative_error, *output_error, mpo.kept_energy.clone())
        }
    }
}

impl Pass for Factorize {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let (targets, mut skipped) = self.select(graph, ctx.analyses);
        if targets.is_empty() {
            return Ok(PassOutcome::unchanged("no weights selected").with_details(serde_json::json!({ "skipped": skipped })));
        }
        let stats = self.calibrate(graph, ctx, &targets)?;
        let rule = self.rule();
        let progress = ctx.progress;
        // A budget first measures what every layer loses at every rank, then spends.
        let picks: Vec<Option<Choice>> = match rule {
            Rule::Budget(share) => {
                progress.begin("measuring ranks", targets.len() as u64);
                let choices: Vec<Vec<Choice>> = targets
                    .par_iter()
                    .zip(&stats)
                    .map(|(t, s)| {
                        let w = t.matrix()?;
                        let choices = self.budget_choices(t, &w, s);
                        progress.advance(1);
                        choices
                    })
                    .collect::<Result<_, PassError>>()?;
                progress.end();
                let total: u64 = targets.iter().map(|t| (t.k * t.n) as u64).sum();
                let picks = lowrank::allocate_budget(&choices, (share * total as f64).floor() as u64);
                picks.iter().zip(&choices).map(|(&i, c)| Some(c[i])).collect()
            }
            Rule::Layer(_) => targets.iter().map(|_| None).collect(),
        };
        let weight_bytes: u64 = targets.iter().map(|t| t.tensor.data_bytes()).sum();
        let scratch = if weight_bytes >= super::stream_min_bytes() {
            Some(ScratchFile::new(None).map_err(|e| PassError::failed(Self::NAME, "scratch file", format!("cannot create a scratch file in the temporary directory (TMPDIR): {e}")))?)
        } else {
            None
        };
        progress.begin("factorizing", targets.len() as u64);
        // Layers are independent and each factorization runs on one thread: the output does
        // not depend on the thread count.
        let results: Vec<Result<(emit::Tensors, LayerReport), String>> = targets
            .par_iter()
            .zip(&stats)
            .zip(&picks)
            .map(|((t, s), pick)| {
                let w = t.matrix()?;
                let result = match self.factorize(t, &w, s, rule, pick.as_ref())? {
                    Ok((factored, notes)) => {
                        let report = layer_report(t, &w, &factored, notes);
                        Ok((emit::tensors(t, &factored, scratch.as_ref())?, report))
                    }
                    Err(reason) => Err(reason),
                };
                drop(w);
                t.tensor.release_pages();
                progress.advance(1);
                Ok(result)
            })
            .collect::<Result<_, PassError>>()?;
        progress.end();
        let mut patch = compactor_ir::Patch::new();
        let mut layers = Vec::new();
        for (t, result) in targets.iter().zip(results) {
            match result {
                Ok((tensors, report)) => {
                    emit::emit(graph, &mut patch, t, tensors)?;
                    layers.push(report);
                }
                Err(reason) => skipped.push(Skipped { name: t.label.clone(), reason }),
            }
        }
        if layers.is_empty() {
            return Ok(PassOutcome::unchanged("no layer factorized").with_details(serde_json::json!({ "layers": layers, "skipped": skipped })));
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        let before: u64 = layers.iter().map(|l| l.params_before).sum();
        let after: u64 = layers.iter().map(|l| l.params_after).sum();
        let errors: Vec<f64> = layers.iter().filter_map(|l| l.output_error).collect();
        let mean_output = if errors.is_empty() { String::new() } else { format!(", mean calibration output error {:.4}", errors.iter().sum::<f64>() / errors.len() as f64) };
        let macs: u64 = layers.iter().map(|l| l.macs_per_row).sum();
        let summary = format!(
            "factorized {} layers ({:?}): {:.2}M -> {:.2}M parameters ({:.1}%), {:.1}% of the multiply-adds, mean relative error {:.4}{mean_output}",
            layers.len(),
            self.method,
            before as f64 / 1e6,
            after as f64 / 1e6,
            100.0 * after as f64 / before as f64,
            100.0 * macs as f64 / before as f64,
            layers.iter().map(|l| l.relative_error).sum::<f64>() / layers.len() as f64
        );
        Ok(PassOutcome::changed(summary).with_details(serde_json::json!({ "layers": layers, "skipped": skipped })))
    }
}
