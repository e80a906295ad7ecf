//! Model tests: parameter names and exact counts, every trainable parameter gets a gradient,
//! running statistics update only in training, determinism of dropout.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model, is_ssm_param};

fn cfg(norm: NormKind, gate: GateKind, bidirectional: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 257,
        n_classes: 2,
        d_model: 16,
        n_layers: 2,
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

fn batch(b: usize, l: usize, lengths: &[u32], seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut toks = vec![0u32; b * l];
    for (bi, &len) in lengths.iter().enumerate() {
        for k in 0..len as usize {
            toks[bi * l + k] = rng.random_range(1..257);
        }
    }
    (
        Tensor::from_vec(toks, (b, l), &Device::Cpu).unwrap(),
        Tensor::from_vec(lengths.to_vec(), b, &Device::Cpu).unwrap(),
    )
}

fn build(c: &ModelConfig) -> (VarMap, S5Model) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = S5Model::new_with_seed(c, vb, 7).unwrap();
    (vm, m)
}

#[test]
fn names_mirror_s5_and_count_is_exact() {
    for bidir in [true, false] {
        let c = cfg(NormKind::Batch, GateKind::HalfGlu2, bidir);
        let (vm, m) = build(&c);
        let names: BTreeSet<String> = vm.data().lock().unwrap().keys().cloned().collect();
        let mut want = BTreeSet::new();
        want.insert("encoder.weight".to_string());
        want.insert("decoder.weight".to_string());
        want.insert("decoder.bias".to_string());
        for i in 0..c.n_layers {
            for n in ["weight", "bias", "running_mean", "running_var"] {
                want.insert(format!("layers.{i}.norm.{n}"));
            }
            let mut seq = vec!["Lambda_re", "Lambda_im", "B", "C", "D", "log_step"];
            if bidir {
                seq.push("C2");
            }
            for n in seq {
                want.insert(format!("layers.{i}.seq.{n}"));
            }
            want.insert(format!("layers.{i}.gate.weight"));
            want.insert(format!("layers.{i}.gate.bias"));
        }
        assert_eq!(names, want);
        // Independent count from the sizes.
        let (h, n, v, k) = (c.d_model, c.ssm_size / 2, c.vocab_size, c.n_classes);
        let dirs = if bidir { 2 } else { 1 };
        let per_layer = 2 * h + (n + n + n * h * 2 + n + dirs * h * n * 2 + h) + h * h + h;
        let expected = v * h + c.n_layers * per_layer + k * h + k;
        assert_eq!(m.n_trainable_params(), expected);
        // And the VarMap minus the running statistics holds exactly that many scalars.
        let in_map: usize = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, t)| t.elem_count())
            .sum();
        assert_eq!(in_map, expected);
    }
}

#[test]
fn ssm_group_names() {
    assert!(is_ssm_param("layers.3.seq.Lambda_re"));
    assert!(is_ssm_param("layers.0.seq.Lambda_im"));
    assert!(is_ssm_param("layers.0.seq.B"));
    assert!(is_ssm_param("layers.0.seq.log_step"));
    assert!(!is_ssm_param("layers.0.seq.C"));
    assert!(!is_ssm_param("layers.0.seq.C2"));
    assert!(!is_ssm_param("layers.0.seq.D"));
    assert!(!is_ssm_param("layers.0.gate.bias"));
    assert!(!is_ssm_param("decoder.bias"));
}

/// Every trainable parameter gets a finite, non-zero gradient (catches no-backward ops such as
/// `candle_nn::LayerNorm`), for every norm/gate combination.
#[test]
fn every_trainable_parameter_gets_a_gradient() {
    for (norm, gate) in [
        (NormKind::Batch, GateKind::HalfGlu2),
        (NormKind::Layer, GateKind::Quadratic),
    ] {
        let c = cfg(norm, gate, true);
        let (vm, m) = build(&c);
        let (tokens, lengths) = batch(3, 40, &[40, 25, 7], 11);
        let logits = m
            .forward(&tokens, &lengths, Mode::Train { seed: 3 })
            .unwrap();
        assert_eq!(logits.dims(), [3, 2]);
        let labels = Tensor::new(&[0u32, 1, 1], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let mut checked = 0;
        for (name, var) in data.iter() {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{norm:?}/{gate:?}: no gradient for {name}"));
            let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            let norm2: f32 = v.iter().map(|x| x * x).sum();
            assert!(norm2 > 0.0, "{norm:?}/{gate:?}: zero gradient for {name}");
            checked += 1;
        }
        assert_eq!(checked, m.named_trainable().len());
    }
}

#[test]
fn running_stats_update_in_train_only_and_dropout_is_deterministic() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (vm, m) = build(&c);
    let (tokens, lengths) = batch(2, 30, &[30, 12], 5);
    let rm = |vm: &VarMap| -> Vec<f32> {
        vm.data().lock().unwrap()["layers.0.norm.running_mean"]
            .as_tensor()
            .to_vec1()
            .unwrap()
    };
    let r0 = rm(&vm);
    let e1 = m.forward(&tokens, &lengths, Mode::Eval).unwrap();
    assert_eq!(rm(&vm), r0, "eval must not touch running stats");
    let t1: Vec<f32> = m
        .forward(&tokens, &lengths, Mode::Train { seed: 9 })
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let r1 = rm(&vm);
    assert_ne!(r1, r0, "train must update running stats");
    let t2: Vec<f32> = m
        .forward(&tokens, &lengths, Mode::Train { seed: 9 })
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(t1, t2, "same seed, same batch statistics → same logits");
    let t3: Vec<f32> = m
        .forward(&tokens, &lengths, Mode::Train { seed: 10 })
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(t1, t3, "another seed gives other dropout masks");
    let e2 = m.forward(&tokens, &lengths, Mode::Eval).unwrap();
    let d: f32 = (e1 - e2)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d > 0.0, "eval uses the updated running stats");
}

#[test]
fn bad_inputs_are_rejected() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (_vm, m) = build(&c);
    let (tokens, _) = batch(1, 10, &[10], 1);
    let zero = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    assert!(m.forward(&tokens, &zero, Mode::Eval).is_err());
    let long = Tensor::new(&[11u32], &Device::Cpu).unwrap();
    assert!(m.forward(&tokens, &long, Mode::Eval).is_err());
    let bad_tok = Tensor::new(&[[300u32, 1]], &Device::Cpu).unwrap();
    let two = Tensor::new(&[2u32], &Device::Cpu).unwrap();
    assert!(m.forward(&bad_tok, &two, Mode::Eval).is_err());
    let mut c2 = c.clone();
    c2.blocks = 3;
    let vm = VarMap::new();
    assert!(S5Model::new(&c2, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).is_err());
}

#[test]
fn flop_count_matches_hand_count_for_the_small_config() {
    let mut c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    c.n_layers = 4;
    c.d_model = 128;
    c.ssm_size = 128;
    // B 2·128·128 + scan 8·2·64 + C 2·256·128 + D/residual 256 + gate 2·128² per layer, + pooling.
    let per = 32768.0 + 1024.0 + 65536.0 + 256.0 + 32768.0;
    assert_eq!(s5::model::flops_per_token(&c), 4.0 * per + 128.0);
}

fn running_stats(m: &S5Model) -> Vec<Vec<f32>> {
    m.layers
        .iter()
        .flat_map(|l| match &l.norm {
            s5::norm::Norm::Batch {
                running_mean,
                running_var,
                ..
            } => vec![
                running_mean.to_vec1::<f32>().unwrap(),
                running_var.to_vec1::<f32>().unwrap(),
            ],
            s5::norm::Norm::Layer { .. } => Vec::new(),
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Batch-statistics mode is training mode without dropout (the fused training stack and the
/// per-layer ops agree), and it leaves the running statistics alone.
#[test]
fn batch_stats_mode_is_training_without_dropout() {
    let mut c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    c.dropout = 0.0;
    let (_vm, m) = build(&c);
    let (tokens, lengths) = batch(3, 40, &[40, 25, 7], 5);
    let before = running_stats(&m);
    let (logits, stats) = m.forward_batch_stats(&tokens, &lengths).unwrap();
    assert_eq!(
        running_stats(&m),
        before,
        "forward_batch_stats must not record"
    );
    assert_eq!(stats.len(), c.n_layers);
    let s0 = stats[0].as_ref().unwrap();
    assert_eq!(s0.n_true, 72);
    // Layer 0's statistics are those of the embedded tokens at the true positions.
    let enc: Vec<Vec<f32>> = m.encoder.to_vec2().unwrap();
    let toks: Vec<u32> = tokens.flatten_all().unwrap().to_vec1().unwrap();
    let mut rows = Vec::new();
    for (bi, len) in [40usize, 25, 7].into_iter().enumerate() {
        for k in 0..len {
            rows.push(&enc[toks[bi * 40 + k] as usize]);
        }
    }
    for ch in 0..c.d_model {
        let n = rows.len() as f64;
        let mean = rows.iter().map(|r| f64::from(r[ch])).sum::<f64>() / n;
        let var = rows
            .iter()
            .map(|r| (f64::from(r[ch]) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((s0.mean[ch] - mean).abs() < 1e-6, "channel {ch} mean");
        assert!((s0.var[ch] - var).abs() < 1e-6, "channel {ch} variance");
    }
    let train = m
        .forward(&tokens, &lengths, Mode::Train { seed: 9 })
        .unwrap();
    let d = max_abs_diff(&logits, &train);
    assert!(
        d < 1e-4,
        "batch-stats logits differ from training logits by {d}"
    );
    // The training step (fused stack) recorded these same statistics, layer by layer, with
    // momentum 0.9 from the initial (0, 1).
    let after = running_stats(&m);
    for (i, s) in stats.iter().enumerate() {
        let s = s.as_ref().unwrap();
        let (mean, var) = (&after[2 * i], &after[2 * i + 1]);
        for ch in 0..c.d_model {
            let (want_mean, want_var) = (0.1 * s.mean[ch], 0.9 + 0.1 * s.var[ch]);
            assert!(
                (f64::from(mean[ch]) - want_mean).abs() < 1e-5,
                "layer {i} mean"
            );
            assert!(
                (f64::from(var[ch]) - want_var).abs() < 1e-5,
                "layer {i} var"
            );
        }
    }
}

/// Precise BatchNorm on a single batch makes evaluation mode reproduce batch-statistics mode on
/// that batch exactly; pooled over several batches, layer 0 gets the statistics of all their
/// positions together.
#[test]
fn recalibrated_running_stats_reproduce_batch_stats() {
    let c = cfg(NormKind::Batch, GateKind::HalfGlu2, true);
    let (_vm, m) = build(&c);
    let (tokens, lengths) = batch(3, 40, &[40, 25, 7], 6);
    let (logits, stats) = m.forward_batch_stats(&tokens, &lengths).unwrap();
    let eval_before = m.forward(&tokens, &lengths, Mode::Eval).unwrap();
    assert!(
        max_abs_diff(&logits, &eval_before) > 1e-3,
        "the test needs running statistics that differ from the batch's"
    );
    let set: Vec<_> = stats
        .iter()
        .map(|s| {
            let mut p = s5::norm::PooledStats::default();
            p.add(s.as_ref().unwrap()).unwrap();
            p.finish()
        })
        .collect();
    m.set_running_stats(&set).unwrap();
    let eval_after = m.forward(&tokens, &lengths, Mode::Eval).unwrap();
    let d = max_abs_diff(&logits, &eval_after);
    assert!(d < 1e-4, "evaluation after recalibration differs by {d}");

    // Pooling: two batches vs the same positions as one batch (layer 0 sees fixed embeddings).
    let (t1, l1) = batch(2, 30, &[30, 12], 7);
    let (t2, l2) = batch(1, 30, &[21], 8);
    let mut pooled = s5::norm::PooledStats::default();
    for (t, l) in [(&t1, &l1), (&t2, &l2)] {
        pooled
            .add(m.forward_batch_stats(t, l).unwrap().1[0].as_ref().unwrap())
            .unwrap();
    }
    let both = Tensor::cat(&[&t1, &t2], 0).unwrap();
    let lens = Tensor::cat(&[&l1, &l2], 0).unwrap();
    let joint = m.forward_batch_stats(&both, &lens).unwrap().1[0]
        .clone()
        .unwrap();
    let (mean, var) = pooled.finish().unwrap();
    assert_eq!(pooled.count(), joint.n_true);
    for ch in 0..c.d_model {
        assert!(
            (mean[ch] - joint.mean[ch]).abs() < 1e-9,
            "pooled mean, channel {ch}"
        );
        assert!(
            (var[ch] - joint.var[ch]).abs() < 1e-9,
            "pooled variance, channel {ch}"
        );
    }
    assert!(
        m.set_running_stats(&set[..1]).is_err(),
        "wrong layer count accepted"
    );
}
