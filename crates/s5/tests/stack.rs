//! The training-mode layer stack as one autograd node (`s5::stack`, behind
//! `S5Model::forward(Mode::Train)` for BatchNorm + `half_glu2` models) against the per-layer ops
//! (`S5Model::forward_ops`): logits, the gradient of every parameter, and the BatchNorm running
//! statistics, with dropout, both directions, ragged lengths, f64 and f32.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model};

mod tensor_support;
use tensor_support::{max_diff, values};

/// `(variable name, values)` pairs.
type Named = Vec<(String, Vec<f64>)>;

const L: usize = 150;
const LENGTHS: [u32; 4] = [150, 1, 77, 149];

fn cfg(bidirectional: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 40,
        n_classes: 3,
        d_model: 12,
        n_layers: 3,
        ssm_size: 16,
        blocks: 2,
        bidirectional,
        norm: NormKind::Batch,
        gate: GateKind::HalfGlu2,
        dropout: 0.2,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

fn batch() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let b = LENGTHS.len();
    let mut toks = vec![0u32; b * L];
    for (bi, &len) in LENGTHS.iter().enumerate() {
        for k in 0..len as usize {
            toks[bi * L + k] = rng.random_range(1..40);
        }
    }
    (
        Tensor::from_vec(toks, (b, L), &Device::Cpu).unwrap(),
        Tensor::from_vec(LENGTHS.to_vec(), b, &Device::Cpu).unwrap(),
    )
}

fn model(c: &ModelConfig, dtype: DType) -> (VarMap, S5Model) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
    let m = S5Model::new_with_seed(c, vb, 3).unwrap();
    (vm, m)
}

/// Logits, the gradient of `Σ logits ⊙ w` for every variable (sorted by name), and every
/// variable after the pass (the running statistics moved).
fn run(c: &ModelConfig, dtype: DType, stacked: bool) -> (Vec<f64>, Named, Named) {
    let (vm, m) = model(c, dtype);
    let (t, l) = batch();
    let mode = Mode::Train { seed: 9 };
    let logits = if stacked {
        m.forward(&t, &l, mode).unwrap()
    } else {
        m.forward_ops(&t, &l, mode).unwrap()
    };
    let w = Tensor::arange(0u32, logits.elem_count() as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .reshape(logits.shape())
        .unwrap()
        .cos()
        .unwrap();
    let grads = logits
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut g = Vec::new();
    let mut after = Vec::new();
    for name in names {
        let var = &data[name];
        after.push((name.clone(), values(var.as_tensor())));
        if let Some(gr) = grads.get(var.as_tensor()) {
            g.push((name.clone(), values(gr)));
        }
    }
    (values(&logits), g, after)
}

fn compare(bidirectional: bool, dtype: DType, tol: f64) {
    let c = cfg(bidirectional);
    let (la, ga, va) = run(&c, dtype, true);
    let (lb, gb, vb) = run(&c, dtype, false);
    let scale = |v: &[f64]| v.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    let d = max_diff(&la, &lb) / scale(&lb);
    println!("{dtype:?} bidirectional {bidirectional}: logits {d:.2e}");
    assert!(d < tol, "logits differ by {d:e}");
    assert_eq!(
        ga.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        gb.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "the same variables get gradients"
    );
    for ((name, a), (_, b)) in ga.iter().zip(&gb) {
        let d = max_diff(a, b) / scale(b);
        assert!(scale(b) > 1e-12, "{name}: zero gradient");
        assert!(d < tol, "{name}: gradient differs by {d:e} (relative)");
    }
    for ((name, a), (_, b)) in va.iter().zip(&vb) {
        let d = max_diff(a, b) / scale(b);
        assert!(d < tol, "{name}: value after the pass differs by {d:e}");
    }
}

#[test]
fn stacked_layers_equal_the_per_layer_ops_in_f64() {
    compare(true, DType::F64, 1e-10);
    compare(false, DType::F64, 1e-10);
}

#[test]
fn stacked_layers_equal_the_per_layer_ops_in_f32() {
    compare(true, DType::F32, 1e-4);
}
