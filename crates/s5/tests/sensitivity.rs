//! The first-order logit estimate: its Jacobians against finite differences of real reductions.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use faer::c64;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::sensitivity::first_order_estimate;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model, to_mor, with_reduced};

fn model() -> (VarMap, S5Model) {
    let c = ModelConfig {
        vocab_size: 257,
        n_classes: 2,
        d_model: 8,
        n_layers: 3,
        ssm_size: 12,
        blocks: 2,
        bidirectional: true,
        norm: NormKind::Batch,
        gate: GateKind::HalfGlu2,
        dropout: 0.0,
        dt_min: 0.001,
        dt_max: 0.1,
    };
    let vm = VarMap::new();
    let m = S5Model::new_with_seed(
        &c,
        VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu),
        9,
    )
    .unwrap();
    (vm, m)
}

fn batch() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (b, l) = (3, 40);
    let lens = [40u32, 17, 29];
    let mut t = vec![0u32; b * l];
    for (bi, &n) in lens.iter().enumerate() {
        for k in 0..n as usize {
            t[bi * l + k] = rng.random_range(1..257);
        }
    }
    (
        Tensor::from_vec(t, (b, l), &Device::Cpu).unwrap(),
        Tensor::from_vec(lens.to_vec(), b, &Device::Cpu).unwrap(),
    )
}

/// The model with the read-out `C̃` of `layers` scaled by `1 − t` (a reduction-like change of the
/// SSMs only).
fn perturbed(m: &S5Model, layers: &[usize], t: f64) -> S5Model {
    let mut deep = to_mor(m, 40).unwrap();
    for &li in layers {
        let c = &mut deep.layers[li].ssm.c;
        for j in 0..c.ncols() {
            for i in 0..c.nrows() {
                c[(i, j)] *= c64::new(1.0 - t, 0.0);
            }
        }
    }
    with_reduced(m, &deep).unwrap()
}

fn logits(m: &S5Model, t: &Tensor, l: &Tensor) -> Vec<Vec<f64>> {
    m.forward(t, l, Mode::Eval).unwrap().to_vec2().unwrap()
}

#[test]
fn predicted_change_matches_finite_differences() {
    let (_vm, m) = model();
    let (tok, len) = batch();
    let lin = m.linearise(&tok, &len).unwrap();
    let full = logits(&m, &tok, &len);
    for (a, b) in lin.logits.iter().flatten().zip(full.iter().flatten()) {
        assert!(
            (a - b).abs() < 1e-9,
            "autograd forward {a} vs evaluation {b}"
        );
    }
    // Unchanged model: no error anywhere.
    let same = first_order_estimate(
        &lin,
        &m,
        &with_reduced(&m, &to_mor(&m, 40).unwrap()).unwrap(),
    )
    .unwrap();
    assert!(
        same.iter()
            .all(|e| e.estimate < 1e-10 && e.error_l2.iter().all(|&x| x < 1e-10))
    );
    for layers in [vec![0], vec![1], vec![2], vec![0, 1, 2]] {
        let mut prev_rel = f64::INFINITY;
        for t in [1e-2, 1e-3] {
            let red = perturbed(&m, &layers, t);
            let actual = logits(&red, &tok, &len);
            let est = first_order_estimate(&lin, &m, &red).unwrap();
            let mut worst = 0.0f64;
            for (bi, e) in est.iter().enumerate() {
                let diff: Vec<f64> = full[bi]
                    .iter()
                    .zip(&actual[bi])
                    .map(|(a, b)| a - b)
                    .collect();
                let n = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
                let miss = diff
                    .iter()
                    .zip(&e.change)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt();
                assert!(n > 0.0);
                worst = worst.max(miss / n);
                assert!(e.conservative >= e.estimate * (1.0 - 1e-12));
                for (li, (&l2, &pk)) in e.error_l2.iter().zip(&e.error_peak).enumerate() {
                    assert_eq!(l2 > 0.0, layers.contains(&li), "layer {li} error {l2}");
                    assert!(pk <= l2 + 1e-15);
                }
            }
            println!("layers {layers:?}, t = {t}: relative miss {worst:.3e}");
            // First order: the relative miss shrinks with t (second-order remainder).
            assert!(
                worst < 0.2 * t,
                "layers {layers:?}, t = {t}: relative miss {worst}"
            );
            assert!(
                worst < prev_rel,
                "layers {layers:?}: miss {worst} did not shrink with t"
            );
            prev_rel = worst;
        }
    }
}

#[test]
fn sensitivity_is_the_jacobian_operator_norm() {
    let (_vm, m) = model();
    let (tok, len) = batch();
    let lin = m.linearise(&tok, &len).unwrap();
    // ‖J_ℓ‖₂ ≥ each row norm ‖∂logit_k/∂y_ℓ‖ and ≤ the Frobenius norm of the two rows.
    for (li, per_class) in lin.jacobians.iter().enumerate() {
        let rows: Vec<Vec<f64>> = per_class
            .iter()
            .map(|g| g.sqr().unwrap().sum((1, 2)).unwrap().to_vec1().unwrap())
            .collect();
        for bi in 0..3 {
            let s = lin.sensitivity[bi][li];
            let fro = rows.iter().map(|r| r[bi]).sum::<f64>().sqrt();
            for r in &rows {
                assert!(s >= r[bi].sqrt() * (1.0 - 1e-12));
            }
            assert!(s <= fro * (1.0 + 1e-12) && s > 0.0);
        }
        // Padded positions get no gradient.
        let g: Vec<Vec<Vec<f64>>> = per_class[0].to_vec3().unwrap();
        assert!(g[1][17..].iter().flatten().all(|&x| x == 0.0));
    }
}
