//! Export to `mor` and import of (reduced) discrete systems.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use faer::{Mat, c64};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model, to_mor, with_reduced};

fn cfg(gate: GateKind, norm: NormKind) -> ModelConfig {
    ModelConfig {
        vocab_size: 257,
        n_classes: 2,
        d_model: 12,
        n_layers: 3,
        ssm_size: 16,
        blocks: 2,
        bidirectional: true,
        norm,
        gate,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

fn model(c: &ModelConfig) -> (VarMap, S5Model) {
    let vm = VarMap::new();
    let m = S5Model::new_with_seed(c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), 4)
        .unwrap();
    (vm, m)
}

fn batch() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (b, l) = (2, 80);
    let lens = [80u32, 45];
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

fn logits(m: &S5Model) -> Vec<f32> {
    let (t, l) = batch();
    m.forward(&t, &l, Mode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `m` with the columns not in `keep` set to zero.
fn zero_cols(m: &Mat<c64>, keep: &[usize]) -> Mat<c64> {
    Mat::from_fn(m.nrows(), m.ncols(), |h, j| {
        if keep.contains(&j) {
            m[(h, j)]
        } else {
            c64::new(0.0, 0.0)
        }
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn export_then_import_of_the_full_system_gives_the_same_logits() {
    for (gate, norm) in [
        (GateKind::HalfGlu2, NormKind::Batch),
        (GateKind::Quadratic, NormKind::Layer),
    ] {
        let c = cfg(gate, norm);
        let (_vm, m) = model(&c);
        // Non-trivial running statistics.
        let (t, l) = batch();
        m.forward(&t, &l, Mode::Train { seed: 1 }).unwrap();
        let deep = to_mor(&m, 4096).unwrap();
        assert_eq!(deep.layers.len(), 3);
        assert_eq!(deep.max_len, 4096);
        let blk = &deep.layers[0].ssm;
        assert_eq!(
            (blk.n_modes(), blk.n_inputs(), blk.n_outputs()),
            (8, 12, 12)
        );
        assert!(blk.is_bidirectional() && blk.max_abs_lambda() < 1.0);
        let back = with_reduced(&m, &deep).unwrap();
        let d = max_diff(&logits(&m), &logits(&back));
        println!("{gate:?}/{norm:?}: round trip max logit diff {d:e}");
        assert!(d < 1e-5, "round trip differs by {d}");
        // Exporting the imported (discrete) model gives the same system back.
        let again = to_mor(&back, 4096).unwrap();
        for (a, b) in deep.layers.iter().zip(&again.layers) {
            for (x, y) in a.ssm.lambda.iter().zip(&b.ssm.lambda) {
                assert!((x - y).norm() < 1e-7);
            }
        }
    }
}

/// The exported eval-mode BatchNorm scale/shift reproduce the model's normalisation: check
/// `scale`/`shift` against the running statistics read from the VarMap.
#[test]
fn exported_batchnorm_is_the_running_statistics_affine_map() {
    let c = cfg(GateKind::HalfGlu2, NormKind::Batch);
    let (vm, m) = model(&c);
    let (t, l) = batch();
    m.forward(&t, &l, Mode::Train { seed: 2 }).unwrap();
    let deep = to_mor(&m, 100).unwrap();
    let data = vm.data().lock().unwrap();
    let rm: Vec<f32> = data["layers.1.norm.running_mean"]
        .as_tensor()
        .to_vec1()
        .unwrap();
    let rv: Vec<f32> = data["layers.1.norm.running_var"]
        .as_tensor()
        .to_vec1()
        .unwrap();
    let mor::Norm::Batch { scale, shift } = &deep.layers[1].norm else {
        panic!("expected BatchNorm")
    };
    assert!(rm.iter().any(|&x| x != 0.0));
    for k in 0..c.d_model {
        // γ = 1, β = 0 at initialisation.
        let s = 1.0 / (rv[k] as f64 + 1e-5).sqrt();
        assert!((scale[k] - s).abs() < 1e-5 * s);
        assert!((shift[k] + s * rm[k] as f64).abs() < 1e-5);
    }
}

/// Dropping modes by hand: the reduced model (stored discrete tensors, different order per
/// layer) equals the full discrete model with the dropped modes' read-out columns zeroed, and
/// its parameter count is exactly the full count minus the removed stored tensors.
#[test]
fn reduced_model_by_dropping_modes_runs_and_counts_exactly() {
    let c = cfg(GateKind::HalfGlu2, NormKind::Batch);
    let (_vm, m) = model(&c);
    let (t, l) = batch();
    m.forward(&t, &l, Mode::Train { seed: 3 }).unwrap();
    let full = to_mor(&m, 80).unwrap();
    let keep: [Vec<usize>; 3] = [vec![0, 2, 5], (0..8).collect(), vec![7]];
    let mut reduced = full.clone();
    let mut zeroed = full.clone();
    for (i, k) in keep.iter().enumerate() {
        let b = &full.layers[i].ssm;
        let r = k.len();
        let rb = &mut reduced.layers[i].ssm;
        rb.lambda = k.iter().map(|&j| b.lambda[j]).collect();
        rb.b = Mat::from_fn(r, 12, |a, h| b.b[(k[a], h)]);
        rb.c = Mat::from_fn(12, r, |h, a| b.c[(h, k[a])]);
        rb.c_rev = b
            .c_rev
            .as_ref()
            .map(|cr| Mat::from_fn(12, r, |h, a| cr[(h, k[a])]));
        let zb = &mut zeroed.layers[i].ssm;
        zb.c = zero_cols(&b.c, k);
        zb.c_rev = b.c_rev.as_ref().map(|m| zero_cols(m, k));
    }
    let red = with_reduced(&m, &reduced).unwrap();
    let zer = with_reduced(&m, &zeroed).unwrap();
    let d = max_diff(&logits(&red), &logits(&zer));
    println!("reduced vs zeroed-columns max logit diff {d:e}");
    assert!(d < 1e-5, "reduced differs by {d}");
    let full_logits = logits(&m);
    assert!(max_diff(&logits(&red), &full_logits) > 0.0);
    // Counts: full continuous layer n(1+1+2H+1) + 2·H·n·2 + H; reduced layer r(2+2H) + 2·H·r·2 + H.
    let h = 12;
    let full_count = m.n_trainable_params();
    let full_ssm = 3 * (8 * (3 + 2 * h) + 2 * h * 8 * 2 + h);
    let red_ssm: usize = keep
        .iter()
        .map(|k| k.len() * (2 + 2 * h) + 2 * h * k.len() * 2 + h)
        .sum();
    assert_eq!(red.n_trainable_params(), full_count - full_ssm + red_ssm);
    let names: Vec<String> = red.named_trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"layers.0.seq.lambda_bar".to_string()));
    assert!(names.contains(&"layers.2.seq.b_bar".to_string()));
    assert!(!names.iter().any(|n| n.ends_with("Lambda_re")));
}

#[test]
fn mismatched_reduced_models_are_rejected() {
    let c = cfg(GateKind::HalfGlu2, NormKind::Batch);
    let (_vm, m) = model(&c);
    let mut deep = to_mor(&m, 80).unwrap();
    deep.layers.pop();
    assert!(with_reduced(&m, &deep).is_err());
    let mut deep = to_mor(&m, 80).unwrap();
    deep.layers[0].ssm.c_rev = None;
    assert!(with_reduced(&m, &deep).is_err());
    let mut deep = to_mor(&m, 80).unwrap();
    deep.layers[1].ssm.quadratic.push(Mat::zeros(12, 12));
    assert!(with_reduced(&m, &deep).is_err());
}
