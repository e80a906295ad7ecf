//! The output-error bound holds on random small deep models evaluated by a plain f64 forward.

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas

use faer::{Mat, c64};
use mor::bound::{
    BoundInput, GELU_TANH_DERIV_MAX, InjectedError, MeasuredLayer, kernel_l1_norm,
    output_error_bound, prepare_bound,
};
use mor::h2opt::{H2Options, h2_reduce};
use mor::{DeepSsm, DiagBlock, Gate, Layer, Norm, gram, modes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gelu(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Reference forward: `[L, h]` embedded input → logits.
fn forward(model: &DeepSsm, z0: &[Vec<f64>]) -> Vec<f64> {
    forward_measured(model, z0).0
}

/// Reference forward that also measures, per layer, `‖u‖_2` of the SSM input and `‖y‖_∞` of the
/// SSM output.
fn forward_measured(model: &DeepSsm, z0: &[Vec<f64>]) -> (Vec<f64>, Vec<MeasuredLayer>) {
    let (logits, measured, _) = forward_recorded(model, z0);
    (logits, measured)
}

/// `y = 𝒮 u` of one block by explicit forward and reverse recursions, `[L, h]`.
fn apply_ssm(s: &DiagBlock, u: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let l = u.len();
    let h = s.n_outputs();
    let n = s.n_modes();
    let mut y = vec![vec![0.0; h]; l];
    let bu = |k: usize, i: usize| (0..u[k].len()).map(|c| s.b[(i, c)] * u[k][c]).sum::<c64>();
    let mut x = vec![c64::new(0.0, 0.0); n];
    for k in 0..l {
        for i in 0..n {
            x[i] = s.lambda[i] * x[i] + bu(k, i);
        }
        for o in 0..h {
            y[k][o] += (0..n).map(|i| 2.0 * (s.c[(o, i)] * x[i]).re).sum::<f64>();
        }
    }
    if let Some(cr) = &s.c_rev {
        let mut x = vec![c64::new(0.0, 0.0); n];
        for k in (0..l).rev() {
            for i in 0..n {
                x[i] = s.lambda[i] * x[i] + bu(k, i);
            }
            for o in 0..h {
                y[k][o] += (0..n).map(|i| 2.0 * (cr[(o, i)] * x[i]).re).sum::<f64>();
            }
        }
    }
    if let Some(d) = &s.d {
        for k in 0..l {
            for c in 0..h {
                y[k][c] += d[c] * u[k][c];
            }
        }
    }
    y
}

/// The errors `(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ` of the reduced SSMs on the full model's recorded inputs.
fn injected_errors(
    full: &DeepSsm,
    red: &DeepSsm,
    inputs: &[Vec<Vec<f64>>],
) -> Vec<Option<InjectedError>> {
    full.layers
        .iter()
        .zip(&red.layers)
        .zip(inputs)
        .map(|((a, b), u)| {
            let (ya, yb) = (apply_ssm(&a.ssm, u), apply_ssm(&b.ssm, u));
            let d: Vec<f64> = ya
                .iter()
                .flatten()
                .zip(yb.iter().flatten())
                .map(|(x, y)| x - y)
                .collect();
            Some(InjectedError {
                l2: d.iter().map(|x| x * x).sum::<f64>().sqrt(),
                peak: d.iter().fold(0.0f64, |a, x| a.max(x.abs())),
            })
        })
        .collect()
}

/// [`forward_measured`] plus every layer's SSM input `u_ℓ` (`[n_layers][L][h]`).
fn forward_recorded(
    model: &DeepSsm,
    z0: &[Vec<f64>],
) -> (Vec<f64>, Vec<MeasuredLayer>, Vec<Vec<Vec<f64>>>) {
    let l = z0.len();
    let mut z: Vec<Vec<f64>> = z0.to_vec();
    let mut measured = Vec::new();
    let mut inputs = Vec::new();
    for layer in &model.layers {
        let h = z[0].len();
        let u: Vec<Vec<f64>> = z
            .iter()
            .map(|zk| match &layer.norm {
                Norm::Batch { scale, shift } => {
                    (0..h).map(|c| scale[c] * zk[c] + shift[c]).collect()
                }
                Norm::Identity => zk.clone(),
                Norm::Layer { gamma, beta, eps } => {
                    let m = zk.iter().sum::<f64>() / h as f64;
                    let v = zk.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / h as f64;
                    (0..h)
                        .map(|c| gamma[c] * (zk[c] - m) / (v + eps).sqrt() + beta[c])
                        .collect()
                }
            })
            .collect();
        let y = apply_ssm(&layer.ssm, &u);
        inputs.push(u.clone());
        measured.push(MeasuredLayer {
            u_l2: u.iter().flatten().map(|x| x * x).sum::<f64>().sqrt(),
            y_peak: y.iter().flatten().fold(0.0f64, |a, x| a.max(x.abs())),
        });
        for k in 0..l {
            let yk = &y[k];
            let out: Vec<f64> = match &layer.gate {
                Gate::Identity => yk.clone(),
                Gate::HalfGlu2 { w, b } => {
                    let g: Vec<f64> = yk.iter().map(|&v| gelu(v)).collect();
                    (0..h)
                        .map(|c| {
                            yk[c] * sigmoid((0..h).map(|j| w[(c, j)] * g[j]).sum::<f64>() + b[c])
                        })
                        .collect()
                }
                Gate::Quadratic { w, b } => (0..h)
                    .map(|c| yk[c] * ((0..h).map(|j| w[(c, j)] * yk[j]).sum::<f64>() + b[c]))
                    .collect(),
            };
            for c in 0..h {
                z[k][c] += out[c];
            }
        }
    }
    let h = z[0].len();
    let pooled: Vec<f64> = (0..h)
        .map(|c| z.iter().map(|zk| zk[c]).sum::<f64>() / l as f64)
        .collect();
    let logits = (0..model.decoder_w.nrows())
        .map(|o| {
            (0..h)
                .map(|c| model.decoder_w[(o, c)] * pooled[c])
                .sum::<f64>()
                + model.decoder_b[o]
        })
        .collect();
    (logits, measured, inputs)
}

fn cz(rng: &mut ChaCha8Rng, s: f64) -> c64 {
    c64::new(
        s * (rng.random::<f64>() - 0.5),
        s * (rng.random::<f64>() - 0.5),
    )
}

fn random_model(
    rng: &mut ChaCha8Rng,
    layers: usize,
    h: usize,
    n: usize,
    gate_kind: usize,
    norm_kind: usize,
) -> DeepSsm {
    let layers = (0..layers)
        .map(|_| {
            let lambda = (0..n)
                .map(|_| {
                    c64::from_polar(0.5 + 0.45 * rng.random::<f64>(), 3.0 * rng.random::<f64>())
                })
                .collect();
            let ssm = DiagBlock {
                lambda,
                b: Mat::from_fn(n, h, |_, _| cz(rng, 1.0)),
                c: Mat::from_fn(h, n, |_, _| cz(rng, 0.5)),
                c_rev: Some(Mat::from_fn(h, n, |_, _| cz(rng, 0.5))),
                d: Some((0..h).map(|_| rng.random::<f64>() - 0.5).collect()),
                linear: None,
                quadratic: vec![],
            };
            let w = Mat::from_fn(h, h, |_, _| rng.random::<f64>() - 0.5);
            let b: Vec<f64> = (0..h).map(|_| rng.random::<f64>() - 0.5).collect();
            let gate = match gate_kind {
                0 => Gate::HalfGlu2 { w, b },
                1 => Gate::Quadratic {
                    w: Mat::from_fn(h, h, |i, j| 0.2 * w[(i, j)]),
                    b,
                },
                _ => Gate::Identity,
            };
            let norm = match norm_kind {
                0 => Norm::Batch {
                    scale: (0..h).map(|_| 0.5 + rng.random::<f64>()).collect(),
                    shift: (0..h).map(|_| 0.2 * (rng.random::<f64>() - 0.5)).collect(),
                },
                1 => Norm::Layer {
                    gamma: (0..h).map(|_| 0.5 + rng.random::<f64>()).collect(),
                    beta: (0..h).map(|_| 0.2 * (rng.random::<f64>() - 0.5)).collect(),
                    eps: 1e-5,
                },
                _ => Norm::Identity,
            };
            Layer { norm, ssm, gate }
        })
        .collect();
    DeepSsm {
        layers,
        decoder_w: Mat::from_fn(2, h, |_, _| rng.random::<f64>() - 0.5),
        decoder_b: vec![0.1, -0.1],
        max_len: 24,
    }
}

fn reduce_model(full: &DeepSsm, r: usize, optimise: bool) -> DeepSsm {
    let mut red = full.clone();
    for layer in &mut red.layers {
        let b = if optimise {
            h2_reduce(
                &layer.ssm,
                r,
                &H2Options {
                    max_iter: 60,
                    ..Default::default()
                },
            )
            .unwrap()
            .block
        } else {
            let keep: Vec<usize> = (0..r).collect();
            modes::select_modes(&layer.ssm, &keep)
        };
        layer.ssm = b;
    }
    red
}

#[test]
fn gelu_tanh_derivative_bound() {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let mut worst = 0.0f64;
    for i in -400_000..=400_000 {
        let x = i as f64 * 1e-4;
        let t = (k * (x + 0.044715 * x * x * x)).tanh();
        let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
        worst = worst.max(d.abs());
    }
    assert!(
        worst <= GELU_TANH_DERIV_MAX && worst > 1.12,
        "max |GELU'| = {worst}"
    );
}

#[test]
fn kernel_l1_norm_bounds_direct_sum() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let m = random_model(&mut rng, 1, 3, 4, 2, 2);
    let blk = &m.layers[0].ssm;
    for t in [1usize, 2, 9, 30] {
        let direct: f64 = (-(t as i64) + 1..t as i64)
            .map(|j| {
                let g = gram::kernel(blk, j);
                let mut s = 0.0;
                for c in 0..g.ncols() {
                    for r in 0..g.nrows() {
                        s += g[(r, c)] * g[(r, c)];
                    }
                }
                s.sqrt()
            })
            .sum();
        let k = kernel_l1_norm(blk, t);
        assert!(
            k >= direct && k <= direct * (1.0 + 1e-6) + 1e-12,
            "T={t}: {k} vs {direct}"
        );
    }
}

#[test]
fn bound_holds_on_random_models_and_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut ratios = Vec::new();
    let mut tightening = Vec::new();
    let mut recorded = Vec::new();
    let mut cases = 0;
    for (mi, &(gate_kind, norm_kind, nl)) in [
        (0, 0, 2),
        (0, 0, 3),
        (1, 0, 2),
        (2, 2, 3),
        (0, 1, 2),
        (1, 2, 3),
    ]
    .iter()
    .enumerate()
    {
        let h = 4;
        let full = random_model(&mut rng, nl, h, 3, gate_kind, norm_kind);
        let red = reduce_model(&full, 2, mi % 2 == 0);
        let prep = prepare_bound(&full, Some(&red), full.max_len).unwrap();
        let mut model_ratios = Vec::new();
        for _ in 0..25 {
            let l = 1 + rng.random_range(0..full.max_len);
            let amp = 0.2 + rng.random::<f64>();
            let z0: Vec<Vec<f64>> = (0..l)
                .map(|_| {
                    (0..h)
                        .map(|_| amp * (2.0 * rng.random::<f64>() - 1.0))
                        .collect()
                })
                .collect();
            let l2 = z0.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
            let linf = z0.iter().flatten().fold(0.0f64, |a, x| a.max(x.abs()));
            let input = BoundInput { len: l, l2, linf };
            let (a, m, inputs) = forward_recorded(&full, &z0);
            let b = forward(&red, &z0);
            let meas = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt();
            let rep = prep.evaluate(&input).unwrap();
            assert!(
                meas <= rep.bound,
                "bound violated: measured {meas} > bound {} (model {mi}, L={l})",
                rep.bound
            );
            // The one-shot form (sums over the input's own length) is tighter but still holds.
            let one = output_error_bound(&full, &red, &input).unwrap();
            assert!(meas <= one.bound && one.bound <= rep.bound * (1.0 + 1e-12));
            // The a-posteriori form from the full model's measured activations holds too.
            let post = prep.evaluate_measured(&input, &m).unwrap();
            assert!(
                meas <= post.bound,
                "measured-activation bound violated: {meas} > {} (model {mi}, L={l})",
                post.bound
            );
            assert!(post.bound <= rep.bound * (1.0 + 1e-12));
            // With the reduced layers' errors on the recorded inputs: holds, and never looser.
            let inj = injected_errors(&full, &red, &inputs);
            let (rec, factors) = prep.evaluate_recorded(&input, &m, &inj, &[]).unwrap();
            // Boxes from both models' measured peaks (the reduced model run too): still holds.
            let (_, mr) = forward_measured(&red, &z0);
            let peaks: Vec<f64> = mr.iter().map(|x| x.y_peak).collect();
            let (both, _) = prep.evaluate_recorded(&input, &m, &inj, &peaks).unwrap();
            assert!(meas <= both.bound && both.bound <= rec.bound * (1.0 + 1e-12));
            assert!(
                meas <= rec.bound && rec.bound <= post.bound * (1.0 + 1e-12),
                "recorded-error bound: measured {meas}, recorded {}, measured-only {} (model {mi}, L={l})",
                rec.bound,
                post.bound
            );
            assert_eq!(factors.len(), nl);
            recorded.push(rec.bound / post.bound);
            tightening.push(post.bound / rep.bound);
            if meas > 0.0 {
                ratios.push(one.bound / meas);
                model_ratios.push(one.bound / meas);
            }
            cases += 1;
        }
        model_ratios.sort_by(f64::total_cmp);
        println!(
            "model {mi} (gate {gate_kind}, norm {norm_kind}, {nl} layers): median bound/measured {:.3e}",
            model_ratios[model_ratios.len() / 2]
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "bound/measured over {cases} inputs: min {:.3e}, median {:.3e}, max {:.3e}",
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
    tightening.sort_by(f64::total_cmp);
    println!(
        "measured-activation bound / a-priori bound: min {:.3e}, median {:.3e}, max {:.3e}",
        tightening[0],
        tightening[tightening.len() / 2],
        tightening[tightening.len() - 1]
    );
    // Measured activations replace worst-case peak propagation: strictly tighter on most inputs.
    assert!(tightening[tightening.len() / 2] < 0.9);
    recorded.sort_by(f64::total_cmp);
    println!(
        "recorded-error bound / measured-activation bound: min {:.3e}, median {:.3e}, max {:.3e}",
        recorded[0],
        recorded[recorded.len() / 2],
        recorded[recorded.len() - 1]
    );
    assert!(recorded[recorded.len() / 2] < 1.0);
}

/// Squared logit error of `red` against `full` on `z0`.
fn logit_error(full: &DeepSsm, red: &DeepSsm, z0: &[Vec<f64>]) -> f64 {
    let (a, b) = (forward(full, z0), forward(red, z0));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Adversarial inputs: a random-restart hill climb on the embedded input maximises the measured
/// logit error (entries kept in [-2, 2]); every input it visits must satisfy all forms of the
/// bound.
#[test]
fn bound_holds_on_error_maximising_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    for (mi, &(gate_kind, norm_kind, nl)) in [(0, 0, 2), (1, 0, 2), (0, 2, 3)].iter().enumerate() {
        let h = 3;
        let full = random_model(&mut rng, nl, h, 3, gate_kind, norm_kind);
        let red = reduce_model(&full, 1, false);
        let l = 8;
        let prep = prepare_bound(&full, Some(&red), l).unwrap();
        let mut z: Vec<Vec<f64>> = (0..l)
            .map(|_| (0..h).map(|_| 2.0 * rng.random::<f64>() - 1.0).collect())
            .collect();
        let mut best = logit_error(&full, &red, &z);
        let start = best;
        let mut worst_ratio = f64::INFINITY;
        for step in 0..300 {
            let mut cand = z.clone();
            let scale = if step < 150 { 0.5 } else { 0.1 };
            for row in cand.iter_mut() {
                for x in row.iter_mut() {
                    *x = (*x + scale * (2.0 * rng.random::<f64>() - 1.0)).clamp(-2.0, 2.0);
                }
            }
            let err = logit_error(&full, &red, &cand);
            let l2 = cand.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
            let linf = cand.iter().flatten().fold(0.0f64, |a, x| a.max(x.abs()));
            let input = BoundInput { len: l, l2, linf };
            let (_, m, inputs) = forward_recorded(&full, &cand);
            let inj = injected_errors(&full, &red, &inputs);
            let (rec, _) = prep.evaluate_recorded(&input, &m, &inj, &[]).unwrap();
            let (_, mr) = forward_measured(&red, &cand);
            let peaks: Vec<f64> = mr.iter().map(|x| x.y_peak).collect();
            let (both, _) = prep.evaluate_recorded(&input, &m, &inj, &peaks).unwrap();
            let post = prep.evaluate_measured(&input, &m).unwrap();
            let pri = prep.evaluate(&input).unwrap();
            for (what, b) in [
                ("both trajectories", both.bound),
                ("recorded", rec.bound),
                ("measured", post.bound),
                ("a-priori", pri.bound),
            ] {
                assert!(
                    err <= b,
                    "{what} bound {b} < error {err} (model {mi}, step {step})"
                );
            }
            worst_ratio = worst_ratio.min(rec.bound / err);
            if err > best {
                best = err;
                z = cand;
            }
        }
        println!(
            "model {mi}: hill climb raised the error {start:.3e} -> {best:.3e}; tightest recorded bound/error {worst_ratio:.3e}"
        );
        assert!(best > start, "the search must find a worse input");
    }
}

/// Merging the identical modes of a modal truncation leaves the error kernel unchanged and
/// removes the cancelled modes.
#[test]
fn merged_difference_block_has_the_same_kernel() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let full = random_model(&mut rng, 1, 3, 5, 2, 2);
    let a = &full.layers[0].ssm;
    let mut red = modes::select_modes(a, &[0, 2, 3]);
    // A refitted read-out on one kept mode: merged, not cancelled.
    red.c[(1, 1)] += c64::new(0.3, -0.1);
    let plain = gram::difference_block(a, &red);
    let merged = gram::difference_block_merged(a, &red);
    assert_eq!(plain.n_modes(), 8);
    assert_eq!(
        merged.n_modes(),
        3,
        "modes 1, 4 dropped by the truncation and mode 2 (refitted)"
    );
    for j in -6i64..=6 {
        let (g1, g2) = (gram::kernel(&plain, j), gram::kernel(&merged, j));
        for r in 0..3 {
            for c in 0..3 {
                assert!((g1[(r, c)] - g2[(r, c)]).abs() < 1e-12, "lag {j}");
            }
        }
    }
    // An unrelated reduction (different eigenvalues) merges nothing.
    let mut other = red.clone();
    for l in other.lambda.iter_mut() {
        *l *= 0.9;
    }
    assert_eq!(gram::difference_block_merged(a, &other).n_modes(), 8);
}
