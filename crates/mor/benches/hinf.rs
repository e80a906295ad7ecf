//! Cost of the certified H∞ gains that the output-error bound needs for every reduction
//! (`mor::bound`: the full block once per model at `HINF_FULL`, then per reduced model the
//! reduced block and the error system at `HINF_REDUCED`), on one S5-like layer of the paper's
//! size (H = 256, 96 stored modes, bidirectional) reduced by modal truncation to `r` modes.
//! Prints one JSON line per block: bound, evaluations, wall and CPU seconds, seconds per
//! evaluation.
//!
//! Run: `cargo bench -p mor --bench hinf` (env `MOR_BENCH_R` for the reduced order, default 38 =
//! 60 % of the modes removed).

use mor::bound::{HINF_FULL, HINF_REDUCED};
use mor::hinf::hinf_upper_bound;
use mor::modal::{ModalOrder, modal};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

mod common;
use common::{cpu_seconds, s5_layer};

fn main() {
    let r: usize = std::env::var("MOR_BENCH_R")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(38);
    let (h, n) = (256, 96);
    let mut rng = ChaCha8Rng::seed_from_u64(2023);
    let full = s5_layer(&mut rng, h, n).ssm;
    let reduced = modal(&full, r, ModalOrder::H2).expect("modal").block;
    let error = mor::gram::difference_block(&full, &reduced);
    for (name, block, (tol, budget)) in [
        ("full", &full, HINF_FULL),
        ("reduced", &reduced, HINF_REDUCED),
        ("error", &error, HINF_REDUCED),
    ] {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let b = hinf_upper_bound(block, tol, budget);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{{\"block\": \"{name}\", \"modes\": {}, \"rel_tol\": {tol}, \"max_evals\": {budget}, \"upper\": {:.4}, \"lower\": {:.4}, \"evaluations\": {}, \"seconds\": {secs:.2}, \"cpu_seconds\": {:.2}, \"ms_per_evaluation\": {:.1}}}",
            block.n_modes(),
            b.upper,
            b.lower,
            b.evaluations,
            cpu_seconds() - c0,
            1e3 * secs / b.evaluations.max(1) as f64
        );
    }
}
