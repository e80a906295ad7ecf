//! End-to-end tests of the `bench` binary on a synthetic fixture dataset (no network, no real
//! data): train a tiny model, sweep all methods × 3 ratios with an interruption and a resume,
//! plots, manifest, `verify` of the committed rows, compress + eval of a compressed checkpoint, and
//! the bad-input messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ALL_METHODS: [&str; 21] = [
    "modal",
    "bt",
    "last",
    "aire",
    "last-ref",
    "aire-ref",
    "global-hinf",
    "uniform-hinf",
    "h2",
    "tlh2",
    "lqo-h2",
    "lqo-h2@bound",
    "lqo-h2-taylor",
    "ebt",
    "emodal",
    "emodal+refit",
    "h2+refit-seq",
    "modal@uniform",
    "emodal@sens+refit",
    "emodal@first-order+refit",
    "bt[1=modal]",
];
const RATIOS: [f64; 3] = [0.25, 0.5, 0.75];

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

/// A tiny config over a fixture written into `root/data`.
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
max_steps = 6
eval_each_epoch = false
progress = false

[eval]
max_samples = 40
batch_size = 16

[sweep]
methods = {methods:?}
ratios = [0.25, 0.5, 0.75]
refit_reviews = 48
"#,
        out = root.join("results").display(),
        data = root.join("data").display(),
        methods = ALL_METHODS,
    );
    let p = root.join("tiny.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn read_rows(p: &Path) -> Vec<bench::results::Row> {
    bench::results::read_rows(p).unwrap()
}

#[test]
fn pipeline_end_to_end_with_interruption_and_compressed_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let cfg_s = cfg.to_str().unwrap();
    let out = root.join("results/t");
    let csv = out.join("results.csv");

    // First run: trains the checkpoint, then is interrupted after 5 rows (full + 4 points).
    let o = bench(&["--config", cfg_s, "--stop-after-rows", "5"], root);
    assert!(o.status.success(), "{}", text(&o));
    let rows = read_rows(&csv);
    assert_eq!(rows.len(), 5, "{}", text(&o));
    assert_eq!(rows[0].method, "full");
    assert!(out.join("model/model.safetensors").exists());

    // Second run resumes: no duplicated or missing rows.
    let o = bench(&["run", "--config", cfg_s], root);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let new_rows = 1 + ALL_METHODS.len() * RATIOS.len() - 5;
    assert!(
        stdout.contains(&format!("{new_rows} new rows, 4 already present")),
        "{}",
        text(&o)
    );
    let rows = read_rows(&csv);
    assert_eq!(rows.len(), 1 + ALL_METHODS.len() * RATIOS.len());
    assert_eq!(rows[0].method, "full");
    assert_eq!(rows[0].ratio, 0.0);
    for m in ALL_METHODS {
        for r in RATIOS {
            let n = rows.iter().filter(|x| x.has_key(m, r)).count();
            assert_eq!(n, 1, "{m} @ {r} appears {n} times");
        }
    }
    let header = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        header.lines().next().unwrap(),
        "method,ratio,kept_modes,ssm_params,total_params,param_reduction,ssm_param_reduction,\
         accuracy,n_eval,\
         logit_err_mean,logit_err_max,bound_max,bound_holds,stable,reduce_seconds,eval_seconds,\
         infer_tokens_per_s,bound_median,bound_over_error_median,estimate_reviews,estimate_mean,\
         estimate_conservative_mean,estimate_over_error_median"
    );
    let full = &rows[0];
    assert_eq!(full.n_eval, 40);
    for r in &rows[1..] {
        assert_eq!(r.n_eval, 40);
        assert!(r.total_params < full.total_params, "{r:?}");
        assert!(r.kept_modes < full.kept_modes, "{r:?}");
        assert!(r.param_reduction > 0.0 && r.param_reduction < 1.0, "{r:?}");
        assert!(r.logit_err_max >= r.logit_err_mean, "{r:?}");
        if r.stable && r.bound_max.is_finite() {
            assert!(r.bound_holds, "bound violated: {r:?}");
            assert!(r.bound_median <= r.bound_max, "{r:?}");
        }
        // The first-order estimate on every evaluated review (40 < the default 128).
        assert_eq!(r.estimate_reviews, 40, "{r:?}");
        assert!(
            r.estimate_mean.is_finite() && r.estimate_mean >= 0.0,
            "{r:?}"
        );
        assert!(
            r.estimate_conservative_mean >= r.estimate_mean * (1.0 - 1e-9),
            "{r:?}"
        );
    }
    // uniform methods at the same ratio keep the same number of modes
    let k = |m: &str, r: f64| rows.iter().find(|x| x.has_key(m, r)).unwrap().kept_modes;
    assert_eq!(k("modal", 0.5), k("bt", 0.5));
    assert_eq!(k("modal", 0.5), 4); // 2 layers × 4 modes, half removed
    // A post-step keeps the reducer's orders and changes the model.
    for r in RATIOS {
        let row = |m: &str| rows.iter().find(|x| x.has_key(m, r)).unwrap();
        assert_eq!(row("emodal+refit").kept_modes, row("emodal").kept_modes);
        assert_eq!(row("h2+refit-seq").kept_modes, row("h2").kept_modes);
        assert!(row("emodal+refit").logit_err_mean.is_finite());
        assert_ne!(
            row("emodal+refit").logit_err_mean,
            row("emodal").logit_err_mean
        );
        // `@uniform` is modal's own allocation: the very same rows.
        let (a, b) = (row("modal@uniform"), row("modal"));
        assert_eq!(
            (a.kept_modes, a.accuracy, a.logit_err_mean),
            (b.kept_modes, b.accuracy, b.logit_err_mean)
        );
        // `@sens` spends exactly the budget.
        assert_eq!(
            row("emodal@sens+refit").kept_modes,
            row("emodal").kept_modes
        );
        assert!(row("emodal@sens+refit").logit_err_mean.is_finite());
        assert_eq!(
            row("emodal@first-order+refit").kept_modes,
            row("emodal").kept_modes
        );
        assert!(row("emodal@first-order+refit").logit_err_mean.is_finite());
        // A layer override keeps the orders and changes only its layers.
        assert_eq!(row("bt[1=modal]").kept_modes, row("bt").kept_modes);
        // `lqo-h2` keeps the same ratio in every layer, like `h2`.
        assert_eq!(row("lqo-h2").kept_modes, row("h2").kept_modes);
    }

    for f in [
        "accuracy_vs_params.png",
        "accuracy_vs_params.svg",
        "error_calibration.png",
        "modes_per_layer.png",
        "accuracy_vs_speed.png",
        "accuracy_vs_speed.svg",
        "kept_modes.csv",
    ] {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        let min = if f.ends_with(".csv") { 200 } else { 5000 };
        assert!(len > min, "{f}: {len} bytes");
    }
    // What the data-driven parts measured: the `sens` curves (cost 0 at the full order, one
    // curve per layer) and the lqo-h2 gate fits.
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("calibration.json")).unwrap())
            .unwrap();
    for key in ["sens costs emodal+refit", "first-order costs emodal+refit"] {
        let curves = cal[key]["curves"].as_array().unwrap();
        assert_eq!(curves.len(), 2, "{key}: {cal}");
        for c in curves {
            assert_eq!(c["costs"].as_array().unwrap().last().unwrap(), 0.0);
            assert_eq!(c["orders"][0], 1);
        }
    }
    // The bound's per-layer factors of every reduced row.
    let factors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bound_factors.json")).unwrap())
            .unwrap();
    let factors = factors.as_array().unwrap();
    assert!(factors.len() >= 3 * RATIOS.len(), "{}", factors.len());
    for f in factors {
        assert_eq!(f["layers"].as_array().unwrap().len(), 2, "{f}");
    }
    let fits = cal["lqo-h2 gate fit per layer"].as_array().unwrap();
    assert_eq!(fits.len(), 2);
    // (The mean Jacobian is not the least-squares linear model, so the fitted model can be
    // worse than the Taylor one where the gate works near y = 0, as in this tiny model.)
    for f in fits {
        for k in ["fitted_error", "taylor_error", "mean_opening"] {
            let v = f[k].as_f64().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{f}");
        }
    }
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for key in [
        "git_commit",
        "build_commit",
        "config_sha256",
        "data_sha256",
        "checkpoint_sha256",
        "machine",
        "threads",
        "start_time",
        "end_time",
        "stage_seconds",
    ] {
        assert!(!man[key].is_null(), "manifest lacks {key}: {man}");
    }
    assert_eq!(man["threads"], 2);
    assert_eq!(man["data_sha256"].as_object().unwrap().len(), 2);
    // The interrupted first run, whose 5 rows this run kept, is recorded (it never ended).
    let earlier = man["earlier_runs"].as_array().expect("earlier_runs");
    assert_eq!(earlier.len(), 1, "{man}");
    assert_eq!(earlier[0]["end_time"], "");
    assert!(earlier[0]["stage_seconds"]["sweep"].as_f64().unwrap() > 0.0);

    // A third run has nothing to compute.
    let o = bench(&["--config", cfg_s], root);
    assert!(o.status.success(), "{}", text(&o));
    let points = ALL_METHODS.len() * RATIOS.len();
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains(&format!("0 new rows, {points} already present"))
    );
    assert_eq!(read_rows(&csv).len(), 1 + points);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(man["earlier_runs"].as_array().unwrap().len(), 2, "{man}");

    verify_recomputes_the_committed_rows(root, cfg_s, &out);
    fresh_out_dir_recomputes_every_row(root, cfg_s, &out);

    // plot re-draws from the CSV.
    std::fs::remove_file(out.join("error_calibration.png")).unwrap();
    let o = bench(&["plot", "--config", cfg_s], root);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("error_calibration.png").exists());

    // compress writes a checkpoint that evaluates to the sweep's accuracy for that point (for
    // ebt, whose Gramians compress records again from the calibration reviews, too).
    for method in ["bt", "ebt", "emodal", "emodal+refit"] {
        let comp = root.join(format!("{method}-half"));
        let o = bench(
            &[
                "compress",
                "--config",
                cfg_s,
                "--method",
                method,
                "--ratio",
                "0.5",
                "--out",
                comp.to_str().unwrap(),
            ],
            root,
        );
        assert!(o.status.success(), "{}", text(&o));
        let o = bench(
            &[
                "eval",
                "--config",
                cfg_s,
                "--checkpoint",
                comp.to_str().unwrap(),
                "--json",
            ],
            root,
        );
        assert!(o.status.success(), "{}", text(&o));
        let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let row = rows.iter().find(|x| x.has_key(method, 0.5)).unwrap();
        assert_eq!(ev["n_eval"], 40);
        assert_eq!(
            ev["total_params"].as_u64().unwrap() as usize,
            row.total_params
        );
        assert!(
            (ev["accuracy"].as_f64().unwrap() - row.accuracy).abs() < 1e-12,
            "{ev} vs {row:?}"
        );
        assert_eq!(ev["reduction"]["method"], method);
    }

    // recalibrate-bn: one batch of the 40 training reviews `eval --split train` reads, so the
    // recalibrated model in evaluation mode reproduces batch-statistics mode on them.
    let pbn = root.join("pbn");
    let calibration = ["--reviews", "40", "--seed", "0", "--batch", "40"];
    let o = bench(
        &[
            &[
                "recalibrate-bn",
                "--config",
                cfg_s,
                "--out",
                pbn.to_str().unwrap(),
            ][..],
            &calibration,
        ]
        .concat(),
        root,
    );
    assert!(o.status.success(), "{}", text(&o));
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pbn.join("recalibration.json")).unwrap()).unwrap();
    assert_eq!(rec["recalibration"]["reviews"], 40);
    assert_eq!(rec["recalibration"]["batches"], 1);
    let o = bench(
        &[
            "eval",
            "--config",
            cfg_s,
            "--checkpoint",
            pbn.to_str().unwrap(),
            "--split",
            "train",
            "--json",
        ],
        root,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        ev["accuracy"], rec["recalibration"]["batch_stats_accuracy"],
        "{ev} vs {rec}"
    );
    // Only the running statistics changed.
    let dev = candle_core::Device::Cpu;
    let a = s5::checkpoint::read_tensors(&out.join("model/model.safetensors"), &dev).unwrap();
    let b = s5::checkpoint::read_tensors(&pbn.join("model.safetensors"), &dev).unwrap();
    assert_eq!(a.len(), b.len());
    let mut changed = Vec::new();
    for (name, t) in &a {
        let d: f32 = (t - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        if d > 0.0 {
            changed.push(name.clone());
        }
    }
    changed.sort();
    assert!(!changed.is_empty());
    assert!(
        changed
            .iter()
            .all(|n| n.ends_with("running_mean") || n.ends_with("running_var")),
        "{changed:?}"
    );
    // swa of the model and its recalibrated copy (equal weights, different running statistics),
    // calibrated on the same reviews: exactly the recalibrated checkpoint.
    let swa = root.join("swa");
    let model_dir = out.join("model");
    let o = bench(
        &[
            &[
                "swa",
                "--config",
                cfg_s,
                "--checkpoints",
                model_dir.to_str().unwrap(),
                pbn.to_str().unwrap(),
                "--out",
                swa.to_str().unwrap(),
            ][..],
            &calibration,
        ]
        .concat(),
        root,
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = s5::checkpoint::read_tensors(&swa.join("model.safetensors"), &dev).unwrap();
    assert_eq!(c.len(), b.len());
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, t) in &c {
        assert_eq!(values(t), values(&b[name]), "{name}");
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(swa.join("recalibration.json")).unwrap()).unwrap();
    assert_eq!(rec["swa_members"].as_array().unwrap().len(), 2, "{rec}");
    // A compressed checkpoint is refused with a pointer to the fix.
    let o = bench(
        &[
            "recalibrate-bn",
            "--config",
            cfg_s,
            "--checkpoint",
            root.join("bt-half").to_str().unwrap(),
            "--out",
            root.join("pbn2").to_str().unwrap(),
        ],
        root,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("recalibrate the full model"),
        "{}",
        text(&o)
    );
    assert!(!root.join("pbn2").exists());
}

/// Names, sizes and modification times of the files in `dir` (recursively).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(snapshot(&e.path()));
        } else {
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// `--out-dir` writes a complete new run from the same checkpoint and leaves the committed one
/// untouched: every row recomputed, with the same kept modes and accuracies.
fn fresh_out_dir_recomputes_every_row(root: &Path, cfg_s: &str, out: &Path) {
    let before = snapshot(out);
    let fresh = root.join("fresh");
    let o = bench(
        &["--config", cfg_s, "--out-dir", fresh.to_str().unwrap()],
        root,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(out), before, "--out-dir changed the committed run");
    assert!(
        !fresh.join("t").join("model").exists(),
        "the checkpoint was retrained"
    );
    let (old, new) = (
        read_rows(&out.join("results.csv")),
        read_rows(&fresh.join("t").join("results.csv")),
    );
    assert_eq!(old.len(), new.len());
    for r in &old {
        let n = new
            .iter()
            .find(|x| x.has_key(&r.method, r.ratio))
            .unwrap_or_else(|| panic!("{} @ {} missing", r.method, r.ratio));
        assert_eq!(
            (n.kept_modes, n.accuracy),
            (r.kept_modes, r.accuracy),
            "{}",
            r.method
        );
    }
}

/// `bench verify` on the finished sweep of `out`: the sampled rows reproduce and nothing in the
/// run directory changes; an altered accuracy, a missing CSV and another checkpoint's digest are
/// reported.
fn verify_recomputes_the_committed_rows(root: &Path, cfg_s: &str, out: &Path) {
    let before = snapshot(out);
    let o = bench(&["verify", "--config", cfg_s, "--rows", "3"], root);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("committed") && stdout.contains("recomputed"),
        "{}",
        text(&o)
    );
    // The full row and 3 reduced rows, 13 fields each, and `bound_median`, `estimate_mean` of
    // each reduced row, all ok.
    let ok_lines = stdout.lines().filter(|l| l.ends_with("  ok")).count();
    assert_eq!(ok_lines, 4 * 13 + 3 * 2, "{}", text(&o));
    let reduced = ALL_METHODS.len() * RATIOS.len();
    assert!(
        stdout.contains(&format!("full + 3 of {reduced} reduced rows")),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(out), before, "verify changed the run directory");

    // A copy of the run's files with one sampled row's accuracy altered.
    let alt = root.join("verify-copy");
    std::fs::create_dir_all(&alt).unwrap();
    for f in ["results.csv", "kept_modes.csv", "manifest.json"] {
        std::fs::copy(out.join(f), alt.join(f)).unwrap();
    }
    let csv = alt.join("results.csv");
    let mut rows = read_rows(&csv);
    let picked = bench::verify::sample(&rows, 3, 0);
    let i = picked[2];
    rows[i].accuracy += 0.025;
    let label = bench::verify::label(&rows[i]);
    bench::results::write_csv_atomic(&csv, &rows, &bench::results::COLUMNS).unwrap();
    let csv_s = csv.to_str().unwrap();
    let o = bench(
        &["verify", "--config", cfg_s, "--rows", "3", "--csv", csv_s],
        root,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("MISMATCH").count(), 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{label} (accuracy)")) && err.contains("1 of 4 checked rows"),
        "{}",
        text(&o)
    );

    // Rows of another checkpoint (per manifest.json), and no results at all.
    let man_path = alt.join("manifest.json");
    let mut man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&man_path).unwrap()).unwrap();
    man["checkpoint_sha256"] = "0".repeat(64).into();
    std::fs::write(&man_path, man.to_string()).unwrap();
    let o = bench(&["verify", "--config", cfg_s, "--csv", csv_s], root);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not the one the rows of") && text(&o).contains(&"0".repeat(64)),
        "{}",
        text(&o)
    );
    let missing = root.join("nothing/results.csv");
    let o = bench(
        &[
            "verify",
            "--config",
            cfg_s,
            "--csv",
            missing.to_str().unwrap(),
        ],
        root,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    assert_eq!(snapshot(out), before);
}

#[test]
fn bad_configs_give_one_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cases = [
        ("bogus_key = 1\n", "bogus_key"),
        ("[sweep]\nratios = [0.5, 1.0]\n", "[0, 1)"),
        (
            "[sweep]\nmethods = [\"bt\", \"pca\"]\nratios = [0.5]\n",
            "unknown method `pca`",
        ),
        ("[eval]\nbatch_size = 0\n", "eval.batch_size"),
        (
            "[train]\nepochs = 1\nbatch_size = 2\nlr = 0.1\nssm_lr = 0.1\nweight_decay = 0.0\nseed = 1\nbucket_batches = 0\n",
            "train.bucket_batches",
        ),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let p = root.join(format!("c{i}.toml"));
        std::fs::write(&p, body).unwrap();
        let o = bench(&["--config", p.to_str().unwrap()], root);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    let o = bench(&["--config", "does-not-exist.toml"], root);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn bad_checkpoint_and_unwritable_out_dir_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = setup(root);
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();

    // corrupt checkpoint: garbage weights next to a valid config.json
    let ck = root.join("results/t/model");
    std::fs::create_dir_all(&ck).unwrap();
    let cfg_json = serde_json::json!({
        "format": 1,
        "model": {
            "vocab_size": 257, "n_classes": 2, "d_model": 8, "n_layers": 2, "ssm_size": 8,
            "blocks": 2, "bidirectional": true, "norm": "batch", "gate": "half_glu2",
            "dropout": 0.0, "dt_min": 0.001, "dt_max": 0.1
        },
        "tokenizer": "byte",
        "max_len": 96
    });
    std::fs::write(ck.join("config.json"), cfg_json.to_string()).unwrap();
    std::fs::write(ck.join("model.safetensors"), b"not a safetensors file").unwrap();
    let o = bench(&["sweep", "--config", cfg.to_str().unwrap()], root);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // missing checkpoint and nothing to train it from
    let no_model = root.join("nomodel.toml");
    let body: String = text_cfg
        .split("[model]")
        .next()
        .unwrap()
        .replace("name = \"t\"", "name = \"u\"")
        + "[sweep]\nratios = [0.5]\n";
    std::fs::write(&no_model, body).unwrap();
    let o = bench(&["--config", no_model.to_str().unwrap()], root);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no checkpoint") && err.contains("[model]"),
        "{err}"
    );
    // The failed run leaves no empty run directory behind.
    assert!(!root.join("results/u").exists());

    // unwritable output directory
    let bad_out = root.join("badout.toml");
    std::fs::write(
        &bad_out,
        text_cfg.replace(
            &format!("out_dir = \"{}\"", root.join("results").display()),
            "out_dir = \"/proc/bench-cannot-write-here\"",
        ),
    )
    .unwrap();
    let o = bench(&["--config", bad_out.to_str().unwrap()], root);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("out_dir"), "{err}");
}
