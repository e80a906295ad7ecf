//! Data-loss and consistency guards of the `bench` binary (issue 34), on a tiny untrained model
//! written directly with `s5` and a synthetic fixture dataset (no network, no real data): output
//! directories it did not write are never replaced, `--retrain` keeps the old model, a run
//! directory is locked, compressed checkpoints are checked, non-finite weights are refused, and
//! bad command-line values get clear messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

fn bench(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the bench binary")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `bench`, expects failure without a panic, returns stderr.
fn fails(args: &[&str], cwd: &Path) -> String {
    let o = bench(args, cwd);
    assert!(!o.status.success(), "expected a failure: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn succeeds(args: &[&str], cwd: &Path) -> Output {
    let o = bench(args, cwd);
    assert!(o.status.success(), "{}", text(&o));
    o
}

fn model_config() -> s5::ModelConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 257, "n_classes": 2, "d_model": 8, "n_layers": 2, "ssm_size": 8,
        "blocks": 2, "bidirectional": true, "norm": "batch", "gate": "half_glu2",
        "dropout": 0.0, "dt_min": 0.001, "dt_max": 0.1
    }))
    .unwrap()
}

/// Writes an untrained checkpoint of [`model_config`] (initialised with `seed`) into `dir`.
fn write_model(dir: &Path, seed: u64) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    s5::S5Model::new_with_seed(&model_config(), vb, seed).unwrap();
    let meta = s5::checkpoint::CheckpointMeta::new(model_config(), "byte", 96);
    s5::checkpoint::save(dir, &meta, &varmap, None, None).unwrap();
    varmap
}

/// A fixture dataset, a config `t.toml` (run `results/t`, checkpoint `results/t/model`, one
/// method and ratio) and an untrained checkpoint; returns the config path.
fn setup(root: &Path) -> PathBuf {
    bench::data::write_fixture(&root.join("data"), 96, 48, 8, 60, 7).unwrap();
    let cfg = format!(
        r#"
name = "t"
out_dir = "{out}"
threads = 2
train_samples = 0

[data]
source = "dir"
dir = "{data}"
max_len = 96

[model]
vocab_size = 257
n_classes = 2
d_model = 8
n_layers = 2
ssm_size = 8
blocks = 2
bidirectional = true
norm = "batch"
gate = "half_glu2"
dropout = 0.0
dt_min = 0.001
dt_max = 0.1

[train]
epochs = 1
batch_size = 16
lr = 0.004
ssm_lr = 0.001
weight_decay = 0.01
seed = 0
max_steps = 2
eval_each_epoch = false
progress = false

[eval]
max_samples = 16
batch_size = 16

[sweep]
methods = ["modal"]
ratios = [0.5]
"#,
        out = root.join("results").display(),
        data = root.join("data").display(),
    );
    write_model(&root.join("results/t/model"), 0);
    let p = root.join("t.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn compress(cfg: &Path, out: &Path, ratio: &str, root: &Path) -> Output {
    bench(
        &[
            "compress",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "modal",
            "--ratio",
            ratio,
            "--out",
            out.to_str().unwrap(),
        ],
        root,
    )
}

/// Hidden entries of `dir` (temporary siblings and the like).
fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// The pid of a process that has ended.
fn dead_pid() -> u32 {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn compress_out_replaces_only_its_own_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let source = root.join("results/t/model");
    let model_bytes = std::fs::read(source.join("model.safetensors")).unwrap();

    // A directory of the user's: refused, untouched.
    let user = root.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("notes.txt"), b"keep me").unwrap();
    let o = compress(&cfg, &user, "0.5", root);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("was not written by `bench compress`"), "{err}");
    assert_eq!(std::fs::read(user.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 1);

    // The source checkpoint, the run directory holding it, the results tree, a directory
    // inside the checkpoint: refused, the checkpoint untouched.
    for (out, relation) in [
        (source.clone(), "is the source checkpoint"),
        (root.join("results/t"), "contains the source checkpoint"),
        (root.join("results"), "contains the source checkpoint"),
        (source.join("sub"), "is inside the source checkpoint"),
    ] {
        let o = compress(&cfg, &out, "0.5", root);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(relation), "{}: {err}", out.display());
    }
    assert_eq!(
        std::fs::read(source.join("model.safetensors")).unwrap(),
        model_bytes
    );
    assert!(!source.join("sub").exists());

    // A file: refused.
    let file = root.join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    let o = compress(&cfg, &file, "0.5", root);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a file"),
        "{}",
        text(&o)
    );

    // A new directory: written, with the marker; written again over its own previous output.
    let out = root.join("out/modal-half");
    assert!(compress(&cfg, &out, "0.5", root).status.success());
    let marker = bench::outdir::read_marker(&out).expect("marker");
    assert_eq!(marker.command, "compress");
    let before = std::fs::read_to_string(out.join("reduction.json")).unwrap();
    assert!(before.contains("\"ratio\": 0.5"), "{before}");
    // A stale temporary sibling of a killed process (marked) and an empty one are cleaned up.
    let stale = root.join(format!("out/.modal-half.tmp-{}", dead_pid()));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(bench::outdir::MARKER), b"{}").unwrap();
    std::fs::write(stale.join("model.safetensors"), b"partial").unwrap();
    let stale_empty = root.join(format!("out/.modal-half.tmp-{}", dead_pid()));
    std::fs::create_dir_all(&stale_empty).unwrap();
    let o = compress(&cfg, &out, "0.25", root);
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(out.join("reduction.json")).unwrap();
    assert!(after.contains("\"ratio\": 0.25"), "{after}");
    assert!(!stale.exists() && !stale_empty.exists());
    assert!(
        hidden(&root.join("out")).is_empty(),
        "{:?}",
        hidden(&root.join("out"))
    );

    // Another command's output is not replaced by compress.
    let other = root.join("out/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join(bench::outdir::MARKER),
        br#"{"command": "swa", "version": "0"}"#,
    )
    .unwrap();
    std::fs::write(other.join("model.safetensors"), b"swa weights").unwrap();
    let o = compress(&cfg, &other, "0.5", root);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("holds the output of `bench swa`"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(other.join("model.safetensors")).unwrap(),
        b"swa weights"
    );
}

#[test]
fn recalibrate_and_swa_refuse_their_sources_and_user_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let cfg_s = cfg.to_str().unwrap();
    let source = root.join("results/t/model");
    let source_s = source.to_str().unwrap();
    let model_bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let err = fails(
        &["recalibrate-bn", "--config", cfg_s, "--out", source_s],
        root,
    );
    assert!(err.contains("is the source checkpoint"), "{err}");
    let other = root.join("other");
    write_model(&other, 3);
    let user = root.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("notes.txt"), b"keep me").unwrap();
    let err = fails(
        &[
            "swa",
            "--config",
            cfg_s,
            "--checkpoints",
            source_s,
            other.to_str().unwrap(),
            "--out",
            user.to_str().unwrap(),
        ],
        root,
    );
    assert!(err.contains("was not written by `bench swa`"), "{err}");
    let err = fails(
        &[
            "swa",
            "--config",
            cfg_s,
            "--checkpoints",
            source_s,
            other.to_str().unwrap(),
            "--out",
            root.to_str().unwrap(),
        ],
        root,
    );
    assert!(err.contains("contains the source checkpoint"), "{err}");
    assert_eq!(std::fs::read(user.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(source.join("model.safetensors")).unwrap(),
        model_bytes
    );
    // A new directory is written whole, with the marker, and rewritten by the same command.
    let pbn = root.join("pbn");
    for _ in 0..2 {
        succeeds(
            &[
                "recalibrate-bn",
                "--config",
                cfg_s,
                "--out",
                pbn.to_str().unwrap(),
                "--reviews",
                "16",
                "--batch",
                "16",
            ],
            root,
        );
        assert_eq!(
            bench::outdir::read_marker(&pbn).unwrap().command,
            "recalibrate-bn"
        );
        assert!(pbn.join("recalibration.json").exists());
        assert!(pbn.join("model.safetensors").exists());
    }
    assert!(hidden(root).is_empty(), "{:?}", hidden(root));
}

#[test]
fn retrain_keeps_the_old_model_until_the_new_one_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let source = root.join("results/t/model");
    std::fs::write(source.join("train_log.csv"), b"step,loss\n1,0.7\n").unwrap();
    let model_bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let o = succeeds(
        &["train", "--retrain", "--config", cfg.to_str().unwrap()],
        root,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("moved the previous model"), "{err}");
    let backups: Vec<PathBuf> = std::fs::read_dir(root.join("results/t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("model.before-retrain-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "{err}");
    assert_eq!(
        std::fs::read(backups[0].join("model.safetensors")).unwrap(),
        model_bytes
    );
    assert!(backups[0].join("train_log.csv").exists());
    let new = std::fs::read(source.join("model.safetensors")).unwrap();
    assert_ne!(new, model_bytes);
}

#[test]
fn a_locked_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let cfg_s = cfg.to_str().unwrap();
    let run = root.join("results/t");
    {
        // Another process's lock (this test process holds it; the lock is per open file).
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(run.join(bench::outdir::LOCK_FILE))
            .unwrap();
        lock.try_lock().unwrap();
        std::fs::write(
            run.join(bench::outdir::LOCK_FILE),
            b"pid 4242 (`bench sweep`)",
        )
        .unwrap();
        for cmd in ["sweep", "run", "train"] {
            let err = fails(&[cmd, "--config", cfg_s], root);
            assert!(
                err.contains("is in use by pid 4242 (`bench sweep`)"),
                "{cmd}: {err}"
            );
        }
        assert!(!run.join("results.csv").exists());
    }
    // Released: the sweep runs, cleans a killed run's temporary file and removes its lock file.
    let stale = run.join(format!(".results.csv.{}.tmp", dead_pid()));
    std::fs::write(&stale, b"method,ratio\n").unwrap();
    succeeds(&["sweep", "--config", cfg_s], root);
    assert!(!stale.exists());
    assert_eq!(
        bench::results::read_rows(&run.join("results.csv"))
            .unwrap()
            .len(),
        2
    );
    assert!(!run.join(bench::outdir::LOCK_FILE).exists());
}

#[test]
fn damaged_compressed_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let half = root.join("half");
    let quarter = root.join("quarter");
    assert!(compress(&cfg, &half, "0.5", root).status.success());
    assert!(compress(&cfg, &quarter, "0.25", root).status.success());
    let load_err = |dir: &Path| match bench::pipeline::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    };
    assert!(bench::pipeline::load(&half).is_ok());
    let copy = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&half).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let blocks = bench::pipeline::REDUCED_BLOCKS_FILE;

    // Missing reduced blocks: an error through `eval`, not the full model's accuracy.
    let d = copy("no-blocks");
    std::fs::remove_file(d.join(blocks)).unwrap();
    let err = fails(
        &[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--checkpoint",
            d.to_str().unwrap(),
        ],
        root,
    );
    assert!(
        err.contains("reduced_ssm.safetensors is missing") && err.contains("bench compress"),
        "{err}"
    );

    // Full weights of another model beside the blocks: the recorded source digest differs.
    let d = copy("other-source");
    write_model(&root.join("other"), 5);
    std::fs::copy(
        root.join("other/model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let err = load_err(&d);
    assert!(err.contains("not the ones they were reduced from"), "{err}");

    // Blocks of another reduction (kept modes differ from reduction.json).
    let d = copy("other-blocks");
    std::fs::copy(quarter.join(blocks), d.join(blocks)).unwrap();
    let err = load_err(&d);
    assert!(err.contains("does not match reduction.json"), "{err}");

    // An unstable block (|λ̄| ≥ 1) is refused.
    let d = copy("unstable");
    let mut bs = mor::io::read_blocks_safetensors(d.join(blocks)).unwrap();
    bs[1].lambda[0] = faer::c64::new(0.0, 1.5);
    mor::io::write_blocks_safetensors(d.join(blocks), &bs).unwrap();
    let err = load_err(&d);
    assert!(
        err.contains("layer 1's reduced block is unstable") && err.contains("max |λ̄| = 1.5"),
        "{err}"
    );
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let bad = root.join("nan-model");
    let varmap = write_model(&bad, 1);
    let name = "layers.0.seq.Lambda_re";
    {
        let data = varmap.data().lock().unwrap();
        let v = &data[name];
        let nan = (v.as_tensor().ones_like().unwrap() * f64::NAN).unwrap();
        v.set(&nan).unwrap();
    }
    let meta = s5::checkpoint::CheckpointMeta::new(model_config(), "byte", 96);
    s5::checkpoint::save(&bad, &meta, &varmap, None, None).unwrap();
    let err = fails(
        &[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--checkpoint",
            bad.to_str().unwrap(),
        ],
        root,
    );
    assert!(
        err.contains(&format!("tensor `{name}` has 4 non-finite values"))
            && err.contains("nan-model/model.safetensors"),
        "{err}"
    );
    assert!(!err.contains("accuracy"), "{err}");
}

#[test]
fn bad_values_get_clear_messages_at_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let cfg_s = cfg.to_str().unwrap();
    let file = root.join("results/t/model/model.safetensors");
    let err = fails(
        &[
            "eval",
            "--config",
            cfg_s,
            "--checkpoint",
            file.to_str().unwrap(),
        ],
        root,
    );
    assert!(
        err.contains("model.safetensors is a file")
            && err.contains(&format!("pass {}", root.join("results/t/model").display())),
        "{err}"
    );
    let err = fails(&["perf", "--config", cfg_s, "--batch", "0"], root);
    assert!(
        err.contains("--batch 0: the batch size must be at least 1"),
        "{err}"
    );
    let err = fails(&["perf", "--config", cfg_s, "--len", "0"], root);
    assert!(err.contains("--len 0"), "{err}");
    let many = root.join("many.toml");
    std::fs::write(
        &many,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("threads = 2", "threads = 100000"),
    )
    .unwrap();
    let err = fails(&["perf", "--config", many.to_str().unwrap()], root);
    assert!(
        err.contains("threads = 100000") && err.contains("at most 256"),
        "{err}"
    );
}

/// Writes `base` with `edit` applied as the config `name.toml` under `root`; returns its path.
fn variant(root: &Path, base: &Path, name: &str, edit: impl Fn(String) -> String) -> String {
    let p = root.join(format!("{name}.toml"));
    std::fs::write(&p, edit(std::fs::read_to_string(base).unwrap())).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_sweep_never_mixes_rows_of_other_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = setup(root);
    let run = root.join("results/t");
    let csv = run.join("results.csv");
    let manifest = run.join("manifest.json");
    // Both a plain and a refit method; an explicit ridge, so that the test does not depend on
    // the default. Every variant below starts from this configuration.
    let first = variant(root, &base, "first", |t| {
        t.replace(
            "methods = [\"modal\"]",
            "methods = [\"modal\", \"modal+refit\"]\nrefit_ridge = 0.0001",
        )
    });
    let base = PathBuf::from(&first);
    succeeds(&["sweep", "--config", &first], root);
    assert_eq!(bench::results::read_rows(&csv).unwrap().len(), 3);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let rec = &man["row_inputs"];
    assert_eq!(rec["eval"]["seed"], 0, "{man}");
    assert_eq!(rec["eval"]["max_samples"], 16, "{man}");
    assert_eq!(rec["tokenizer"]["max_len"], 96, "{man}");
    assert_eq!(rec["sweep"]["refit_ridge"], 1e-4, "{man}");
    assert_eq!(rec["data_sha256"], man["data_sha256"], "{man}");
    assert_eq!(rec["checkpoint_sha256"], man["checkpoint_sha256"], "{man}");
    let csv_bytes = std::fs::read(&csv).unwrap();
    let man_bytes = std::fs::read(&manifest).unwrap();
    // Every extension below asks for a new ratio too.
    let extend = |t: String| t.replace("ratios = [0.5]", "ratios = [0.5, 0.25]");
    let unchanged = || {
        assert_eq!(std::fs::read(&csv).unwrap(), csv_bytes);
        assert_eq!(std::fs::read(&manifest).unwrap(), man_bytes);
        assert!(hidden(&run).is_empty(), "{:?}", hidden(&run));
    };

    // Another evaluation subset: refused before any work, nothing changed.
    let reseeded = variant(root, &base, "reseeded", |t| {
        extend(t).replace("max_samples = 16\n", "max_samples = 16\nseed = 1\n")
    });
    let err = fails(&["sweep", "--config", &reseeded], root);
    assert!(
        err.contains("eval.seed was 0, now 1")
            && err.contains("another `name`")
            && err.contains("results/t/results.csv holds rows computed with other inputs"),
        "{err}"
    );
    unchanged();
    let fewer = variant(root, &base, "fewer", |t| {
        extend(t).replace("max_samples = 16\n", "max_samples = 8\n")
    });
    let err = fails(&["run", "--config", &fewer], root);
    assert!(err.contains("eval.max_samples was 16, now 8"), "{err}");
    unchanged();

    // Another refit ridge, with refit rows present: refused.
    let ridge = variant(root, &base, "ridge", |t| {
        extend(t).replace("refit_ridge = 0.0001", "refit_ridge = 0.001")
    });
    let err = fails(&["sweep", "--config", &ridge], root);
    assert!(
        err.contains("sweep.refit_ridge was 0.0001, now 0.001"),
        "{err}"
    );
    unchanged();

    // Other data files (same names, other reviews): refused.
    let data = root.join("data");
    let saved = root.join("data-saved");
    std::fs::rename(&data, &saved).unwrap();
    bench::data::write_fixture(&data, 96, 48, 8, 60, 8).unwrap();
    let extended = variant(root, &base, "extended", extend);
    let err = fails(&["sweep", "--config", &extended], root);
    assert!(
        err.contains("the data files (sha256) was") && err.contains("test-00000-of-00001.parquet"),
        "{err}"
    );
    unchanged();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&saved, &data).unwrap();

    // The same inputs (an option no existing row uses may change): resumes, adds the new ratio;
    // a killed run's half-drawn figure is cleaned up.
    let lqo = variant(root, &base, "lqo", |t| {
        format!("{}lqo_floor_fraction = 1.0\n", extend(t))
    });
    let stale_png = run.join(format!(".error_calibration.png.{}.tmp.png", dead_pid()));
    std::fs::write(&stale_png, b"\x89PNG half").unwrap();
    succeeds(&["sweep", "--config", &lqo], root);
    assert!(!stale_png.exists());
    let rows = bench::results::read_rows(&csv).unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .lines()
            .take(4)
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&csv_bytes)
            .lines()
            .collect::<Vec<_>>(),
        "the existing rows are kept as they were"
    );
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(man["row_inputs"]["sweep"]["lqo_floor_fraction"], 1.0);
    assert_eq!(man["earlier_runs"].as_array().unwrap().len(), 1);

    // A manifest of before the record: accepted, and the record written.
    let mut old = man.clone();
    old.as_object_mut().unwrap().remove("row_inputs");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    succeeds(&["sweep", "--config", &lqo], root);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(man["row_inputs"]["eval"]["seed"], 0, "{man}");

    // A damaged manifest beside rows: refused (what the rows mean is unknown).
    std::fs::write(&manifest, b"{\"name\": ").unwrap();
    let err = fails(&["sweep", "--config", &lqo], root);
    assert!(
        err.contains("manifest.json is damaged") && err.contains("cannot be read"),
        "{err}"
    );
    assert_eq!(std::fs::read(&manifest).unwrap(), b"{\"name\": ");
}

#[test]
fn a_figure_that_cannot_be_written_is_named_without_litter() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let cfg_s = cfg.to_str().unwrap();
    let run = root.join("results/t");
    succeeds(&["sweep", "--config", cfg_s], root);
    let figure = run.join("error_calibration.png");
    let before = std::fs::read(run.join("accuracy_vs_params.png")).unwrap();
    // A directory of the user's where a figure goes: `plot` fails naming it, leaves it alone
    // and leaves no temporary file.
    std::fs::remove_file(&figure).unwrap();
    std::fs::create_dir(&figure).unwrap();
    std::fs::write(figure.join("notes.txt"), b"keep me").unwrap();
    let err = fails(&["plot", "--config", cfg_s], root);
    assert!(
        err.contains(&format!("cannot write the figure {}", figure.display())),
        "{err}"
    );
    assert!(!err.contains("Os {") && !err.contains("Kind"), "{err}");
    assert_eq!(std::fs::read(figure.join("notes.txt")).unwrap(), b"keep me");
    assert!(hidden(&run).is_empty(), "{:?}", hidden(&run));
    let png = std::fs::read(run.join("accuracy_vs_params.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(png.len(), before.len());
}

/// kill -9 at seeded random instants of a sweep and of `compress`, then a rerun: the sweep's rows
/// are complete with no key twice and agree with an uninterrupted run, `kept_modes.csv` matches
/// `results.csv`, and no temporary file is left behind (the rerun cleans a killed run's).
#[test]
fn kill_9_at_random_instants_loses_nothing_and_leaves_no_litter() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            r#"methods = ["modal"]"#,
            r#"methods = ["modal", "h2", "emodal+refit"]"#,
        )
        .replace("ratios = [0.5]", "ratios = [0.25, 0.5, 0.75]");
    std::fs::write(&cfg, text_cfg).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    // An uninterrupted run in a copy of the setup is the reference.
    let reference = root.join("reference.toml");
    std::fs::write(
        &reference,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("name = \"t\"", "name = \"r\"")
            .replace(
                "[data]",
                &format!(
                    "checkpoint = \"{}\"\n\n[data]",
                    root.join("results/t/model").display()
                ),
            ),
    )
    .unwrap();
    succeeds(&["sweep", "--config", reference.to_str().unwrap()], root);
    let want = bench::results::read_rows(&root.join("results/r/results.csv")).unwrap();
    assert_eq!(want.len(), 1 + 3 * 3);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let run = root.join("results/t");
    for _ in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["sweep", "--config", cfg_s])
            .current_dir(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(30..900)));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        // Whatever was written parses, and every row has its kept-modes record.
        let rows = bench::results::read_rows(&run.join("results.csv")).unwrap();
        let kept: Vec<bench::results::KeptModes> =
            bench::results::read_csv(&run.join("kept_modes.csv")).unwrap();
        for r in &rows {
            assert!(
                kept.iter()
                    .any(|k| k.method == r.method && bench::results::same_ratio(k.ratio, r.ratio))
            );
        }
    }
    succeeds(&["sweep", "--config", cfg_s], root);
    let got = bench::results::read_rows(&run.join("results.csv")).unwrap();
    assert_eq!(got.len(), want.len());
    for w in &want {
        let g: Vec<_> = got
            .iter()
            .filter(|g| g.has_key(&w.method, w.ratio))
            .collect();
        assert_eq!(g.len(), 1, "{} @ {}", w.method, w.ratio);
        assert_eq!(g[0].kept_modes, w.kept_modes, "{} @ {}", w.method, w.ratio);
        assert_eq!(g[0].accuracy, w.accuracy, "{} @ {}", w.method, w.ratio);
        assert!(
            (g[0].logit_err_mean - w.logit_err_mean).abs() <= 1e-9 * w.logit_err_mean.max(1.0),
            "{} @ {}",
            w.method,
            w.ratio
        );
    }
    let litter: Vec<String> = hidden(&run)
        .into_iter()
        .filter(|n| n.contains("tmp") || n.contains(".old"))
        .collect();
    assert!(litter.is_empty(), "left behind: {litter:?}");

    // compress killed at random instants, then completed: the output is whole, no temporary.
    let out = root.join("out");
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args([
                "compress",
                "--config",
                cfg_s,
                "--method",
                "emodal+refit",
                "--ratio",
                "0.5",
                "--out",
            ])
            .arg(&out)
            .current_dir(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(20..600)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let o = bench(
        &[
            "compress",
            "--config",
            cfg_s,
            "--method",
            "emodal+refit",
            "--ratio",
            "0.5",
            "--out",
            out.to_str().unwrap(),
        ],
        root,
    );
    assert!(o.status.success(), "{}", text(&o));
    succeeds(
        &[
            "eval",
            "--config",
            cfg_s,
            "--checkpoint",
            out.to_str().unwrap(),
            "--json",
        ],
        root,
    );
    let litter: Vec<String> = hidden(root)
        .into_iter()
        .filter(|n| n.contains("tmp") || n.contains(".old"))
        .collect();
    assert!(litter.is_empty(), "left behind: {litter:?}");
}
