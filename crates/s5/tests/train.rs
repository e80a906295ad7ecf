//! Training loop tests on a tiny stand-in model: the loss falls on a learnable task, AdamW's two
//! groups match a hand computation, the schedule's closed form, the NaN/Inf guard.

mod train_support;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use s5::checkpoint::{self, CheckpointMeta};
use s5::optim::{
    AdamParams, AdamW, LogStepGroup, ParamGroup, Schedule, StepRates, default_param_group,
    param_group,
};
use s5::train::{Trainer, evaluate, with_large_stack};
use train_support::*;

fn meta() -> CheckpointMeta {
    CheckpointMeta::new(model_config(), "byte", 16)
}

#[test]
fn loss_decreases_on_learnable_task() {
    let dir = tempfile::tempdir().unwrap();
    with_large_stack(|| {
        let varmap = VarMap::new();
        let model = Toy::new(&varmap, 1).unwrap();
        let mut train = VecSource::new(make_batches(1, 30, 16, 8), 3);
        let mut test = VecSource::new(make_batches(2, 8, 32, 8), 4);
        let mut cfg = train_config();
        cfg.epochs = 6;
        cfg.lr = 0.05;
        cfg.ssm_lr = 0.02;
        let before = evaluate(&model, &mut test, &Device::Cpu).unwrap();
        let mut t = Trainer::new(
            &model,
            varmap.clone(),
            cfg,
            meta(),
            Some(b"{}".to_vec()),
            dir.path(),
        )
        .unwrap();
        let summary = t.run(&mut train, Some(&mut test)).unwrap();
        let after = evaluate(&model, &mut test, &Device::Cpu).unwrap();
        println!("before {before:?}\nafter {after:?}\n{summary:?}");
        assert_eq!(summary.steps, 180);
        assert_eq!(summary.epochs_completed, 6);
        assert_eq!(summary.epoch_accuracy.len(), 6);
        assert!(
            after.loss < 0.6 * before.loss,
            "loss {} -> {}",
            before.loss,
            after.loss
        );
        assert!(after.accuracy > 0.85, "accuracy {}", after.accuracy);
        assert_eq!(*summary.epoch_accuracy.last().unwrap(), after.accuracy);
        // The CSV log has one row per 3 steps plus epoch-end rows, steps strictly increasing.
        let log = std::fs::read_to_string(dir.path().join("train_log.csv")).unwrap();
        let steps: Vec<usize> = log
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        assert_eq!(*steps.last().unwrap(), 180);
        let eval = std::fs::read_to_string(dir.path().join("eval_log.csv")).unwrap();
        assert_eq!(eval.lines().count(), 7);
        // The final checkpoint holds the tokenizer and loads back.
        let ck = checkpoint::latest(&dir.path().join("checkpoints"))
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint::read_tokenizer(&ck).unwrap().unwrap(), b"{}");
        let vm2 = VarMap::new();
        let _m2 = Toy::new(&vm2, 99).unwrap();
        checkpoint::load_params(&ck, &vm2).unwrap();
        assert_eq!(snapshot(&vm2), snapshot(&varmap));
    });
}

#[test]
fn groups_by_name() {
    assert_eq!(
        default_param_group("layers.3.seq.Lambda_re"),
        ParamGroup::Ssm
    );
    assert_eq!(
        default_param_group("layers.3.seq.Lambda_im"),
        ParamGroup::Ssm
    );
    assert_eq!(default_param_group("layers.0.seq.B"), ParamGroup::Ssm);
    assert_eq!(
        default_param_group("layers.0.seq.log_step"),
        ParamGroup::Ssm
    );
    assert_eq!(default_param_group("layers.0.seq.C"), ParamGroup::Regular);
    assert_eq!(default_param_group("layers.0.seq.C2"), ParamGroup::Regular);
    assert_eq!(default_param_group("layers.0.seq.D"), ParamGroup::Regular);
    assert_eq!(
        default_param_group("layers.0.gate.weight"),
        ParamGroup::Regular
    );
    assert_eq!(
        default_param_group("layers.0.norm.bias"),
        ParamGroup::Regular
    );
    assert_eq!(default_param_group("encoder.weight"), ParamGroup::Regular);
    assert_eq!(
        default_param_group("layers.0.norm.running_mean"),
        ParamGroup::Frozen
    );
    assert_eq!(
        default_param_group("layers.0.norm.running_var"),
        ParamGroup::Frozen
    );
}

/// Reference AdamW in f64 (Loshchilov & Hutter 2019, Alg. 2 with optax's lr-scaled decay).
fn adamw_ref(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: i32, lr: f64, wd: f64) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let mh = m[i] / (1.0 - b1.powi(t));
        let vh = v[i] / (1.0 - b2.powi(t));
        p[i] -= lr * (mh / (vh.sqrt() + eps) + wd * p[i]);
    }
}

#[test]
fn log_step_group_moves_only_log_step() {
    for name in [
        "layers.0.seq.Lambda_re",
        "layers.0.seq.B",
        "layers.0.seq.C",
        "layers.0.norm.running_var",
        "decoder.weight",
    ] {
        for g in [LogStepGroup::Ssm, LogStepGroup::Regular] {
            assert_eq!(param_group(name, g), default_param_group(name), "{name}");
        }
    }
    assert_eq!(
        param_group("layers.2.seq.log_step", LogStepGroup::Ssm),
        ParamGroup::Ssm
    );
    assert_eq!(
        param_group("layers.2.seq.log_step", LogStepGroup::Regular),
        ParamGroup::Regular
    );
    let cfg: s5::train::TrainConfig = serde_json::from_value(serde_json::json!({
        "epochs": 1, "batch_size": 2, "lr": 0.1, "ssm_lr": 0.0, "weight_decay": 0.5, "seed": 0,
        "log_step_group": "regular"
    }))
    .unwrap();
    assert_eq!(cfg.log_step_group, LogStepGroup::Regular);
}

/// S5's `--dt_global=True` through the trainer: a `log_step` the loss does not touch keeps its
/// value in the SSM group and shrinks by exactly Π_t (1 − lr_t · wd) in the regular group
/// (decoupled weight decay, zero Adam moments).
#[test]
fn log_step_in_regular_group_decays_in_training() {
    for group in [LogStepGroup::Ssm, LogStepGroup::Regular] {
        let dir = tempfile::tempdir().unwrap();
        with_large_stack(|| {
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 1).unwrap();
            let log_step = varmap
                .get(
                    3,
                    "layers.0.seq.log_step",
                    Init::Const(-4.0),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap();
            let mut train = VecSource::new(make_batches(1, 5, 8, 8), 3);
            let mut cfg = train_config();
            cfg.epochs = 2;
            cfg.eval_each_epoch = false;
            cfg.log_step_group = group;
            cfg.weight_decay = 0.5;
            let (lr, wd, warmup, min_lr) = (cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.min_lr);
            let mut t =
                Trainer::new(&model, varmap.clone(), cfg, meta(), None, dir.path()).unwrap();
            let summary = t.run(&mut train, None).unwrap();
            assert_eq!(summary.steps, 10);
            let got: Vec<f32> = log_step.to_vec1().unwrap();
            let expected = match group {
                LogStepGroup::Ssm => -4.0,
                LogStepGroup::Regular => {
                    let s = Schedule {
                        warmup_steps: warmup,
                        total_steps: 10,
                        min_lr,
                    };
                    (0..10).fold(-4.0f64, |p, t| p * (1.0 - s.rate(lr, t) * wd))
                }
            };
            for g in got {
                assert!(
                    (g as f64 - expected).abs() < 1e-5,
                    "{group:?}: log_step {g}, expected {expected}"
                );
            }
            if group == LogStepGroup::Regular {
                assert!(expected > -3.9, "the decay must be visible: {expected}");
            }
        });
    }
}

#[test]
fn adamw_two_groups_match_hand_computation() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let p_ssm0 = [0.5f64, -1.0, 2.0];
    let p_reg0 = [1.5f64, 0.25, -0.75];
    let rm0 = [3.0f32, 3.0, 3.0];
    let b = varmap
        .get(3, "layers.0.seq.B", Init::Const(0.0), DType::F32, &dev)
        .unwrap();
    let w = varmap
        .get(3, "decoder.weight", Init::Const(0.0), DType::F32, &dev)
        .unwrap();
    let rm = varmap
        .get(
            3,
            "layers.0.norm.running_mean",
            Init::Const(0.0),
            DType::F32,
            &dev,
        )
        .unwrap();
    {
        let data = varmap.data().lock().unwrap();
        let f =
            |a: &[f64]| Tensor::new(a.iter().map(|&x| x as f32).collect::<Vec<_>>(), &dev).unwrap();
        data["layers.0.seq.B"].set(&f(&p_ssm0)).unwrap();
        data["decoder.weight"].set(&f(&p_reg0)).unwrap();
        data["layers.0.norm.running_mean"]
            .set(&Tensor::new(&rm0, &dev).unwrap())
            .unwrap();
    }
    let mut opt = AdamW::new(&varmap, default_param_group, AdamParams::default()).unwrap();
    let groups: Vec<(String, ParamGroup)> = opt.groups().map(|(n, g)| (n.to_string(), g)).collect();
    assert_eq!(
        groups,
        vec![
            ("decoder.weight".to_string(), ParamGroup::Regular),
            ("layers.0.seq.B".to_string(), ParamGroup::Ssm)
        ]
    );
    assert_eq!(opt.frozen(), ["layers.0.norm.running_mean".to_string()]);
    assert_eq!(opt.n_trainable(), 6);

    let rates = StepRates {
        lr: 0.1,
        ssm_lr: 0.01,
        weight_decay: 0.5,
    };
    let (mut ps, mut ms, mut vs) = (p_ssm0.to_vec(), vec![0.0; 3], vec![0.0; 3]);
    let (mut pr, mut mr, mut vr) = (p_reg0.to_vec(), vec![0.0; 3], vec![0.0; 3]);
    // loss = Σ c_b ⊙ B + Σ c_w ⊙ W (+ ½ Σ W² in step 2) has a known gradient.
    let steps: [([f64; 3], [f64; 3], f64); 3] = [
        ([0.3, -2.0, 0.01], [1.0, -0.5, 4.0], 1.0),
        ([-0.2, 1.0, 0.5], [0.1, 0.2, -0.3], 0.25),
        ([1.0, 1.0, -1.0], [-2.0, 0.0, 1.0], 1.0),
    ];
    for (t, (cb, cw, scale)) in steps.iter().enumerate() {
        let tb = Tensor::new(cb.map(|x| x as f32).as_slice(), &dev).unwrap();
        let tw = Tensor::new(cw.map(|x| x as f32).as_slice(), &dev).unwrap();
        let mut loss = ((&b * &tb).unwrap().sum_all().unwrap()
            + (&w * &tw).unwrap().sum_all().unwrap())
        .unwrap();
        // Step 2 adds ½‖W‖² so the regular gradient depends on the parameter: g = c_w + W.
        let quad = t == 1;
        if quad {
            loss = (loss + (w.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        let gw: Vec<f64> = cw
            .iter()
            .zip(&pr)
            .map(|(c, p)| if quad { c + *p as f32 as f64 } else { *c })
            .collect();
        let norm =
            (cb.iter().map(|x| x * x).sum::<f64>() + gw.iter().map(|x| x * x).sum::<f64>()).sqrt();
        assert!((opt.grad_norm(&grads).unwrap() - norm).abs() < 1e-5 * norm);
        opt.step(&grads, rates, *scale).unwrap();
        let gb: Vec<f64> = cb.iter().map(|x| x * scale).collect();
        let gw: Vec<f64> = gw.iter().map(|x| x * scale).collect();
        adamw_ref(
            &mut ps,
            &mut ms,
            &mut vs,
            &gb,
            t as i32 + 1,
            rates.ssm_lr,
            0.0,
        );
        adamw_ref(
            &mut pr,
            &mut mr,
            &mut vr,
            &gw,
            t as i32 + 1,
            rates.lr,
            rates.weight_decay,
        );
        let got_b: Vec<f32> = b.to_vec1().unwrap();
        let got_w: Vec<f32> = w.to_vec1().unwrap();
        for i in 0..3 {
            assert!(
                (got_b[i] as f64 - ps[i]).abs() < 1e-6,
                "step {t} B[{i}]: {} vs {}",
                got_b[i],
                ps[i]
            );
            assert!(
                (got_w[i] as f64 - pr[i]).abs() < 1e-6,
                "step {t} W[{i}]: {} vs {}",
                got_w[i],
                pr[i]
            );
        }
    }
    // First step by hand: the ssm parameter moved by ssm_lr · sign(g) exactly (no decay).
    assert_eq!(opt.step_count(), 3);
    assert_eq!(
        rm.to_vec1::<f32>().unwrap(),
        rm0.to_vec(),
        "running stats are frozen"
    );
}

#[test]
fn first_step_is_lr_times_sign_plus_decay() {
    // One AdamW step from zero moments: m̂ = g, v̂ = g², so Δp = −η (sign g + λ p) up to ε.
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let b = varmap
        .get(
            2,
            "layers.1.seq.Lambda_im",
            Init::Const(1.0),
            DType::F32,
            &dev,
        )
        .unwrap();
    let c = varmap
        .get(2, "layers.1.seq.C", Init::Const(1.0), DType::F32, &dev)
        .unwrap();
    let mut opt = AdamW::new(&varmap, default_param_group, AdamParams::default()).unwrap();
    let g = Tensor::new(&[2.0f32, -3.0], &dev).unwrap();
    let loss =
        ((&b * &g).unwrap().sum_all().unwrap() + (&c * &g).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    opt.step(
        &grads,
        StepRates {
            lr: 0.1,
            ssm_lr: 0.01,
            weight_decay: 0.2,
        },
        1.0,
    )
    .unwrap();
    let bv: Vec<f32> = b.to_vec1().unwrap();
    let cv: Vec<f32> = c.to_vec1().unwrap();
    assert!(
        (bv[0] - (1.0 - 0.01)).abs() < 1e-6 && (bv[1] - (1.0 + 0.01)).abs() < 1e-6,
        "{bv:?}"
    );
    assert!((cv[0] - (1.0 - 0.1 * (1.0 + 0.2))).abs() < 1e-6, "{cv:?}");
    assert!((cv[1] - (1.0 - 0.1 * (-1.0 + 0.2))).abs() < 1e-6, "{cv:?}");
}

#[test]
fn schedule_closed_form() {
    let s = Schedule {
        warmup_steps: 10,
        total_steps: 110,
        min_lr: 1e-4,
    };
    let base = 4e-3;
    assert!((s.rate(base, 0) - 1e-4).abs() < 1e-15);
    assert!((s.rate(base, 5) - (1e-4 + 0.5 * (base - 1e-4))).abs() < 1e-12);
    assert!((s.rate(base, 10) - base).abs() < 1e-15);
    assert!((s.rate(base, 60) - (1e-4 + base) / 2.0).abs() < 1e-12);
    assert!((s.rate(base, 110) - 1e-4).abs() < 1e-15);
    assert!((s.rate(base, 500) - 1e-4).abs() < 1e-15);
    // Monotone decreasing after warmup.
    let r: Vec<f64> = (10..=110).map(|t| s.rate(base, t)).collect();
    assert!(r.windows(2).all(|w| w[1] <= w[0]));
    let flat = Schedule {
        warmup_steps: 0,
        total_steps: 100,
        min_lr: 0.0,
    };
    assert!((flat.rate(1.0, 25) - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12);
}

#[test]
fn nan_loss_stops_and_keeps_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    with_large_stack(|| {
        let varmap = VarMap::new();
        let model = Toy::new(&varmap, 1).unwrap();
        model.poison_call.set(Some(10)); // the 11th forward: step index 10
        let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
        let mut t = Trainer::new(
            &model,
            varmap.clone(),
            train_config(),
            meta(),
            None,
            dir.path(),
        )
        .unwrap();
        let err = t.run(&mut train, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, s5::Error::Diverged { step: 10, .. }), "{msg}");
        assert!(
            msg.contains("loss is NaN") && msg.contains("step-00000008"),
            "{msg}"
        );
        let ck = checkpoint::latest(&dir.path().join("checkpoints"))
            .unwrap()
            .unwrap();
        assert!(ck.ends_with("step-00000008"));
        let vm2 = VarMap::new();
        let _m2 = Toy::new(&vm2, 5).unwrap();
        checkpoint::load_params(&ck, &vm2).unwrap();
        for (name, v) in snapshot(&vm2) {
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
        }
        let (state, _) = checkpoint::read_train_part(&ck, &Device::Cpu).unwrap();
        assert_eq!(state.step, 8);
    });
}

#[test]
fn exploding_lr_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    with_large_stack(|| {
        let varmap = VarMap::new();
        let model = Toy::new(&varmap, 1).unwrap();
        let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
        let mut cfg = train_config();
        cfg.lr = 1e300; // overflows f32 in the update
        cfg.warmup_steps = 0;
        let mut t = Trainer::new(&model, varmap.clone(), cfg, meta(), None, dir.path()).unwrap();
        let err = t.run(&mut train, None).unwrap_err();
        assert!(matches!(err, s5::Error::Diverged { step: 0, .. }), "{err}");
        assert!(err.to_string().contains("not finite"), "{err}");
        assert!(
            checkpoint::latest(&dir.path().join("checkpoints"))
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn bad_config_rejected() {
    let mut cfg = train_config();
    cfg.lr = f64::NAN;
    assert!(cfg.validate().unwrap_err().to_string().contains("train.lr"));
    let toml_like = r#"{"epochs": 1, "batch_size": 2, "lr": 0.1, "ssm_lr": 0.1, "weight_decay": 0.0, "seed": 1, "typo": 3}"#;
    let err = serde_json::from_str::<s5::train::TrainConfig>(toml_like).unwrap_err();
    assert!(err.to_string().contains("typo"));
    // A config without `bucket_batches` (every run before the field existed) keeps the
    // batcher's default bucketing, so resumed runs see the same batches.
    let minimal = r#"{"epochs": 1, "batch_size": 2, "lr": 0.1, "ssm_lr": 0.1, "weight_decay": 0.0, "seed": 1}"#;
    let cfg: s5::train::TrainConfig = serde_json::from_str(minimal).unwrap();
    assert_eq!(cfg.bucket_batches, lra::Batcher::BUCKET_BATCHES);
    let mut cfg = train_config();
    cfg.bucket_batches = 0;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("train.bucket_batches"), "{err}");
}
