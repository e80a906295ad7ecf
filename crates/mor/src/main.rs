//! `mor`: command-line access to the h2 norms, certified H∞ bounds, Hankel singular values and block reductions of
//! `diag-ssm/1` JSON systems. Prints one JSON object on stdout; errors exit non-zero with one line
//! on stderr.
//!
//! Input numbers must lie where the formulas are meaningful in f64 (`mor::io`, *Accepted
//! numbers*: finite, not subnormal, magnitudes ≤ 1e30, no field all below 1e-30); a computed norm
//! or bound that is not finite is an error, never a JSON `null`. Each command's memory is
//! estimated from n, m, p before anything large is allocated and refused above
//! `--max-memory-gib` (default 8; `mor::memory`).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mor::memory::{self, Work};
use mor::modal::ModalOrder;
use mor::reduce::{ReduceOptions, reduce_block};
use mor::{Method, balance, gram, io};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Model order reduction of diagonal SSM / LQO blocks (`diag-ssm/1` JSON).
#[derive(Parser)]
#[command(name = "mor", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Refuse a command whose estimated memory (from the block's n, m, p, before anything large
    /// is allocated; see `mor::memory`) exceeds this many GiB.
    #[arg(long, global = true, default_value_t = mor::memory::DEFAULT_LIMIT_GIB)]
    max_memory_gib: f64,
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
        /// One of modal, bt, last, aire, last-ref, aire-ref, global-hinf, uniform-hinf, h2,
        /// tlh2, lqo-h2, lqo-h2-taylor (ebt and emodal need recorded layer inputs, which `bench`
        /// provides; not this CLI). On a single block last, global-hinf and uniform-hinf coincide
        /// (they differ only in how a model's modes are shared among its layers), and lqo-h2 and
        /// lqo-h2-taylor are h2 (their gate models and layer weights need a model).
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

/// Reads a block, refusing first a file whose parsing alone would exceed the memory limit.
fn read(path: &PathBuf, limit_gib: f64) -> Result<mor::DiagBlock> {
    if let Ok(meta) = std::fs::metadata(path) {
        memory::check(
            &format!(
                "parsing {} ({})",
                path.display(),
                memory::human(meta.len() as f64)
            ),
            meta.len() as f64 * memory::JSON_PARSE_FACTOR,
            limit_gib,
        )?;
    }
    // The error names the file already.
    Ok(io::read_json(path)?)
}

/// Refuses `work` on `block` (of `sys`) if its estimated memory exceeds the limit.
fn budget(
    what: &str,
    sys: &Path,
    work: Work,
    n: usize,
    block: &mor::DiagBlock,
    limit_gib: f64,
) -> Result<()> {
    let bytes = memory::estimate_bytes(
        work,
        n,
        block.n_inputs(),
        block.n_outputs(),
        block.quadratic.len(),
    );
    memory::check(
        &format!(
            "{what} of {} (n = {n} modes, m = {}, p = {})",
            sys.display(),
            block.n_inputs(),
            block.n_outputs()
        ),
        bytes,
        limit_gib,
    )?;
    Ok(())
}

/// A computed number that must be finite (a norm or bound; never printed as NaN or `null`).
fn finite(what: &str, sys: &Path, x: f64) -> Result<f64> {
    if x.is_finite() {
        return Ok(x);
    }
    Err(mor::Error::LinAlg(format!(
        "the {what} of {} evaluated to {x}: the computation left f64's range although the \
         block's numbers are within the accepted ones (see `mor::io`, *Accepted numbers*); \
         rescale the block towards magnitudes near 1 (b by α, c and c_rev by β scale every \
         linear output by αβ){}",
        sys.display(),
        if what.contains("time-limited") {
            ", or shorten --horizon (|λ|^T overflows for an unstable mode)"
        } else {
            ""
        }
    ))
    .into())
}

fn run(cli: Cli) -> Result<serde_json::Value> {
    let limit = cli.max_memory_gib;
    memory::check_limit(limit)?;
    Ok(match cli.cmd {
        Cmd::H2 { sys, horizon } => {
            let b = read(&sys, limit)?;
            if horizon.is_none() {
                gram::check_stable(&b, &sys.display().to_string())?;
            }
            budget("the h2 norm", &sys, Work::H2, b.n_modes(), &b, limit)?;
            let what = if horizon.is_some() {
                "time-limited h2 norm"
            } else {
                "h2 norm"
            };
            json!({ "h2": finite(what, &sys, gram::h2_norm(&b, horizon))? })
        }
        Cmd::H2Error { full, red, horizon } => {
            let f = read(&full, limit)?;
            let r = read(&red, limit)?;
            budget(
                "the h2 error (on the difference block)",
                &full,
                Work::H2,
                f.n_modes() + r.n_modes(),
                &f,
                limit,
            )?;
            let what = if horizon.is_some() {
                "time-limited h2 error"
            } else {
                "h2 error"
            };
            json!({ "h2_error": finite(what, &full, gram::h2_error(&f, &r, horizon)?)? })
        }
        Cmd::Hinf {
            sys,
            tol,
            max_evals,
        } => {
            if !(tol.is_finite() && tol > 0.0) {
                bail!(
                    "--tol {tol}: the relative tolerance must be a finite number > 0 (e.g. 1e-3)"
                );
            }
            if max_evals == 0 {
                bail!(
                    "--max-evals 0: the bound needs at least one frequency evaluation (default \
                     20000; fewer give a looser but still certified bound)"
                );
            }
            let b = read(&sys, limit)?;
            gram::check_stable(&b, &sys.display().to_string())?;
            budget("the H∞ bound", &sys, Work::Hinf, b.n_modes(), &b, limit)?;
            let hb = mor::hinf::hinf_upper_bound(&b, tol, max_evals);
            json!({
                "hinf_upper": finite("H∞ upper bound", &sys, hb.upper)?,
                "hinf_lower": finite("H∞ lower bound", &sys, hb.lower)?,
                "evaluations": hb.evaluations
            })
        }
        Cmd::Hsv { sys } => {
            let b = read(&sys, limit)?;
            gram::check_stable(&b, &sys.display().to_string())?;
            budget(
                "the Hankel singular values",
                &sys,
                Work::Balanced,
                b.n_modes(),
                &b,
                limit,
            )?;
            let hsv = balance::hsv(&b).with_context(|| format!("HSV of {}", sys.display()))?;
            for &h in &hsv {
                finite("Hankel singular values", &sys, h)?;
            }
            json!({ "hsv": hsv })
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
            let b = read(&sys, limit)?;
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
            // The reported error is computed on the difference block (n + r modes); the
            // balanced family also holds the dense Gramians of the 2n real states.
            let n = b.n_modes();
            budget(
                &format!("reducing with {m} to r = {order}"),
                &sys,
                Work::H2,
                n + order.min(n),
                &b,
                limit,
            )?;
            if matches!(
                m,
                Method::Bt | Method::H2 | Method::Tlh2 | Method::LqoH2 | Method::LqoH2Taylor
            ) {
                budget(
                    &format!("reducing with {m}"),
                    &sys,
                    Work::Balanced,
                    n,
                    &b,
                    limit,
                )?;
            }
            let red = reduce_block(&b, m, order, &opts)
                .with_context(|| format!("reducing {} with {m} to r = {order}", sys.display()))?;
            finite(
                if horizon.is_some() {
                    "time-limited h2 error of the reduction"
                } else {
                    "h2 error of the reduction"
                },
                &sys,
                red.h2_error,
            )
            .map_err(|e| anyhow::anyhow!("{e}; {} was not written", out.display()))?;
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
