//! The certified H∞ bound against the spectral norm of explicit finite Toeplitz operators, a
//! closed form, and the ℓ1 kernel bound.

use faer::{Mat, c64};
use mor::bound::kernel_l1_norm;
use mor::hinf::hinf_upper_bound;
use mor::{DiagBlock, gram};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cz(rng: &mut ChaCha8Rng, s: f64) -> c64 {
    c64::new(
        s * (rng.random::<f64>() - 0.5),
        s * (rng.random::<f64>() - 0.5),
    )
}

/// A random stable block: `n` modes with `|λ|` in [0.3, 0.95], `h` inputs and outputs.
fn random_block(rng: &mut ChaCha8Rng, n: usize, h: usize, bidirectional: bool) -> DiagBlock {
    DiagBlock {
        lambda: (0..n)
            .map(|_| c64::from_polar(0.3 + 0.65 * rng.random::<f64>(), 6.0 * rng.random::<f64>()))
            .collect(),
        b: Mat::from_fn(n, h, |_, _| cz(rng, 1.0)),
        c: Mat::from_fn(h, n, |_, _| cz(rng, 1.0)),
        c_rev: bidirectional.then(|| Mat::from_fn(h, n, |_, _| cz(rng, 1.0))),
        d: Some((0..h).map(|_| rng.random::<f64>() - 0.5).collect()),
        linear: None,
        quadratic: vec![],
    }
}

/// `‖T_L‖₂` of the block (kernel plus D) acting on length-`len` sequences, as a dense matrix.
fn toeplitz_norm(block: &DiagBlock, len: usize) -> f64 {
    let (p, m) = (block.n_outputs(), block.n_inputs());
    let kernels: Vec<Mat<f64>> = (-(len as i64) + 1..len as i64)
        .map(|j| gram::kernel(block, j))
        .collect();
    let d = block.d.clone().unwrap_or(vec![0.0; p]);
    let t = Mat::from_fn(len * p, len * m, |r, c| {
        let (k, i) = (r / p, r % p);
        let (l, s) = (c / m, c % m);
        let lag = k as i64 - l as i64;
        let mut v = kernels[(lag + len as i64 - 1) as usize][(i, s)];
        if lag == 0 && i == s {
            v += d[i];
        }
        v
    });
    t.singular_values().unwrap().into_iter().fold(0.0, f64::max)
}

#[test]
fn hinf_bound_is_above_every_finite_section_and_close_to_the_long_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (case, &(n, h, bi)) in [(3, 2, true), (4, 3, false), (2, 1, true), (5, 2, true)]
        .iter()
        .enumerate()
    {
        let blk = random_block(&mut rng, n, h, bi);
        let hb = hinf_upper_bound(&blk, 1e-3, 4000);
        assert!(
            hb.upper.is_finite() && hb.upper >= hb.lower,
            "case {case}: {hb:?}"
        );
        assert!(
            hb.upper <= hb.lower * (1.0 + 1e-3) * (1.0 + 1e-9),
            "case {case}: not refined: {hb:?}"
        );
        for len in [1usize, 7, 40, 160] {
            let t = toeplitz_norm(&blk, len);
            assert!(
                t <= hb.upper,
                "case {case}, L={len}: ‖T_L‖ {t} > bound {}",
                hb.upper
            );
        }
        // Finite sections approach the symbol's norm from below (|λ| ≤ 0.95: fast decay).
        let t = toeplitz_norm(&blk, 160);
        assert!(
            hb.upper <= t * 1.05,
            "case {case}: bound {} vs ‖T_160‖ {t}",
            hb.upper
        );
        // Never worse than the ℓ1 kernel bound over a long horizon.
        let l1 = kernel_l1_norm(&blk, 2000)
            + blk
                .d
                .as_ref()
                .unwrap()
                .iter()
                .fold(0.0f64, |a, x| a.max(x.abs()));
        assert!(
            hb.upper <= l1 * (1.0 + 1e-3),
            "case {case}: {} vs ℓ1 {l1}",
            hb.upper
        );
    }
}

#[test]
fn hinf_bound_of_one_real_mode_is_its_dc_gain() {
    // g(j) = 2 Re(c λ^j b) = 0.8^j (j ≥ 0): G(ω) = 1/(1 − 0.8 e^{−iω}), largest at ω = 0: 5.
    let blk = DiagBlock {
        lambda: vec![c64::new(0.8, 0.0)],
        b: Mat::from_fn(1, 1, |_, _| c64::new(1.0, 0.0)),
        c: Mat::from_fn(1, 1, |_, _| c64::new(0.5, 0.0)),
        c_rev: None,
        d: None,
        linear: None,
        quadratic: vec![],
    };
    let hb = hinf_upper_bound(&blk, 1e-6, 10_000);
    assert!(hb.upper >= 5.0 && hb.upper <= 5.0 * (1.0 + 1e-5), "{hb:?}");
    // A slow mode (|λ| = 0.999) needs fine intervals near its angle; the bound stays certified.
    let mut slow = blk.clone();
    slow.lambda = vec![c64::from_polar(0.999, 0.7)];
    let hb = hinf_upper_bound(&slow, 1e-3, 10_000);
    let peak = 1.0 / (1.0 - 0.999); // |c b| / (1 − |λ|) from the pole term alone, ≈ 1000
    assert!(
        hb.upper >= hb.lower && hb.lower > 0.9 * peak * 0.5,
        "{hb:?}"
    );
}

#[test]
fn unstable_blocks_have_no_finite_bound() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut blk = random_block(&mut rng, 3, 2, true);
    blk.lambda[1] = c64::new(1.0, 0.0);
    assert_eq!(hinf_upper_bound(&blk, 1e-3, 100).upper, f64::INFINITY);
}
