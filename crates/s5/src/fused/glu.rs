//! The fused `half_glu2` gate with its residual add: `x + y ⊙ σ(W (GELU_tanh(y) ⊙ m₁) + b) ⊙ m₂`
//! (forward and hand-written backward), and the small row-major matmul it runs on.

use super::*;

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
/// activations, each a zero-fill and an add in the backward; this has two.
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
