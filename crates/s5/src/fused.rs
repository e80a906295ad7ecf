//! Fused per-channel ops of an S5 layer (CPU, hand-written backward), each replacing two or three
//! candle ops and their autograd edges (every edge costs a zero-fill and an add of a full
//! activation in the backward; FACTS.md):
//!
//! - [`glu_residual`]: `x + y ⊙ σ(W (GELU_tanh(y) ⊙ m₁) + b) ⊙ m₂` — the `half_glu2` gate with
//!   both of S5's dropout sites and the residual add (S5: `x + drop(y ⊙ σ(W drop(GELU(y)) + b))`);
//! - [`masked_batch_norm`]: training-mode BatchNorm whose statistics exclude padded positions.
//!
//! GELU is the tanh approximation `GELU_tanh(x) = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))`
//! (Hendrycks & Gimpel, 2016; as candle's `gelu` and jax's `nn.gelu`).
//!
//! Activations are `[batch, len, H]`, contiguous, f32 or f64; per-channel vectors are `[H]`;
//! dropout masks are [`ChannelMask`]s, broadcast over time as in S5 (one mask per sequence and
//! channel). f32 uses the vectorised kernels of [`crate::vmath`]; f64 uses libm (the reference of
//! the finite-difference tests in `tests/model_ops.rs`).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::{Error, Result};

/// Rows (`[H]` vectors) per parallel work unit.
const ROWS: usize = 128;

/// Elementwise math of the fused ops in the storage dtype.
pub(crate) trait Real: WithDType {
    fn sigmoid(self) -> Self;
    /// `(GELU_tanh(x), GELU_tanh'(x))`.
    fn gelu(self) -> (Self, Self);
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::vmath::sigmoid_f32(self)
    }
    #[inline(always)]
    fn gelu(self) -> (Self, Self) {
        crate::vmath::gelu_tanh_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn gelu(self) -> (Self, Self) {
        const C: f64 = 0.797_884_560_802_865_4;
        const K: f64 = 0.044_715;
        let t = (C * (self + K * self * self * self)).tanh();
        let dy = 0.5 * (1.0 + t) + 0.5 * self * (1.0 - t * t) * C * (1.0 + 3.0 * K * self * self);
        (0.5 * self * (1.0 + t), dy)
    }
}

/// A dropout mask broadcast over time: `values[b·H + c]` multiplies channel `c` of every position
/// of sequence `b` (0 for a dropped channel, `1/(1 − p)` for a kept one).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMask {
    /// Sequences in the batch.
    pub batch: usize,
    /// Channels `H`.
    pub channels: usize,
    /// `[batch, H]`, row-major.
    pub values: Arc<Vec<f32>>,
}

impl ChannelMask {
    /// A mask from its `[batch, H]` values.
    ///
    /// # Errors
    /// [`Error::Config`] if `values.len() != batch · channels`.
    pub fn new(batch: usize, channels: usize, values: Vec<f32>) -> Result<Self> {
        if values.len() != batch * channels {
            return Err(Error::Config(format!(
                "ChannelMask: {} values for {batch} × {channels}",
                values.len()
            )));
        }
        Ok(Self {
            batch,
            channels,
            values: Arc::new(values),
        })
    }

    /// The mask as a `[batch, 1, H]` tensor of `like`'s dtype and device (for unfused paths).
    ///
    /// # Errors
    /// Candle errors only.
    pub fn to_tensor(&self, like: &Tensor) -> Result<Tensor> {
        Ok(
            Tensor::from_slice(&self.values, (self.batch, 1, self.channels), like.device())?
                .to_dtype(like.dtype())?,
        )
    }

    fn check(&self, b: usize, h: usize) -> candle_core::Result<()> {
        if self.batch != b || self.channels != h {
            candle_core::bail!(
                "dropout mask is {}×{}, the activation has batch {b} and {h} channels",
                self.batch,
                self.channels
            );
        }
        Ok(())
    }

    fn as_vec<T: WithDType>(&self) -> Vec<T> {
        self.values.iter().map(|&v| T::from_f64(v as f64)).collect()
    }
}

/// A zero-filled buffer of `n` elements, filled by the rayon pool. The ops' outputs and gradients
/// are `[batch, len, ·]` buffers of several MiB; `vec![0; n]` zero-fills them on the calling
/// thread while the pool waits (a profile of a training step: ~15 % of its wall time).
pub(crate) fn zeros<T: WithDType>(n: usize) -> Vec<T> {
    // SAFETY: `fill` writes every element of the chunk.
    unsafe { par_init(n, |_, c| c.fill(MaybeUninit::new(T::zero()))) }
}

/// A copy of `x`, written by the rayon pool (see [`zeros`]).
pub(crate) fn copied<T: WithDType>(x: &[T]) -> Vec<T> {
    // SAFETY: the chunk at `off` is at most `x.len() − off` long, so the zip writes all of it.
    unsafe {
        par_init(x.len(), |off, c| {
            for (d, &v) in c.iter_mut().zip(&x[off..]) {
                d.write(v);
            }
        })
    }
}

/// A buffer of `n` elements whose chunks `init(offset, chunk)` writes in parallel.
///
/// # Safety
/// `init` must write every element of the chunk it is given (the buffer is then read as `T`).
unsafe fn par_init<T: WithDType>(
    n: usize,
    init: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut v = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    spare
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| init(i * CHUNK, c));
    // SAFETY: by the caller's promise `init` wrote every element of every chunk: all `n`.
    unsafe { v.set_len(n) };
    v
}

/// The contiguous data of a CPU storage as a slice of `T` (the custom ops' inputs).
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("s5 op: inputs must be contiguous"),
    }
}

/// `(batch, len, H)` of a `[batch, len, H]` layout.
fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    l.shape().dims3()
}

fn check_vec(name: &str, l: &Layout, h: usize) -> candle_core::Result<()> {
    if l.shape().dims() != [h] {
        candle_core::bail!("{name} must be [{h}], got {:?}", l.shape().dims());
    }
    Ok(())
}

macro_rules! by_dtype {
    ($s:expr, |$t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("fused op: only f32 and f64 are supported"),
        }
    };
}

/// Sums per-chunk partial `[H]` vectors.
fn add_partials(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// `out[r, k] = f(x[r, k], y[r, k], m[seq(r), k])` over a `[b, len, H]` activation (rows
/// `r`, sequence `seq(r) = r / len`), in parallel work units of [`ROWS`] rows, vectorised by
/// [`crate::vmath::with_simd`]; `m = 1` without a mask.
fn map_rows<T: Real>(
    x: &[T],
    y: &[T],
    len: usize,
    h: usize,
    mask: Option<&ChannelMask>,
    f: impl Fn(T, T, T) -> T + Sync,
) -> Vec<T> {
    let ones = vec![T::from_f64(1.0); h];
    let mask: Option<Vec<T>> = mask.map(|m| m.as_vec());
    let mut out = zeros(x.len());
    out.par_chunks_mut(ROWS * h)
        .zip(x.par_chunks(ROWS * h).zip(y.par_chunks(ROWS * h)))
        .enumerate()
        .for_each(|(c, (o, (x, y)))| {
            crate::vmath::with_simd(
                #[inline(always)]
                || {
                    for (i, ((o, x), y)) in o
                        .chunks_mut(h)
                        .zip(x.chunks(h))
                        .zip(y.chunks(h))
                        .enumerate()
                    {
                        let m = match &mask {
                            Some(m) => mask_row(m, c * ROWS + i, len, h),
                            None => &ones,
                        };
                        for (((o, &x), &y), &m) in o.iter_mut().zip(x).zip(y).zip(m) {
                            *o = f(x, y, m);
                        }
                    }
                },
            )
        });
    out
}

// ---------------------------------------------------------------------------------------------
// x + y ⊙ σ(W (GELU_tanh(y) ⊙ m₁) + b) ⊙ m₂

/// Row-major matrix operand of [`matmul`]: entry `(r, c)` is `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a contiguous row-major matrix with `cols` columns.
    pub(crate) fn t(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst [m, n]` (row-major) `= a [m, k] · b [k, n]`, or `dst += a · b` with `accumulate`; by
/// `gemm` (the kernel of candle's CPU matmul), on the rayon pool for products of ≥ 2¹⁶
/// multiply-adds.
///
/// # Panics
/// If `dst` is not `m·n` long or an operand is too short for its strides.
pub(crate) fn matmul<T: WithDType>(
    dst: &mut [T],
    dims: (usize, usize, usize),
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
) {
    let (m, n, k) = dims;
    let par = if m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    matmul_on(dst, dims, a, b, accumulate, par)
}

/// [`matmul`] with the given `gemm` parallelism (`None` inside an already parallel loop).
pub(crate) fn matmul_on<T: WithDType>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    assert_eq!(dst.len(), m * n, "matmul: destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::zero());
        }
        return;
    }
    // gemm takes raw pointers: the largest offsets it reads must be in bounds.
    assert!(
        (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
        "matmul: lhs bounds"
    );
    assert!(
        (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(),
        "matmul: rhs bounds"
    );
    // SAFETY: all reads are in bounds (checked above); `dst` is exclusively borrowed and cannot
    // alias the shared borrows `a`, `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Row `r` of a `[b, l, H]` activation belongs to sequence `r / l`.
#[inline(always)]
fn mask_row<T>(m: &[T], row: usize, len: usize, h: usize) -> &[T] {
    let b = row / len;
    &m[b * h..(b + 1) * h]
}

/// The op; `saved` keeps `(s, g)` of the forward pass for the backward: `s = σ(a + b)` and
/// `g = GELU_tanh(y) ⊙ m₁`, both `[rows, H]`.
pub(crate) struct GluResidual {
    pub(crate) drop_in: Option<ChannelMask>,
    pub(crate) drop_out: Option<ChannelMask>,
    pub(crate) saved: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

/// Parallel work units of [`ROWS`] rows: `f(unit index, chunk of out_a, chunk of out_b)`.
fn for_units2<T: Send>(
    a: &mut [T],
    b: &mut [T],
    h: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) {
    a.par_chunks_mut(ROWS * h)
        .zip(b.par_chunks_mut(ROWS * h))
        .enumerate()
        .for_each(|(c, (a, b))| f(c, a, b));
}

impl GluResidual {
    /// Returns `(out, s, g)`.
    pub(crate) fn fwd<T: Real>(
        &self,
        x: &[T],
        y: &[T],
        theta: &[T],
        (len, h): (usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (w, bias) = theta.split_at(h * h);
        let rows = y.len() / h;
        let g = map_rows(y, y, len, h, self.drop_in.as_ref(), |y, _, m| {
            y.gelu().0 * m
        });
        // a = g Wᵀ (W stored [out, in]); overwritten by s = σ(a + b) below.
        let mut s = zeros(rows * h);
        matmul(&mut s, (rows, h, h), Mat::rows(&g, h), Mat::t(w, h), false);
        let mut out = zeros(rows * h);
        let m2 = self.drop_out.as_ref().map(|m| m.as_vec::<T>());
        let ones = vec![T::one(); h];
        for_units2(&mut out, &mut s, h, |c, out, s| {
            let off = c * ROWS * h;
            crate::vmath::with_simd(
                #[inline(always)]
                || {
                    for (i, (o, s)) in out.chunks_mut(h).zip(s.chunks_mut(h)).enumerate() {
                        let row = off + i * h;
                        let (x, y) = (&x[row..row + h], &y[row..row + h]);
                        let m = m2
                            .as_ref()
                            .map_or(&ones[..], |m| mask_row(m, c * ROWS + i, len, h));
                        let cols = o.iter_mut().zip(s.iter_mut()).zip(x.iter().zip(y));
                        for (((o, s), (&x, &y)), (&m, &b)) in cols.zip(m.iter().zip(bias)) {
                            let sk = (*s + b).sigmoid();
                            *s = sk;
                            *o = x + y * sk * m;
                        }
                    }
                },
            )
        });
        (out, s, g)
    }

    /// Returns `(∂L/∂y, ∂L/∂θ)` for the upstream gradient `gout` (`∂L/∂x = gout`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bwd_impl<T: Real>(
        &self,
        y: &[T],
        theta: &[T],
        s: &[T],
        g: &[T],
        gout: &[T],
        (len, h): (usize, usize),
    ) -> (Vec<T>, Vec<T>) {
        let w = &theta[..h * h];
        let rows = y.len() / h;
        let m1 = self.drop_in.as_ref().map(|m| m.as_vec::<T>());
        let m2 = self.drop_out.as_ref().map(|m| m.as_vec::<T>());
        let ones = vec![T::one(); h];
        // With gm = gout ⊙ m₂: ∂/∂y (direct) = gm s, ∂/∂a = gm y s (1 − s), ∂/∂b = Σ_rows ∂/∂a.
        let mut gy = zeros(rows * h);
        let mut ga = zeros(rows * h);
        let mut parts: Vec<Vec<f64>> = vec![Vec::new(); rows.div_ceil(ROWS)];
        gy.par_chunks_mut(ROWS * h)
            .zip(ga.par_chunks_mut(ROWS * h))
            .zip(parts.par_iter_mut())
            .enumerate()
            .for_each(|(c, ((gy, ga), part))| {
                let off = c * ROWS * h;
                let mut acc = vec![T::zero(); h];
                crate::vmath::with_simd(
                    #[inline(always)]
                    || {
                        for (i, (gy, ga)) in gy.chunks_mut(h).zip(ga.chunks_mut(h)).enumerate() {
                            let row = off + i * h;
                            let (y, s, go) =
                                (&y[row..row + h], &s[row..row + h], &gout[row..row + h]);
                            let m = m2
                                .as_ref()
                                .map_or(&ones[..], |m| mask_row(m, c * ROWS + i, len, h));
                            let cols = gy.iter_mut().zip(ga.iter_mut()).zip(acc.iter_mut());
                            let ins = y.iter().zip(s).zip(go.iter().zip(m));
                            for (((gy, ga), acc), ((&y, &s), (&go, &m))) in cols.zip(ins) {
                                let gm = go * m;
                                *gy = gm * s;
                                let d = gm * y * s * (T::one() - s);
                                *ga = d;
                                *acc += d;
                            }
                        }
                    },
                );
                *part = acc.iter().map(|v| v.to_f64()).collect();
            });
        // Merged in order: the same sum whatever the thread schedule.
        let gb = parts.into_iter().fold(vec![0.0; h], add_partials);
        // ∂/∂W = ∂/∂aᵀ g ([out, in]); ∂/∂g = ∂/∂a W.
        let mut g_theta = vec![T::zero(); h * h];
        matmul(
            &mut g_theta,
            (h, h, rows),
            Mat::t(&ga, h),
            Mat::rows(g, h),
            false,
        );
        g_theta.extend(gb.into_iter().map(T::from_f64));
        let mut gg = zeros(rows * h);
        matmul(
            &mut gg,
            (rows, h, h),
            Mat::rows(&ga, h),
            Mat::rows(w, h),
            false,
        );
        drop(ga);
        // ∂/∂y += ∂/∂g ⊙ m₁ ⊙ GELU_tanh'(y).
        for_units2(&mut gy, &mut gg, h, |c, gy, gg| {
            let off = c * ROWS * h;
            crate::vmath::with_simd(
                #[inline(always)]
                || {
                    for (i, (gy, gg)) in gy.chunks_mut(h).zip(gg.chunks(h)).enumerate() {
                        let row = off + i * h;
                        let y = &y[row..row + h];
                        let m = m1
                            .as_ref()
                            .map_or(&ones[..], |m| mask_row(m, c * ROWS + i, len, h));
                        for (((gy, &gg), &m), &y) in gy.iter_mut().zip(gg).zip(m).zip(y) {
                            *gy += gg * m * y.gelu().1;
                        }
                    }
                },
            )
        });
        (gy, g_theta)
    }
}

impl CustomOp3 for GluResidual {
    fn name(&self) -> &'static str {
        "s5-glu-residual"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, h) = dims(l1)?;
        check_vec("gate parameters [W, b]", l3, h * h + h)?;
        for m in [&self.drop_in, &self.drop_out].into_iter().flatten() {
            m.check(b, h)?;
        }
        by_dtype!(s1, |T| {
            let (out, s, g) = self.fwd(
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
                (len, h),
            );
            *self.saved.lock().expect("glu op: cache poisoned") =
                Some((T::to_cpu_storage_owned(s), T::to_cpu_storage_owned(g)));
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, len, h) = y.dims3()?;
        let grad = grad.contiguous()?;
        let (gy, gt) = {
            let (sx, lx) = x.storage_and_layout();
            let (sy, ly) = y.storage_and_layout();
            let (st, lt) = theta.storage_and_layout();
            let (sg, lg) = grad.storage_and_layout();
            let (Storage::Cpu(sx), Storage::Cpu(sy), Storage::Cpu(st), Storage::Cpu(sg)) =
                (&*sx, &*sy, &*st, &*sg)
            else {
                candle_core::bail!("glu op: CPU only");
            };
            let mut saved = self.saved.lock().expect("glu op: cache poisoned");
            by_dtype!(sy, |T| {
                let (yv, tv) = (slice::<T>(sy, ly)?, slice::<T>(st, lt)?);
                let fresh = match &*saved {
                    Some((s, _)) => T::cpu_storage_as_slice(s).is_err(),
                    None => true,
                };
                if fresh {
                    // Not cached (or another dtype): recompute the forward pass.
                    let (_, s, g) = self.fwd(slice::<T>(sx, lx)?, yv, tv, (len, h));
                    *saved = Some((T::to_cpu_storage_owned(s), T::to_cpu_storage_owned(g)));
                }
                let Some((s, g)) = &*saved else {
                    unreachable!()
                };
                let (gy, gt) = self.bwd_impl(
                    yv,
                    tv,
                    T::cpu_storage_as_slice(s)?,
                    T::cpu_storage_as_slice(g)?,
                    slice::<T>(sg, lg)?,
                    (len, h),
                );
                (
                    Tensor::from_vec(gy, y.shape(), y.device())?,
                    Tensor::from_vec(gt, theta.shape(), theta.device())?,
                )
            })
        };
        Ok((Some(grad), Some(gy), Some(gt)))
    }
}

/// One S5 layer's `half_glu2` gate with both dropout sites and the residual add, as one autograd
/// node: `x + y ⊙ σ(W (GELU_tanh(y) ⊙ m₁) + b) ⊙ m₂` (S5 code, `SequenceLayer`:
/// `x + drop(y ⊙ σ(W drop(GELU(y)) + b))`) for the residual stream `x` and SSM output `y`
/// `[batch, len, H]`, `W` `[H, H]` stored `[out, in]`, `b` `[H]`, optional dropout masks `m₁`, `m₂`.
///
/// Backward (`G = ∂L/∂out`, `s = σ(a + b)`, `a = W g`, `g = GELU_tanh(y) ⊙ m₁`):
/// `∂L/∂x = G`; with `gm = G ⊙ m₂`, `∂L/∂a = gm ⊙ y ⊙ s (1 − s)`, `∂L/∂b = Σ_rows ∂L/∂a`,
/// `∂L/∂W = ∂L/∂aᵀ g`, `∂L/∂y = gm ⊙ s + (∂L/∂a W) ⊙ m₁ ⊙ GELU_tanh'(y)`. `s` and `g` are kept
/// from the forward pass. Built from candle ops the same map has seven edges on `[batch, len, H]`
/// activations, each a zero-fill and an add in the backward (FACTS.md); this has two.
///
/// # Errors
/// Shapes or dtypes that do not match, a mask of another batch or width, a dtype other than
/// f32/f64, a non-CPU tensor.
pub fn glu_residual(
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    drop_in: Option<&ChannelMask>,
    drop_out: Option<&ChannelMask>,
) -> Result<Tensor> {
    let h = y.dims().last().copied().unwrap_or(0);
    if x.shape() != y.shape() || y.rank() != 3 || w.dims() != [h, h] || bias.dims() != [h] {
        return Err(Error::Config(format!(
            "glu_residual: x {:?}, y {:?} must be the same [b, l, H], W {:?} [H, H], bias {:?} [H]",
            x.dims(),
            y.dims(),
            w.dims(),
            bias.dims()
        )));
    }
    if [y, w, bias].iter().any(|t| t.dtype() != x.dtype()) {
        return Err(Error::Config(format!(
            "glu_residual: x, y, W and bias must share one dtype (x is {:?})",
            x.dtype()
        )));
    }
    let theta = Tensor::cat(&[w.flatten_all()?, bias.flatten_all()?], 0)?;
    Ok(x.contiguous()?.apply_op3(
        &y.contiguous()?,
        &theta,
        GluResidual {
            drop_in: drop_in.cloned(),
            drop_out: drop_out.cloned(),
            saved: Mutex::new(None),
        },
    )?)
}

// ---------------------------------------------------------------------------------------------
// BatchNorm with a mask

/// Per-channel sums `Σ_i f(i, row_i)` over the rows of `[N, H]` data, in parallel units of
/// [`ROWS`] rows: each unit accumulates in f64, the units are merged in order (the same sum
/// whatever the thread schedule).
fn row_sums<T: WithDType>(
    z: &[T],
    h: usize,
    f: impl Fn(usize, &[T], &mut [f64]) + Sync,
) -> Vec<f64> {
    z.par_chunks(ROWS * h)
        .enumerate()
        .map(|(c, zc)| {
            let mut acc = vec![0.0f64; h];
            for (i, row) in zc.chunks(h).enumerate() {
                f(c * ROWS + i, row, &mut acc);
            }
            acc
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0; h], add_partials)
}

/// Mean and biased variance `[H]` (f64) over the rows of `z` `[N, H]` whose `mask` entry is true
/// (two passes; `nt` = number of true rows ≥ 1).
pub(crate) fn masked_stats<T: WithDType>(
    zs: &[T],
    mask: &[bool],
    h: usize,
) -> (Vec<f64>, Vec<f64>) {
    let nt = mask.iter().filter(|&&m| m).count().max(1) as f64;
    let mut mean = row_sums(zs, h, |i, row, acc| {
        if mask[i] {
            for (a, x) in acc.iter_mut().zip(row) {
                *a += x.to_f64();
            }
        }
    });
    mean.iter_mut().for_each(|m| *m /= nt);
    let mut var = row_sums(zs, h, |i, row, acc| {
        if mask[i] {
            for ((a, x), m) in acc.iter_mut().zip(row).zip(&mean) {
                let d = x.to_f64() - m;
                *a += d * d;
            }
        }
    });
    var.iter_mut().for_each(|v| *v /= nt);
    (mean, var)
}

/// Fused training-mode BatchNorm over the rows of `z` `[N, H]` whose `mask` entry is 1
/// (statistics over true positions only; all rows are normalised):
/// `u_i = γ (z_i − μ)/σ + β`, `μ = Σ_i m_i z_i / N_t`, `σ² = Σ_i m_i (z_i − μ)² / N_t + ε`
/// (two passes, f64 accumulation, in the storage dtype otherwise).
/// Backward (Ioffe & Szegedy, 2015, Sec. 3, with the mask): `∂L/∂β = Σ_i g_i`,
/// `∂L/∂γ = Σ_i g_i x̂_i`, `∂L/∂z_i = (γ/σ) [g_i − (m_i/N_t)(Σ_j g_j + x̂_i Σ_j g_j x̂_j)]`.
///
/// Returns `u` `[N, H]` and the (detached) batch mean and biased variance `[H]` (f64) for the
/// running statistics.
///
/// # Errors
/// Shape/dtype mismatches, no true row, a dtype other than f32/f64, a non-CPU tensor.
pub fn masked_batch_norm(
    z: &Tensor,
    mask: &[bool],
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let (n, h) = z.dims2()?;
    if mask.len() != n || !mask.iter().any(|&m| m) || weight.dims() != [h] || bias.dims() != [h] {
        return Err(Error::Config(format!(
            "masked_batch_norm: z {:?}, mask {} (needs ≥ 1 true row), weight {:?}, bias {:?}",
            z.dims(),
            mask.len(),
            weight.dims(),
            bias.dims()
        )));
    }
    let z = z.contiguous()?;
    let (mean, var) = {
        let (s, l) = z.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else {
            return Err(Error::Config("masked_batch_norm: CPU tensors only".into()));
        };
        let stats = |s: &CpuStorage| -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
            by_dtype!(s, |T| Ok(masked_stats(slice::<T>(s, l)?, mask, h)))
        };
        stats(s)?
    };
    let op = MaskedBn {
        mask: mask.to_vec(),
        mean: mean.clone(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
    };
    let u = z.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((u, mean, var))
}

/// Evaluation-mode BatchNorm of `z` `[N, H]` with given statistics (`mean`, biased `var`,
/// `[H]`): `u_i = γ (z_i − μ)/sqrt(var + ε) + β` in one pass; differentiable in `z`, `γ`, `β`
/// (the statistics are constants).
///
/// # Errors
/// Shape/dtype mismatches, a dtype other than f32/f64, a non-CPU tensor.
pub fn batch_norm_eval(
    z: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> Result<Tensor> {
    let (n, h) = z.dims2()?;
    if weight.dims() != [h] || bias.dims() != [h] || mean.len() != h || var.len() != h {
        return Err(Error::Config(format!(
            "batch_norm_eval: z {:?}, weight {:?}, bias {:?}, {} means, {} variances",
            z.dims(),
            weight.dims(),
            bias.dims(),
            mean.len(),
            var.len()
        )));
    }
    let op = MaskedBn {
        mask: vec![false; n],
        mean: mean.to_vec(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
    };
    Ok(z.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?)
}

/// BatchNorm as one op: statistics `mean`, `inv_std` fixed at construction; rows with a true
/// `mask` entry contributed to them (none in evaluation mode).
pub(crate) struct MaskedBn {
    pub(crate) mask: Vec<bool>,
    pub(crate) mean: Vec<f64>,
    pub(crate) inv_std: Vec<f64>,
}

impl MaskedBn {
    /// `u = γ (z − mean) inv_std + β` over the rows of `z` `[N, H]` (`γ` = `g`, `β` = `b`, `[H]`).
    pub(crate) fn fwd_slices<T: WithDType>(&self, z: &[T], g: &[T], b: &[T]) -> Vec<T> {
        let h = g.len();
        let scale: Vec<f64> = (0..h).map(|k| g[k].to_f64() * self.inv_std[k]).collect();
        let shift: Vec<T> = (0..h)
            .map(|k| T::from_f64(b[k].to_f64() - scale[k] * self.mean[k]))
            .collect();
        let scale: Vec<T> = scale.into_iter().map(T::from_f64).collect();
        let mut out = zeros(z.len());
        out.par_chunks_mut(ROWS * h)
            .zip(z.par_chunks(ROWS * h))
            .for_each(|(o, z)| {
                crate::vmath::with_simd(
                    #[inline(always)]
                    || {
                        for (o, z) in o.chunks_exact_mut(h).zip(z.chunks_exact(h)) {
                            for (((o, &z), &a), &b) in o.iter_mut().zip(z).zip(&scale).zip(&shift) {
                                *o = z * a + b;
                            }
                        }
                    },
                )
            });
        out
    }

    /// `(∂L/∂z [N, H], ∂L/∂γ [H], ∂L/∂β [H])` for the upstream gradient `gs` `[N, H]`, `gam` = γ
    /// (see [`masked_batch_norm`]).
    pub(crate) fn bwd_slices<T: WithDType>(
        &self,
        zs: &[T],
        gs: &[T],
        gam: &[f64],
        (n, h): (usize, usize),
    ) -> (Vec<T>, Vec<f64>, Vec<f64>) {
        // True rows (none in evaluation mode, where the statistics are constants).
        let nt = self.mask.iter().filter(|&&m| m).count().max(1) as f64;
        // x̂ = z·inv_std − mean·inv_std, in the storage dtype.
        let a: Vec<T> = self.inv_std.iter().map(|&s| T::from_f64(s)).collect();
        let c: Vec<T> = (0..h)
            .map(|k| T::from_f64(-self.mean[k] * self.inv_std[k]))
            .collect();
        // s1 = Σ_i g_i, s2 = Σ_i g_i x̂_i over all rows.
        let s1 = row_sums(gs, h, |_, g, acc| {
            for (a, g) in acc.iter_mut().zip(g) {
                *a += g.to_f64();
            }
        });
        let s2 = row_sums(zs, h, |row, zr, acc| {
            let gr = &gs[row * h..(row + 1) * h];
            for ((acc, (&g, &z)), (&a, &c)) in
                acc.iter_mut().zip(gr.iter().zip(zr)).zip(a.iter().zip(&c))
            {
                *acc += (g * (z * a + c)).to_f64();
            }
        });
        // ∂L/∂z_i = γ inv_std (g_i − (m_i/N_t)(s1 + x̂_i s2)).
        let ga: Vec<T> = (0..h)
            .map(|k| T::from_f64(gam[k] * self.inv_std[k]))
            .collect();
        let t1: Vec<T> = (0..h).map(|k| T::from_f64(s1[k] / nt)).collect();
        let t2: Vec<T> = (0..h).map(|k| T::from_f64(s2[k] / nt)).collect();
        let mut dz = zeros(n * h);
        dz.par_chunks_mut(ROWS * h)
            .enumerate()
            .for_each(|(cidx, dc)| {
                for (i, d) in dc.chunks_mut(h).enumerate() {
                    let row = cidx * ROWS + i;
                    let (zr, gr) = (&zs[row * h..(row + 1) * h], &gs[row * h..(row + 1) * h]);
                    let cols = d.iter_mut().zip(gr).zip(ga.iter());
                    if self.mask[row] {
                        let consts = zr.iter().zip(a.iter().zip(&c)).zip(t1.iter().zip(&t2));
                        for (((d, &g), &ga), ((&z, (&a, &c)), (&t1, &t2))) in cols.zip(consts) {
                            let xh = z * a + c;
                            *d = ga * (g - (t1 + xh * t2));
                        }
                    } else {
                        for ((d, &g), &ga) in cols {
                            *d = ga * g;
                        }
                    }
                }
            });
        (dz, s2, s1)
    }
}

impl CustomOp3 for MaskedBn {
    fn name(&self) -> &'static str {
        "s5-masked-batch-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype!(s1, |T| {
            let (z, g, b) = (
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            let out = self.fwd_slices(z, g, b);
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        z: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = z.dims2()?;
        let grad = grad.contiguous()?;
        let gam: Vec<f64> = weight.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let (sz, lz) = z.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(sz), Storage::Cpu(sg)) = (&*sz, &*sg) else {
            candle_core::bail!("masked_batch_norm: CPU only");
        };
        let dev = z.device();
        by_dtype!(sz, |T| {
            let (zs, gs) = (slice::<T>(sz, lz)?, slice::<T>(sg, lg)?);
            let (dz, s2, s1) = self.bwd_slices(zs, gs, &gam, (n, h));
            let to_t = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
            Ok((
                Some(Tensor::from_vec(dz, (n, h), dev)?),
                Some(Tensor::from_vec(to_t(s2), h, dev)?),
                Some(Tensor::from_vec(to_t(s1), h, dev)?),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel buffer helpers at sizes around their chunk length (2¹⁶).
    #[test]
    fn parallel_buffers_equal_serial_ones() {
        for n in [0, 1, 1000, 1 << 16, (1 << 16) + 1, 3 * (1 << 16) - 7] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            assert_eq!(copied(&x), x, "copied, n = {n}");
            assert_eq!(zeros::<f64>(n), vec![0.0; n], "zeros, n = {n}");
        }
    }
}
