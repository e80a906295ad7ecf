//! Quick timing of balanced truncation at paper scale: one bidirectional block with n = 96
//! stored modes, H = 256 inputs/outputs, reduced to r = 16, and a 6-layer model at the same
//! scale through `reduce_model` (ratio 1 − 16/96). S5-like spectrum: `λ = exp(Δ(−0.5 + iω))`
//! with `log Δ` uniform in `[log 0.001, log 0.1]`.
//!
//! Run: `cargo run --release -p mor --example bt_timing`.

use faer::{Mat, c64};
use mor::reduce::{ReduceOptions, reduce_model};
use mor::{DeepSsm, DiagBlock, Gate, Layer, Method, Norm, gram};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn block(seed: u64, n: usize, h: usize) -> DiagBlock {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lambda = (0..n)
        .map(|i| {
            let dt = (0.001f64.ln() + rng.random::<f64>() * (100.0f64).ln()).exp();
            let w = std::f64::consts::PI * i as f64;
            (c64::new(-0.5, w) * dt).exp()
        })
        .collect();
    let s = 1.0 / (h as f64).sqrt();
    let g =
        |rng: &mut ChaCha8Rng| c64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5) * s;
    DiagBlock {
        lambda,
        b: Mat::from_fn(n, h, |_, _| g(&mut rng)),
        c: Mat::from_fn(h, n, |_, _| g(&mut rng)),
        c_rev: Some(Mat::from_fn(h, n, |_, _| g(&mut rng))),
        d: None,
        linear: None,
        quadratic: vec![],
    }
}

fn main() {
    let (n, h, r) = (96, 256, 16);
    let b = block(1, n, h);
    // Warm-up, then median of 5.
    let _ = mor::bt::bt(&b, r).unwrap();
    let mut ts = vec![];
    let mut red = None;
    for _ in 0..5 {
        let t = Instant::now();
        red = Some(mor::bt::bt(&b, r).unwrap());
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    let red = red.unwrap();
    println!(
        "bt one block n={n} H={h} bidirectional r={r}: median {:.1} ms (min {:.1}, max {:.1}); h2 error {:.4e} (norm {:.4e}), H∞ bound {:.4e}, stable {}",
        1e3 * ts[2],
        1e3 * ts[0],
        1e3 * ts[4],
        red.h2_error,
        gram::h2_norm(&b, None),
        red.hinf_bound.unwrap(),
        red.block.max_abs_lambda() < 1.0
    );
    let model = DeepSsm {
        layers: (0..6)
            .map(|k| Layer {
                norm: Norm::Identity,
                ssm: block(10 + k, n, h),
                gate: Gate::Identity,
            })
            .collect(),
        decoder_w: Mat::zeros(2, h),
        decoder_b: vec![0.0; 2],
        max_len: 4096,
    };
    for m in [Method::Bt, Method::Modal, Method::Last] {
        let t = Instant::now();
        let mr = reduce_model(
            &model,
            m,
            1.0 - r as f64 / n as f64,
            &ReduceOptions::default(),
        )
        .unwrap();
        println!(
            "{m} 6 layers: {:.2} s, kept {:?}, layer h2 errors {:?}",
            t.elapsed().as_secs_f64(),
            mr.kept_modes,
            mr.layer_h2_errors
                .iter()
                .map(|e| format!("{e:.3e}"))
                .collect::<Vec<_>>()
        );
    }
}
