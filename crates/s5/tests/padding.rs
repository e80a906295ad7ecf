//! Padding must not matter: one review padded to its length, to 512 and to 4096 gives the same
//! logits (1e-5) in evaluation and in training (BatchNorm statistics over true positions only,
//! reverse scan from the true end, pooling over the true length).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model};

fn cfg(norm: NormKind) -> ModelConfig {
    ModelConfig {
        vocab_size: 257,
        n_classes: 2,
        d_model: 16,
        n_layers: 2,
        ssm_size: 16,
        blocks: 2,
        bidirectional: true,
        norm,
        gate: GateKind::HalfGlu2,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

fn padded(review: &[u32], l: usize) -> (Tensor, Tensor) {
    let mut t = vec![0u32; l];
    t[..review.len()].copy_from_slice(review);
    (
        Tensor::from_vec(t, (1, l), &Device::Cpu).unwrap(),
        Tensor::new(&[review.len() as u32], &Device::Cpu).unwrap(),
    )
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_do_not_depend_on_padding() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let review: Vec<u32> = (0..300).map(|_| rng.random_range(1..257)).collect();
    for norm in [NormKind::Batch, NormKind::Layer] {
        let c = cfg(norm);
        let mut eval_logits = Vec::new();
        let mut train_logits = Vec::new();
        let mut running = Vec::new();
        for l in [review.len(), 512, 4096] {
            // A fresh model per padding (training mode updates the running statistics).
            let vm = VarMap::new();
            let m = S5Model::new_with_seed(
                &c,
                VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
                1,
            )
            .unwrap();
            let (tok, len) = padded(&review, l);
            train_logits.push(vec_of(
                &m.forward(&tok, &len, Mode::Train { seed: 5 }).unwrap(),
            ));
            if norm == NormKind::Batch {
                let data = vm.data().lock().unwrap();
                let mut r = vec_of(data["layers.1.norm.running_mean"].as_tensor());
                r.extend(vec_of(data["layers.1.norm.running_var"].as_tensor()));
                running.push(r);
            }
            eval_logits.push(vec_of(&m.forward(&tok, &len, Mode::Eval).unwrap()));
        }
        for i in 1..3 {
            let de = max_diff(&eval_logits[0], &eval_logits[i]);
            let dt = max_diff(&train_logits[0], &train_logits[i]);
            println!("{norm:?} padding case {i}: eval diff {de:e}, train diff {dt:e}");
            assert!(de < 1e-5, "{norm:?}: eval logits differ by {de}");
            assert!(dt < 1e-5, "{norm:?}: train logits differ by {dt}");
            if norm == NormKind::Batch {
                let dr = max_diff(&running[0], &running[i]);
                assert!(dr < 1e-5, "running stats differ by {dr}");
            }
        }
    }
}

/// In a batch, each sequence's evaluation logits equal its logits alone (no leakage between
/// sequences or from padding).
#[test]
fn batch_members_match_single_runs_in_eval() {
    let c = cfg(NormKind::Batch);
    let vm = VarMap::new();
    let m = S5Model::new_with_seed(
        &c,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        2,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let lens = [50usize, 17, 64];
    let l = 64;
    let mut toks = vec![0u32; 3 * l];
    for (b, &n) in lens.iter().enumerate() {
        for k in 0..n {
            toks[b * l + k] = rng.random_range(1..257);
        }
    }
    let tt = Tensor::from_vec(toks.clone(), (3, l), &Device::Cpu).unwrap();
    let lt = Tensor::from_vec(
        lens.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        3,
        &Device::Cpu,
    )
    .unwrap();
    let all = vec_of(&m.forward(&tt, &lt, Mode::Eval).unwrap());
    for (b, &n) in lens.iter().enumerate() {
        let (tok, len) = padded(&toks[b * l..b * l + n], n);
        let one = vec_of(&m.forward(&tok, &len, Mode::Eval).unwrap());
        let d = max_diff(&one, &all[b * 2..b * 2 + 2]);
        assert!(d < 1e-5, "sequence {b}: {d}");
    }
}
