//! LQO view of the gates and the `lqo-h2` model reduction.

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas

use faer::{Mat, c64};
use mor::lqo::{LqoOptions, lqo_h2_error, lqo_terms, reduce_model_lqo};
use mor::{DeepSsm, DiagBlock, Gate, Layer, Norm, gram, modes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cz(rng: &mut ChaCha8Rng) -> c64 {
    c64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5)
}

fn layer(rng: &mut ChaCha8Rng, h: usize, n: usize, gate: usize, bidir: bool) -> Layer {
    let ssm = DiagBlock {
        lambda: (0..n)
            .map(|_| c64::from_polar(0.3 + 0.65 * rng.random::<f64>(), 3.0 * rng.random::<f64>()))
            .collect(),
        b: Mat::from_fn(n, h, |_, _| cz(rng)),
        c: Mat::from_fn(h, n, |_, _| cz(rng)),
        c_rev: bidir.then(|| Mat::from_fn(h, n, |_, _| cz(rng))),
        d: Some((0..h).map(|_| rng.random::<f64>()).collect()),
        linear: None,
        quadratic: vec![],
    };
    let w = Mat::from_fn(h, h, |_, _| rng.random::<f64>() - 0.5);
    let b: Vec<f64> = (0..h).map(|_| rng.random::<f64>() - 0.5).collect();
    let gate = match gate {
        0 => Gate::Quadratic { w, b },
        1 => Gate::HalfGlu2 { w, b },
        _ => Gate::Identity,
    };
    Layer {
        norm: Norm::Identity,
        ssm,
        gate,
    }
}

fn lqo_out(e: &Mat<f64>, ns: &[Mat<f64>], y: &[f64]) -> Vec<f64> {
    let h = y.len();
    let ym = Mat::from_fn(h, 1, |i, _| y[i]);
    let ey = e * &ym;
    (0..h)
        .map(|i| {
            let q = if ns.is_empty() {
                0.0
            } else {
                (ym.transpose() * &ns[i] * &ym)[(0, 0)]
            };
            ey[(i, 0)] + q
        })
        .collect()
}

fn gate_out(g: &Gate, y: &[f64]) -> Vec<f64> {
    let h = y.len();
    let gelu = |x: f64| {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    };
    match g {
        Gate::Quadratic { w, b } => (0..h)
            .map(|i| y[i] * ((0..h).map(|j| w[(i, j)] * y[j]).sum::<f64>() + b[i]))
            .collect(),
        Gate::HalfGlu2 { w, b } => (0..h)
            .map(|i| {
                let a = (0..h).map(|j| w[(i, j)] * gelu(y[j])).sum::<f64>() + b[i];
                y[i] / (1.0 + (-a).exp())
            })
            .collect(),
        Gate::Identity => y.to_vec(),
    }
}

#[test]
fn quadratic_gate_is_exactly_lqo() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let l = layer(&mut rng, 5, 2, 0, false);
    let (e, ns) = lqo_terms(&l);
    assert_eq!(ns.len(), 5);
    for n in &ns {
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(n[(i, j)], n[(j, i)], "N_i must be symmetric");
            }
        }
    }
    for _ in 0..20 {
        let y: Vec<f64> = (0..5).map(|_| 4.0 * (rng.random::<f64>() - 0.5)).collect();
        let a = lqo_out(&e, &ns, &y);
        let b = gate_out(&l.gate, &y);
        for i in 0..5 {
            assert!(
                (a[i] - b[i]).abs() <= 1e-13 * (1.0 + b[i].abs()),
                "{} vs {}",
                a[i],
                b[i]
            );
        }
    }
}

#[test]
fn half_glu2_expansion_is_second_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let l = layer(&mut rng, 4, 2, 1, false);
    let (e, ns) = lqo_terms(&l);
    let y: Vec<f64> = (0..4).map(|_| rng.random::<f64>() - 0.5).collect();
    let resid = |t: f64| {
        let yt: Vec<f64> = y.iter().map(|v| t * v).collect();
        let a = lqo_out(&e, &ns, &yt);
        let b = gate_out(&l.gate, &yt);
        a.iter()
            .zip(&b)
            .map(|(x, z)| (x - z).abs())
            .fold(0.0f64, f64::max)
    };
    // Remainder O(t³): halving t divides it by ≈ 8.
    let (r1, r2) = (resid(0.02), resid(0.01));
    let ratio = r1 / r2;
    assert!(
        (6.5..9.5).contains(&ratio),
        "remainder ratio {ratio} (r1 {r1:e}, r2 {r2:e})"
    );
    // The identity gate is the plain linear system.
    let li = layer(&mut rng, 3, 2, 2, false);
    let (ei, ni) = lqo_terms(&li);
    assert!(ni.is_empty());
    assert_eq!(ei, Mat::<f64>::identity(3, 3));
}

#[test]
fn structured_lqo_error_matches_dense_gram() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    for gate in 0..3 {
        for &bidir in &[false, true] {
            let l = layer(&mut rng, 4, 5, gate, bidir);
            let (e, ns) = lqo_terms(&l);
            let full = DiagBlock {
                linear: Some(e.clone()),
                quadratic: ns.clone(),
                ..l.ssm.clone()
            };
            let red = modes::select_modes(&full, &[0, 2]);
            let want = gram::h2_error(&full, &red, None).unwrap();
            let got = lqo_h2_error(&l, &modes::select_modes(&l.ssm, &[0, 2])).unwrap();
            let scale = gram::h2_norm(&full, None);
            assert!(
                (got - want).abs() <= 1e-6 * scale,
                "gate {gate} bidir {bidir}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn lqo_model_reduction_respects_budget_and_improves_on_modal() {
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let h = 4;
    let layers = (0..3).map(|i| layer(&mut rng, h, 6, i % 2, true)).collect();
    let model = DeepSsm {
        layers,
        decoder_w: Mat::from_fn(2, h, |_, _| rng.random::<f64>() - 0.5),
        decoder_b: vec![0.0, 0.0],
        max_len: 32,
    };
    let opts = LqoOptions::default();
    let res = reduce_model_lqo(&model, 7, &opts).unwrap();
    assert_eq!(res.kept_modes.iter().sum::<usize>(), 7);
    assert!(res.kept_modes.iter().all(|&k| k >= 1));
    assert!(res.stable && res.max_abs_lambda < 1.0);
    let modal = reduce_model_lqo(
        &model,
        7,
        &LqoOptions {
            refine: false,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(modal.kept_modes, res.kept_modes);
    for l in 0..3 {
        assert!(res.layer_h2_errors[l] <= modal.layer_h2_errors[l] * (1.0 + 1e-9) + 1e-12);
        let direct = lqo_h2_error(&model.layers[l], &res.model.layers[l].ssm).unwrap();
        assert!((direct - res.layer_h2_errors[l]).abs() <= 1e-9 * (1.0 + direct));
    }
    println!(
        "kept {:?}, lqo errors {:?} (modal {:?})",
        res.kept_modes, res.layer_h2_errors, modal.layer_h2_errors
    );
    assert!(reduce_model_lqo(&model, 2, &opts).is_err());
}
