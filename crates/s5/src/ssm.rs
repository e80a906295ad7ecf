//! The S5 SSM layer (Smith, Warrington, Linderman, ICLR 2023, Sec. 3–4 and App. B–D).
//!
//! `P` real states are stored as `n = P/2` complex modes (conjugate symmetry). Two parameter
//! forms share one forward path after discretisation:
//!
//! - [`SsmParams::Continuous`] (training): Λ (`Lambda_re`, `Lambda_im`, `[n]`), B̃ (`B`,
//!   `[n, H, 2]`), per-mode `log_step` (`[n, 1]`); ZOH (S5 Eq. 6): `Λ̄ = exp(ΛΔ)`,
//!   `B̄ = ((Λ̄ − 1)/Λ) ⊙ B̃`, `Δ = exp(log_step)`;
//! - [`SsmParams::Discrete`] (reduced models): `lambda_bar` `[r, 2]` and `b_bar` `[r, H, 2]`
//!   stored directly, any order `r`.
//!
//! Output (S5 Eq. 3 with conjugate symmetry, bidirectional as in S5's code):
//! `y_k = 2 Re(C̃ x_k) + 2 Re(C̃₂ x'_k) + D ⊙ u_k`, `x_k = Λ̄ x_{k−1} + B̄ u_k`,
//! `x'_k = Λ̄ x'_{k+1} + B̄ u_k` (from each sequence's true end). The projection `u B̄ᵀ` and the
//! read-out are real matmuls on stacked (re, im) parts.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use faer::{Mat, c64};

use crate::hippo::block_hippo;
use crate::params::{InitRng, param};
use crate::scan::Direction;
use crate::{Error, ModelConfig, Result};

/// How Λ̄ and B̄ are parameterised.
#[derive(Clone, Debug)]
pub enum SsmParams {
    /// Continuous-time S5 parameters, discretised by ZOH in every forward pass.
    Continuous {
        /// Re Λ, `[n]`.
        lambda_re: Tensor,
        /// Im Λ, `[n]`.
        lambda_im: Tensor,
        /// B̃ = V⁻¹B, `[n, H, 2]` (re, im).
        b_tilde: Tensor,
        /// log Δ per mode, `[n, 1]`.
        log_step: Tensor,
    },
    /// Discrete parameters stored directly (reduced models).
    Discrete {
        /// Λ̄, `[r, 2]` (re, im).
        lambda_bar: Tensor,
        /// B̄, `[r, H, 2]` (re, im).
        b_bar: Tensor,
    },
}

/// One S5 SSM: the parameters of Λ̄ and B̄, the read-outs C̃ (and C̃₂) and the feed-through D.
#[derive(Clone, Debug)]
pub struct S5Ssm {
    /// Λ̄/B̄ parameterisation.
    pub params: SsmParams,
    /// C̃, `[H, n, 2]` (re, im).
    pub c: Tensor,
    /// C̃₂ of the reverse scan, `[H, n, 2]`; `None` for a causal layer.
    pub c2: Option<Tensor>,
    /// D, `[H]`.
    pub d: Tensor,
}

/// Discretised system of one layer as tensors: `lambda_bar` `[n, 2]`, `b_bar` `[n, H, 2]`.
pub struct Discretised {
    /// Λ̄ `[n, 2]`.
    pub lambda_bar: Tensor,
    /// B̄ `[n, H, 2]`.
    pub b_bar: Tensor,
}

impl S5Ssm {
    /// Creates (or loads) the continuous S5 SSM of a layer under `vb` (names `Lambda_re`,
    /// `Lambda_im`, `B`, `C`, `C2`, `D`, `log_step`), with S5's initialisation: HiPPO-N per
    /// block (see [`crate::hippo`]); `B` lecun-normal `[P, H]` (fan-in `P`, as flax on that
    /// shape) then `B̃ = V⁻¹B`; `C` lecun-normal `[H, P, 2]` (fan-in `P·H`) then `C̃ = C V`;
    /// `D ~ N(0, 1)`; `log_step ~ U[ln dt_min, ln dt_max]`.
    ///
    /// # Errors
    /// Invalid sizes (`ssm_size` odd or not a multiple of `blocks`), or a stored tensor of
    /// the wrong shape.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, rng: &mut InitRng) -> Result<Self> {
        let h = cfg.d_model;
        let p = cfg.ssm_size;
        if p == 0 || !p.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "ssm_size {p} must be even and positive"
            )));
        }
        if cfg.blocks == 0 || !p.is_multiple_of(cfg.blocks) || !(p / cfg.blocks).is_multiple_of(2) {
            return Err(Error::Config(format!(
                "ssm_size {p} must split into `blocks` = {} blocks of even size",
                cfg.blocks
            )));
        }
        if !(cfg.dt_min > 0.0 && cfg.dt_max >= cfg.dt_min) {
            return Err(Error::Config(format!(
                "need 0 < dt_min ≤ dt_max, got dt_min {} dt_max {}",
                cfg.dt_min, cfg.dt_max
            )));
        }
        let n = p / 2;
        let (lam, v, vinv) = block_hippo(p, cfg.blocks)?;
        let lambda_re = param(&vb, "Lambda_re", n, lam.iter().map(|z| z.re).collect())?;
        let lambda_im = param(&vb, "Lambda_im", n, lam.iter().map(|z| z.im).collect())?;
        // B̃ = V⁻¹ B, B real [P, H].
        let b_real = rng.lecun_normal(p * h, p);
        let mut b_vals = vec![0.0; n * h * 2];
        for j in 0..n {
            for hh in 0..h {
                let mut acc = c64::new(0.0, 0.0);
                for i in 0..p {
                    acc += vinv[(j, i)] * b_real[i * h + hh];
                }
                b_vals[(j * h + hh) * 2] = acc.re;
                b_vals[(j * h + hh) * 2 + 1] = acc.im;
            }
        }
        let b_tilde = param(&vb, "B", (n, h, 2), b_vals)?;
        let c_tilde = |rng: &mut InitRng| -> Vec<f64> {
            let raw = rng.lecun_normal(h * p * 2, p * h);
            let mut out = vec![0.0; h * n * 2];
            for hh in 0..h {
                for j in 0..n {
                    let mut acc = c64::new(0.0, 0.0);
                    for i in 0..p {
                        let cz = c64::new(raw[(hh * p + i) * 2], raw[(hh * p + i) * 2 + 1]);
                        acc += cz * v[(i, j)];
                    }
                    out[(hh * n + j) * 2] = acc.re;
                    out[(hh * n + j) * 2 + 1] = acc.im;
                }
            }
            out
        };
        let c_vals = c_tilde(rng);
        let c = param(&vb, "C", (h, n, 2), c_vals)?;
        let c2 = if cfg.bidirectional {
            let c2_vals = c_tilde(rng);
            Some(param(&vb, "C2", (h, n, 2), c2_vals)?)
        } else {
            None
        };
        let d_vals: Vec<f64> = (0..h).map(|_| rng.normal()).collect();
        let d = param(&vb, "D", h, d_vals)?;
        let (a, b) = (cfg.dt_min.ln(), cfg.dt_max.ln());
        let ls: Vec<f64> = (0..n)
            .map(|_| if a < b { rng.uniform(a, b) } else { a })
            .collect();
        let log_step = param(&vb, "log_step", (n, 1), ls)?;
        Ok(Self {
            params: SsmParams::Continuous {
                lambda_re,
                lambda_im,
                b_tilde,
                log_step,
            },
            c,
            c2,
            d,
        })
    }

    /// Number of stored complex modes `n` (or reduced order `r`).
    pub fn n_modes(&self) -> usize {
        self.c.dims()[1]
    }

    /// Model width `H`.
    pub fn width(&self) -> usize {
        self.c.dims()[0]
    }

    /// The trainable tensors with their names relative to the layer's `seq` prefix.
    pub fn named_params(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out: Vec<(&'static str, &Tensor)> = match &self.params {
            SsmParams::Continuous {
                lambda_re,
                lambda_im,
                b_tilde,
                log_step,
            } => vec![
                ("Lambda_re", lambda_re),
                ("Lambda_im", lambda_im),
                ("B", b_tilde),
                ("log_step", log_step),
            ],
            SsmParams::Discrete { lambda_bar, b_bar } => {
                vec![("lambda_bar", lambda_bar), ("b_bar", b_bar)]
            }
        };
        out.push(("C", &self.c));
        if let Some(c2) = &self.c2 {
            out.push(("C2", c2));
        }
        out.push(("D", &self.d));
        out
    }

    /// ZOH discretisation (S5 Eq. 6), differentiable: `Λ̄ = exp(ΛΔ)`,
    /// `B̄ = ((Λ̄ − 1)/Λ) ⊙ B̃`; the discrete form is returned as stored.
    ///
    /// # Errors
    /// Candle errors only.
    pub fn discretise(&self) -> Result<Discretised> {
        match &self.params {
            SsmParams::Discrete { lambda_bar, b_bar } => Ok(Discretised {
                lambda_bar: lambda_bar.clone(),
                b_bar: b_bar.clone(),
            }),
            SsmParams::Continuous {
                lambda_re,
                lambda_im,
                b_tilde,
                log_step,
            } => {
                let step = log_step.squeeze(1)?.exp()?;
                let ar = (lambda_re * &step)?;
                let ai = (lambda_im * &step)?;
                let mag = ar.exp()?;
                let lb_re = (&mag * ai.cos()?)?;
                let lb_im = (&mag * ai.sin()?)?;
                // (Λ̄ − 1)/Λ = ((a lr + b li) + i (b lr − a li)) / |Λ|², a = Re Λ̄ − 1, b = Im Λ̄.
                let a = (&lb_re - 1.0)?;
                let den = (lambda_re.sqr()? + lambda_im.sqr()?)?;
                let cr = ((&a * lambda_re)? + (&lb_im * lambda_im)?)?.div(&den)?;
                let ci = ((&lb_im * lambda_re)? - (&a * lambda_im)?)?.div(&den)?;
                let br = b_tilde.narrow(2, 0, 1)?.squeeze(2)?;
                let bi = b_tilde.narrow(2, 1, 1)?.squeeze(2)?;
                let cr = cr.unsqueeze(1)?;
                let ci = ci.unsqueeze(1)?;
                let bbr = (br.broadcast_mul(&cr)? - bi.broadcast_mul(&ci)?)?;
                let bbi = (bi.broadcast_mul(&cr)? + br.broadcast_mul(&ci)?)?;
                Ok(Discretised {
                    lambda_bar: Tensor::stack(&[lb_re, lb_im], 1)?,
                    b_bar: Tensor::stack(&[bbr, bbi], 2)?,
                })
            }
        }
    }

    /// Read-out matrix for the real matmul: `[d·2n, H]` with rows (direction, mode, re/im) =
    /// `(2 Re C̃, −2 Im C̃)`, so that `x_flat · W = 2 Re(C̃ x) (+ 2 Re(C̃₂ x'))`.
    pub(crate) fn readout(&self) -> Result<Tensor> {
        let h = self.width();
        let n = self.n_modes();
        let sign =
            Tensor::from_vec(vec![2.0f32, -2.0], 2, self.c.device())?.to_dtype(self.c.dtype())?;
        let mut parts = vec![self.c.broadcast_mul(&sign)?.reshape((h, 2 * n))?];
        if let Some(c2) = &self.c2 {
            parts.push(c2.broadcast_mul(&sign)?.reshape((h, 2 * n))?);
        }
        Ok(Tensor::cat(&parts, 1)?.t()?)
    }

    /// Applies the SSM to `u` `[b, l, H]` with true `lengths` `[b]`; returns `y` `[b, l, H]`
    /// (`y = D ⊙ u` at padded positions, which never influence true positions), differentiable
    /// (one autograd node, [`crate::ssm_op::ssm_apply`]).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, u: &Tensor, lengths: &[u32]) -> Result<Tensor> {
        self.forward_t(u, lengths, true)
    }

    /// [`Self::forward`]; with `grad = false` the result is detached from every input, which
    /// lets the op take its faster inference path (no states kept for a backward pass).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward_t(&self, u: &Tensor, lengths: &[u32], grad: bool) -> Result<Tensor> {
        let (lambda_bar, wb, wc, dir) = self.op_inputs()?;
        let args = [u.clone(), lambda_bar, wb, wc, self.d.clone()];
        let [u, lambda_bar, wb, wc, d] = if grad { args } else { args.map(|t| t.detach()) };
        crate::ssm_op::ssm_apply(&u, &lambda_bar, &wb, &wc, &d, lengths, dir)
    }

    /// The operands of [`crate::ssm_op::ssm_apply`] (differentiable in the parameters):
    /// `λ̄` `[n, 2]`, `W_B` `[H, 2n]` (column `(j, re/im)` = `B̄[j, :, re/im]`), the read-out
    /// `W_C` `[d·2n, H]`, and the scan direction.
    ///
    /// # Errors
    /// Candle errors only.
    pub(crate) fn op_inputs(&self) -> Result<(Tensor, Tensor, Tensor, Direction)> {
        let (h, n) = (self.width(), self.n_modes());
        let disc = self.discretise()?;
        let wb = disc
            .b_bar
            .transpose(0, 1)?
            .contiguous()?
            .reshape((h, 2 * n))?;
        let dir = if self.c2.is_some() {
            Direction::Both
        } else {
            Direction::Forward
        };
        Ok((disc.lambda_bar, wb, self.readout()?, dir))
    }

    /// Builds a discrete SSM from a `mor` block (`lambda` `[r]`, `b` `[r, H]`, `c` `[H, r]`,
    /// `c_rev`, `d`), with tensors of `dtype` on `device`; `d_fallback` is used when the block
    /// has no `d`.
    ///
    /// # Errors
    /// Blocks whose sizes do not match `H`, or with an LQO read-out (`linear`/`quadratic`),
    /// which an S5 layer cannot represent.
    pub fn from_block(
        block: &mor::DiagBlock,
        h: usize,
        d_fallback: &Tensor,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let r = block.n_modes();
        if block.b.nrows() != r
            || block.b.ncols() != h
            || block.c.nrows() != h
            || block.c.ncols() != r
        {
            return Err(Error::Config(format!(
                "reduced block: b is {}×{}, c is {}×{}; expected b {r}×{h}, c {h}×{r}",
                block.b.nrows(),
                block.b.ncols(),
                block.c.nrows(),
                block.c.ncols()
            )));
        }
        if block.linear.is_some() || !block.quadratic.is_empty() {
            return Err(Error::Config(
                "reduced block has a linear/quadratic read-out; an S5 layer needs E = I and no N_i"
                    .into(),
            ));
        }
        let to_t = |vals: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_vec(vals, shape, device)?.to_dtype(dtype)?)
        };
        let lam: Vec<f64> = block.lambda.iter().flat_map(|z| [z.re, z.im]).collect();
        let lambda_bar = to_t(lam, &[r, 2])?;
        let mut bv = Vec::with_capacity(r * h * 2);
        for j in 0..r {
            for k in 0..h {
                let z = block.b[(j, k)];
                bv.extend([z.re, z.im]);
            }
        }
        let b_bar = to_t(bv, &[r, h, 2])?;
        let cmat = |m: &Mat<c64>| -> Result<Tensor> {
            if m.nrows() != h || m.ncols() != r {
                return Err(Error::Config(format!(
                    "reduced block: c_rev is {}×{}, expected {h}×{r}",
                    m.nrows(),
                    m.ncols()
                )));
            }
            let mut cv = Vec::with_capacity(h * r * 2);
            for k in 0..h {
                for j in 0..r {
                    let z = m[(k, j)];
                    cv.extend([z.re, z.im]);
                }
            }
            to_t(cv, &[h, r, 2])
        };
        let c = cmat(&block.c)?;
        let c2 = block.c_rev.as_ref().map(cmat).transpose()?;
        let d = match &block.d {
            Some(d) if d.len() == h => to_t(d.clone(), &[h])?,
            Some(d) => {
                return Err(Error::Config(format!(
                    "reduced block: d has {} entries, expected {h}",
                    d.len()
                )));
            }
            None => d_fallback.clone(),
        };
        Ok(Self {
            params: SsmParams::Discrete { lambda_bar, b_bar },
            c,
            c2,
            d,
        })
    }

    /// Exports the discretised system as a `mor` block (`f64`/`c64`): Λ̄ `[n]`, B̄ `[n, H]`,
    /// C̃ `[H, n]`, C̃₂, D.
    ///
    /// # Errors
    /// Candle errors only.
    pub fn to_block(&self) -> Result<mor::DiagBlock> {
        let h = self.width();
        let n = self.n_modes();
        let disc = self.discretise()?;
        let flat = crate::params::to_f64_vec;
        let lam = flat(&disc.lambda_bar)?;
        let bb = flat(&disc.b_bar)?;
        let cmat = |t: &Tensor| -> Result<Mat<c64>> {
            let v = flat(t)?;
            Ok(Mat::from_fn(h, n, |k, j| {
                c64::new(v[(k * n + j) * 2], v[(k * n + j) * 2 + 1])
            }))
        };
        Ok(mor::DiagBlock {
            lambda: (0..n)
                .map(|j| c64::new(lam[2 * j], lam[2 * j + 1]))
                .collect(),
            b: Mat::from_fn(n, h, |j, k| {
                c64::new(bb[(j * h + k) * 2], bb[(j * h + k) * 2 + 1])
            }),
            c: cmat(&self.c)?,
            c_rev: self.c2.as_ref().map(cmat).transpose()?,
            d: Some(flat(&self.d)?),
            linear: None,
            quadratic: Vec::new(),
        })
    }
}
