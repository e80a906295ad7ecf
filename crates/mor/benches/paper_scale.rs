//! Paper-scale reduction benchmark (issue 4, item 7): 6 bidirectional layers with 96 stored
//! complex modes, H = 256, reduced to r = 16 per layer (budget 96) with `h2` and `lqo-h2`; also
//! the output-error bound's preparation at length 4096 (which includes certified H∞ gains), and
//! the certified H∞ gain of one layer against the ℓ1 kernel gain. One timed run each (the targets are
//! ≤ 30 s per method on 2 cores), printed as JSON lines.
//!
//! Run: `cargo bench -p mor --bench paper_scale` (env `MOR_BENCH_LAYERS` to change the layer count).

use faer::Mat;
use mor::DeepSsm;
use mor::bound::{BoundInput, prepare_bound};
use mor::h2opt::{H2Options, h2_reduce};
use mor::lqo::{LqoOptions, reduce_model_lqo};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

mod common;
use common::{cpu_seconds, normal, s5_layer};

fn main() {
    let layers: usize = std::env::var("MOR_BENCH_LAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (h, n, r, len) = (256, 96, 16, 4096);
    let mut rng = ChaCha8Rng::seed_from_u64(2023);
    let model = DeepSsm {
        layers: (0..layers).map(|_| s5_layer(&mut rng, h, n)).collect(),
        decoder_w: Mat::from_fn(2, h, |_, _| normal(&mut rng) / (h as f64).sqrt()),
        decoder_b: vec![0.0; 2],
        max_len: len,
    };
    println!(
        "{{\"setup\": {{\"layers\": {layers}, \"h\": {h}, \"modes\": {n}, \"r\": {r}, \"bidirectional\": true, \"threads\": {}}}}}",
        rayon::current_num_threads()
    );

    // h2: per-layer gradient reduction, layers in parallel.
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    let opts = H2Options::default();
    let res: Vec<_> = model
        .layers
        .par_iter()
        .map(|l| {
            let t = Instant::now();
            let red = h2_reduce(&l.ssm, r, &opts).expect("h2_reduce");
            let bt = mor::bt::bt(&l.ssm, r)
                .map(|b| b.h2_error)
                .unwrap_or(f64::NAN);
            let modal = mor::modal::modal(&l.ssm, r, mor::modal::ModalOrder::H2)
                .map(|m| m.h2_error)
                .unwrap_or(f64::NAN);
            (red, bt, modal, t.elapsed().as_secs_f64())
        })
        .collect();
    let h2_secs = t0.elapsed().as_secs_f64();
    let h2_cpu = cpu_seconds() - c0;
    let errs: Vec<String> = res
        .iter()
        .map(|x| format!("{:.4e}", x.0.h2_error))
        .collect();
    let bts: Vec<String> = res.iter().map(|x| format!("{:.4e}", x.1)).collect();
    let modals: Vec<String> = res.iter().map(|x| format!("{:.4e}", x.2)).collect();
    let per: Vec<String> = res.iter().map(|x| format!("{:.2}", x.3)).collect();
    println!(
        "{{\"method\": \"h2\", \"seconds\": {h2_secs:.2}, \"cpu_seconds\": {h2_cpu:.2}, \"per_layer_seconds_incl_bt_check\": [{}], \"h2_errors\": [{}], \"bt_errors\": [{}], \"modal_errors\": [{}]}}",
        per.join(", "),
        errs.join(", "),
        bts.join(", "),
        modals.join(", ")
    );

    // lqo-h2: bound-weighted allocation of r·layers modes + per-layer LQO gradient reduction.
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    let lqo = reduce_model_lqo(&model, r * layers, &LqoOptions::default()).expect("lqo");
    let lqo_secs = t0.elapsed().as_secs_f64();
    let lqo_cpu = cpu_seconds() - c0;
    println!(
        "{{\"method\": \"lqo-h2\", \"seconds\": {lqo_secs:.2}, \"cpu_seconds\": {lqo_cpu:.2}, \"kept_modes\": {:?}, \"lqo_h2_errors\": {:?}, \"stable\": {}}}",
        lqo.kept_modes,
        lqo.layer_h2_errors
            .iter()
            .map(|e| format!("{e:.4e}"))
            .collect::<Vec<_>>(),
        lqo.stable
    );

    // The bound's weight-only preparation at the full length, then one evaluation.
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    let prep = prepare_bound(&model, Some(&lqo.model), len).expect("bound");
    let prep_secs = t0.elapsed().as_secs_f64();
    let prep_cpu = cpu_seconds() - c0;
    let rep = prep
        .evaluate(&BoundInput::worst_case(len, h, 1.0))
        .expect("evaluate");
    println!(
        "{{\"bound_prepare_seconds\": {prep_secs:.2}, \"bound_prepare_cpu_seconds\": {prep_cpu:.2}, \"bound_worst_case_unit_input\": {:.4e}, \"layer_weights\": {:?}}}",
        rep.bound,
        rep.layer_weights
            .iter()
            .map(|e| format!("{e:.3e}"))
            .collect::<Vec<_>>()
    );

    // Certified H∞ gain of the first layer (kernel + D) against the ℓ1 kernel gain at length 4096.
    let blk = &model.layers[0].ssm;
    let t0 = Instant::now();
    let l1 = mor::bound::kernel_l1_norm(blk, len);
    let l1_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let hb = mor::hinf::hinf_upper_bound(blk, 0.02, 4000);
    println!(
        "{{\"hinf_upper\": {:.4}, \"hinf_lower\": {:.4}, \"hinf_evaluations\": {}, \"hinf_seconds\": {:.2}, \"l1_kernel_gain\": {l1:.4}, \"l1_seconds\": {l1_secs:.3}}}",
        hb.upper,
        hb.lower,
        hb.evaluations,
        t0.elapsed().as_secs_f64()
    );
}
