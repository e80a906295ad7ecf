//! The run directory's CSV logs (`train_log.csv`, `eval_log.csv`): the windowed means of a
//! logged row, appending, and truncation to a resumed checkpoint.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::StepStats;
use crate::checkpoint;
use crate::optim::StepRates;
use crate::{Error, Result};

/// File name of the training log inside the run directory.
pub const TRAIN_LOG: &str = "train_log.csv";
/// File name of the per-epoch evaluation log inside the run directory.
pub const EVAL_LOG: &str = "eval_log.csv";
/// Directory (under the run directory) of the epoch-end weights kept by
/// [`super::TrainConfig::keep_epoch_weights_from`].
pub const EPOCHS_DIR: &str = "epochs";
pub(super) const TRAIN_LOG_HEADER: &str =
    "step,epoch,loss,accuracy,tokens_per_s,lr,ssm_lr,grad_norm,seconds_total";
pub(super) const EVAL_LOG_HEADER: &str = "epoch,step,test_loss,test_accuracy,n,seconds";

#[derive(Default)]
pub(super) struct Window {
    loss: f64,
    correct: usize,
    pub(super) n: usize,
    steps: usize,
    tokens: usize,
    seconds: f64,
    grad_norm: f64,
}

impl Window {
    pub(super) fn add(&mut self, s: &StepStats) {
        self.loss += s.loss;
        self.correct += s.correct;
        self.n += s.n;
        self.steps += 1;
        self.tokens += s.tokens;
        self.seconds += s.seconds;
        self.grad_norm += s.grad_norm;
    }

    pub(super) fn flush(
        &mut self,
        log: &mut CsvLog,
        step: usize,
        epoch: usize,
        last: &StepStats,
        seconds_total: f64,
        pb: &ProgressBar,
    ) -> Result<f64> {
        self.flush_last(log, step, epoch, last.rates, seconds_total, pb)
    }

    pub(super) fn flush_last(
        &mut self,
        log: &mut CsvLog,
        step: usize,
        epoch: usize,
        rates: StepRates,
        seconds_total: f64,
        pb: &ProgressBar,
    ) -> Result<f64> {
        let k = self.steps.max(1) as f64;
        let loss = self.loss / k;
        let acc = self.correct as f64 / self.n.max(1) as f64;
        let tps = self.tokens as f64 / self.seconds.max(1e-9);
        log.row(&format!(
            "{step},{},{loss:.6},{acc:.6},{tps:.1},{:.6e},{:.6e},{:.6},{seconds_total:.2}",
            epoch + 1,
            rates.lr,
            rates.ssm_lr,
            self.grad_norm / k
        ))?;
        pb.set_message(format!("loss {loss:.4} acc {acc:.3} {tps:.0} tok/s"));
        *self = Window::default();
        Ok(loss)
    }
}

pub(super) struct CsvLog {
    path: PathBuf,
    file: fs::File,
}

impl CsvLog {
    pub(super) fn open(path: &Path, header: &str) -> Result<Self> {
        let io = |e| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let fresh = !path.exists() || fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if fresh {
            writeln!(file, "{header}").map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub(super) fn row(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::Io {
                path: self.path.display().to_string(),
                source: e,
            })
    }
}

/// Drop log rows written after the checkpoint being resumed (step > `step`, epoch > `epoch`).
pub(super) fn truncate_logs(run_dir: &Path, step: usize, epoch: usize) -> Result<()> {
    for (file, limit) in [(TRAIN_LOG, step), (EVAL_LOG, epoch)] {
        let path = run_dir.join(file);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            // train rows are keyed by step (column 0); eval rows by completed epoch (column 0).
            let key = line.split(',').next().and_then(|s| s.parse::<usize>().ok());
            let keep = i == 0 || key.is_some_and(|k| k <= limit);
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
        checkpoint::write_atomic(&path, out.as_bytes())?;
    }
    Ok(())
}

pub(super) fn last_seconds_total(path: &Path) -> f64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .skip(1)
                .last()
                .and_then(|l| l.rsplit(',').next().and_then(|s| s.parse::<f64>().ok()))
        })
        .unwrap_or(0.0)
}
