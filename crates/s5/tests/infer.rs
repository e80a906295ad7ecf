//! The fused evaluation kernel (`s5::infer`, behind `S5Model::forward` in `Mode::Eval` and
//! `forward_measured`) against the autograd-op path (`S5Model::forward_ops`) and against the
//! layers applied one by one: every norm, gate and direction, several time blocks, ragged
//! lengths, reduced layers of different orders, f32 and f64.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::norm::Mask;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model, to_mor, with_reduced};

mod tensor_support;
use tensor_support::values;

const H: usize = 12;
/// Longer than two of the kernel's time blocks (128 steps).
const L: usize = 300;
/// Ragged lengths: a full row, block edges, a single step.
const LENGTHS: [u32; 6] = [300, 129, 128, 1, 77, 256];

fn cfg(norm: NormKind, gate: GateKind, bidirectional: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 40,
        n_classes: 3,
        d_model: H,
        n_layers: 3,
        ssm_size: 16,
        blocks: 2,
        bidirectional,
        norm,
        gate,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

fn batch(lengths: &[u32], seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let b = lengths.len();
    let mut toks = vec![0u32; b * L];
    for (bi, &len) in lengths.iter().enumerate() {
        for k in 0..len as usize {
            toks[bi * L + k] = rng.random_range(1..40);
        }
    }
    (
        Tensor::from_vec(toks, (b, L), &Device::Cpu).unwrap(),
        Tensor::from_vec(lengths.to_vec(), b, &Device::Cpu).unwrap(),
    )
}

/// A model with non-trivial BatchNorm running statistics (two training-mode passes).
fn model(c: &ModelConfig, dtype: DType) -> (VarMap, S5Model) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
    let m = S5Model::new_with_seed(c, vb, 11).unwrap();
    for seed in 0..2 {
        let (t, l) = batch(&LENGTHS, 100 + seed);
        m.forward(&t, &l, Mode::Train { seed }).unwrap();
    }
    (vm, m)
}

/// `max |a − b| / max(1, max |b|)`.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn fused_vs_ops(m: &S5Model, lengths: &[u32], seed: u64) -> f64 {
    let (t, l) = batch(lengths, seed);
    let fused = values(&m.forward(&t, &l, Mode::Eval).unwrap());
    let ops = values(&m.forward_ops(&t, &l, Mode::Eval).unwrap());
    assert!(fused.iter().all(|v| v.is_finite()));
    assert!(ops.iter().any(|v| v.abs() > 1e-3), "degenerate logits");
    rel_diff(&fused, &ops)
}

#[test]
fn fused_evaluation_equals_the_op_path_for_every_layer_kind() {
    for (norm, gate, bi) in [
        (NormKind::Batch, GateKind::HalfGlu2, true),
        (NormKind::Layer, GateKind::HalfGlu2, false),
        (NormKind::Batch, GateKind::Quadratic, false),
        (NormKind::Layer, GateKind::Quadratic, true),
    ] {
        let c = cfg(norm, gate, bi);
        let (_vm, m64) = model(&c, DType::F64);
        let d64 = fused_vs_ops(&m64, &LENGTHS, 1);
        let (_vm, m32) = model(&c, DType::F32);
        let d32 = fused_vs_ops(&m32, &LENGTHS, 1);
        println!("{norm:?} {gate:?} bidirectional {bi}: f64 {d64:.2e}, f32 {d32:.2e}");
        assert!(
            d64 < 1e-11,
            "f64: fused differs from the op path by {d64:e}"
        );
        assert!(d32 < 2e-5, "f32: fused differs from the op path by {d32:e}");
        // One sequence alone (fewer sequences than threads) gives the same logits as in a batch.
        let one = fused_vs_ops(&m64, &LENGTHS[..1], 1);
        assert!(one < 1e-11, "batch of one: {one:e}");
    }
}

/// Reduced models store `lambda_bar`, `b_bar` of any order per layer; the kernel sizes its
/// buffers for the largest layer.
#[test]
fn fused_evaluation_equals_the_op_path_on_a_reduced_model() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (_vm, m) = model(&c, DType::F64);
    let full = to_mor(&m, L).unwrap();
    let mut reduced = full.clone();
    for (layer, keep) in
        reduced
            .layers
            .iter_mut()
            .zip([vec![0, 3, 5], vec![1], vec![0, 1, 2, 3, 4, 5, 6, 7]])
    {
        let b = layer.ssm.clone();
        let r = keep.len();
        let s = &mut layer.ssm;
        s.lambda = keep.iter().map(|&j| b.lambda[j]).collect();
        s.b = Mat::from_fn(r, H, |a, h| b.b[(keep[a], h)]);
        s.c = Mat::from_fn(H, r, |h, a| b.c[(h, keep[a])]);
        s.c_rev = b
            .c_rev
            .as_ref()
            .map(|cr| Mat::from_fn(H, r, |h, a| cr[(h, keep[a])]));
    }
    let red = with_reduced(&m, &reduced).unwrap();
    let d = fused_vs_ops(&red, &LENGTHS, 2);
    println!("reduced (orders 3, 1, 8): {d:.2e}");
    assert!(d < 1e-11, "reduced model: fused differs by {d:e}");
}

/// `forward_measured`'s per-layer `‖u‖₂` and `‖y‖_∞` equal those of the layers applied one by one
/// through the public layer APIs (norm, SSM, gate), over the true positions only.
#[test]
fn measured_activations_match_the_layers_applied_one_by_one() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (_vm, m) = model(&c, DType::F64);
    let (t, l) = batch(&LENGTHS, 3);
    let (logits, measured) = m.forward_measured(&t, &l).unwrap();
    let b = LENGTHS.len();
    assert_eq!(measured.len(), b);
    let mask = Mask::new(&LENGTHS, L, &m.encoder).unwrap();
    let mut x = m
        .encoder
        .index_select(&t.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((b, L, H))
        .unwrap();
    // [b, L] with 1 at true positions.
    let keep = Tensor::from_vec(
        (0..b * L)
            .map(|i| f64::from(u8::from((i % L) < LENGTHS[i / L] as usize)))
            .collect::<Vec<f64>>(),
        (b, L),
        &Device::Cpu,
    )
    .unwrap();
    for (li, layer) in m.layers.iter().enumerate() {
        let u = layer.norm.forward(&x, &mask, false).unwrap();
        let y = layer.ssm.forward_t(&u, &LENGTHS, false).unwrap();
        let u_l2 = values(
            &u.sqr()
                .unwrap()
                .sum(D::Minus1)
                .unwrap()
                .mul(&keep)
                .unwrap()
                .sum(1)
                .unwrap(),
        );
        let y_peak = values(
            &y.abs()
                .unwrap()
                .max(D::Minus1)
                .unwrap()
                .mul(&keep)
                .unwrap()
                .max(1)
                .unwrap(),
        );
        for i in 0..b {
            let got = measured[i][li];
            let (want_u, want_y) = (u_l2[i].sqrt(), y_peak[i]);
            assert!(
                (got.u_l2 - want_u).abs() <= 1e-10 * want_u,
                "layer {li} seq {i}: ‖u‖ {} vs {want_u}",
                got.u_l2
            );
            assert!(
                (got.y_peak - want_y).abs() <= 1e-10 * want_y,
                "layer {li} seq {i}: ‖y‖∞ {} vs {want_y}",
                got.y_peak
            );
        }
        x = layer.gate.residual(&x, &y, None, None).unwrap();
    }
    let ops = values(&m.forward_ops(&t, &l, Mode::Eval).unwrap());
    assert!(rel_diff(&values(&logits), &ops) < 1e-11);
}

/// `ssm_inputs` (the fused kernel in f64, one review) equals each layer's `norm(x)` of the layers
/// applied one by one, at every true position; bad tokens are refused.
#[test]
fn ssm_inputs_match_the_layers_applied_one_by_one() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (_vm, m) = model(&c, DType::F64);
    let len = 129;
    let (t, _) = batch(&[len], 5);
    let tokens: Vec<u32> = t.flatten_all().unwrap().to_vec1().unwrap()[..len as usize].to_vec();
    let got = m.ssm_inputs(&tokens).unwrap();
    assert_eq!(got.len(), c.n_layers);
    let mask = Mask::new(&[len], L, &m.encoder).unwrap();
    let mut x = m
        .encoder
        .index_select(&t.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((1, L, H))
        .unwrap();
    for (li, layer) in m.layers.iter().enumerate() {
        let u = layer.norm.forward(&x, &mask, false).unwrap();
        let want = values(&u.narrow(1, 0, len as usize).unwrap());
        assert_eq!(got[li].len(), len as usize * H);
        assert!(rel_diff(&got[li], &want) < 1e-11, "layer {li}");
        let y = layer.ssm.forward_t(&u, &[len], false).unwrap();
        x = layer.gate.residual(&x, &y, None, None).unwrap();
    }
    assert!(m.ssm_inputs(&[]).is_err());
    assert!(m.ssm_inputs(&[1, 40]).is_err());
}
