//! Training-mode forward and backward of the whole residual layer stack as ONE autograd node.
//!
//! Per layer ℓ (S5, Smith et al., ICLR 2023, Fig. 1; the same map as the per-layer ops of
//! [`crate::S5Model::forward_ops`]): `u = BN(x_ℓ)` with the statistics of the batch's true
//! positions ([`crate::fused::masked_batch_norm`]), `y = ssm(u)` ([`crate::ssm_op`]),
//! `x_{ℓ+1} = x_ℓ + y ⊙ σ(W (GELU(y) ⊙ m₁) + b) ⊙ m₂` ([`crate::fused::glu_residual`]). The node
//! runs those three slice-level kernels in a loop and their backward passes in reverse, keeping
//! the activations between them in plain buffers: candle then sees one large edge (`x₀`) instead
//! of four per layer, each of which costs a zero-filled allocation and an add in its backward
//!. The small parameters of all layers travel as one flat vector
//! `θ = [γ, β, θ_ssm, W, b]` per layer, concatenated over layers (autograd differentiates the
//! discretisation that produces `θ_ssm` as before).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor, WithDType};

use rayon::prelude::*;

use crate::fused::{ChannelMask, GluResidual, MaskedBn, Real, copied, masked_stats, slice};
use crate::scan::{Direction, ScanOp};
use crate::ssm_op::SsmOp;
use crate::{Error, Result};

/// A layer's BatchNorm batch mean and biased variance `[H]` (f64).
pub(crate) type BatchStats = (Vec<f64>, Vec<f64>);

/// One layer's shape and dropout masks.
pub(crate) struct StackLayer {
    /// Complex modes of the SSM.
    pub(crate) n: usize,
    /// Scan directions.
    pub(crate) direction: Direction,
    /// Dropout masks of the gate (`m₁` on GELU(y), `m₂` on the gate output).
    pub(crate) drop_in: Option<ChannelMask>,
    pub(crate) drop_out: Option<ChannelMask>,
}

impl StackLayer {
    /// Entries of this layer's slice of θ for width `h`: `γ, β` (`2h`), the SSM's
    /// `[λ̄, W_B, W_C, D]`, the gate's `[W, b]`.
    fn theta_len(&self, h: usize) -> usize {
        let n2 = 2 * self.n;
        2 * h + n2 + h * n2 + self.direction.n_dirs() * n2 * h + h + h * h + h
    }
}

/// What the forward pass keeps per layer for the backward.
struct Saved<T> {
    /// Layer input `x_ℓ`, BN output `u`, SSM output `y` (`[rows, H]`), scan states
    /// (`[rows, d·2n]`), gate `s = σ(·)` and `g = GELU(y) ⊙ m₁` (`[rows, H]`).
    x: Vec<T>,
    u: Vec<T>,
    y: Vec<T>,
    states: Vec<T>,
    s: Vec<T>,
    g: Vec<T>,
    /// The BatchNorm statistics of the batch.
    bn: MaskedBn,
}

/// The op: layer shapes, true lengths, the BN row mask, and the saved activations.
struct StackOp {
    layers: Vec<StackLayer>,
    lengths: Vec<u32>,
    rows_mask: Vec<bool>,
    eps: f64,
    saved: Mutex<Option<SavedAny>>,
    /// Batch mean and variance per layer (for the running statistics), written by the forward.
    stats: Arc<Mutex<Vec<BatchStats>>>,
}

enum SavedAny {
    F32(Vec<Saved<f32>>),
    F64(Vec<Saved<f64>>),
}

/// The layer kernels bound to their θ slices.
struct Kernels<'a, T> {
    gamma: &'a [T],
    beta: &'a [T],
    ssm_theta: &'a [T],
    gate_theta: &'a [T],
    ssm: SsmOp,
    gate: GluResidual,
}

impl StackOp {
    fn kernels<'a, T: WithDType>(&self, theta: &'a [T], h: usize) -> Vec<Kernels<'a, T>> {
        let mut off = 0;
        self.layers
            .iter()
            .map(|layer| {
                let t = &theta[off..off + layer.theta_len(h)];
                off += layer.theta_len(h);
                let (gamma, rest) = t.split_at(h);
                let (beta, rest) = rest.split_at(h);
                let (ssm_theta, gate_theta) = rest.split_at(rest.len() - h * h - h);
                Kernels {
                    gamma,
                    beta,
                    ssm_theta,
                    gate_theta,
                    ssm: SsmOp {
                        scan: ScanOp {
                            direction: layer.direction,
                            lengths: self.lengths.clone(),
                        },
                        n: layer.n,
                        states: Mutex::new(None),
                    },
                    gate: GluResidual {
                        drop_in: layer.drop_in.clone(),
                        drop_out: layer.drop_out.clone(),
                        saved: Mutex::new(None),
                    },
                }
            })
            .collect()
    }

    fn fwd<T: Real>(
        &self,
        x0: &[T],
        theta: &[T],
        (b, l, h): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Vec<Saved<T>>)> {
        let mut x = copied(x0);
        let mut saved = Vec::with_capacity(self.layers.len());
        let mut stats = Vec::with_capacity(self.layers.len());
        for k in self.kernels(theta, h) {
            let (mean, var) = masked_stats(&x, &self.rows_mask, h);
            let bn = MaskedBn {
                mask: self.rows_mask.clone(),
                inv_std: var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect(),
                mean: mean.clone(),
            };
            stats.push((mean, var));
            let u = bn.fwd_slices(&x, k.gamma, k.beta);
            let (y, states) = k.ssm.fwd(&u, k.ssm_theta, (b, l, h))?;
            let (next, s, g) = k.gate.fwd(&x, &y, k.gate_theta, (l, h));
            saved.push(Saved {
                x: std::mem::replace(&mut x, next),
                u,
                y,
                states,
                s,
                g,
                bn,
            });
        }
        *self.stats.lock().expect("stack op: stats poisoned") = stats;
        Ok((x, saved))
    }

    /// `(∂L/∂x₀, ∂L/∂θ)` for the upstream gradient `gout` of the last layer's output.
    fn bwd_impl<T: Real>(
        &self,
        saved: &[Saved<T>],
        theta: &[T],
        gout: &[T],
        (b, l, h): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let kernels = self.kernels(theta, h);
        let mut g = copied(gout);
        let mut g_theta: Vec<Vec<T>> = Vec::with_capacity(kernels.len());
        for (k, sv) in kernels.iter().zip(saved).rev() {
            let (gy, g_gate) = k
                .gate
                .bwd_impl(&sv.y, k.gate_theta, &sv.s, &sv.g, &g, (l, h));
            let (gu, g_ssm) = k
                .ssm
                .bwd_impl(&sv.u, k.ssm_theta, &sv.states, &gy, (b, l, h))?;
            let gamma: Vec<f64> = k.gamma.iter().map(|v| v.to_f64()).collect();
            let (gz, g_gamma, g_beta) = sv.bn.bwd_slices(&sv.x, &gu, &gamma, (b * l, h));
            // The residual: ∂L/∂x_ℓ = ∂L/∂x_{ℓ+1} + BN's ∂L/∂z.
            g.par_chunks_mut(1 << 14)
                .zip(gz.par_chunks(1 << 14))
                .for_each(|(g, gz)| g.iter_mut().zip(gz).for_each(|(a, &d)| *a += d));
            let mut gt: Vec<T> = g_gamma.into_iter().map(T::from_f64).collect();
            gt.extend(g_beta.into_iter().map(T::from_f64));
            gt.extend(g_ssm);
            gt.extend(g_gate);
            g_theta.push(gt);
        }
        g_theta.reverse();
        Ok((g, g_theta.concat()))
    }
}

impl CustomOp2 for StackOp {
    fn name(&self) -> &'static str {
        "s5-layer-stack"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims3()?;
        let mut cache = self.saved.lock().expect("stack op: cache poisoned");
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, sv) = self.fwd(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, dims)?;
                *cache = Some(SavedAny::F32(sv));
                CpuStorage::F32(x)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, sv) = self.fwd(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?, dims)?;
                *cache = Some(SavedAny::F64(sv));
                CpuStorage::F64(x)
            }
            _ => candle_core::bail!("stack op: x and θ must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x0: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = x0.dims3()?;
        let grad = grad.contiguous()?;
        let (st, lt) = theta.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(st), Storage::Cpu(sg)) = (&*st, &*sg) else {
            candle_core::bail!("stack op: CPU only");
        };
        let cache = self.saved.lock().expect("stack op: cache poisoned");
        let (gx, gt) = match &*cache {
            Some(SavedAny::F32(sv)) => {
                let (gx, gt) =
                    self.bwd_impl(sv, slice::<f32>(st, lt)?, slice::<f32>(sg, lg)?, dims)?;
                (
                    Tensor::from_vec(gx, x0.shape(), x0.device())?,
                    Tensor::from_vec(gt, theta.shape(), theta.device())?,
                )
            }
            Some(SavedAny::F64(sv)) => {
                let (gx, gt) =
                    self.bwd_impl(sv, slice::<f64>(st, lt)?, slice::<f64>(sg, lg)?, dims)?;
                (
                    Tensor::from_vec(gx, x0.shape(), x0.device())?,
                    Tensor::from_vec(gt, theta.shape(), theta.device())?,
                )
            }
            None => candle_core::bail!("stack op: backward without a forward pass"),
        };
        Ok((Some(gx), Some(gt)))
    }
}

/// Runs the layer stack in training mode as one autograd node: `x0` `[b, l, H]` (contiguous),
/// `theta` the flat per-layer `[γ, β, λ̄, W_B, W_C, D, W, b]` concatenated over `layers`, true
/// `lengths` `[b]`, the BatchNorm row mask `[b·l]` and ε. Returns the last layer's output and
/// per layer the batch mean and biased variance `[H]` (f64) for the running statistics.
///
/// # Errors
/// A θ of the wrong length, dtypes other than f32/f64 or mixed, candle errors.
pub(crate) fn layer_stack(
    x0: &Tensor,
    theta: &Tensor,
    layers: Vec<StackLayer>,
    lengths: &[u32],
    rows_mask: &[bool],
    eps: f64,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let h = x0.dim(2)?;
    let want: usize = layers.iter().map(|la| la.theta_len(h)).sum();
    if theta.elem_count() != want {
        return Err(Error::Config(format!(
            "layer_stack: θ has {} entries, the layers need {want}",
            theta.elem_count()
        )));
    }
    // The op moves into the graph; the statistics come back through a shared slot.
    let stats = Arc::new(Mutex::new(Vec::new()));
    let op = StackOp {
        layers,
        lengths: lengths.to_vec(),
        rows_mask: rows_mask.to_vec(),
        eps,
        saved: Mutex::new(None),
        stats: stats.clone(),
    };
    let out = x0.contiguous()?.apply_op2(theta, op)?;
    let stats = std::mem::take(&mut *stats.lock().expect("stack op: stats poisoned"));
    Ok((out, stats))
}
