//! Evaluation-mode forward pass of the whole classifier in one kernel: each sequence runs on one
//! thread through every layer, in blocks of `BLOCK` = 128 time steps that stay in the core's cache.
//!
//! The same map as `S5Model::forward_ops` in evaluation mode (S5, Smith et al.,
//! ICLR 2023, Fig. 1): per layer `u = norm(x)`, `v_k = B̄ u_k` (real matmul with `W_B`
//! `[H, 2n]`), the diagonal scans `x_k = Λ̄ x_{k−1} + v_k` (and, bidirectional, the reverse
//! `x'_k = Λ̄ x'_{k+1} + v_k` from the true end), `y = [x, x'] W_C + D ⊙ u` (`W_C` = S5's
//! `2 Re C̃` read-out, see [`crate::ssm`]), then the gate and the residual add: `half_glu2`
//! `x + y ⊙ σ(W GELU_tanh(y) + b)` or `quadratic` `x + y ⊙ (W y + b)`; masked mean pooling and
//! the decoder.
//!
//! Why a separate path: the op-by-op forward writes every `[batch, len, H]` activation to memory
//! (a zero-filled allocation per op) and reads it back for the next op; here the activations of a
//! block (`[BLOCK, H]`) never leave the cache and only the residual stream `[len, H]`, the
//! projected inputs `v` and the reverse states (`[len, 2n]` each) span the sequence. Padded
//! positions are never computed (the op path computes and then ignores them). Scan states are
//! accumulated in f64, stored in the activation dtype (as the op path). Tests
//! (`tests/infer.rs`) hold the two paths equal for both norms, both gates, one or two directions,
//! reduced (discrete) layers of different orders, f32 and f64.

use candle_core::{DType, Tensor, WithDType};
use rayon::prelude::*;

use crate::fused::{Mat, Real, matmul_on};
use crate::layer::S5Layer;
use crate::{Error, GateKind, Result};

/// Time steps per block.
const BLOCK: usize = 128;

/// What the a-posteriori output-error bound needs from one layer of one sequence (the values
/// of [`mor::bound::MeasuredLayer`]): `‖u‖₂` over the true positions (Frobenius, `[len, H]`)
/// and `max |y|` of the SSM output before the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerStats {
    /// `‖u‖₂` of the SSM input.
    pub u_l2: f64,
    /// `‖y‖_∞` of the SSM output.
    pub y_peak: f64,
}

/// The evaluation-mode prenorm as per-channel arrays.
enum NormArrays<T> {
    /// BatchNorm with running statistics: `u = x ⊙ scale + shift`.
    Affine { scale: Vec<T>, shift: Vec<T> },
    /// LayerNorm over the `H` channels of each position: `u = γ (x − μ)/sqrt(σ² + ε) + β`.
    Layer {
        gamma: Vec<T>,
        beta: Vec<T>,
        eps: f64,
    },
}

/// One layer's parameters as plain arrays of the activation dtype `T`.
struct LayerArrays<T> {
    /// Width `H`.
    h: usize,
    /// Complex modes `n` (the layer's order; reduced layers differ).
    n: usize,
    norm: NormArrays<T>,
    /// `Re Λ̄`, `Im Λ̄` `[n]`.
    lam_re: Vec<f64>,
    lam_im: Vec<f64>,
    /// `W_B` `[H, 2n]`: column `(j, re/im)` = `B̄[j, :, re/im]`.
    w_b: Vec<T>,
    /// `W_C` `[d·2n, H]`: forward-scan rows first, then the reverse scan's.
    w_c: Vec<T>,
    /// `D` `[H]`.
    d: Vec<T>,
    bidirectional: bool,
    gate: GateKind,
    /// Gate `W` `[H, H]` (`[out, in]`) and `b` `[H]`.
    gate_w: Vec<T>,
    gate_b: Vec<T>,
}

fn vec_of<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

impl<T: Real> LayerArrays<T> {
    fn new(layer: &S5Layer) -> Result<Self> {
        let ssm = &layer.ssm;
        let (h, n) = (ssm.width(), ssm.n_modes());
        // The evaluation-mode norm in f64 (BatchNorm folded into scale and shift), as exported
        // to `mor`; cast once to `T`.
        let cast = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
        let norm = match layer.norm.to_mor()? {
            mor::Norm::Batch { scale, shift } => NormArrays::Affine {
                scale: cast(scale),
                shift: cast(shift),
            },
            mor::Norm::Layer { gamma, beta, eps } => NormArrays::Layer {
                gamma: cast(gamma),
                beta: cast(beta),
                eps,
            },
            mor::Norm::Identity => NormArrays::Affine {
                scale: vec![T::one(); h],
                shift: vec![T::zero(); h],
            },
        };
        let disc = ssm.discretise()?;
        let lam = crate::params::to_f64_vec(&disc.lambda_bar)?;
        // b_bar [n, H, 2] → W_B [H, 2n].
        let b_bar: Vec<T> = vec_of(&disc.b_bar)?;
        let mut w_b = vec![T::zero(); h * 2 * n];
        for j in 0..n {
            for c in 0..h {
                for part in 0..2 {
                    w_b[c * 2 * n + 2 * j + part] = b_bar[(j * h + c) * 2 + part];
                }
            }
        }
        Ok(Self {
            h,
            n,
            norm,
            lam_re: lam.iter().step_by(2).copied().collect(),
            lam_im: lam.iter().skip(1).step_by(2).copied().collect(),
            w_b,
            w_c: vec_of(&ssm.readout()?.contiguous()?)?,
            d: vec_of(&ssm.d)?,
            bidirectional: ssm.c2.is_some(),
            gate: layer.gate.kind,
            gate_w: vec_of(&layer.gate.weight)?,
            gate_b: vec_of(&layer.gate.bias)?,
        })
    }

    /// `u = norm(x)` for the rows of `x` (`[rows, H]`).
    fn norm(&self, x: &[T], u: &mut [T]) {
        let h = self.h;
        match &self.norm {
            NormArrays::Affine { scale, shift } => crate::vmath::with_simd(
                #[inline(always)]
                || {
                    for (ur, xr) in u.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                        for (((u, &x), &a), &b) in ur.iter_mut().zip(xr).zip(scale).zip(shift) {
                            *u = x * a + b;
                        }
                    }
                },
            ),
            NormArrays::Layer { gamma, beta, eps } => {
                for (ur, xr) in u.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    let mean = xr.iter().map(|v| v.to_f64()).sum::<f64>() / h as f64;
                    let var =
                        xr.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / h as f64;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (((u, &x), &g), &b) in ur.iter_mut().zip(xr).zip(gamma).zip(beta) {
                        *u = T::from_f64((x.to_f64() - mean) * inv) * g + b;
                    }
                }
            }
        }
    }

    /// Runs the layer on one sequence: `x` `[len, H]` (its true positions only) is replaced by
    /// `x + gate(ssm(norm(x)))`; with `measure`, returns the layer's [`LayerStats`] (else zeros).
    fn apply(&self, x: &mut [T], s: &mut Scratch<T>, measure: bool) -> LayerStats {
        let (h, n2) = (self.h, 2 * self.n);
        let len = x.len() / h;
        let seq = gemm::Parallelism::None;
        let (v, rev) = (&mut s.v[..len * n2], &mut s.rev[..len * n2]);
        let mut u_sq = 0.0;
        // Pass 1: v = norm(x) W_B.
        for (xb, vb) in x.chunks(BLOCK * h).zip(v.chunks_mut(BLOCK * n2)) {
            let rows = xb.len() / h;
            let u = &mut s.u[..rows * h];
            self.norm(xb, u);
            if measure {
                u_sq += u.iter().map(|v| v.to_f64().powi(2)).sum::<f64>();
            }
            matmul_on(
                vb,
                (rows, n2, h),
                Mat::rows(u, h),
                Mat::rows(&self.w_b, n2),
                false,
                seq,
            );
        }
        // Pass 2: the reverse scan from the true end.
        let (sr, si) = (&mut s.state_re[..self.n], &mut s.state_im[..self.n]);
        if self.bidirectional {
            sr.fill(0.0);
            si.fill(0.0);
            for (vk, ok) in v.chunks(n2).zip(rev.chunks_mut(n2)).rev() {
                self.step(vk, ok, sr, si);
            }
        }
        // Pass 3: forward scan, read-out, gate and residual, block by block.
        sr.fill(0.0);
        si.fill(0.0);
        let mut y_peak = 0.0f64;
        let (w_fwd, w_rev) = self.w_c.split_at(n2 * h);
        for (bi, xb) in x.chunks_mut(BLOCK * h).enumerate() {
            let rows = xb.len() / h;
            let r0 = bi * BLOCK;
            let (u, y, a) = (
                &mut s.u[..rows * h],
                &mut s.y[..rows * h],
                &mut s.a[..rows * h],
            );
            let states = &mut s.states[..rows * n2];
            for (vk, ok) in v[r0 * n2..(r0 + rows) * n2]
                .chunks(n2)
                .zip(states.chunks_mut(n2))
            {
                self.step(vk, ok, sr, si);
            }
            self.norm(xb, u);
            for (yr, ur) in y.chunks_exact_mut(h).zip(u.chunks_exact(h)) {
                for ((y, &u), &d) in yr.iter_mut().zip(ur).zip(&self.d) {
                    *y = u * d;
                }
            }
            let wf = Mat::rows(w_fwd, h);
            matmul_on(y, (rows, h, n2), Mat::rows(states, n2), wf, true, seq);
            if self.bidirectional {
                let rb = &rev[r0 * n2..(r0 + rows) * n2];
                matmul_on(
                    y,
                    (rows, h, n2),
                    Mat::rows(rb, n2),
                    Mat::rows(w_rev, h),
                    true,
                    seq,
                );
            }
            if measure {
                y_peak = y.iter().fold(y_peak, |m, v| m.max(v.to_f64().abs()));
            }
            self.gate_residual(xb, y, u, a);
        }
        LayerStats {
            u_l2: u_sq.sqrt(),
            y_peak,
        }
    }

    /// One scan step for every mode: `state ← Λ̄ state + v_k`, written to `out` `[2n]`.
    #[inline(always)]
    fn step(&self, vk: &[T], out: &mut [T], sr: &mut [f64], si: &mut [f64]) {
        let modes = vk
            .chunks_exact(2)
            .zip(out.chunks_exact_mut(2))
            .zip(sr.iter_mut().zip(si.iter_mut()))
            .zip(self.lam_re.iter().zip(&self.lam_im));
        for (((v, o), (sr, si)), (&lr, &li)) in modes {
            let xr = lr * *sr - li * *si + v[0].to_f64();
            let xi = lr * *si + li * *sr + v[1].to_f64();
            *sr = xr;
            *si = xi;
            o[0] = T::from_f64(xr);
            o[1] = T::from_f64(xi);
        }
    }

    /// `x += y ⊙ σ(W GELU(y) + b)` (`half_glu2`) or `x += y ⊙ (W y + b)` (`quadratic`) on a
    /// block; `g` and `a` are `[rows, H]` scratch.
    fn gate_residual(&self, x: &mut [T], y: &[T], g: &mut [T], a: &mut [T]) {
        let h = self.h;
        let rows = y.len() / h;
        let seq = gemm::Parallelism::None;
        let w_t = Mat::t(&self.gate_w, h);
        let b = &self.gate_b;
        crate::vmath::with_simd(
            #[inline(always)]
            || match self.gate {
                GateKind::HalfGlu2 => {
                    for (gv, yv) in g.iter_mut().zip(y) {
                        *gv = yv.gelu().0;
                    }
                    matmul_on(a, (rows, h, h), Mat::rows(g, h), w_t, false, seq);
                    add_gated(x, y, a, b, |z| z.sigmoid());
                }
                GateKind::Quadratic => {
                    matmul_on(a, (rows, h, h), Mat::rows(y, h), w_t, false, seq);
                    add_gated(x, y, a, b, |z| z);
                }
            },
        );
    }
}

/// `x += y ⊙ act(a + b)` over `[rows, H]` blocks (`b` `[H]`); generic in `act` so that the loop
/// is inlined and vectorised.
#[inline(always)]
fn add_gated<T: Real>(x: &mut [T], y: &[T], a: &[T], b: &[T], act: impl Fn(T) -> T) {
    let h = b.len();
    let rows = x
        .chunks_exact_mut(h)
        .zip(y.chunks_exact(h))
        .zip(a.chunks_exact(h));
    for ((xr, yr), ar) in rows {
        for (((x, &y), &a), &b) in xr.iter_mut().zip(yr).zip(ar).zip(b) {
            *x += y * act(a + b);
        }
    }
}

/// What the kernel reads of a model (borrowed from the `S5Model` that calls the kernel;
/// this module does not depend on the model's own module).
pub(crate) struct ModelView<'a> {
    /// Embedding `[vocab, H]`.
    pub encoder: &'a Tensor,
    /// The residual layers, input side first.
    pub layers: &'a [S5Layer],
    /// Decoder weight `[classes, H]` and bias `[classes]`.
    pub decoder_w: &'a Tensor,
    pub decoder_b: &'a Tensor,
    /// `H` and the number of classes.
    pub d_model: usize,
    pub n_classes: usize,
}

/// Every layer's arrays in `T`, the embedding table `[vocab, H]` and the largest mode count.
fn arrays<T: Real>(model: &ModelView<'_>) -> Result<(Vec<LayerArrays<T>>, Vec<T>, usize)> {
    let layers = model
        .layers
        .iter()
        .map(LayerArrays::<T>::new)
        .collect::<Result<Vec<_>>>()?;
    let n_max = layers.iter().map(|la| la.n).max().unwrap_or(0);
    Ok((layers, vec_of(model.encoder)?, n_max))
}

/// The embedded sequence `[len, H]` (row-major) of `tokens`.
fn embed<T: Real>(encoder: &[T], tokens: &[u32], h: usize) -> Vec<T> {
    let mut x = Vec::with_capacity(tokens.len() * h);
    for &t in tokens {
        x.extend_from_slice(&encoder[t as usize * h..(t as usize + 1) * h]);
    }
    x
}

/// The SSM input `u_ℓ = norm_ℓ(x_ℓ)` of every layer (`[n_layers][len·H]`, row-major `[len, H]`,
/// f64) for one sequence of true tokens, in evaluation mode (BatchNorm running statistics, no
/// dropout), computed in f64.
pub(crate) fn ssm_inputs(model: &ModelView<'_>, tokens: &[u32]) -> Result<Vec<Vec<f64>>> {
    let h = model.d_model;
    let (layers, encoder, n_max) = arrays::<f64>(model)?;
    let mut x = embed(&encoder, tokens, h);
    let mut scratch = Scratch::new(tokens.len(), h, n_max);
    let mut out = Vec::with_capacity(layers.len());
    for layer in &layers {
        let mut u = vec![0.0; x.len()];
        layer.norm(&x, &mut u);
        out.push(u);
        layer.apply(&mut x, &mut scratch, false);
    }
    Ok(out)
}

/// Per-thread buffers, sized for the longest sequence and the largest layer.
struct Scratch<T> {
    /// `v` `[len, 2n]` and the reverse states `[len, 2n]`.
    v: Vec<T>,
    rev: Vec<T>,
    /// Block buffers `[BLOCK, H]` and the forward states `[BLOCK, 2n]`.
    u: Vec<T>,
    y: Vec<T>,
    a: Vec<T>,
    states: Vec<T>,
    /// Scan state `[n]` (f64).
    state_re: Vec<f64>,
    state_im: Vec<f64>,
}

impl<T: Real> Scratch<T> {
    fn new(len: usize, h: usize, n: usize) -> Self {
        Self {
            v: vec![T::zero(); len * 2 * n],
            rev: vec![T::zero(); len * 2 * n],
            u: vec![T::zero(); BLOCK * h],
            y: vec![T::zero(); BLOCK * h],
            a: vec![T::zero(); BLOCK * h],
            states: vec![T::zero(); BLOCK * 2 * n],
            state_re: vec![0.0; n],
            state_im: vec![0.0; n],
        }
    }
}

/// Evaluation-mode logits `[b, classes]` (dtype of the model's parameters, f32 or f64) and, with
/// `measure`, per sequence and layer (`[b][n_layers]`) the [`LayerStats`] (zeros without), for
/// `tokens` `[b, l]` and true lengths (already validated by the caller: each in `1..=l`, tokens
/// below the vocabulary size).
/// Sequences run in parallel on the rayon pool, one per thread.
///
/// # Errors
/// A dtype other than f32/f64, candle errors reading the parameters.
pub(crate) fn forward(
    model: &ModelView<'_>,
    tokens: &[u32],
    lengths: &[u32],
    l: usize,
    measure: bool,
) -> Result<(Tensor, Vec<Vec<LayerStats>>)> {
    match model.encoder.dtype() {
        DType::F32 => forward_t::<f32>(model, tokens, lengths, l, measure),
        DType::F64 => forward_t::<f64>(model, tokens, lengths, l, measure),
        other => Err(Error::Config(format!(
            "evaluation forward: parameters must be f32 or f64, got {other:?}"
        ))),
    }
}

fn forward_t<T: Real>(
    model: &ModelView<'_>,
    tokens: &[u32],
    lengths: &[u32],
    l: usize,
    measure: bool,
) -> Result<(Tensor, Vec<Vec<LayerStats>>)> {
    let (h, classes) = (model.d_model, model.n_classes);
    let (layers, encoder, n_max) = arrays::<T>(model)?;
    let dec_w = crate::params::to_f64_vec(model.decoder_w)?;
    let dec_b = crate::params::to_f64_vec(model.decoder_b)?;
    let per_seq: Vec<(Vec<T>, Vec<LayerStats>)> = lengths
        .par_iter()
        .enumerate()
        .map(|(i, &len)| {
            let len = len as usize;
            let mut x = embed(&encoder, &tokens[i * l..i * l + len], h);
            let mut scratch = Scratch::new(len, h, n_max);
            let stats = layers
                .iter()
                .map(|layer| layer.apply(&mut x, &mut scratch, measure))
                .collect();
            let mut pooled = vec![0.0f64; h];
            for row in x.chunks(h) {
                for (p, v) in pooled.iter_mut().zip(row) {
                    *p += v.to_f64();
                }
            }
            let logits = (0..classes)
                .map(|c| {
                    let w = &dec_w[c * h..(c + 1) * h];
                    let dot: f64 = pooled.iter().zip(w).map(|(p, w)| p * w).sum();
                    T::from_f64(dot / len as f64 + dec_b[c])
                })
                .collect();
            (logits, stats)
        })
        .collect();
    let b = lengths.len();
    let mut logits = Vec::with_capacity(b * classes);
    let mut stats = Vec::with_capacity(b);
    for (lg, st) in per_seq {
        logits.extend(lg);
        stats.push(st);
    }
    let logits = Tensor::from_vec(logits, (b, classes), model.encoder.device())?;
    Ok((logits, stats))
}
