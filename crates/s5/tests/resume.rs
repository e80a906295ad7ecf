//! Resume equals an uninterrupted run: stopping (max_steps) or crashing mid-epoch, dropping
//! everything, and resuming from the newest checkpoint gives the same parameters, running
//! statistics and optimiser state as one uninterrupted run.

mod train_support;

use candle_nn::VarMap;
use s5::checkpoint::{self, CheckpointMeta};
use s5::train::{TrainConfig, Trainer, with_large_stack};
use train_support::*;

fn meta() -> CheckpointMeta {
    CheckpointMeta::new(model_config(), "byte", 8)
}

fn cfg() -> TrainConfig {
    // 3 epochs × 6 batches = 18 steps; checkpoints every 4 steps and at epoch ends; the weights
    // of the ends of epochs 2 and 3 (steps 12, 18) kept.
    TrainConfig {
        keep_epoch_weights_from: Some(2),
        ..train_config()
    }
}

/// Every variable of a model as (name, values), sorted by name.
type Snapshot = Vec<(String, Vec<f32>)>;

/// The epoch-end weights a run kept: (directory name, variables), sorted.
fn epoch_weights(dir: &std::path::Path) -> Vec<(String, Snapshot)> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(s5::train::EPOCHS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let ck = dir.join(s5::train::EPOCHS_DIR).join(&n);
            assert!(!ck.join(checkpoint::OPTIMIZER_FILE).exists(), "{n}");
            let varmap = VarMap::new();
            let _model = Toy::new(&varmap, 0).unwrap();
            checkpoint::load_params(&ck, &varmap).unwrap();
            (n, snapshot(&varmap))
        })
        .collect()
}

fn run_to_end(dir: &std::path::Path, init_seed: u64) -> (Vec<(String, Vec<f32>)>, Vec<f64>) {
    let varmap = VarMap::new();
    let model = Toy::new(&varmap, init_seed).unwrap();
    let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
    let mut test = VecSource::new(make_batches(2, 2, 8, 8), 4);
    let mut t = Trainer::new(&model, varmap.clone(), cfg(), meta(), None, dir).unwrap();
    let s = t.run(&mut train, Some(&mut test)).unwrap();
    assert_eq!(s.steps, 18);
    (snapshot(&varmap), s.epoch_accuracy)
}

fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= 1e-6, "{na}: {x} vs {y}");
        }
    }
}

fn optimizer_moments(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let ck = checkpoint::latest(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    let (_, m) = checkpoint::read_train_part(&ck, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = m
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn stop_and_resume_equals_uninterrupted() {
    with_large_stack(|| {
        let full = tempfile::tempdir().unwrap();
        let (want, want_acc) = run_to_end(full.path(), 11);

        let split = tempfile::tempdir().unwrap();
        {
            // First leg: 7 steps (stops mid-epoch 1, at batch 1 of 6), then everything is dropped.
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 11).unwrap();
            let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
            let mut test = VecSource::new(make_batches(2, 2, 8, 8), 4);
            let mut c = cfg();
            c.max_steps = Some(7);
            let mut t =
                Trainer::new(&model, varmap.clone(), c, meta(), None, split.path()).unwrap();
            let s = t.run(&mut train, Some(&mut test)).unwrap();
            assert_eq!((s.steps, s.epochs_completed), (7, 1));
            assert_ne!(snapshot(&varmap), want);
        }
        // Second leg: a model with a different initialisation is overwritten by the checkpoint.
        let (got, got_acc) = {
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 999).unwrap();
            let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
            let mut test = VecSource::new(make_batches(2, 2, 8, 8), 4);
            let mut t =
                Trainer::new(&model, varmap.clone(), cfg(), meta(), None, split.path()).unwrap();
            assert!(t.resumed_from().unwrap().ends_with("step-00000007"));
            assert_eq!((t.state().epoch, t.state().batch_in_epoch), (1, 1));
            let s = t.run(&mut train, Some(&mut test)).unwrap();
            (snapshot(&varmap), s.epoch_accuracy)
        };
        assert_close(&got, &want);
        assert_eq!(got_acc, want_acc);
        assert_close(
            &optimizer_moments(split.path()),
            &optimizer_moments(full.path()),
        );
    });
}

#[test]
fn crash_and_resume_equals_uninterrupted() {
    with_large_stack(|| {
        let full = tempfile::tempdir().unwrap();
        let (want, _) = run_to_end(full.path(), 12);

        let split = tempfile::tempdir().unwrap();
        {
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 12).unwrap();
            let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
            train.fail_at = Some(17); // the 18th batch: step 17; the newest checkpoint is step 16 (mid-epoch)
            let mut test = VecSource::new(make_batches(2, 2, 8, 8), 4);
            let mut t =
                Trainer::new(&model, varmap.clone(), cfg(), meta(), None, split.path()).unwrap();
            let err = t.run(&mut train, Some(&mut test)).unwrap_err();
            assert!(err.to_string().contains("simulated crash"));
        }
        let log_before = std::fs::read_to_string(split.path().join("train_log.csv")).unwrap();
        assert!(log_before.lines().any(|l| l.starts_with("12,")));
        let got = {
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 12).unwrap();
            let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
            let mut test = VecSource::new(make_batches(2, 2, 8, 8), 4);
            let mut t =
                Trainer::new(&model, varmap.clone(), cfg(), meta(), None, split.path()).unwrap();
            assert!(t.resumed_from().unwrap().ends_with("step-00000016"));
            t.run(&mut train, Some(&mut test)).unwrap();
            snapshot(&varmap)
        };
        assert_close(&got, &want);
        // The crashed-and-resumed run kept the same epoch-end weights as the uninterrupted one
        // (epoch 2's written before the crash, epoch 3's after), the last equal to the final ones.
        let (kept, kept_full) = (epoch_weights(split.path()), epoch_weights(full.path()));
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["step-00000012", "step-00000018"]);
        assert_eq!(kept.len(), kept_full.len());
        for ((n, w), (n_full, w_full)) in kept.iter().zip(&kept_full) {
            assert_eq!(n, n_full);
            assert_close(w, w_full);
        }
        assert_close(&kept[1].1, &want);
        assert_ne!(kept[0].1, kept[1].1);
        // The log has each step once, in order, and the eval log one row per epoch.
        let log = std::fs::read_to_string(split.path().join("train_log.csv")).unwrap();
        let steps: Vec<usize> = log
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        let eval = std::fs::read_to_string(split.path().join("eval_log.csv")).unwrap();
        assert_eq!(eval.lines().count(), 4, "{eval}");
        // Only the newest `keep_checkpoints` step checkpoints remain.
        let n = std::fs::read_dir(split.path().join("checkpoints"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("step-")
            })
            .count();
        assert_eq!(n, 2);
    });
}

#[test]
fn resume_with_other_seed_is_rejected() {
    with_large_stack(|| {
        let dir = tempfile::tempdir().unwrap();
        {
            let varmap = VarMap::new();
            let model = Toy::new(&varmap, 1).unwrap();
            let mut train = VecSource::new(make_batches(1, 6, 8, 8), 3);
            let mut c = cfg();
            c.max_steps = Some(4);
            let mut t = Trainer::new(&model, varmap.clone(), c, meta(), None, dir.path()).unwrap();
            t.run(&mut train, None).unwrap();
        }
        let varmap = VarMap::new();
        let model = Toy::new(&varmap, 1).unwrap();
        let mut c = cfg();
        c.seed = 18;
        let err = Trainer::new(&model, varmap.clone(), c, meta(), None, dir.path())
            .err()
            .unwrap();
        assert!(err.to_string().contains("seed 17"), "{err}");
    });
}
