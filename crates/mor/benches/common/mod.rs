//! Shared generators of the MOR benchmarks (`paper_scale`, `hinf`).

use faer::{Mat, c64};
use mor::{DiagBlock, Gate, Layer, Norm};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One standard normal sample (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// An S5-like discrete layer: Λ = −1/2 + iπk (HiPPO-N-like spectrum), per-mode step log-uniform
/// in [1e-3, 1e-1], ZOH `λ = exp(ΛΔ)`, `B̄ = (λ − 1)/Λ · B̃`, lecun-normal-like `C̃`.
pub fn s5_layer(rng: &mut ChaCha8Rng, h: usize, n: usize) -> Layer {
    let mut lambda = Vec::with_capacity(n);
    let mut zoh = Vec::with_capacity(n);
    for k in 0..n {
        let cont = c64::new(-0.5, std::f64::consts::PI * (k % 16) as f64);
        let dt = (1e-3f64.ln() + rng.random::<f64>() * (1e-1f64.ln() - 1e-3f64.ln())).exp();
        let l = (cont * dt).exp();
        lambda.push(l);
        zoh.push((l - c64::new(1.0, 0.0)) / cont);
    }
    let sb = (1.0 / h as f64).sqrt();
    let sc = (1.0 / (2 * n) as f64).sqrt();
    let b = Mat::from_fn(n, h, |i, _| {
        zoh[i] * c64::new(sb * normal(rng), sb * normal(rng))
    });
    let mut cm = || Mat::from_fn(h, n, |_, _| c64::new(sc * normal(rng), sc * normal(rng)));
    let c = cm();
    let c_rev = Some(cm());
    let ssm = DiagBlock {
        lambda,
        b,
        c,
        c_rev,
        d: Some((0..h).map(|_| normal(rng)).collect()),
        linear: None,
        quadratic: vec![],
    };
    let sw = (1.0 / h as f64).sqrt();
    let gate = Gate::HalfGlu2 {
        w: Mat::from_fn(h, h, |_, _| sw * normal(rng)),
        b: (0..h).map(|_| 0.1 * normal(rng)).collect(),
    };
    let norm = Norm::Batch {
        scale: (0..h).map(|_| 1.0 + 0.1 * normal(rng)).collect(),
        shift: (0..h).map(|_| 0.1 * normal(rng)).collect(),
    };
    Layer { norm, ssm, gate }
}

/// Process CPU time (user + system) in seconds from `/proc/self/stat` (Linux; 0 elsewhere), so
/// the figures can be read on a loaded machine.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are at 11, 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
