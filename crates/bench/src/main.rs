//! `bench`: the reproduction runner. `bench --config imdb.toml` (= `bench run`) makes sure the
//! data is there, loads or trains the checkpoint, evaluates the full model, then reduces it with
//! every method at every ratio (no retraining), evaluates each reduction, computes the
//! output-error bound and the measured error, and writes `results/<name>/results.csv` (one row
//! at a time, resumable), the plots and `manifest.json`. Subcommands run the stages alone.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench::config::{self, RunConfig};
use bench::outdir::RunGuard;
use bench::stages::checkpoint::{compress, eval_cmd, perf, recalibrate_bn};
use bench::stages::sweep::{plot_merged, run, sweep_stage};
use bench::stages::train::{data, ensure_checkpoint};
use bench::stages::verify::verify;
use bench::stages::{CalibrationArgs, RunArgs, checkpoint_dir_arg};
use clap::{Parser, Subcommand};

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
        /// Reduction recipe `<method>[<layers>=<method>][@<allocation>][+<post-step>]`, e.g.
        /// `emodal@sens+refit` (an unknown method name is answered with the list of all).
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
