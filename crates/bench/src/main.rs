//! `bench`: the reproduction runner. `bench --config imdb.toml` (= `bench run`) makes sure the
//! data is there, loads or trains the checkpoint, evaluates the full model, then reduces it with
//! every method at every ratio (no retraining), evaluates each reduction, computes the
//! output-error bound and the measured error, and writes `results/<name>/results.csv` (one row
//! at a time, resumable), the plots and `manifest.json`. Subcommands run the stages alone.

mod config;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench::backend::S5Backend;
use bench::manifest::{Manifest, sha256_file};
use bench::pipeline::{self, EvalSet, Loaded};
use bench::reducer::{Calibration, Reducer};
use bench::results::{ResultsStore, write_atomic};
use bench::sweep::{SweepBackend, SweepOptions, run_sweep, summary_table};
use clap::{Args, Parser, Subcommand};
use indicatif::MultiProgress;

use config::RunConfig;

/// Reproduction runner for S5 on LRA IMDb with model order reduction.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Run configuration (TOML); a bare file name not found in the working directory is looked up in
    /// `configs/`.
    #[arg(long, global = true, default_value = "imdb.toml")]
    config: PathBuf,
    /// Write the run's outputs (results, plots, manifest) to `<DIR>/<name>/` instead of the
    /// config's `out_dir`, e.g. to reproduce a committed sweep from scratch without touching it.
    /// The checkpoint stays the config's (default `<config out_dir>/<name>/model`).
    #[arg(long, global = true, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args, Clone, Default)]
struct RunArgs {
    /// Train the checkpoint again even if it exists (the old one is moved aside to
    /// `<checkpoint>.before-retrain-<unix seconds>`, not deleted).
    #[arg(long)]
    retrain: bool,
    /// Stop after writing this many new result rows (for testing interruption and resume).
    #[arg(long, hide = true)]
    stop_after_rows: Option<usize>,
}

/// The calibration reviews of `recalibrate-bn` and `swa`.
#[derive(Debug, Args, Clone, Copy)]
struct CalibrationArgs {
    /// Seeded, class-balanced training reviews to calibrate on (0 = all 25,000).
    #[arg(long, default_value_t = 2000)]
    reviews: usize,
    /// Seed of the calibration subset and batch order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Batch size (default: the config's `[train] batch_size`).
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole pipeline (the default): data, checkpoint, full model, sweep, plots, manifest.
    Run(RunArgs),
    /// Fetch the IMDb reviews if missing, run the self-checks and print the dataset statistics.
    Data {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train the checkpoint named by the config (resumes an interrupted run).
    Train {
        /// Start over even if a checkpoint exists (the old one is moved aside to
        /// `<checkpoint>.before-retrain-<unix seconds>`, not deleted).
        #[arg(long)]
        retrain: bool,
    },
    /// Evaluate a checkpoint (default: the config's) on the evaluation set.
    Eval {
        /// Checkpoint directory (plain or compressed).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Which split the reviews come from: `test` (default) or `train` (to measure the
        /// generalisation gap; the same `[eval]` subset rules apply).
        #[arg(long, default_value = "test", value_parser = ["test", "train"])]
        split: String,
    },
    /// Precise BatchNorm: re-estimate every BatchNorm layer's running statistics from training
    /// reviews with the checkpoint's final weights (Wu & Johnson, 2021), and write the result as
    /// a new checkpoint (weights unchanged) with `recalibration.json`.
    RecalibrateBn {
        /// Checkpoint directory (plain, not compressed; default: the config's).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Output checkpoint directory: new, empty, or an earlier output of this same command
        /// (then replaced atomically); never a source checkpoint or a directory holding one.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        calibration: CalibrationArgs,
    },
    /// Stochastic weight averaging (SWA; Izmailov et al., 2018): the uniform average of the
    /// weights of several checkpoints of one run (e.g. its epoch ends), then its BatchNorm
    /// statistics re-estimated exactly as by `recalibrate-bn` (SWA's "BN update"); written as a
    /// new checkpoint with `recalibration.json` naming every member and its SHA-256.
    Swa {
        /// Checkpoint directories to average (two or more plain checkpoints of one model; a run
        /// directory stands for its latest step checkpoint).
        #[arg(long, num_args = 2.., required = true)]
        checkpoints: Vec<PathBuf>,
        /// Output checkpoint directory: new, empty, or an earlier output of this same command
        /// (then replaced atomically); never a source checkpoint or a directory holding one.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        calibration: CalibrationArgs,
    },
    /// Write a reduced checkpoint for one method and ratio.
    Compress {
        /// Reduction method (modal, bt, last, global-hinf, uniform-hinf, h2, tlh2, lqo-h2).
        #[arg(long)]
        method: String,
        /// Fraction of SSM modes removed, in [0, 1).
        #[arg(long)]
        ratio: f64,
        /// Output directory (default `<out_dir>/<name>/compressed/<method>-<ratio>`): new, empty,
        /// or an earlier `compress` output (then replaced atomically); never the source checkpoint
        /// or a directory holding it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The sweep alone (the checkpoint must exist).
    Sweep {
        /// Stop after writing this many new result rows (for testing).
        #[arg(long, hide = true)]
        stop_after_rows: Option<usize>,
    },
    /// Reproducibility check: recompute the full row and a seeded sample of the reduced rows of
    /// `results.csv` from the checkpoint and compare them with the committed values.
    ///
    /// The rows are recomputed as the sweep computed them (the config's `[eval]` set, `[sweep]`
    /// reduce and refit options, the same calibration and refit reviews). Compared: every column
    /// but the timings (`reduce_seconds`, `eval_seconds`, `infer_tokens_per_s`) and the kept
    /// modes per layer of `kept_modes.csv`; integers and flags exactly, accuracy and parameter
    /// reductions to 1e-12, `logit_err_mean` and `logit_err_max` to a relative 1e-6,
    /// `bound_max` to a relative 1e-3 (NaN equals NaN). Refused if the checkpoint's weights
    /// digest differs from `checkpoint_sha256` in the run's `manifest.json`. Prints a table and
    /// exits non-zero, naming the rows that differ, on any mismatch. Writes nothing.
    Verify {
        /// Reduced rows to sample and recompute (the full row is always checked; more than
        /// there are checks them all).
        #[arg(long, default_value_t = 4)]
        rows: usize,
        /// Seed of the sample (ChaCha8 shuffle of the reduced rows).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The CSV to check (default `<out_dir>/<name>/results.csv`); `kept_modes.csv` and
        /// `manifest.json` are read next to it.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Re-draw the plots from a results CSV.
    Plot {
        /// The CSV (default `<out_dir>/<name>/results.csv`); plots go next to it.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// More `results.csv` files of the same model on the same reviews (their `full` rows
        /// must agree) whose rows are drawn in the same figures; repeatable.
        #[arg(long)]
        also: Vec<PathBuf>,
        /// Directory for the figures and `summary.md` (default: next to `--csv`); created if
        /// missing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a small synthetic dataset in the Hugging Face parquet layout (for CI and tests; read
    /// it with `data.source = "dir"`, `data.dir = <dir>`).
    Fixture {
        /// Data directory to write `imdb/plain_text/*.parquet` into.
        #[arg(long)]
        dir: PathBuf,
        /// Training reviews.
        #[arg(long, default_value_t = 400)]
        train: usize,
        /// Test reviews.
        #[arg(long, default_value_t = 200)]
        test: usize,
    },
    /// Measure inference and training speed of the config's model on synthetic input.
    Perf {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Sequence length (default `data.max_len`).
        #[arg(long)]
        len: Option<usize>,
        /// Timed repetitions (median).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Reuse freed activation buffers instead of page-faulting fresh ones for every op.
    s5::perf::keep_freed_buffers();
    if let Err(e) = real_main() {
        eprintln!("error: {}", mor::error::one_line(e.as_ref()));
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Fixture { dir, train, test }) = &cli.command {
        let files = bench::data::write_fixture(dir, *train, *test, 8, 200, 0)?;
        for f in files {
            println!("{}", f.display());
        }
        return Ok(());
    }
    let config_path = config::resolve(&cli.config)?;
    let mut cfg = RunConfig::load(&config_path)?;
    if let Some(dir) = &cli.out_dir {
        cfg.checkpoint = Some(cfg.checkpoint_dir());
        cfg.out_dir.clone_from(dir);
    }
    set_threads(cfg.n_threads())?;
    match cli.command {
        None => run(&cfg, &config_path, &cli.run),
        Some(Command::Run(args)) => run(&cfg, &config_path, &args),
        Some(Command::Data { json }) => data(&cfg, json),
        Some(Command::Train { retrain }) => {
            let _run = RunGuard::acquire(&cfg.run_dir(), "train")?;
            let imdb = bench::data::load(&cfg.data)?;
            let t = Instant::now();
            let dir = ensure_checkpoint(&cfg, &imdb, retrain)?;
            println!(
                "checkpoint {} ready ({:.1} s)",
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some(Command::Eval {
            checkpoint,
            json,
            split,
        }) => {
            if let Some(c) = &checkpoint {
                checkpoint_dir_arg(c, "--checkpoint")?;
            }
            eval_cmd(&cfg, checkpoint, json, &split)
        }
        Some(Command::RecalibrateBn {
            checkpoint,
            out,
            calibration,
        }) => {
            let checkpoint = checkpoint.unwrap_or_else(|| cfg.checkpoint_dir());
            checkpoint_dir_arg(&checkpoint, "--checkpoint")?;
            recalibrate_bn(&cfg, &[checkpoint], &out, &calibration, "recalibrate-bn")
        }
        Some(Command::Swa {
            checkpoints,
            out,
            calibration,
        }) => {
            for c in &checkpoints {
                checkpoint_dir_arg(c, "--checkpoints")?;
            }
            recalibrate_bn(&cfg, &checkpoints, &out, &calibration, "swa")
        }
        Some(Command::Compress { method, ratio, out }) => compress(&cfg, &method, ratio, out),
        Some(Command::Sweep { stop_after_rows }) => {
            let args = RunArgs {
                retrain: false,
                stop_after_rows,
            };
            sweep_stage(&cfg, &config_path, &args, false)
        }
        Some(Command::Verify { rows, seed, csv }) => {
            let csv = csv.unwrap_or_else(|| cfg.run_dir().join("results.csv"));
            verify(&cfg, &csv, rows, seed)
        }
        Some(Command::Plot { csv, also, out }) => {
            let csv = csv.unwrap_or_else(|| cfg.run_dir().join("results.csv"));
            let files = plot_merged(&csv, &also, out.as_deref())?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Some(Command::Perf {
            json,
            batch,
            len,
            reps,
        }) => perf(&cfg, json, batch, len, reps),
        Some(Command::Fixture { .. }) => unreachable!("handled before the config is read"),
    }
}

/// Most worker threads `threads` may ask for: more than this is a typo (each thread also gets a
/// 64 MiB stack), not a tuning choice.
const MAX_THREADS: usize = 256;

/// Sizes rayon's global pool (and candle's CPU kernels, which read `RAYON_NUM_THREADS`); refuses
/// more than [`MAX_THREADS`].
fn set_threads(n: usize) -> Result<()> {
    if n > MAX_THREADS {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        bail!(
            "threads = {n} in the configuration is more than the {MAX_THREADS} allowed (this \
             machine has {cores} cores); set `threads` to at most {MAX_THREADS}, or to 0 for one \
             per core"
        );
    }
    // SAFETY: called once at start-up, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(64 << 20)
        .build_global()
        .context("building the thread pool")?;
    Ok(())
}

use bench::progress::bar;

/// `bench data`: load (fetching what is missing), verify, print the statistics.
fn data(cfg: &RunConfig, json: bool) -> Result<()> {
    let (imdb, stats) = lra::Imdb::load_verified(&cfg.data).with_context(|| {
        format!(
            "loading the IMDb reviews (data.source = {:?}, data.dir = {})",
            cfg.data.source,
            cfg.data.dir.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!(
        "IMDb reviews from {:?}: {}, {}",
        imdb.origin,
        imdb.files[0].display(),
        imdb.files[1].display()
    );
    println!("all self-checks passed (counts, distinct texts, bytes)");
    println!("{:<28} {:>12} {:>12}", "", "train", "test");
    let rows: [(&str, usize, usize); 8] = [
        ("reviews", stats.train, stats.test),
        ("positive", stats.train_pos, stats.test_pos),
        ("distinct texts", stats.train_distinct, stats.test_distinct),
        ("UTF-8 bytes", stats.train_bytes, stats.test_bytes),
        (
            "length p50 (bytes)",
            stats.len_p50.train,
            stats.len_p50.test,
        ),
        (
            "length p90 (bytes)",
            stats.len_p90.train,
            stats.len_p90.test,
        ),
        (
            "length max (bytes)",
            stats.len_max.train,
            stats.len_max.test,
        ),
        (
            "truncated at max_len",
            stats.truncated_at_max_len.train,
            stats.truncated_at_max_len.test,
        ),
    ];
    for (name, train, test) in rows {
        println!("{name:<28} {train:>12} {test:>12}");
    }
    println!("{:<28} {:>12}", "texts in both splits", stats.overlap);
    println!("{:<28} {:>12}", "max_len", cfg.data.max_len);
    if let Some(train) = &cfg.train {
        epoch_cost(cfg, train, &imdb.train)?;
    }
    Ok(())
}

/// Prints the positions one training epoch computes (true tokens plus padding) with the
/// configured length bucketing and with plain random batches (`train.bucket_batches = 1`, as
/// the public S5 code trains), at the configured batch size and seed; epoch cost is proportional.
fn epoch_cost(cfg: &RunConfig, train: &s5::train::TrainConfig, split: &lra::Split) -> Result<()> {
    let tok = lra::build_tokenizer(&cfg.data, split).context("building the tokenizer")?;
    let data = lra::Encoded::new(tok.as_ref(), split);
    let true_tokens = data.num_tokens();
    let batcher = lra::Batcher::new(data, train.batch_size, train.seed)?;
    let bucketed = batcher
        .clone()
        .with_bucket_batches(train.bucket_batches)
        .computed_tokens(0);
    let random = batcher.with_bucket_batches(1).computed_tokens(0);
    println!(
        "positions per training epoch (batch {}, all {} training reviews, epoch 1):",
        train.batch_size,
        split.texts.len()
    );
    println!("{:<28} {:>12}", "  true tokens", true_tokens);
    for (name, n) in [
        (
            format!("  bucket_batches = {}", train.bucket_batches),
            bucketed,
        ),
        ("  random batches".to_string(), random),
    ] {
        println!(
            "{name:<28} {n:>12}  ({:.2}x the true tokens)",
            n as f64 / true_tokens.max(1) as f64
        );
    }
    Ok(())
}

/// Makes sure the checkpoint exists (training it if missing or if `retrain`); returns its dir.
/// With `retrain`, the previous model is never deleted: its directory is moved aside to
/// [`move_aside_for_retrain`]'s backup before training starts (the user is told where).
fn ensure_checkpoint(cfg: &RunConfig, imdb: &lra::Imdb, retrain: bool) -> Result<PathBuf> {
    let dir = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &dir,
        "the checkpoint directory (`checkpoint` in the configuration)",
    )?;
    let (Some(model), Some(train)) = (&cfg.model, &cfg.train) else {
        if retrain {
            bail!(
                "--retrain: the configuration has no [model] and [train] sections to train {} \
                 from; nothing was changed",
                dir.display()
            );
        }
        if dir.join(s5::checkpoint::MODEL_FILE).exists() {
            return Ok(dir);
        }
        bail!(
            "no checkpoint at {} and the configuration has no [model] and [train] sections to \
             train one; set `checkpoint` to a trained model directory or add those sections",
            dir.display()
        );
    };
    if retrain {
        move_aside_for_retrain(&dir, &cfg.run_dir())?;
    }
    if dir.join(s5::checkpoint::MODEL_FILE).exists() {
        return Ok(dir);
    }
    let slice = bench::data::slice(&imdb.train, cfg.train_samples, train.seed);
    tracing::info!(
        "training {} on {} reviews into {}",
        cfg.name,
        slice.len(),
        dir.display()
    );
    // Per-epoch test accuracy on the reviews the sweep evaluates on ([eval]: all of them or a
    // seeded class-balanced subset).
    let eval = bench::data::slice(&imdb.test, cfg.eval.max_samples, cfg.eval.seed);
    let summary = pipeline::train(model, train, &cfg.data, &slice, Some(&eval), &dir)
        .with_context(|| format!("training the model into {}", dir.display()))?;
    let loss = summary
        .last_loss
        .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
    tracing::info!("trained {} steps, last loss {loss}", summary.steps);
    if !summary.epoch_accuracy.is_empty() {
        tracing::info!("test accuracy per epoch: {:?}", summary.epoch_accuracy);
    }
    Ok(dir)
}

/// `--retrain`: moves a non-empty checkpoint directory `dir` aside to the sibling
/// `<name>.before-retrain-<unix seconds>` (nothing is deleted; the new model is trained into a
/// fresh `dir`) and says so on stderr. Refused if `dir` holds the run directory `run_dir`.
fn move_aside_for_retrain(dir: &Path, run_dir: &Path) -> Result<()> {
    if !dir.exists() || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        return Ok(());
    }
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if abs(run_dir).starts_with(abs(dir)) {
        bail!(
            "--retrain: the checkpoint directory {} holds the run directory {}; give the \
             checkpoint its own directory (`checkpoint` in the configuration); nothing was changed",
            dir.display(),
            run_dir.display()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("--retrain: {} has no directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = dir.parent().unwrap_or(Path::new("."));
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backup = parent.join(format!("{name}.before-retrain-{secs}"));
    let mut k = 1;
    while backup.exists() {
        backup = parent.join(format!("{name}.before-retrain-{secs}-{k}"));
        k += 1;
    }
    std::fs::rename(dir, &backup).with_context(|| {
        format!(
            "--retrain: cannot move the previous model {} aside to {}; nothing was changed",
            dir.display(),
            backup.display()
        )
    })?;
    eprintln!(
        "--retrain: moved the previous model {} to {}; it is not deleted: remove it once the new \
         model is satisfactory, or move it back to keep it",
        dir.display(),
        backup.display()
    );
    Ok(())
}

/// Refuses a checkpoint *file* where a checkpoint directory is expected, naming the directory.
fn checkpoint_dir_arg(path: &Path, what: &str) -> Result<()> {
    if path.is_file() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        bail!(
            "{what} {} is a file; a checkpoint is the directory holding {} and {} (pass {} \
             instead)",
            path.display(),
            s5::checkpoint::MODEL_FILE,
            s5::checkpoint::CONFIG_FILE,
            parent.display()
        );
    }
    Ok(())
}

/// The tokenizer of a checkpoint (its `tokenizer.json`), or the config's.
fn tokenizer(
    cfg: &RunConfig,
    loaded: &Loaded,
    train: &lra::Split,
) -> Result<Box<dyn lra::Tokenize>> {
    let p = loaded.dir.join(s5::checkpoint::TOKENIZER_FILE);
    if p.exists() {
        return lra::load_tokenizer(&p).with_context(|| format!("loading {}", p.display()));
    }
    let mut data = cfg.data.clone();
    data.max_len = loaded.meta.max_len;
    Ok(lra::build_tokenizer(&data, train)?)
}

/// Checks that `dir` can be written (creates it).
fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the output directory {} (choose a writable `out_dir`)",
            dir.display()
        )
    })?;
    write_atomic(&dir.join(".write-test"), b"ok")?;
    let _ = std::fs::remove_file(dir.join(".write-test"));
    Ok(())
}

/// A run directory this run created, removed when the run ends with it still empty (a run that
/// fails before writing anything leaves no trace; `remove_dir` never removes a non-empty one).
struct RemoveIfEmpty(Option<PathBuf>);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A run directory locked for writing ([`bench::outdir::RunLock`]), created if missing and
/// removed again at the end if the run left it empty. Fields drop in order: the lock file first.
struct RunGuard {
    _lock: bench::outdir::RunLock,
    _cleanup: RemoveIfEmpty,
}

impl RunGuard {
    /// Creates (if missing), checks writable and locks `dir` for `what`.
    fn acquire(dir: &Path, what: &str) -> Result<RunGuard> {
        let cleanup = RemoveIfEmpty((!dir.exists()).then(|| dir.to_path_buf()));
        ensure_writable(dir)?;
        let lock = bench::outdir::RunLock::acquire(dir, what)?;
        // Temporaries of atomic writes by a killed run (results.csv, manifest.json, ...).
        bench::outdir::clean_stale_temp_files(dir);
        Ok(RunGuard {
            _lock: lock,
            _cleanup: cleanup,
        })
    }
}

/// The main command.
fn run(cfg: &RunConfig, config_path: &Path, args: &RunArgs) -> Result<()> {
    sweep_stage(cfg, config_path, args, true)
}

/// Data → checkpoint (trained if `train_if_missing`) → full model → sweep → plots → manifest.
fn sweep_stage(
    cfg: &RunConfig,
    config_path: &Path,
    args: &RunArgs,
    train_if_missing: bool,
) -> Result<()> {
    let sweep = cfg.sweep()?.clone();
    let out = cfg.run_dir();
    let _run = RunGuard::acquire(&out, if train_if_missing { "run" } else { "sweep" })?;
    // The previous run's manifest records what the rows in results.csv were computed with; this
    // run's inputs are checked against it stage by stage (the configuration before any work),
    // and the new manifest is written only once all of them are known to match.
    let store = ResultsStore::new(&out);
    let existing = store.rows()?;
    let previous = match Manifest::read_checked(&out) {
        Ok(m) => m,
        Err(e) if !existing.is_empty() => {
            return Err(e.context(format!(
                "{} holds rows, but what they were computed with cannot be read; nothing was \
                 changed: restore {} or start a new run (another `name`, or move \
                 results.csv and kept_modes.csv out of {})",
                store.results.display(),
                bench::manifest::MANIFEST_FILE,
                out.display()
            )));
        }
        Err(e) => {
            tracing::warn!("{e:#}; it is replaced by this run's (results.csv has no rows)");
            None
        }
    };
    let check = bench::manifest::RowCheck::new(&out, previous.as_ref(), &existing);
    let sweep_opts = bench::manifest::SweepRowOptions::of(&sweep);
    check.config(&cfg.eval, &sweep_opts)?;
    let mut man = Manifest::start(&cfg.name, config_path, cfg.n_threads())?;

    let t = Instant::now();
    let imdb = bench::data::load(&cfg.data)?;
    for f in &imdb.files {
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        man.data_sha256.insert(name, sha256_file(f)?);
    }
    check.data(&man.data_sha256)?;
    man.add_stage("data", t);

    let t = Instant::now();
    let dir = if train_if_missing {
        ensure_checkpoint(cfg, &imdb, args.retrain)?
    } else {
        let dir = cfg.checkpoint_dir();
        checkpoint_dir_arg(&dir, "the checkpoint (`checkpoint` in the configuration)")?;
        dir
    };
    man.add_stage("checkpoint", t);
    let t = Instant::now();
    let loaded = pipeline::load(&dir)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is a compressed checkpoint; the sweep starts from a full model",
            dir.display()
        );
    }
    check.checkpoint(&loaded.sha256)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let tok_inputs = bench::manifest::TokenizerInputs::of(tok.as_ref());
    check.tokenizer(&tok_inputs)?;
    if let Some(prev) = previous.as_ref().filter(|_| !existing.is_empty()) {
        man.keep_history(prev);
    }
    man.checkpoint = Some(loaded.dir.display().to_string());
    man.checkpoint_sha256 = Some(loaded.sha256.clone());
    man.row_inputs = Some(bench::manifest::RowInputs {
        eval: cfg.eval.clone(),
        data_sha256: man.data_sha256.clone(),
        checkpoint_sha256: loaded.sha256.clone(),
        tokenizer: tok_inputs,
        sweep: sweep_opts,
    });
    man.write(&out)?;
    let set = EvalSet::new(&imdb.test, tok.as_ref(), &cfg.eval)?;
    man.add_stage("eval_set", t);
    man.write(&out)?;
    tracing::info!(
        "evaluating on {} test reviews (of {}), {} methods × {} ratios",
        set.len(),
        imdb.test.len(),
        sweep.methods.len(),
        sweep.ratios.len()
    );

    let t = Instant::now();
    let mp = MultiProgress::new();
    let sweep_bar = mp.add(bar(
        (sweep.methods.len() * sweep.ratios.len()) as u64,
        "sweep  ",
    ));
    let eval_bar = mp.add(bar(set.len() as u64, "reviews"));
    let calibration = calibration_sets(cfg, &imdb, tok.as_ref())?;
    let reducer = Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        sweep.reduce_options(),
        sweep.refit_options(),
        Some(&calibration),
    )?;
    let mut backend = S5Backend::new(reducer, &set)?;
    backend.pb = Some(eval_bar.clone());
    backend.estimate = bench::estimate::EstimateSet::from_config(&set, &cfg.eval)?;
    let summary = run_sweep(
        &store,
        &mut backend,
        &sweep.methods,
        &sweep.ratios,
        &SweepOptions {
            stop_after_rows: args.stop_after_rows,
            bar: Some(sweep_bar.clone()),
        },
    )?;
    eval_bar.finish_and_clear();
    sweep_bar.finish_and_clear();
    man.add_stage("sweep", t);
    write_calibration_report(&out, &backend.reducer)?;
    if summary.stopped_early {
        man.write(&out)?;
        eprintln!(
            "stopped after {} new rows as asked; rerun to complete {}",
            summary.written,
            store.results.display()
        );
        return Ok(());
    }

    let t = Instant::now();
    let files = plot(&store.results)?;
    man.add_stage("plot", t);
    man.finish(&out)?;
    let rows = store.rows()?;
    println!("{}", summary_table(&rows));
    println!(
        "{} new rows, {} already present; wrote {}, {}, {} and {}",
        summary.written,
        summary.skipped,
        store.results.display(),
        store.kept_modes.display(),
        out.join(bench::manifest::MANIFEST_FILE).display(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `bench verify`: recomputes the full row and `n_rows` seeded reduced rows of `csv` exactly as
/// the sweep computed them and compares them ([`bench::verify`]). Reads the run directory only.
fn verify(cfg: &RunConfig, csv: &Path, n_rows: usize, seed: u64) -> Result<()> {
    use bench::verify::{self as v, Check};
    let sweep = cfg.sweep()?;
    if !csv.is_file() {
        bail!(
            "no results to verify: {} does not exist (run `bench sweep` first, or pass --csv)",
            csv.display()
        );
    }
    let dir = csv
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let committed = bench::results::read_rows(csv)?;
    if !committed.iter().any(|r| r.method == bench::results::FULL) {
        bail!(
            "{} has no `full` row: the reduced rows' errors cannot be checked without it",
            csv.display()
        );
    }
    let kept_path = dir.join("kept_modes.csv");
    if !kept_path.is_file() {
        bail!(
            "{} is missing: it holds the per-layer kept modes of the rows of {}",
            kept_path.display(),
            csv.display()
        );
    }
    let kept: Vec<bench::results::KeptModes> = bench::results::read_csv(&kept_path)?;
    let picked = v::sample(&committed, n_rows, seed);

    let source = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &source,
        "the checkpoint (`checkpoint` in the configuration)",
    )?;
    let loaded = pipeline::load(&source)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is a compressed checkpoint; the sweep starts from a full model",
            loaded.dir.display()
        );
    }
    let manifest = Manifest::read(dir);
    match manifest
        .as_ref()
        .and_then(|m| m.checkpoint_sha256.as_deref())
    {
        Some(sha) if sha != loaded.sha256 => bail!(
            "the configured checkpoint {} (weights sha256 {}) is not the one the rows of {} came \
             from (checkpoint_sha256 {sha} in {}); point `checkpoint` in the config at that model",
            loaded.dir.display(),
            loaded.sha256,
            csv.display(),
            dir.join(bench::manifest::MANIFEST_FILE).display()
        ),
        Some(_) => {}
        None => eprintln!(
            "note: no checkpoint_sha256 in {}: cannot confirm that {} is the model the rows came \
             from; comparing anyway",
            dir.join(bench::manifest::MANIFEST_FILE).display(),
            loaded.dir.display()
        ),
    }
    let imdb = bench::data::load(&cfg.data)?;
    if let Some(man) = &manifest {
        for f in &imdb.files {
            let name = f
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            if let Some(old) = man.data_sha256.get(&name)
                && *old != sha256_file(f)?
            {
                eprintln!(
                    "note: {} differs from the data file of the run (sha256 {old} in \
                     manifest.json); differences below may come from the data",
                    f.display()
                );
            }
        }
    }

    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let set = EvalSet::new(&imdb.test, tok.as_ref(), &cfg.eval)?;
    let calibration = calibration_sets(cfg, &imdb, tok.as_ref())?;
    let reducer = Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        sweep.reduce_options(),
        sweep.refit_options(),
        Some(&calibration),
    )?;
    let mut backend = S5Backend::new(reducer, &set)?;
    backend.measure_speed = false;
    // The estimate only where a committed row has one to compare with (rows written before the
    // estimate existed have `estimate_reviews = 0`).
    if committed.iter().any(|r| r.estimate_reviews > 0) {
        backend.estimate = bench::estimate::EstimateSet::from_config(&set, &cfg.eval)?;
    }
    let mp = MultiProgress::new();
    let rows_bar = mp.add(bar(picked.len() as u64, "verify "));
    let eval_bar = mp.add(bar(set.len() as u64, "reviews"));
    backend.pb = Some(eval_bar.clone());
    tracing::info!(
        "recomputing {} of the {} rows of {} on {} test reviews",
        picked.len(),
        committed.len(),
        csv.display(),
        set.len()
    );

    let mut checks: Vec<Check> = Vec::new();
    let full = backend.full().context("evaluating the full model")?;
    for &i in &picked {
        let row = &committed[i];
        rows_bar.set_message(v::label(row));
        let recomputed = if row.method == bench::results::FULL {
            Ok((bench::sweep::full_row(&full), full.kept_per_layer.clone()))
        } else {
            backend.reduced(&row.method, row.ratio).and_then(|p| {
                let r = bench::sweep::reduced_row(&full, &p, &row.method, row.ratio)?;
                Ok((r, p.kept_per_layer))
            })
        };
        match recomputed {
            Ok((r, k)) => checks.extend(v::compare(
                row,
                v::kept_of(&kept, &row.method, row.ratio),
                &r,
                &k,
            )),
            Err(e) => checks.push(v::failed(row, &mor::error::one_line(e.as_ref()))),
        }
        rows_bar.inc(1);
    }
    eval_bar.finish_and_clear();
    rows_bar.finish_and_clear();
    print!("{}", v::table(&checks));
    let n_reduced = committed.len() - 1;
    let bad = v::mismatches(&checks);
    if !bad.is_empty() {
        bail!(
            "verify: {} of {} checked rows of {} differ: {}",
            bad.len(),
            picked.len(),
            csv.display(),
            bad.join("; ")
        );
    }
    println!(
        "verify: all {} checked rows of {} match (full + {} of {} reduced rows, seed {seed}; \
         accuracy to {:e}, logit errors to a relative {:e}, bound_max to a relative {:e}; \
         timings not compared)",
        picked.len(),
        csv.display(),
        picked.len() - 1,
        n_reduced,
        v::ACCURACY_TOL,
        v::LOGIT_ERR_RTOL,
        v::BOUND_RTOL
    );
    Ok(())
}

/// Re-draws the plots and `summary.md` next to `csv` (reading `kept_modes.csv` beside it).
fn plot(csv: &Path) -> Result<Vec<PathBuf>> {
    plot_merged(csv, &[], None)
}

/// The directory of a CSV path (`.` for a bare file name).
fn dir_of(csv: &Path) -> PathBuf {
    csv.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Re-draws the plots and `summary.md` of the rows of `csv` and of every CSV in `also` (each
/// with the `kept_modes.csv` beside it) into `out` (default: next to `csv`). The CSVs must hold
/// the same full model on the same reviews (equal `full` rows) and no (method, ratio) twice.
fn plot_merged(csv: &Path, also: &[PathBuf], out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut rows = bench::results::read_rows(csv)?;
    if rows.is_empty() {
        bail!(
            "{} has no rows to plot (run the sweep first)",
            csv.display()
        );
    }
    let mut kept: Vec<bench::results::KeptModes> =
        bench::results::read_csv(&dir_of(csv).join("kept_modes.csv"))?;
    let full_of = |rows: &[bench::results::Row]| {
        rows.iter()
            .find(|r| r.method == bench::results::FULL)
            .map(|r| (r.accuracy, r.n_eval, r.total_params))
    };
    for other in also {
        let more = bench::results::read_rows(other)?;
        if full_of(&more) != full_of(&rows) {
            bail!(
                "{} and {} do not hold the same full model on the same reviews (their `full` \
                 rows differ: {:?} vs {:?} as (accuracy, n_eval, total_params)); plot them apart",
                csv.display(),
                other.display(),
                full_of(&rows),
                full_of(&more)
            );
        }
        for r in more
            .into_iter()
            .filter(|r| r.method != bench::results::FULL)
        {
            if rows.iter().any(|q| q.has_key(&r.method, r.ratio)) {
                bail!(
                    "{} @ {} is in both {} and {}; plot them apart",
                    r.method,
                    r.ratio,
                    csv.display(),
                    other.display()
                );
            }
            rows.push(r);
        }
        let more_kept: Vec<bench::results::KeptModes> =
            bench::results::read_csv(&dir_of(other).join("kept_modes.csv"))?;
        kept.extend(
            more_kept
                .into_iter()
                .filter(|k| k.method != bench::results::FULL),
        );
    }
    let dir = match out {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.to_path_buf()
        }
        None => dir_of(csv),
    };
    let mut files = bench::plot::plot_all(&rows, &kept, &dir)?;
    let md = dir.join("summary.md");
    write_atomic(&md, bench::sweep::markdown_summary(&rows).as_bytes())?;
    files.push(md);
    Ok(files)
}

/// Merges what the reducer's data-driven parts measured in this sweep (the `sens` cost curves,
/// the `lqo-h2` gate fits) into `<run>/calibration.json`, keeping the entries of earlier runs of
/// the same directory; nothing is written when nothing was measured.
fn write_calibration_report(run_dir: &Path, reducer: &Reducer<'_>) -> Result<()> {
    let new = reducer.calibration_report();
    if new.is_empty() {
        return Ok(());
    }
    let path = run_dir.join("calibration.json");
    let mut all = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => bail!(
                "{} is not a JSON object; move it away (it is rewritten by every sweep)",
                path.display()
            ),
        },
        Err(_) => serde_json::Map::new(),
    };
    all.extend(new);
    bench::results::write_atomic(
        &path,
        serde_json::to_string_pretty(&serde_json::Value::Object(all))?.as_bytes(),
    )
}

/// The calibration (training) reviews of a run ([`Calibration`]), seeded with `eval.seed`.
fn calibration_sets(
    cfg: &RunConfig,
    imdb: &lra::Imdb,
    tok: &dyn lra::Tokenize,
) -> Result<Calibration> {
    let n_refit = cfg.sweep.as_ref().map_or(
        bench::sections::DEFAULT_REFIT_REVIEWS,
        bench::sections::SweepConfig::refit_reviews,
    );
    Calibration::sample(
        &imdb.train,
        tok,
        cfg.eval.batch_size,
        cfg.eval.seed,
        n_refit,
    )
}

/// `bench eval`.
fn eval_cmd(cfg: &RunConfig, checkpoint: Option<PathBuf>, json: bool, split: &str) -> Result<()> {
    let imdb = bench::data::load(&cfg.data)?;
    let dir = checkpoint.unwrap_or_else(|| cfg.checkpoint_dir());
    checkpoint_dir_arg(&dir, "the checkpoint")?;
    let loaded = pipeline::load(&dir)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let reviews = if split == "train" {
        &imdb.train
    } else {
        &imdb.test
    };
    let set = EvalSet::new(reviews, tok.as_ref(), &cfg.eval)?;
    let pb = bar(set.len() as u64, "reviews");
    let ev = pipeline::evaluate(&loaded.model, &set, Some(&pb), false)?;
    pb.finish_and_clear();
    let (ssm, total) = pipeline::param_counts(&loaded.model);
    let se = bench::subset::accuracy_std_error(ev.accuracy, set.len());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": loaded.dir.display().to_string(),
                "accuracy": ev.accuracy,
                "std_error": se,
                "n_eval": set.len(),
                "split": split,
                "ssm_params": ssm,
                "total_params": total,
                "seconds": ev.seconds,
                "reduction": loaded.reduction,
            })
        );
    } else {
        println!(
            "{}: accuracy {:.4} ± {:.4} on {} {split} reviews, {} params ({} in SSMs), {:.1} s",
            loaded.dir.display(),
            ev.accuracy,
            se,
            set.len(),
            total,
            ssm,
            ev.seconds
        );
    }
    Ok(())
}

/// `bench recalibrate-bn` (one checkpoint) and `bench swa` (the average of several): precise
/// BatchNorm statistics for the weights of `checkpoints`, written to `out` with
/// `recalibration.json`.
fn recalibrate_bn(
    cfg: &RunConfig,
    checkpoints: &[PathBuf],
    out: &Path,
    calibration: &CalibrationArgs,
    command: &str,
) -> Result<()> {
    let CalibrationArgs {
        reviews,
        seed,
        batch,
    } = *calibration;
    // Refuse an output that would replace a member or a directory not ours before any work.
    let sources: Vec<&Path> = checkpoints.iter().map(PathBuf::as_path).collect();
    let out_dir = bench::outdir::OutDir::prepare(out, command, &sources)?;
    // (weights directory, SHA-256 of its model.safetensors) of every member.
    let mut members = Vec::with_capacity(checkpoints.len());
    for dir in checkpoints {
        let weights = pipeline::find_weights(dir)?
            .with_context(|| format!("no checkpoint in {}", dir.display()))?;
        if weights.join(pipeline::REDUCED_BLOCKS_FILE).exists() {
            bail!(
                "{} is a compressed checkpoint; recalibrate the full model, then compress it",
                weights.display()
            );
        }
        let sha = bench::manifest::sha256_file(&weights.join(s5::checkpoint::MODEL_FILE))?;
        members.push((weights, sha));
    }
    let weights: Vec<&Path> = members.iter().map(|(w, _)| w.as_path()).collect();
    let (model, varmap, meta) = s5::checkpoint::load_average(&weights).with_context(|| {
        if weights.len() == 1 {
            format!("loading {}", weights[0].display())
        } else {
            format!("averaging the weights of {} checkpoints", weights.len())
        }
    })?;
    // The first member's tokenizer and provenance.
    let loaded = pipeline::load(weights[0])?;
    let imdb = bench::data::load(&cfg.data)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let batch = batch
        .or(cfg.train.as_ref().map(|t| t.batch_size))
        .unwrap_or(cfg.eval.batch_size);
    // The same seeded, class-balanced subset rule as every evaluation set.
    let set = EvalSet::new(
        &imdb.train,
        tok.as_ref(),
        &bench::sections::EvalConfig {
            max_samples: reviews,
            batch_size: batch,
            seed,
            estimate_reviews: 0,
        },
    )
    .context("building the calibration set from the training reviews")?;
    let enc = lra::Encoded {
        tokens: set.tokens,
        labels: set.labels,
    };
    let pb = bar(enc.len() as u64, "reviews");
    let rec = s5::recalibrate::recalibrate_batch_norm(&model, enc, batch, seed, Some(&pb))?;
    pb.finish_and_clear();
    let tok_json = s5::checkpoint::read_tokenizer(weights[0])?;
    s5::checkpoint::write_files(out_dir.path(), &meta, &varmap, tok_json.as_deref(), None)
        .with_context(|| format!("writing {}", out.display()))?;
    let mut record = serde_json::json!({
        "source": loaded.dir.display().to_string(),
        "source_sha256": loaded.sha256,
        "seed": seed,
        "batch_size": batch,
        "git_commit": bench::manifest::git_commit(),
        "recalibration": rec,
    });
    if members.len() > 1 {
        // SWA: the source is the uniform average of these checkpoints' weights.
        record["swa_members"] = members
            .iter()
            .map(|(w, sha)| serde_json::json!({"checkpoint": w.display().to_string(), "sha256": sha}))
            .collect();
        record["source"] =
            format!("uniform weight average of {} checkpoints", members.len()).into();
        record["source_sha256"] = serde_json::Value::Null;
    }
    bench::results::write_atomic(
        &out_dir.path().join("recalibration.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    out_dir.commit()?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}

/// `bench compress`.
fn compress(cfg: &RunConfig, method: &str, ratio: f64, out: Option<PathBuf>) -> Result<()> {
    let recipe: mor::recipe::Recipe = method
        .parse()
        .map_err(|e: mor::Error| anyhow::anyhow!("--method: {e}"))?;
    bench::sections::validate_ratio(ratio).context("--ratio")?;
    let source = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &source,
        "the checkpoint (`checkpoint` in the configuration)",
    )?;
    let out = out.unwrap_or_else(|| {
        cfg.run_dir()
            .join("compressed")
            .join(format!("{recipe}-{ratio}"))
    });
    // Refuse an output directory that may not be replaced before the reduction's work (the
    // check is repeated when the result is written).
    drop(bench::outdir::OutDir::prepare(
        &out,
        "compress",
        &[&source],
    )?);
    let loaded = pipeline::load(&source)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is already compressed; compress the full checkpoint",
            loaded.dir.display()
        );
    }
    let t = Instant::now();
    let (opts, refit) = cfg.sweep.as_ref().map_or_else(Default::default, |s| {
        (s.reduce_options(), s.refit_options())
    });
    let cal = if recipe.needs_calibration() {
        let imdb = bench::data::load(&cfg.data)?;
        let tok = tokenizer(cfg, &loaded, &imdb.train)?;
        Some(calibration_sets(cfg, &imdb, tok.as_ref())?)
    } else {
        None
    };
    let mut reducer = Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        opts,
        refit,
        cal.as_ref(),
    )?;
    let red = reducer.reduce(recipe, ratio)?.reduction;
    if !red.stable {
        bail!(
            "{recipe} at ratio {ratio} gave an unstable reduction (some |λ̄| ≥ 1, kept modes {:?}); \
             nothing was written (a compressed checkpoint must be stable): choose another method \
             (e.g. h2) or ratio",
            red.kept_modes
        );
    }
    let rebuilt = s5::with_reduced(&loaded.model, &red.model)?;
    let (_, total) = pipeline::param_counts(&rebuilt);
    let info = pipeline::ReductionInfo {
        method: recipe.to_string(),
        ratio,
        kept_modes: red.kept_modes.clone(),
        stable: red.stable,
        total_params: total,
        source_sha256: loaded.sha256.clone(),
    };
    pipeline::write_compressed(&loaded.dir, &red.model, &info, &out)?;
    println!(
        "wrote {} ({} in {:.2} s: kept modes {:?}, {} params, stable {})",
        out.display(),
        recipe,
        t.elapsed().as_secs_f64(),
        red.kept_modes,
        total,
        red.stable
    );
    Ok(())
}

/// `bench perf`.
fn perf(cfg: &RunConfig, json: bool, batch: usize, len: Option<usize>, reps: usize) -> Result<()> {
    let model = cfg
        .model
        .as_ref()
        .context("the configuration has no [model] section to measure")?;
    if batch == 0 {
        bail!("--batch 0: the batch size must be at least 1");
    }
    if len == Some(0) {
        bail!("--len 0: the sequence length must be at least 1 token");
    }
    let len = len.unwrap_or(cfg.data.max_len);
    let r = s5::perf::measure(model, batch, len, None, reps.max(1))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "infer_tokens_per_s": r.infer_tokens_per_s,
                "train_tokens_per_s": r.train_tokens_per_s,
                "matmul_peak_gflops": r.matmul_peak_gflops,
                "infer_gflops": r.infer_gflops,
                "train_gflops": r.train_gflops,
                "flops_per_token": r.flops_per_token,
                "batch": batch,
                "len": len,
                "threads": r.threads,
            })
        );
    } else {
        println!(
            "model {:?}, batch {batch} × len {len}, {} threads",
            model, r.threads
        );
        println!(
            "inference  {:>12.0} tokens/s  {:>8.1} GFLOP/s",
            r.infer_tokens_per_s, r.infer_gflops
        );
        println!(
            "training   {:>12.0} tokens/s  {:>8.1} GFLOP/s",
            r.train_tokens_per_s, r.train_gflops
        );
        println!("matmul peak {:>11.1} GFLOP/s", r.matmul_peak_gflops);
        println!("flops/token {:>11.0}", r.flops_per_token);
    }
    Ok(())
}
