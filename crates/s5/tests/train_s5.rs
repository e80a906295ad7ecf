//! The trainer on the real (tiny) S5 model: the loss falls on a learnable synthetic task, every
//! trainable parameter is in the right optimiser group, a stopped-and-resumed run equals the
//! uninterrupted one (dropout and BatchNorm running statistics included), and a checkpoint
//! round trip through `load_model` gives identical logits.

mod train_support;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use s5::checkpoint::{self, CheckpointMeta};
use s5::optim::ParamGroup;
use s5::train::{Classifier, Trainer, batch_tensors, evaluate, with_large_stack};
use s5::{GateKind, ModelConfig, NormKind, S5Model};
use train_support::{VOCAB, VecSource, make_batches, snapshot, train_config};

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab_size: VOCAB,
        n_classes: 2,
        d_model: 8,
        n_layers: 2,
        ssm_size: 8,
        blocks: 2,
        bidirectional: true,
        norm: NormKind::Batch,
        gate: GateKind::HalfGlu2,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

fn build() -> (S5Model, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let m = S5Model::new(&tiny(), vb).unwrap();
    (m, varmap)
}

fn meta() -> CheckpointMeta {
    CheckpointMeta::new(tiny(), "byte", 12)
}

#[test]
fn s5_learns_and_groups_are_right() {
    with_large_stack(|| {
        let dir = tempfile::tempdir().unwrap();
        let (model, varmap) = build();
        let mut train = VecSource::new(make_batches(1, 20, 16, 12), 3);
        let mut test = VecSource::new(make_batches(2, 4, 32, 12), 4);
        let mut cfg = train_config();
        cfg.epochs = 4;
        cfg.lr = 0.01;
        cfg.ssm_lr = 0.005;
        let before = evaluate(&model, &mut test, &Device::Cpu).unwrap();
        let mut t = Trainer::new(&model, varmap.clone(), cfg, meta(), None, dir.path()).unwrap();
        // Groups: every trainable tensor of the model is optimised, in the S5 group iff is_ssm_param.
        let groups: Vec<(String, ParamGroup)> = t
            .optimizer()
            .groups()
            .map(|(n, g)| (n.to_string(), g))
            .collect();
        let mut trainable: Vec<String> = model
            .named_trainable()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        trainable.sort();
        assert_eq!(
            groups.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            trainable
        );
        for (n, g) in &groups {
            assert_eq!(*g == ParamGroup::Ssm, s5::is_ssm_param(n), "{n}");
        }
        assert_eq!(t.optimizer().n_trainable(), model.n_trainable_params());
        assert_eq!(
            t.optimizer().frozen().len(),
            4,
            "2 layers × running mean/var"
        );
        let s = t.run(&mut train, Some(&mut test)).unwrap();
        let after = evaluate(&model, &mut test, &Device::Cpu).unwrap();
        println!("before {before:?} after {after:?} {s:?}");
        assert!(
            after.loss < 0.7 * before.loss,
            "loss {} -> {}",
            before.loss,
            after.loss
        );
        assert!(after.accuracy > 0.8, "accuracy {}", after.accuracy);
    });
}

#[test]
fn s5_resume_equals_uninterrupted_and_round_trips() {
    with_large_stack(|| {
        let run = |dir: &std::path::Path, max_steps: Option<usize>| {
            let (model, varmap) = build();
            let mut train = VecSource::new(make_batches(1, 5, 8, 12), 3);
            let mut c = train_config();
            c.epochs = 2;
            c.max_steps = max_steps;
            let mut t = Trainer::new(&model, varmap.clone(), c, meta(), None, dir).unwrap();
            t.run(&mut train, None).unwrap();
            snapshot(&varmap)
        };
        let full = tempfile::tempdir().unwrap();
        let want = run(full.path(), None);
        let split = tempfile::tempdir().unwrap();
        let first = run(split.path(), Some(3));
        assert_ne!(first, want);
        let got = run(split.path(), None);
        for ((n, a), (_, b)) in got.iter().zip(&want) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-6, "{n}: {x} vs {y}");
            }
        }
        // Running statistics moved away from their initial values and were resumed too.
        let rv = &want
            .iter()
            .find(|(n, _)| n == "layers.0.norm.running_var")
            .unwrap()
            .1;
        assert!(rv.iter().any(|&v| (v - 1.0).abs() > 1e-3));

        // Round trip of the final checkpoint through load_model: identical logits.
        let ck = checkpoint::latest(&full.path().join("checkpoints"))
            .unwrap()
            .unwrap();
        let (m2, _vm2, meta2) = checkpoint::load_model(&ck).unwrap();
        assert_eq!(meta2, meta());
        let (model, varmap) = build();
        checkpoint::load_params(&ck, &varmap).unwrap();
        let b = &make_batches(9, 1, 6, 12)[0];
        let (tok, len, _) = batch_tensors(b, &Device::Cpu).unwrap();
        let l1: Vec<Vec<f32>> = model.logits(&tok, &len, None).unwrap().to_vec2().unwrap();
        let l2: Vec<Vec<f32>> = m2.logits(&tok, &len, None).unwrap().to_vec2().unwrap();
        assert_eq!(l1, l2);
        let (fresh, _) = build();
        let l0: Vec<Vec<f32>> = fresh.logits(&tok, &len, None).unwrap().to_vec2().unwrap();
        assert_ne!(l0, l1);
    });
}

#[test]
fn s5_warm_start_begins_from_the_given_checkpoint() {
    with_large_stack(|| {
        // Stage 1: a short run; its final checkpoint is the warm start of stage 2.
        let first = tempfile::tempdir().unwrap();
        let (model, varmap) = build();
        let mut train = VecSource::new(make_batches(1, 5, 8, 12), 3);
        let mut c = train_config();
        c.epochs = 1;
        Trainer::new(
            &model,
            varmap.clone(),
            c.clone(),
            meta(),
            None,
            first.path(),
        )
        .unwrap()
        .run(&mut train, None)
        .unwrap();
        let trained = snapshot(&varmap);
        let ck = checkpoint::latest(&first.path().join("checkpoints"))
            .unwrap()
            .unwrap();

        // Stage 2: a freshly initialised model starts from exactly those weights (running
        // statistics included), with step 0 and a new schedule.
        let second = tempfile::tempdir().unwrap();
        let (model2, varmap2) = build();
        assert_ne!(snapshot(&varmap2), trained);
        let mut c2 = c.clone();
        c2.init_from = Some(ck.clone());
        let t = Trainer::new(
            &model2,
            varmap2.clone(),
            c2.clone(),
            meta(),
            None,
            second.path(),
        )
        .unwrap();
        assert_eq!(snapshot(&varmap2), trained);
        assert_eq!(t.state().step, 0);
        assert!(t.resumed_from().is_none());

        // A checkpoint of another model is refused with a message naming init_from.
        let mut other = tiny();
        other.d_model = 12;
        let varmap3 = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap3, DType::F32, &Device::Cpu);
        let model3 = S5Model::new(&other, vb).unwrap();
        let third = tempfile::tempdir().unwrap();
        let msg = Trainer::new(
            &model3,
            varmap3,
            c2,
            CheckpointMeta::new(other, "byte", 12),
            None,
            third.path(),
        )
        .err()
        .expect("a different model must be refused")
        .to_string();
        assert!(msg.contains("init_from"), "{msg}");
    });
}

#[test]
fn s5_checkpoint_with_wrong_config_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, varmap) = build();
    checkpoint::save(dir.path(), &meta(), &varmap, None, None).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    v["model"]["ssm_size"] = 12.into();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let msg = checkpoint::load_model(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("layers.0.seq"),
        "{msg}"
    );
    v["model"]["n_layers"] = 1.into();
    v["model"]["ssm_size"] = 8.into();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let msg = checkpoint::load_model(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("unexpected") && msg.contains("layers.1."),
        "{msg}"
    );
}

/// `load_average` (SWA) returns the element-wise mean of every tensor, the returned model uses
/// it, averaging a checkpoint with itself changes nothing, and checkpoints of different models
/// are refused with a message naming the file.
#[test]
fn weight_average_is_the_elementwise_mean() {
    with_large_stack(|| {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let (_m, varmap) = build();
        checkpoint::save(&a, &meta(), &varmap, None, None).unwrap();
        let base = snapshot(&varmap);
        // B: tensor i shifted by 0.5 + 0.25 i, so the mean is A + (0.25 + 0.125 i).
        {
            let data = varmap.data().lock().unwrap();
            for (i, (name, _)) in base.iter().enumerate() {
                let var = &data[name];
                var.set(&(var.as_tensor() + (0.5 + 0.25 * i as f64)).unwrap())
                    .unwrap();
            }
        }
        checkpoint::save(&b, &meta(), &varmap, None, None).unwrap();

        let (avg, avg_vm, avg_meta) = checkpoint::load_average(&[&a, &b]).unwrap();
        assert_eq!(avg_meta, meta());
        let got = snapshot(&avg_vm);
        assert_eq!(got.len(), base.len());
        for (i, ((name, want), (got_name, got))) in base.iter().zip(&got).enumerate() {
            assert_eq!(name, got_name);
            let shift = (0.25 + 0.125 * i as f64) as f32;
            for (w, g) in want.iter().zip(got) {
                assert!((w + shift - g).abs() < 1e-5, "{name}: {w} + {shift} vs {g}");
            }
        }
        // The returned model computes with the averaged tensors: same logits as loading them.
        checkpoint::save(&c, &meta(), &avg_vm, None, None).unwrap();
        let (reloaded, _, _) = checkpoint::load_model(&c).unwrap();
        let batch = &make_batches(9, 1, 6, 12)[0];
        let (tok, len, _) = batch_tensors(batch, &Device::Cpu).unwrap();
        let logits = |m: &S5Model| -> Vec<Vec<f32>> {
            m.logits(&tok, &len, None).unwrap().to_vec2().unwrap()
        };
        assert_eq!(logits(&avg), logits(&reloaded));
        let (model_a, _, _) = checkpoint::load_model(&a).unwrap();
        assert_ne!(logits(&avg), logits(&model_a));
        // Averaging a checkpoint with itself is the identity.
        let (self_avg, _, _) = checkpoint::load_average(&[&a, &a, &a]).unwrap();
        assert_eq!(logits(&self_avg), logits(&model_a));

        // Another model (here: another max_len) is refused, naming its config.
        checkpoint::save(
            &c,
            &CheckpointMeta::new(tiny(), "byte", 16),
            &varmap,
            None,
            None,
        )
        .unwrap();
        let msg = checkpoint::load_average(&[&a, &c])
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("can be averaged") && msg.contains("config.json"),
            "{msg}"
        );
        let none: [&std::path::Path; 0] = [];
        assert!(checkpoint::load_average(&none).is_err());
    });
}
