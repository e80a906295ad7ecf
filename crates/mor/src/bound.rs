//! Output-error bound: an upper bound on `‖logits_full(u) − logits_reduced(u)‖_2` for one input
//! sequence, from per-layer error measures of the reduced SSMs and gain/Lipschitz factors
//! computable from the weights. The derivation, with every assumption, is in `crates/mor/BOUND.md`.
//!
//! Summary (sequences `[L, h]`, `‖·‖_2` the Frobenius norm over the sequence, `‖·‖_∞` the largest
//! entry): with `δ_ℓ ≥ ‖z_ℓ − ẑ_ℓ‖_2`,
//!
//! ```text
//! δ_0 = 0,  δ_ℓ = (1 + Lg_ℓ γ_ℓ Ln_ℓ) δ_{ℓ−1} + Lg_ℓ ε_ℓ U_ℓ,
//! ‖Δlogits‖_2 ≤ ‖W_dec‖_2 δ_N / √L = Σ_ℓ w_ℓ ε_ℓ,
//! w_ℓ = ‖W_dec‖_2 / √L · Π_{k>ℓ} (1 + Lg_k γ_k Ln_k) · Lg_ℓ U_ℓ,
//! ```
//!
//! where `ε_ℓ = Σ_{|j|<L} ‖g_ℓ(j) − ĝ_ℓ(j)‖_F (+ max|D − D̂|)` bounds the ℓ2→ℓ2 gain of the error
//! system on length-`L` sequences (Young's inequality), `γ_ℓ` the same for the full SSM (with `D`),
//! `Ln_ℓ` the norm's Lipschitz constant, `Lg_ℓ` the gate's Lipschitz constant on the box
//! `‖y‖_∞ ≤ Y_ℓ` that contains every SSM output of both models, and `U_ℓ` an ℓ2 bound of the
//! SSM input of the reduced model.

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use crate::gram;
use crate::model::{DeepSsm, Gate, Layer, Norm};
use faer::{Mat, c64};
use rayon::prelude::*;

/// `max_x |GELU_tanh'(x)|` rounded up (the maximum, 1.128993… at x ≈ ±1.4185, is checked on a
/// grid in the tests). GELU_tanh(x) = x/2 · (1 + tanh(√(2/π)(x + 0.044715 x³))) (Hendrycks &
/// Gimpel 2016).
pub const GELU_TANH_DERIV_MAX: f64 = 1.13;

/// What the bound needs to know about one input sequence (the embedded input `z_0`, `[L, h]`,
/// true length only — padding excluded).
#[derive(Clone, Copy, Debug)]
pub struct BoundInput {
    /// True length `L ≥ 1` (the masked mean divides by it).
    pub len: usize,
    /// `‖z_0‖_2`: Frobenius norm of the embedded input over `[L, h]`.
    pub l2: f64,
    /// `‖z_0‖_∞`: largest absolute entry of the embedded input.
    pub linf: f64,
}

impl BoundInput {
    /// A worst case for any sequence of length `len` whose embedded entries are at most `linf` in
    /// absolute value (`l2 = linf · √(len · h)`).
    pub fn worst_case(len: usize, h: usize, linf: f64) -> Self {
        BoundInput {
            len,
            l2: linf * ((len * h) as f64).sqrt(),
            linf,
        }
    }
}

/// The evaluated bound and its per-layer factors.
#[derive(Clone, Debug)]
pub struct BoundReport {
    /// Upper bound on `‖logits_full − logits_reduced‖_2` for the input.
    pub bound: f64,
    /// Layer factors `w_ℓ` (bound = Σ_ℓ w_ℓ ε_ℓ); `lqo-h2` weights its layer errors with them.
    pub layer_weights: Vec<f64>,
    /// `ε_ℓ`: ℓ2→ℓ2 gain bound of the layer's SSM error system on length-`L` sequences.
    pub layer_errors: Vec<f64>,
    /// `γ_ℓ`: ℓ2→ℓ2 gain bound of the full SSM (with `D`).
    pub ssm_gains: Vec<f64>,
    /// `Ln_ℓ`: Lipschitz constant of the norm.
    pub norm_lipschitz: Vec<f64>,
    /// `Lg_ℓ`: Lipschitz constant of the gate on the box `‖y‖_∞ ≤ Y_ℓ`.
    pub gate_lipschitz: Vec<f64>,
    /// `Y_ℓ`: bound on every SSM output entry of both models.
    pub peak_bounds: Vec<f64>,
    /// `U_ℓ`: bound on `‖û_ℓ‖_2`, the ℓ2 norm of the SSM input of the reduced model.
    pub input_bounds: Vec<f64>,
    /// `‖W_dec‖_2`.
    pub decoder_norm: f64,
}

/// Weight-only quantities of one SSM (for a fixed maximal length).
#[derive(Clone, Debug)]
struct SsmFactors {
    /// ℓ2→ℓ2 gain: `min(Σ_{|j|<L} ‖g(j)‖_F + max|D|, certified ‖G‖_∞)`.
    gain: f64,
    /// Per channel `sqrt(G_cc)` (time-limited Gramian; ℓ2→peak gain of channel `c`).
    peak_l2: Vec<f64>,
    /// Per channel bound on `Σ_{|j|<L} ‖g(j)_{c,:}‖_1` (ℓ∞→ℓ∞ gain of channel `c`).
    peak_linf: Vec<f64>,
    /// `|D_c|`.
    d_abs: Vec<f64>,
}

/// Gains of `z ↦ 𝒮(norm(z))` without the norm's shift, i.e. of `𝒮 ∘ diag(s)` for BatchNorm
/// `u = s ⊙ z + t` (the part through which an error `z − ẑ` travels).
#[derive(Clone, Copy, Debug)]
struct InputGains {
    /// `γ^in_ℓ = min(certified ‖G(ω) diag(s)‖_∞ (or its ℓ1 kernel gain), γ_ℓ Ln_ℓ)`: ℓ2→ℓ2.
    gain: f64,
    /// `p^in_ℓ = min(max_c (sqrt(G^s_cc) + |D_c s_c|), p_ℓ Ln_ℓ)`: ℓ2→peak (`G^s` the
    /// time-limited Gramian of the scaled block).
    peak: f64,
}

/// `block` with its input columns scaled by `s` (`B̄ diag(s)`, `D ⊙ s`).
fn scaled_block(block: &DiagBlock, s: &[f64]) -> DiagBlock {
    let mut out = block.clone();
    for i in 0..out.n_modes() {
        for (c, sc) in s.iter().enumerate() {
            out.b[(i, c)] *= *sc;
        }
    }
    if let Some(d) = &mut out.d {
        for (dc, sc) in d.iter_mut().zip(s) {
            *dc *= *sc;
        }
    }
    out
}

/// `max_c (sqrt(G_cc) + |D_c|)` of `block` (time-limited Gramian, horizon `horizon`), with the
/// relative rounding allowance of [`ssm_factors`].
fn peak_gain(block: &DiagBlock, horizon: usize) -> f64 {
    let g = gram::gram(block, Some(horizon));
    (0..block.n_outputs())
        .map(|c| {
            let d = block.d.as_ref().map_or(0.0, |d| d[c].abs());
            (g[(c, c)].max(0.0) * (1.0 + 1e-9)).sqrt() + 1e-300 + d
        })
        .fold(0.0f64, f64::max)
}

fn input_gains(layer: &Layer, full: &SsmFactors, norm: &NormFactors, horizon: usize) -> InputGains {
    let ln = norm.lipschitz();
    let p = (0..full.peak_l2.len())
        .map(|c| full.peak_l2[c] + full.d_abs[c])
        .fold(0.0f64, f64::max);
    let (crude_gain, crude_peak) = (full.gain * ln, p * ln);
    match &layer.norm {
        Norm::Batch { scale, .. } => {
            let sb = scaled_block(&layer.ssm, scale);
            let dmax = sb.d.as_ref().map_or(0.0, |d| maxabs(d));
            InputGains {
                gain: ssm_gain(&sb, horizon, dmax, HINF_FULL).min(crude_gain),
                peak: peak_gain(&sb, horizon).min(crude_peak),
            }
        }
        Norm::Identity | Norm::Layer { .. } => InputGains {
            gain: crude_gain,
            peak: crude_peak,
        },
    }
}

/// Precomputed weight-only factors of a full model and its reduction for sequences of length up
/// to `horizon`; [`BoundPrep::evaluate`] then costs `O(layers · h)` per input.
#[derive(Clone, Debug)]
pub struct BoundPrep {
    horizon: usize,
    full: Vec<SsmFactors>,
    red: Vec<SsmFactors>,
    /// `ε_ℓ` (zero when no reduction was given).
    err: Vec<f64>,
    /// `ε^peak_ℓ`: ℓ2→peak gain of the error system (zero when no reduction was given).
    err_peak: Vec<f64>,
    /// Gains of the full SSMs from the norm's input (BatchNorm scale folded in).
    full_in: Vec<InputGains>,
    layers: Vec<LayerStatic>,
    decoder_norm: f64,
}

#[derive(Clone, Debug)]
struct LayerStatic {
    norm: NormFactors,
    gate: GateFactors,
}

#[derive(Clone, Debug)]
enum NormFactors {
    /// `u = s ⊙ z + t`: Lipschitz `max|s|`, `‖u‖_∞ ≤ max|s|‖z‖_∞ + max|t|`,
    /// `‖u‖_2 ≤ max|s|‖z‖_2 + √L ‖t‖_2`.
    Affine { smax: f64, tmax: f64, tnorm: f64 },
    /// LayerNorm: Lipschitz `max|γ|/√eps`, each position `‖u_k‖_∞ ≤ max|γ|√h + max|β|`,
    /// `‖u_k‖_2 ≤ max|γ|√h + ‖β‖_2`.
    Layer { lip: f64, linf: f64, pos_l2: f64 },
}

#[derive(Clone, Debug)]
enum GateFactors {
    Identity,
    /// `‖W‖_2`.
    HalfGlu2 {
        wnorm: f64,
    },
    /// `‖W‖_2`, row 1-norms `‖w_c‖_1`, `|b_c|`.
    Quadratic {
        wnorm: f64,
        row_l1: Vec<f64>,
        b_abs: Vec<f64>,
    },
}

/// `q = max_c (‖w_c‖_1 Y + |b_c|)`: on the box `‖y‖_∞ ≤ Y`, `|(W y + b)_c| ≤ q`.
fn quadratic_gain(row_l1: &[f64], b_abs: &[f64], y: f64) -> f64 {
    row_l1
        .iter()
        .zip(b_abs)
        .fold(0.0f64, |a, (w1, b)| a.max(w1 * y + b))
}

impl GateFactors {
    /// Lipschitz constant of the gate on the box `‖y‖_∞ ≤ Y` (per position; `BOUND.md`).
    fn lipschitz(&self, y: f64) -> f64 {
        match self {
            GateFactors::Identity => 1.0,
            GateFactors::HalfGlu2 { wnorm } => 1.0 + y * wnorm * GELU_TANH_DERIV_MAX / 4.0,
            GateFactors::Quadratic {
                wnorm,
                row_l1,
                b_abs,
            } => quadratic_gain(row_l1, b_abs, y) + y * wnorm,
        }
    }
}

impl NormFactors {
    /// Lipschitz constant of the norm layer.
    fn lipschitz(&self) -> f64 {
        match self {
            NormFactors::Affine { smax, .. } => *smax,
            NormFactors::Layer { lip, .. } => *lip,
        }
    }
}

pub(crate) fn spectral_norm(w: &Mat<f64>) -> Result<f64> {
    if w.nrows() == 0 || w.ncols() == 0 {
        return Ok(0.0);
    }
    let s = w
        .singular_values()
        .map_err(|e| Error::LinAlg(format!("singular values of a gate/decoder matrix: {e:?}")))?;
    let smax = s.iter().fold(0.0f64, |a, &v| a.max(v));
    // Relative backward error of the SVD is O(ε ‖W‖): a small safety margin keeps it an upper bound.
    Ok(smax * (1.0 + 1e-12) + 1e-300)
}

fn maxabs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, x| a.max(x.abs()))
}

fn layer_static(layer: &Layer) -> Result<LayerStatic> {
    let h = layer.ssm.n_outputs();
    let norm = match &layer.norm {
        Norm::Batch { scale, shift } => NormFactors::Affine {
            smax: maxabs(scale),
            tmax: maxabs(shift),
            tnorm: shift.iter().map(|t| t * t).sum::<f64>().sqrt(),
        },
        Norm::Identity => NormFactors::Affine {
            smax: 1.0,
            tmax: 0.0,
            tnorm: 0.0,
        },
        Norm::Layer { gamma, beta, eps } => {
            if eps.is_nan() || *eps <= 0.0 {
                return Err(Error::Argument(format!(
                    "LayerNorm eps = {eps}: the bound needs eps > 0 (LayerNorm is not Lipschitz without it)"
                )));
            }
            let g = maxabs(gamma);
            NormFactors::Layer {
                lip: g / eps.sqrt(),
                linf: g * (h as f64).sqrt() + maxabs(beta),
                pos_l2: g * (h as f64).sqrt() + beta.iter().map(|b| b * b).sum::<f64>().sqrt(),
            }
        }
    };
    let gate = match &layer.gate {
        Gate::Identity => GateFactors::Identity,
        Gate::HalfGlu2 { w, .. } => GateFactors::HalfGlu2 {
            wnorm: spectral_norm(w)?,
        },
        Gate::Quadratic { w, b } => GateFactors::Quadratic {
            wnorm: spectral_norm(w)?,
            row_l1: (0..w.nrows())
                .map(|c| (0..w.ncols()).map(|k| w[(c, k)].abs()).sum())
                .collect(),
            b_abs: b.iter().map(|x| x.abs()).collect(),
        },
    };
    Ok(LayerStatic { norm, gate })
}

/// Upper bound on `Σ_{|j|<T} ‖g(j)‖_F` (the two-sided kernel of the module `gram`, `D` excluded),
/// which bounds the ℓ2→ℓ2 gain of the block on sequences of length `≤ T` (Young's inequality,
/// `‖g(j)‖_2 ≤ ‖g(j)‖_F`).
///
/// Per lag `j ≥ 1` and direction, `‖2Re(C̃Λ^jB̄)‖²_F = 2Re Σ_ik K_ik (λ_iλ̄_k)^j + 2Re Σ_ik K'_ik
/// (λ_iλ_k)^j` with `K_ik = (B̄B̄ᴴ)_ik (C̃ᴴC̃)_ki`, `K'_ik = (B̄B̄ᵀ)_ik (C̃ᵀC̃)_ki`: `O(n²)` per lag.
/// A floating-point allowance `8u(n² + 3j + 16) Σ_ik (|K_ik| + |K'_ik|) |λ_i|^j |λ_k|^j` is added
/// to each squared norm so that the result stays an upper bound. Lag 0 is formed explicitly.
/// Valid for any `λ` (finite sum); may overflow to `∞` for strongly unstable blocks.
pub fn kernel_l1_norm(block: &DiagBlock, horizon: usize) -> f64 {
    if horizon == 0 {
        return 0.0;
    }
    let g0 = gram::kernel(block, 0);
    let mut f0 = 0.0;
    for j in 0..g0.ncols() {
        for i in 0..g0.nrows() {
            f0 += g0[(i, j)] * g0[(i, j)];
        }
    }
    let mut total = f0.sqrt() * (1.0 + 1e-12);
    total += one_direction_l1(&block.lambda, &block.b, &block.c, horizon);
    if let Some(cr) = &block.c_rev {
        total += one_direction_l1(&block.lambda, &block.b, cr, horizon);
    }
    total
}

/// `Σ_{1≤j<T} ‖2Re(C̃Λ^jB̄)‖_F` (upper bound, see [`kernel_l1_norm`]).
fn one_direction_l1(lam: &[c64], b: &Mat<c64>, c: &Mat<c64>, horizon: usize) -> f64 {
    let n = lam.len();
    if n == 0 || horizon <= 1 {
        return 0.0;
    }
    let bbh = b * b.adjoint();
    let bbt = b * b.transpose();
    let chc = c.adjoint() * c;
    let ctc = c.transpose() * c;
    let nn = n * n;
    // Structure of arrays for vectorisable loops.
    let (mut k1r, mut k1i, mut k2r, mut k2i) =
        (vec![0.0; nn], vec![0.0; nn], vec![0.0; nn], vec![0.0; nn]);
    let (mut x1r, mut x1i, mut x2r, mut x2i) =
        (vec![0.0; nn], vec![0.0; nn], vec![0.0; nn], vec![0.0; nn]);
    let mut kabs = vec![0.0; nn];
    for i in 0..n {
        for k in 0..n {
            let idx = i * n + k;
            let k1 = bbh[(i, k)] * chc[(k, i)];
            let k2 = bbt[(i, k)] * ctc[(k, i)];
            k1r[idx] = k1.re;
            k1i[idx] = k1.im;
            k2r[idx] = k2.re;
            k2i[idx] = k2.im;
            kabs[idx] = k1.norm() + k2.norm();
            let x1 = lam[i] * lam[k].conj();
            let x2 = lam[i] * lam[k];
            x1r[idx] = x1.re;
            x1i[idx] = x1.im;
            x2r[idx] = x2.re;
            x2i[idx] = x2.im;
        }
    }
    let (mut p1r, mut p1i, mut p2r, mut p2i) = (x1r.clone(), x1i.clone(), x2r.clone(), x2i.clone());
    let a: Vec<f64> = lam.iter().map(|l| l.norm()).collect();
    let mut pa = a.clone();
    let u = f64::EPSILON * 0.5;
    let mut total = 0.0;
    for j in 1..horizon {
        let mut s = 0.0;
        for idx in 0..nn {
            s += k1r[idx] * p1r[idx] - k1i[idx] * p1i[idx] + k2r[idx] * p2r[idx]
                - k2i[idx] * p2i[idx];
        }
        let mut abs_sum = 0.0;
        for i in 0..n {
            let row = &kabs[i * n..(i + 1) * n];
            let mut t = 0.0;
            for k in 0..n {
                t += row[k] * pa[k];
            }
            abs_sum += pa[i] * t;
        }
        let allowance = 8.0 * u * ((nn + 3 * j + 16) as f64) * abs_sum;
        total += ((2.0 * s).max(0.0) + allowance).sqrt();
        if !total.is_finite() {
            return f64::INFINITY;
        }
        if abs_sum == 0.0 {
            break;
        }
        for idx in 0..nn {
            let (r1, i1) = (p1r[idx], p1i[idx]);
            p1r[idx] = r1 * x1r[idx] - i1 * x1i[idx];
            p1i[idx] = r1 * x1i[idx] + i1 * x1r[idx];
            let (r2, i2) = (p2r[idx], p2i[idx]);
            p2r[idx] = r2 * x2r[idx] - i2 * x2i[idx];
            p2i[idx] = r2 * x2i[idx] + i2 * x2r[idx];
        }
        for i in 0..n {
            pa[i] *= a[i];
        }
    }
    total
}

/// Refinement of the certified H∞ gains ([`crate::hinf::hinf_upper_bound`]): relative gap and
/// frequency budget for the full model's blocks (computed once per model) ...
pub const HINF_FULL: (f64, usize) = (0.02, 4000);
/// ... and for the reduced blocks and error systems (computed for every reduction; looser, as
/// `ε_ℓ` enters the bound linearly while the full gains multiply across layers).
pub const HINF_REDUCED: (f64, usize) = (0.25, 300);

/// `min(ℓ1 kernel gain, certified H∞ gain)` of a block with feed-through `d_abs_max`, both
/// ℓ2→ℓ2 gains on sequences of length `≤ horizon` (`BOUND.md`, "Ingredients").
fn ssm_gain(block: &DiagBlock, horizon: usize, d_abs_max: f64, hinf: (f64, usize)) -> f64 {
    let l1 = kernel_l1_norm(block, horizon) + d_abs_max;
    let hi = crate::hinf::hinf_upper_bound(block, hinf.0, hinf.1).upper;
    l1.min(hi)
}

fn ssm_factors(block: &DiagBlock, horizon: usize, hinf: (f64, usize)) -> SsmFactors {
    let p = block.n_outputs();
    let d_abs: Vec<f64> = match &block.d {
        Some(d) => d.iter().map(|x| x.abs()).collect(),
        None => vec![0.0; p],
    };
    let gain = ssm_gain(block, horizon, maxabs(&d_abs), hinf);
    let g = gram::gram(block, Some(horizon));
    let peak_l2 = (0..p)
        .map(|c| (g[(c, c)].max(0.0) * (1.0 + 1e-9)).sqrt() + 1e-300)
        .collect();
    // Per-mode bound: |g(j)_{c,s}| ≤ 2 Σ_i |c_ci| |λ_i|^j |b_is| per direction, summed over
    // 0 ≤ j < T: 2 Σ_i |c_ci| ‖b_i‖_1 φ_T(|λ_i|).
    let n = block.n_modes();
    let phi: Vec<f64> = block
        .lambda
        .iter()
        .map(|l| {
            let a = l.norm();
            if (1.0 - a).abs() < 1e-12 {
                horizon as f64
            } else {
                (1.0 - a.powi(horizon as i32)) / (1.0 - a)
            }
        })
        .collect();
    let b1: Vec<f64> = (0..n)
        .map(|i| (0..block.n_inputs()).map(|s| block.b[(i, s)].norm()).sum())
        .collect();
    let peak_linf = (0..p)
        .map(|c| {
            let mut s = 0.0;
            for i in 0..n {
                let mut cc = block.c[(c, i)].norm();
                if let Some(cr) = &block.c_rev {
                    cc += cr[(c, i)].norm();
                }
                s += 2.0 * cc * b1[i] * phi[i];
            }
            s * (1.0 + 1e-12)
        })
        .collect();
    SsmFactors {
        gain,
        peak_l2,
        peak_linf,
        d_abs,
    }
}

fn check_pair(full: &DeepSsm, reduced: &DeepSsm) -> Result<()> {
    if full.layers.len() != reduced.layers.len() {
        return Err(Error::Shape(format!(
            "bound: full model has {} layers, reduced has {}",
            full.layers.len(),
            reduced.layers.len()
        )));
    }
    for (i, (a, b)) in full.layers.iter().zip(&reduced.layers).enumerate() {
        if a.ssm.n_inputs() != b.ssm.n_inputs() || a.ssm.n_outputs() != b.ssm.n_outputs() {
            return Err(Error::Shape(format!(
                "bound: layer {i} has h = {} in the full model but {} in the reduced model",
                a.ssm.n_outputs(),
                b.ssm.n_outputs()
            )));
        }
        if a.norm != b.norm || a.gate != b.gate {
            return Err(Error::Shape(format!(
                "bound: layer {i} differs in its norm or gate between the models (only the SSM may be reduced)"
            )));
        }
    }
    if full.decoder_w != reduced.decoder_w || full.decoder_b != reduced.decoder_b {
        return Err(Error::Shape("bound: the decoders differ".into()));
    }
    Ok(())
}

/// `(ε_ℓ, ε^peak_ℓ)` of the error system `𝒮 − 𝒮̂` (kernel difference plus `D − D̂`, identical
/// modes merged, [`gram::difference_block_merged`]): `ε_ℓ` the smaller of
/// `Σ_{|j|<T} ‖g(j) − ĝ(j)‖_F + max_c |D_c − D̂_c|` and the certified H∞ norm (ℓ2→ℓ2);
/// `ε^peak_ℓ = min(max_c (sqrt(G^e_cc) + |D_c − D̂_c|), ε_ℓ)` (ℓ2→peak, `G^e` the time-limited
/// Gramian of the error system, with an absolute rounding allowance of `1e-10` times the
/// Gramian diagonals of both blocks).
fn error_gain(full: &DiagBlock, red: &DiagBlock, horizon: usize) -> (f64, f64) {
    let mut diff = gram::difference_block_merged(full, red);
    let p = full.n_outputs();
    let zero = vec![0.0; p];
    let d1 = full.d.as_deref().unwrap_or(&zero);
    let d2 = red.d.as_deref().unwrap_or(&zero);
    let dd: Vec<f64> = d1.iter().zip(d2).map(|(x, y)| x - y).collect();
    let dd_max = dd.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    diff.d = Some(dd.clone());
    let eps = ssm_gain(&diff, horizon, dd_max, HINF_REDUCED);
    let (gf, gr, ge) = (
        gram::gram(full, Some(horizon)),
        gram::gram(red, Some(horizon)),
        gram::gram(&diff, Some(horizon)),
    );
    let peak = (0..p)
        .map(|c| {
            let allowance = 1e-10 * (gf[(c, c)].abs() + gr[(c, c)].abs());
            (ge[(c, c)].max(0.0) * (1.0 + 1e-9) + allowance).sqrt() + dd[c].abs()
        })
        .fold(0.0f64, f64::max);
    (eps, peak.min(eps))
}

/// Precomputes the weight-only factors of the bound for sequences of length `≤ horizon`
/// (`reduced = None`: only the layer weights are wanted; `ε_ℓ = 0`). Layers run in parallel.
///
/// # Errors
/// [`Error::Shape`] if the models differ in anything but their SSMs, [`Error::Argument`] for
/// `horizon = 0` or a LayerNorm with `eps ≤ 0`, [`Error::LinAlg`] if an SVD fails.
pub fn prepare_bound(
    full: &DeepSsm,
    reduced: Option<&DeepSsm>,
    horizon: usize,
) -> Result<BoundPrep> {
    if horizon == 0 {
        return Err(Error::Argument(
            "bound: horizon (max length) must be ≥ 1".into(),
        ));
    }
    if let Some(r) = reduced {
        check_pair(full, r)?;
    }
    let layers = full
        .layers
        .iter()
        .map(layer_static)
        .collect::<Result<Vec<_>>>()?;
    let fulls: Vec<SsmFactors> = full
        .layers
        .par_iter()
        .map(|l| ssm_factors(&l.ssm, horizon, HINF_FULL))
        .collect();
    let full_in: Vec<InputGains> = full
        .layers
        .par_iter()
        .zip(&fulls)
        .zip(&layers)
        .map(|((l, f), st)| input_gains(l, f, &st.norm, horizon))
        .collect();
    let prep = BoundPrep {
        horizon,
        red: fulls.clone(),
        err: vec![0.0; fulls.len()],
        err_peak: vec![0.0; fulls.len()],
        full_in,
        full: fulls,
        layers,
        decoder_norm: spectral_norm(&full.decoder_w)?,
    };
    match reduced {
        Some(r) => prep.with_reduced(full, r),
        None => Ok(prep),
    }
}

impl BoundPrep {
    /// The longest sequence length the factors hold for.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// The factors for `reduced` as the reduction of `full` (the model this was prepared from by
    /// [`prepare_bound`]), reusing the full model's factors (its certified H∞ gains are the
    /// expensive part). Layers run in parallel.
    ///
    /// # Errors
    /// [`Error::Shape`] if the models differ in anything but their SSMs or `full` has another
    /// number of layers than the prepared model.
    pub fn with_reduced(&self, full: &DeepSsm, reduced: &DeepSsm) -> Result<BoundPrep> {
        check_pair(full, reduced)?;
        if full.layers.len() != self.full.len() {
            return Err(Error::Shape(format!(
                "bound: prepared for {} layers, given a model with {}",
                self.full.len(),
                full.layers.len()
            )));
        }
        let horizon = self.horizon;
        let per: Vec<(SsmFactors, (f64, f64))> = (0..full.layers.len())
            .into_par_iter()
            .map(|l| {
                let rs = &reduced.layers[l].ssm;
                (
                    ssm_factors(rs, horizon, HINF_REDUCED),
                    error_gain(&full.layers[l].ssm, rs, horizon),
                )
            })
            .collect();
        let (red, gains): (Vec<SsmFactors>, Vec<(f64, f64)>) = per.into_iter().unzip();
        let (err, err_peak) = gains.into_iter().unzip();
        Ok(BoundPrep {
            red,
            err,
            err_peak,
            ..self.clone()
        })
    }

    /// Evaluates the bound for one input (see the module doc and `BOUND.md`).
    ///
    /// # Errors
    /// [`Error::Argument`] if `input.len` is 0 or exceeds the prepared horizon, or a norm is
    /// negative / not finite.
    pub fn evaluate(&self, input: &BoundInput) -> Result<BoundReport> {
        let l = input.len;
        if l == 0 || l > self.horizon {
            return Err(Error::Argument(format!(
                "bound: input length {l} must be in 1..={} (the prepared horizon)",
                self.horizon
            )));
        }
        if !(input.l2 >= 0.0 && input.linf >= 0.0 && input.l2.is_finite() && input.linf.is_finite())
        {
            return Err(Error::Argument(format!(
                "bound: input norms must be finite and ≥ 0 (got l2 = {}, linf = {})",
                input.l2, input.linf
            )));
        }
        let sl = (l as f64).sqrt();
        let nl = self.layers.len();
        // Bounds valid for both trajectories z_ℓ and ẑ_ℓ.
        let (mut z2, mut zinf) = (input.l2, input.linf);
        let mut u2s = Vec::with_capacity(nl);
        let mut lip_res = Vec::with_capacity(nl); // Lg γ Ln
        let mut lgs = Vec::with_capacity(nl);
        let mut lns = Vec::with_capacity(nl);
        let mut ys = Vec::with_capacity(nl);
        let mut gains = Vec::with_capacity(nl);
        for li in 0..nl {
            let st = &self.layers[li];
            let (ln, u2, uinf) = match &st.norm {
                NormFactors::Affine { smax, tmax, tnorm } => {
                    (*smax, smax * z2 + sl * tnorm, smax * zinf + tmax)
                }
                NormFactors::Layer { lip, linf, pos_l2 } => (*lip, sl * pos_l2, *linf),
            };
            let (f, r) = (&self.full[li], &self.red[li]);
            let peak = |s: &SsmFactors| {
                (0..s.peak_l2.len())
                    .map(|c| (s.peak_l2[c] * u2).min(s.peak_linf[c] * uinf) + s.d_abs[c] * uinf)
                    .fold(0.0f64, f64::max)
            };
            let y = peak(f).max(peak(r));
            let y2 = f.gain.max(r.gain) * u2;
            let lg = st.gate.lipschitz(y);
            let (out2, outinf) = match &st.gate {
                GateFactors::Identity | GateFactors::HalfGlu2 { .. } => (y2, y),
                GateFactors::Quadratic { row_l1, b_abs, .. } => {
                    let q = quadratic_gain(row_l1, b_abs, y);
                    (q * y2, q * y)
                }
            };
            u2s.push(u2);
            lip_res.push(lg * f.gain * ln);
            lgs.push(lg);
            lns.push(ln);
            ys.push(y);
            gains.push(f.gain);
            z2 += out2;
            zinf += outinf;
        }
        let mut weights = vec![0.0; nl];
        let mut tail = self.decoder_norm / sl;
        for li in (0..nl).rev() {
            weights[li] = tail * lgs[li] * u2s[li];
            tail *= 1.0 + lip_res[li];
        }
        let bound = weights
            .iter()
            .zip(&self.err)
            .map(|(w, e)| w * e)
            .sum::<f64>();
        Ok(BoundReport {
            bound,
            layer_weights: weights,
            layer_errors: self.err.clone(),
            ssm_gains: gains,
            norm_lipschitz: lns,
            gate_lipschitz: lgs,
            peak_bounds: ys,
            input_bounds: u2s,
            decoder_norm: self.decoder_norm,
        })
    }
}

/// Relative margin added to measured activations ([`MeasuredLayer`]): they come from the f32
/// model, the bound assumes exact arithmetic; f32 rounding of a length-4096 forward is orders of
/// magnitude below this margin.
pub const MEASURE_MARGIN: f64 = 1e-3;

/// What the full model's own forward pass measured on one input, for one layer (true positions
/// only, padding excluded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasuredLayer {
    /// `‖u_ℓ‖_2`: Frobenius norm of the layer's SSM input (the norm's output), `[L, h]`.
    pub u_l2: f64,
    /// `‖y_ℓ‖_∞`: largest absolute entry of the layer's SSM output (before the gate), `[L, h]`.
    pub y_peak: f64,
}

/// The error a reduced SSM makes on the full model's recorded input of its layer, `(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ`
/// (`[L, h]`, true positions; computed by running both SSMs on `u_ℓ`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InjectedError {
    /// `‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖_2` (Frobenius over `[L, h]`).
    pub l2: f64,
    /// Its largest absolute entry.
    pub peak: f64,
}

/// The certified bound's factors for one input, per layer (what `results/*/bound_factors.json`
/// stores; `BOUND.md`, "Measured activations").
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LayerFactors {
    /// `γ_ℓ`: ℓ2→ℓ2 gain of the full SSM.
    pub ssm_gain: f64,
    /// `γ^in_ℓ`: ℓ2→ℓ2 gain from the norm's input (BatchNorm scale folded in).
    pub ssm_gain_in: f64,
    /// `Ln_ℓ`: Lipschitz constant of the norm.
    pub norm_lipschitz: f64,
    /// `ε_ℓ`: ℓ2→ℓ2 gain of the error system.
    pub error_gain: f64,
    /// `ε^peak_ℓ`: ℓ2→peak gain of the error system.
    pub error_peak_gain: f64,
    /// `Y_ℓ`: the box of every SSM output of both models.
    pub peak_bound: f64,
    /// `Lg_ℓ = Lg(Y_ℓ)`: the gate's Lipschitz constant on it.
    pub gate_lipschitz: f64,
    /// `Û_ℓ`: bound on `‖û_ℓ‖_2`.
    pub input_bound: f64,
    /// Bound on `‖(𝒮_ℓ − 𝒮̂_ℓ) û_ℓ‖_2`, the error injected by the reduction of this layer.
    pub injected: f64,
    /// `δ_ℓ`: bound on `‖z_ℓ − ẑ_ℓ‖_2` after this layer.
    pub delta: f64,
    /// First-order factor `∂bound/∂injected_ℓ` at zero error (boxes = measured peaks):
    /// `‖W_dec‖_2/√L · Π_{k>ℓ}(1 + Lg_k γ^in_k) · Lg_ℓ`.
    pub sensitivity: f64,
}

impl BoundPrep {
    /// The output-error bound for one input from the full model's measured activations on it
    /// (a posteriori; derivation in `BOUND.md`, "Measured activations"): as
    /// [`BoundPrep::evaluate_recorded`] without recorded layer errors.
    ///
    /// # Errors
    /// As [`BoundPrep::evaluate_recorded`].
    pub fn evaluate_measured(
        &self,
        input: &BoundInput,
        measured: &[MeasuredLayer],
    ) -> Result<BoundReport> {
        Ok(self.evaluate_recorded(input, measured, &[], &[])?.0)
    }

    /// The output-error bound for one input from the full model's measured activations on it
    /// and, where given, the reduced layers' errors on the full model's recorded inputs
    /// (`injected[ℓ]`; missing or `None` entries use the certified gains) and the reduced
    /// model's measured peaks (below). Uses the measured
    /// `‖u_ℓ‖_2` and `‖y_ℓ‖_∞` of the full trajectory (each enlarged by [`MEASURE_MARGIN`]) and
    /// covers the reduced trajectory by the error recursion: with `δ_{ℓ−1} ≥ ‖z_{ℓ−1} − ẑ_{ℓ−1}‖_2`,
    /// `Δu = Ln δ_{ℓ−1}`, `Û = min(‖u_ℓ‖_2 + Δu, U_ℓ)`,
    ///
    /// ```text
    /// inj_ℓ  = min(ε Û, ‖(𝒮−𝒮̂)u_ℓ‖_2 + ε Δu)                  ≥ ‖(𝒮−𝒮̂)û_ℓ‖_2
    /// peak_ℓ = min(ε^peak Û, max|(𝒮−𝒮̂)u_ℓ| + ε^peak Δu)        ≥ ‖(𝒮−𝒮̂)û_ℓ‖_∞
    /// Y_ℓ    = min(‖y_ℓ‖_∞ + p^in δ_{ℓ−1} + peak_ℓ, Y_ℓ^a-priori)
    /// δ_ℓ    = δ_{ℓ−1} + Lg_ℓ(Y_ℓ) (γ^in δ_{ℓ−1} + inj_ℓ),   ‖Δlogits‖_2 ≤ ‖W_dec‖_2 δ_N / √L
    /// ```
    ///
    /// (`γ^in`, `p^in` the gains of `𝒮 ∘ diag(s)`, BatchNorm folded in). Every step is at most
    /// the a-priori one, so the result never exceeds [`BoundPrep::evaluate`]'s bound.
    ///
    /// `reduced_peaks[ℓ]`, if given, is the measured `‖ŷ_ℓ‖_∞` of the **reduced** model's own
    /// forward pass on the same input: the box is then also at most
    /// `max(‖y_ℓ‖_∞, ‖ŷ_ℓ‖_∞)` (enlarged by [`MEASURE_MARGIN`]), the convex hull of both
    /// trajectories' outputs. This form needs both models run on the input, so it certifies the
    /// composition argument rather than saving any work (`BOUND.md`, "Measured activations",
    /// "Reduced peaks").
    /// `layer_weights` keep the first-order factors of the session-23 form
    /// (`Π(1 + Lg γ Ln)`, unfolded), which `lqo-h2-taylor` allocates by; the new
    /// first-order factors are `LayerFactors::sensitivity`.
    ///
    /// # Errors
    /// As [`BoundPrep::evaluate`]; [`Error::Argument`] if `measured` does not have one entry per
    /// layer, `injected` has more entries than layers, or a measured value is negative or not
    /// finite.
    pub fn evaluate_recorded(
        &self,
        input: &BoundInput,
        measured: &[MeasuredLayer],
        injected: &[Option<InjectedError>],
        reduced_peaks: &[f64],
    ) -> Result<(BoundReport, Vec<LayerFactors>)> {
        let nl = self.layers.len();
        let len = input.len;
        let apriori = self.evaluate(input)?;
        if measured.len() != nl || injected.len() > nl || reduced_peaks.len() > nl {
            return Err(Error::Argument(format!(
                "bound: {} measured, {} recorded and {} reduced-peak layers for a model of {nl} layers",
                measured.len(),
                injected.len(),
                reduced_peaks.len()
            )));
        }
        if let Some(p) = reduced_peaks
            .iter()
            .find(|p| !(**p >= 0.0 && p.is_finite()))
        {
            return Err(Error::Argument(format!(
                "bound: a measured peak of the reduced model must be finite and ≥ 0 (got {p})"
            )));
        }
        if let Some((i, m)) = measured.iter().enumerate().find(|(_, m)| {
            !(m.u_l2 >= 0.0 && m.y_peak >= 0.0 && m.u_l2.is_finite() && m.y_peak.is_finite())
        }) {
            return Err(Error::Argument(format!(
                "bound: measured activations of layer {i} must be finite and ≥ 0 (got {m:?})"
            )));
        }
        if let Some((i, e)) = injected.iter().enumerate().find(|(_, e)| {
            e.is_some_and(|e| {
                !(e.l2 >= 0.0 && e.peak >= 0.0 && e.l2.is_finite() && e.peak.is_finite())
            })
        }) {
            return Err(Error::Argument(format!(
                "bound: recorded error of layer {i} must be finite and ≥ 0 (got {e:?})"
            )));
        }
        let sl = (len as f64).sqrt();
        let grow = 1.0 + MEASURE_MARGIN;
        let mut delta = 0.0f64;
        let mut factors = Vec::with_capacity(nl);
        let (mut lgs, mut lg0s, mut lns, mut ys, mut gains, mut u2s) = (
            Vec::with_capacity(nl),
            Vec::with_capacity(nl),
            Vec::with_capacity(nl),
            Vec::with_capacity(nl),
            Vec::with_capacity(nl),
            Vec::with_capacity(nl),
        );
        for (li, meas) in measured.iter().enumerate() {
            let st = &self.layers[li];
            let (f, fin) = (&self.full[li], &self.full_in[li]);
            let (eps, eps_peak) = (self.err[li], self.err_peak[li]);
            let ln = st.norm.lipschitz();
            let (u2, py) = (meas.u_l2 * grow, meas.y_peak * grow);
            let du = ln * delta;
            let uh = (u2 + du).min(apriori.input_bounds[li]);
            let (mut inj, mut inj_peak) = (eps * uh, eps_peak * uh);
            if let Some(Some(rec)) = injected.get(li) {
                inj = inj.min(rec.l2 * grow + eps * du);
                inj_peak = inj_peak.min(rec.peak * grow + eps_peak * du);
            }
            let mut y = (py + fin.peak * delta + inj_peak).min(apriori.peak_bounds[li]);
            if let Some(&rp) = reduced_peaks.get(li) {
                y = y.min(py.max(rp * grow));
            }
            let lg = st.gate.lipschitz(y);
            delta += lg * (fin.gain * delta + inj);
            factors.push(LayerFactors {
                ssm_gain: f.gain,
                ssm_gain_in: fin.gain,
                norm_lipschitz: ln,
                error_gain: eps,
                error_peak_gain: eps_peak,
                peak_bound: y,
                gate_lipschitz: lg,
                input_bound: uh,
                injected: inj,
                delta,
                sensitivity: 0.0,
            });
            lgs.push(lg);
            lg0s.push(st.gate.lipschitz(py));
            lns.push(ln);
            ys.push(y);
            gains.push(f.gain);
            u2s.push(u2);
        }
        let mut weights = vec![0.0; nl];
        let (mut tail, mut tail_in) = (self.decoder_norm / sl, self.decoder_norm / sl);
        for li in (0..nl).rev() {
            weights[li] = tail * lg0s[li] * u2s[li];
            tail *= 1.0 + lg0s[li] * gains[li] * lns[li];
            factors[li].sensitivity = tail_in * lg0s[li];
            tail_in *= 1.0 + lg0s[li] * self.full_in[li].gain;
        }
        Ok((
            BoundReport {
                bound: self.decoder_norm * delta / sl,
                layer_weights: weights,
                layer_errors: self.err.clone(),
                ssm_gains: gains,
                norm_lipschitz: lns,
                gate_lipschitz: lgs,
                peak_bounds: ys,
                input_bounds: u2s,
                decoder_norm: self.decoder_norm,
            },
            factors,
        ))
    }
}

/// Upper bound on `‖logits_full(u) − logits_reduced(u)‖_2` for one input sequence (derivation
/// and assumptions in `crates/mor/BOUND.md`); `layer_weights` are the factors `lqo-h2` uses.
/// The kernel sums run over the input's own length `input.len`; to evaluate many inputs, call
/// [`prepare_bound`] once with the longest length and [`BoundPrep::evaluate`] per input.
///
/// # Errors
/// As [`prepare_bound`] and [`BoundPrep::evaluate`].
pub fn output_error_bound(
    full: &DeepSsm,
    reduced: &DeepSsm,
    input: &BoundInput,
) -> Result<BoundReport> {
    prepare_bound(full, Some(reduced), input.len.max(1))?.evaluate(input)
}

/// The layer factors `w_ℓ` of the bound for the full model alone (reduced SSMs assumed to have
/// the full gains), for the worst-case input of length `len` with embedded entries bounded by
/// `linf` — the weights `lqo-h2` uses.
///
/// # Errors
/// As [`prepare_bound`].
pub fn layer_weights(full: &DeepSsm, len: usize, linf: f64) -> Result<Vec<f64>> {
    let h = full.layers.first().map_or(0, |l| l.ssm.n_inputs());
    let prep = prepare_bound(full, None, len)?;
    Ok(prep
        .evaluate(&BoundInput::worst_case(len, h, linf))?
        .layer_weights)
}
