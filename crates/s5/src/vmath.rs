//! Branch-free f32 `exp`, `sigmoid` and GELU-tanh that the compiler vectorises, and
//! [`with_simd`], a run-time switch to AVX2 + FMA code where the CPU has it.
//!
//! The fused gate ops ([`crate::fused`]) spent most of their time in scalar libm calls (`tanh` and
//! `exp` in f64): a profile of a training step showed `__expm1_fma` + `__tanh` + `exp` at ~20 % of
//! all cycles. These kernels evaluate `exp` by Cody–Waite range reduction and the degree-6
//! minimax polynomial of Cephes' `expf` (S. L. Moshier, *Methods and Programs for Mathematical
//! Functions*, 1989; coefficients as in Cephes `expf.c`), so that a loop over a slice becomes
//! SIMD code. The f64 path of the ops keeps libm (used by the finite-difference tests).
//!
//! Accuracy (checked in the tests against f64 libm over dense grids): `exp_f32` relative error
//! ≤ 4e-7 on [−87, 88] (inputs are clamped to that range: `exp(−87) ≈ 1.6e−38`,
//! `exp(88) ≈ 1.7e38`); `sigmoid_f32` absolute error ≤ 3e-7 on all of R; GELU-tanh and its
//! derivative absolute error ≤ 1e-6 · max(1, |x|).

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in a part exact in f32 and a remainder (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2^23`: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest
/// integer (ties to even) without a rounding instruction.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Cephes `expf` polynomial: `exp(r) ≈ 1 + r + r² (P0 r⁵ + P1 r⁴ + P2 r³ + P3 r² + P4 r + P5)`
/// on `|r| ≤ ln2 / 2`.
const P0: f32 = 1.987_569_2e-4;
const P1: f32 = 1.398_2e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
// Cephes lists 5.0000001201e-1, which rounds to 0.5 in f32.
const P5: f32 = 0.5;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the GELU-tanh approximation (Hendrycks & Gimpel, 2016).
const GELU_COEF: f32 = 0.044_715;

/// `exp(x)` for f32, `x` clamped to [−87, 88]; relative error ≤ 4e-7 there.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2), r = x − n ln 2 ∈ [−ln2/2, ln2/2].
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5;
    let e = p * r * r + r + 1.0;
    // 2^n with n ∈ [−126, 127]: a normal f32 built from its exponent bits.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e * scale
}

/// `σ(a) = 1 / (1 + exp(−a))`.
#[inline(always)]
pub fn sigmoid_f32(a: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-a))
}

/// GELU-tanh and its derivative: with `z = √(2/π)(x + 0.044715 x³)` and
/// `s = σ(2z) = (1 + tanh z)/2`, `GELU(x) = x s` and
/// `GELU'(x) = s + x s (1 − s) · 2√(2/π)(1 + 3·0.044715 x²)`.
#[inline(always)]
pub fn gelu_tanh_f32(x: f32) -> (f32, f32) {
    let z = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x);
    let s = sigmoid_f32(2.0 * z);
    let dz = 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF * x * x);
    (x * s, s + x * s * (1.0 - s) * dz)
}

/// Runs `body` compiled for AVX2 + FMA when the CPU has them, else for the baseline target.
/// `body` is a closure called once, which the compiler inlines into the feature-enabled function
/// (check the symbols of a profile: `with_simd::avx2` holds the loop when it worked).
#[inline(always)]
pub fn with_simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { avx2(body) };
        }
    }
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
    }

    #[test]
    fn exp_relative_error() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0, 2_000_000) {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst <= 4e-7, "max relative error {worst:e}");
        // Clamped outside the range, never inf or NaN.
        assert_eq!(exp_f32(1000.0), exp_f32(88.0));
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(f32::INFINITY).is_finite());
    }

    #[test]
    fn sigmoid_and_gelu_absolute_error() {
        let (mut ws, mut wg, mut wd) = (0.0f64, 0.0f64, 0.0f64);
        for x in grid(-120.0, 120.0, 2_000_000).chain(grid(-6.0, 6.0, 1_000_000)) {
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            ws = ws.max((sigmoid_f32(x) as f64 - s).abs());
            let c = 0.797_884_560_802_865_4;
            let t = (c * (xd + 0.044_715 * xd * xd * xd)).tanh();
            let g = 0.5 * xd * (1.0 + t);
            let dg =
                0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044_715 * xd * xd);
            let (gf, dgf) = gelu_tanh_f32(x);
            let scale = xd.abs().max(1.0);
            wg = wg.max((gf as f64 - g).abs() / scale);
            wd = wd.max((dgf as f64 - dg).abs() / scale);
        }
        assert!(ws <= 3e-7, "sigmoid {ws:e}");
        assert!(wg <= 1e-6, "gelu {wg:e}");
        assert!(wd <= 1e-6, "gelu' {wd:e}");
    }

    #[test]
    fn simd_path_equals_scalar_path() {
        // The same operations in the same order (Rust never contracts a * b + c into an FMA),
        // compiled with and without AVX2: bitwise equal.
        let xs: Vec<f32> = grid(-30.0, 30.0, 10_001).collect();
        let eval = |x: &f32| {
            let (g, dg) = gelu_tanh_f32(*x);
            (g, dg, sigmoid_f32(*x), exp_f32(*x))
        };
        let scalar: Vec<_> = xs.iter().map(eval).collect();
        let simd: Vec<_> = with_simd(|| xs.iter().map(eval).collect());
        assert_eq!(scalar, simd);
    }
}
