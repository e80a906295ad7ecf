//! `mor`: command-line access to the h2 norms, certified H∞ bounds, Hankel singular values and block reductions of
//! `diag-ssm/1` JSON systems. Prints one JSON object on stdout; errors exit non-zero with one line
//! on stderr.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mor::modal::ModalOrder;
use mor::reduce::{ReduceOptions, reduce_block};
use mor::{Method, gram, io};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Model order reduction of diagonal SSM / LQO blocks (`diag-ssm/1` JSON).
#[derive(Parser)]
#[command(name = "mor", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// h2 norm of a block: `{"h2": x}`.
    H2 {
        /// The system (`diag-ssm/1` JSON).
        sys: PathBuf,
        /// Time-limited norm over lags |j| < T (T ≥ 1).
        #[arg(long, value_parser = positive)]
        horizon: Option<usize>,
    },
    /// h2 error between a block and its reduction: `{"h2_error": x}`.
    #[command(name = "h2-error")]
    H2Error {
        /// The full system.
        full: PathBuf,
        /// The reduced system (same m, p, linear and quadratic outputs).
        red: PathBuf,
        /// Time-limited error over lags |j| < T (T ≥ 1).
        #[arg(long, value_parser = positive)]
        horizon: Option<usize>,
    },
    /// Certified upper bound on the H∞ norm of a stable block's linear map u -> 2 Re(C x) + D u
    /// (both scan directions; an LQO block's `linear` and `quadratic` outputs are not included):
    /// `{"hinf_upper": x, "hinf_lower": y, "evaluations": k}`; the true norm lies in
    /// [lower, upper] (branch and bound on the frequency response, see crates/mor/BOUND.md).
    Hinf {
        /// The system.
        sys: PathBuf,
        /// Stop once upper <= lower·(1 + tol).
        #[arg(long, default_value_t = 1e-3)]
        tol: f64,
        /// Most frequencies evaluated (the bound stays valid, only looser, when it is reached).
        #[arg(long, default_value_t = 20_000)]
        max_evals: usize,
    },
    /// Hankel singular values of a stable block's causal part u -> s = 2 Re(C x) (D, the reverse
    /// scan and LQO outputs do not enter): `{"hsv": [...]}` (2n values, descending).
    Hsv {
        /// The system.
        sys: PathBuf,
    },
    /// Reduce a block to `r` stored modes and write it: `{"h2_error": x, "stable": bool}`.
    Reduce {
        /// The system.
        sys: PathBuf,
        /// One of modal, bt, last, global-hinf, uniform-hinf, h2, tlh2, lqo-h2 (ebt needs
        /// recorded layer inputs, which `bench` provides; not this CLI). On a single block
        /// last, global-hinf and uniform-hinf coincide (they differ only in how a model's modes
        /// are shared among its layers), and lqo-h2 is h2 (its layer weights need a model).
        #[arg(long)]
        method: String,
        /// Reduced order r (stored complex modes kept).
        #[arg(long)]
        order: usize,
        /// Output file (`diag-ssm/1` JSON; written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Horizon T ≥ 1 of tlh2 (lags |j| < T); also makes the reported error time-limited.
        #[arg(long, value_parser = positive)]
        horizon: Option<usize>,
        /// Ranking of `modal`: `h2` (per-mode h2 contribution) or `abs-lambda`.
        #[arg(long, default_value = "h2")]
        modal_order: String,
        /// last / global-hinf / uniform-hinf: time-limited H∞ mode scores over this many steps
        /// (T ≥ 1; default: LAST's infinite-horizon score).
        #[arg(long, value_parser = positive)]
        hinf_horizon: Option<usize>,
    },
}

/// A horizon in steps: an integer ≥ 1 (a window of 0 steps holds nothing).
fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 step (0 is an empty window)".into()),
        Ok(t) => Ok(t),
        Err(e) => Err(format!("{e}: expected a number of steps ≥ 1")),
    }
}

fn read(path: &PathBuf) -> Result<mor::DiagBlock> {
    // The error names the file already.
    Ok(io::read_json(path)?)
}

fn run(cli: Cli) -> Result<serde_json::Value> {
    Ok(match cli.cmd {
        Cmd::H2 { sys, horizon } => {
            let b = read(&sys)?;
            if horizon.is_none() {
                gram::check_stable(&b, &sys.display().to_string())?;
            }
            json!({ "h2": gram::h2_norm(&b, horizon) })
        }
        Cmd::H2Error { full, red, horizon } => {
            let f = read(&full)?;
            let r = read(&red)?;
            json!({ "h2_error": gram::h2_error(&f, &r, horizon)? })
        }
        Cmd::Hinf {
            sys,
            tol,
            max_evals,
        } => {
            let b = read(&sys)?;
            gram::check_stable(&b, &sys.display().to_string())?;
            if tol.is_nan() || tol <= 0.0 {
                bail!("--tol must be > 0, got {tol}");
            }
            let hb = mor::hinf::hinf_upper_bound(&b, tol, max_evals);
            json!({ "hinf_upper": hb.upper, "hinf_lower": hb.lower, "evaluations": hb.evaluations })
        }
        Cmd::Hsv { sys } => {
            let b = read(&sys)?;
            gram::check_stable(&b, &sys.display().to_string())?;
            json!({ "hsv": gram::hsv(&b).with_context(|| format!("HSV of {}", sys.display()))? })
        }
        Cmd::Reduce {
            sys,
            method,
            order,
            out,
            horizon,
            modal_order,
            hinf_horizon,
        } => {
            let m: Method = method.parse()?;
            let modal_order = match modal_order.as_str() {
                "h2" => ModalOrder::H2,
                "abs-lambda" => ModalOrder::AbsLambda,
                o => bail!("unknown --modal-order `{o}`; expected `h2` or `abs-lambda`"),
            };
            let b = read(&sys)?;
            if m != Method::Tlh2 {
                gram::check_stable(&b, &sys.display().to_string())?;
            } else if horizon.is_none() {
                bail!("--method tlh2 needs --horizon T (the time-limited horizon)");
            }
            let opts = ReduceOptions {
                horizon,
                modal_order,
                hinf_horizon,
                ..ReduceOptions::default()
            };
            let red = reduce_block(&b, m, order, &opts)
                .with_context(|| format!("reducing {} with {m} to r = {order}", sys.display()))?;
            io::write_json(&out, &red.block)
                .with_context(|| format!("writing {}", out.display()))?;
            let stable = red.block.max_abs_lambda() < 1.0;
            json!({ "h2_error": red.h2_error, "stable": stable })
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", mor::error::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
