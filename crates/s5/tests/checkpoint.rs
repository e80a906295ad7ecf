//! Checkpoint round trip and rejection of damaged or mismatched checkpoints with clear messages.

#![allow(clippy::result_large_err)]

mod train_support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use s5::checkpoint::{self, CheckpointMeta, MODEL_FILE};
use s5::train::{Classifier, with_large_stack};
use train_support::*;

fn meta() -> CheckpointMeta {
    CheckpointMeta::new(model_config(), "byte", 16)
}

fn saved(dir: &std::path::Path) -> (VarMap, Toy) {
    let varmap = VarMap::new();
    let model = Toy::new(&varmap, 7).unwrap();
    checkpoint::save(dir, &meta(), &varmap, Some(br#"{"kind":"byte"}"#), None).unwrap();
    (varmap, model)
}

fn logits(model: &Toy) -> Vec<Vec<f32>> {
    let b = &make_batches(5, 1, 6, 10)[0];
    let (t, l, _) = s5::train::batch_tensors(b, &Device::Cpu).unwrap();
    model.logits(&t, &l, None).unwrap().to_vec2().unwrap()
}

fn load_err(dir: &std::path::Path) -> String {
    let vm = VarMap::new();
    let _m = Toy::new(&vm, 1).unwrap();
    checkpoint::read_meta(dir)
        .and_then(|_| checkpoint::load_params(dir, &vm))
        .unwrap_err()
        .to_string()
}

fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(MODEL_FILE);
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn round_trip_gives_identical_logits() {
    with_large_stack(|| {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        let (_vm, model) = saved(&ck);
        // Overwriting an existing checkpoint is atomic and leaves no temporaries behind.
        let (_vm, model) = {
            let vm = VarMap::new();
            let m = Toy::new(&vm, 7).unwrap();
            checkpoint::save(&ck, &meta(), &vm, Some(br#"{"kind":"byte"}"#), None).unwrap();
            drop(model);
            (vm, m)
        };
        let entries: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, vec!["ck".to_string()]);
        let want = logits(&model);

        let meta2 = checkpoint::read_meta(&ck).unwrap();
        assert_eq!(meta2, meta());
        let vm2 = VarMap::new();
        let m2 = Toy::new(&vm2, 123).unwrap();
        assert_ne!(logits(&m2), want);
        checkpoint::load_params(&ck, &vm2).unwrap();
        assert_eq!(logits(&m2), want);
        assert_eq!(
            checkpoint::read_tokenizer(&ck).unwrap().unwrap(),
            br#"{"kind":"byte"}"#
        );
    });
}

#[test]
fn truncated_file_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    let path = dir.path().join(MODEL_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::write(&path, &bytes[..5]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_file_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    std::fs::remove_file(dir.path().join(MODEL_FILE)).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("cannot read"),
        "{msg}"
    );
    let empty = tempfile::tempdir().unwrap();
    let msg = load_err(empty.path());
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_tensor_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    rewrite(dir.path(), |t| {
        t.remove("layers.0.seq.B");
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`layers.0.seq.B`") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn non_finite_weight_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    rewrite(dir.path(), |t| {
        let b = &t["layers.0.seq.B"];
        let mut v = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[3] = f32::NAN;
        v[5] = f32::INFINITY;
        let nan = Tensor::from_vec(v, b.dims(), &Device::Cpu).unwrap();
        t.insert("layers.0.seq.B".into(), nan);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors")
            && msg.contains("tensor `layers.0.seq.B` has 2 non-finite values")
            && msg.contains("flat index 3, is NaN"),
        "{msg}"
    );
}

#[test]
fn save_cleans_the_temporaries_of_a_killed_save() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    saved(&ck);
    // A process that ended (its pid is free) left a temporary; another one died between its two
    // renames, leaving the previous checkpoint aside with the destination missing.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let tmp = dir.path().join(format!(".ck.tmp-{dead}"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join(MODEL_FILE), b"partial").unwrap();
    saved(&ck);
    assert!(!tmp.exists());
    let other = dir.path().join("other");
    saved(&other);
    let aside = dir.path().join(format!(".other.old-{dead}"));
    std::fs::rename(&other, &aside).unwrap();
    saved(&dir.path().join("third"));
    assert!(
        aside.exists() && !other.exists(),
        "unrelated names are left alone"
    );
    saved(&other);
    assert!(!aside.exists());
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn wrong_shape_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    rewrite(dir.path(), |t| {
        t.insert(
            "decoder.weight".into(),
            Tensor::zeros((3, H), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`decoder.weight`") && msg.contains("[3, 8]") && msg.contains("[2, 8]"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_and_extra_tensor_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    rewrite(dir.path(), |t| {
        t.insert(
            "decoder.bias".into(),
            Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap(),
        );
    });
    assert!(load_err(dir.path()).contains("dtype"));
    saved(dir.path());
    rewrite(dir.path(), |t| {
        t.insert(
            "layers.1.seq.B".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unexpected") && msg.contains("layers.1.seq.B"),
        "{msg}"
    );
}

#[test]
fn garbage_config_rejected() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, b"{ not json").unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("not a valid checkpoint config"),
        "{msg}"
    );
    let mut v: serde_json::Value = serde_json::to_value(meta()).unwrap();
    v["model"]["d_modle"] = 3.into();
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("d_modle"), "{msg}");
    let mut v: serde_json::Value = serde_json::to_value(meta()).unwrap();
    v["format"] = 99.into();
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("format 99"), "{msg}");
}

#[test]
fn latest_pointer_to_missing_dir_rejected() {
    let dir = tempfile::tempdir().unwrap();
    assert!(checkpoint::latest(dir.path()).unwrap().is_none());
    std::fs::write(dir.path().join("LATEST"), "step-00000042").unwrap();
    let msg = checkpoint::latest(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("step-00000042") && msg.contains("does not exist"),
        "{msg}"
    );
}
