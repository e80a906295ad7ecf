//! The gate Jacobian bounds on per-position boxes (`mor::gate_box`) hold against brute force:
//! finite-difference Jacobians at random and hill-climbed points of the box, and secants
//! between pairs of points.

use faer::Mat;
use mor::Gate;
use mor::bound::GELU_TANH_DERIV_MAX;
use mor::gate_box::{GELU_TANH_DERIV2_MAX, GateBox};
use mor::model::{gelu_tanh, gelu_tanh_deriv};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_gate(kind: &str, h: usize, scale: f64, seed: u64) -> Gate {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = Mat::from_fn(h, h, |_, _| scale * rng.random_range(-1.0..1.0));
    let b = (0..h).map(|_| rng.random_range(-1.0..1.0)).collect();
    match kind {
        "half_glu2" => Gate::HalfGlu2 { w, b },
        _ => Gate::Quadratic { w, b },
    }
}

fn out(gate: &Gate, v: &[f64]) -> Vec<f64> {
    let m = Mat::from_fn(1, v.len(), |_, j| v[j]);
    let o = gate.output(m.as_ref());
    (0..v.len()).map(|j| o[(0, j)]).collect()
}

/// `‖J(v)‖₂` from central differences of `Gate::output` (an independent code path).
fn jacobian_norm(gate: &Gate, v: &[f64]) -> f64 {
    let (h, step) = (v.len(), 1e-5);
    let mut j = Mat::<f64>::zeros(h, h);
    for col in 0..h {
        let (mut p, mut m) = (v.to_vec(), v.to_vec());
        p[col] += step;
        m[col] -= step;
        let (op, om) = (out(gate, &p), out(gate, &m));
        for row in 0..h {
            j[(row, col)] = (op[row] - om[row]) / (2.0 * step);
        }
    }
    j.singular_values()
        .unwrap()
        .iter()
        .fold(0.0f64, |a, &s| a.max(s))
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn gelu_constants_hold_on_a_fine_grid() {
    // |GELU''| ≤ 0.798 and |GELU'| ≤ 1.13; GELU' changes sign once (unimodal GELU).
    let (mut d2max, mut sign_changes, mut prev) = (0.0f64, 0, true);
    for i in 0..=600_000 {
        let x = -30.0 + 1e-4 * i as f64;
        let d2 = (gelu_tanh_deriv(x + 1e-6) - gelu_tanh_deriv(x - 1e-6)) / 2e-6;
        d2max = d2max.max(d2.abs());
        assert!(gelu_tanh_deriv(x).abs() <= GELU_TANH_DERIV_MAX);
        // Far left, tanh rounds to −1 and the computed derivative to exactly 0: not a sign.
        let neg = gelu_tanh_deriv(x) < 0.0;
        if gelu_tanh_deriv(x) != 0.0 && neg != prev {
            sign_changes += 1;
            prev = neg;
        }
    }
    assert!(d2max <= GELU_TANH_DERIV2_MAX, "max |GELU''| = {d2max}");
    assert!(d2max > 0.79, "max |GELU''| = {d2max} (expected √(2/π))");
    assert_eq!(sign_changes, 1);
    assert!(gelu_tanh(-0.7525) < gelu_tanh(-0.74) && gelu_tanh(-0.7525) < gelu_tanh(-0.76));
}

#[test]
fn bound_holds_at_random_and_hill_climbed_points_of_the_box() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (t, kind) in ["half_glu2", "quadratic"]
        .iter()
        .cycle()
        .take(16)
        .enumerate()
    {
        let h = 3 + t % 4;
        let scale = [0.3, 1.0, 3.0][t % 3];
        let gate = random_gate(kind, h, scale, 100 + t as u64);
        let gb = GateBox::new(&gate).unwrap();
        let y: Vec<f64> = (0..h).map(|_| rng.random_range(-4.0..4.0)).collect();
        for &r in &[0.0, 0.01, 0.1, 0.5, 2.0] {
            let bound = gb.jacobian_bound(&y, r);
            let mut worst = 0.0f64;
            // Random points, corners included.
            for s in 0..200 {
                let v: Vec<f64> = y
                    .iter()
                    .map(|c| match s % 3 {
                        0 => c + r * if rng.random_bool(0.5) { 1.0 } else { -1.0 },
                        _ => c + r * rng.random_range(-1.0..1.0),
                    })
                    .collect();
                worst = worst.max(jacobian_norm(&gate, &v));
            }
            // Coordinate hill climb from the centre, kept inside the box.
            let mut v = y.clone();
            let mut best = jacobian_norm(&gate, &v);
            for _ in 0..8 {
                for c in 0..h {
                    for cand in [y[c] - r, y[c] - r / 2.0, y[c], y[c] + r / 2.0, y[c] + r] {
                        let old = v[c];
                        v[c] = cand;
                        let n = jacobian_norm(&gate, &v);
                        if n > best {
                            best = n;
                        } else {
                            v[c] = old;
                        }
                    }
                }
            }
            worst = worst.max(best);
            assert!(
                worst <= bound * (1.0 + 1e-6) + 1e-6,
                "{kind} h={h} scale={scale} R={r}: ‖J‖ = {worst} > bound {bound}"
            );
            // Not vacuous at the centre: within 4× of the point Jacobian for R = 0.
            if r == 0.0 {
                let at = jacobian_norm(&gate, &y);
                assert!(
                    bound <= 4.0 * at + 1e-9,
                    "{kind} R=0: bound {bound} vs ‖J(y)‖ {at}"
                );
            }
        }
    }
}

#[test]
fn secants_between_points_of_one_box_obey_the_bound() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (t, kind) in ["half_glu2", "quadratic"]
        .iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let h = 5;
        let gate = random_gate(kind, h, 1.0 + t as f64, 300 + t as u64);
        let gb = GateBox::new(&gate).unwrap();
        let y: Vec<f64> = (0..h).map(|_| rng.random_range(-3.0..3.0)).collect();
        for &r in &[0.05, 0.5, 3.0] {
            let bound = gb.jacobian_bound(&y, r);
            for _ in 0..300 {
                let a: Vec<f64> = y
                    .iter()
                    .map(|c| c + r * rng.random_range(-1.0..1.0))
                    .collect();
                let b: Vec<f64> = y
                    .iter()
                    .map(|c| c + r * rng.random_range(-1.0..1.0))
                    .collect();
                let d: Vec<f64> = out(&gate, &a)
                    .iter()
                    .zip(out(&gate, &b))
                    .map(|(p, q)| p - q)
                    .collect();
                let dv: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p - q).collect();
                assert!(norm(&d) <= bound * norm(&dv) * (1.0 + 1e-12) + 1e-12);
            }
        }
    }
}

#[test]
fn bound_grows_with_the_box_and_never_exceeds_the_global_constant() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h = 8;
    let gate = random_gate("half_glu2", h, 2.0, 9);
    let Gate::HalfGlu2 { w, .. } = &gate else {
        unreachable!()
    };
    let wnorm = w
        .singular_values()
        .unwrap()
        .iter()
        .fold(0.0f64, |a, &s| a.max(s));
    let gb = GateBox::new(&gate).unwrap();
    for _ in 0..20 {
        let y: Vec<f64> = (0..h).map(|_| rng.random_range(-5.0..5.0)).collect();
        let ymax = y.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let radii = [0.0, 0.01, 0.1, 1.0, 10.0];
        let ys = Mat::from_fn(1, h, |_, j| y[j]);
        let profile = gb.lipschitz_profile(ys.as_ref(), &radii);
        for (i, &r) in radii.iter().enumerate() {
            assert_eq!(profile[i], gb.jacobian_bound(&y, r));
            if i > 0 {
                assert!(profile[i] >= profile[i - 1], "{profile:?}");
            }
            // The global constant on ‖v‖_∞ ≤ max|y| + R (mor::bound's half_glu2 formula).
            let global = 1.0 + (ymax + r) * wnorm * GELU_TANH_DERIV_MAX / 4.0;
            assert!(
                profile[i] <= global * (1.0 + 1e-8),
                "R={r}: {} > {global}",
                profile[i]
            );
        }
    }
}

#[test]
fn identity_gate_has_unit_bound() {
    let gb = GateBox::new(&Gate::Identity).unwrap();
    assert_eq!(gb.jacobian_bound(&[1.0, -2.0], 5.0), 1.0);
}

#[test]
fn bound_is_exact_for_one_channel_at_the_centre() {
    // h = 1, R = 0: J = σ(a) + y σ'(a) w GELU'(y) with every term ≥ 0 for y, w > 0, so the
    // triangle inequality is an equality and the bound is the Jacobian itself.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..50 {
        let (y, w, b) = (
            rng.random_range(0.1..4.0),
            rng.random_range(0.1..3.0),
            rng.random_range(-2.0..2.0),
        );
        let gate = Gate::HalfGlu2 {
            w: Mat::from_fn(1, 1, |_, _| w),
            b: vec![b],
        };
        let bound = GateBox::new(&gate).unwrap().jacobian_bound(&[y], 0.0);
        let j = jacobian_norm(&gate, &[y]);
        assert!((bound - j).abs() <= 1e-7 * j, "bound {bound} vs |J| {j}");
        let gate = Gate::Quadratic {
            w: Mat::from_fn(1, 1, |_, _| w),
            b: vec![b.abs()],
        };
        let bound = GateBox::new(&gate).unwrap().jacobian_bound(&[y], 0.0);
        let j = jacobian_norm(&gate, &[y]);
        assert!(
            (bound - j).abs() <= 1e-7 * j,
            "quadratic: bound {bound} vs |J| {j}"
        );
    }
}
