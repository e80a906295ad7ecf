//! `manifest.json`: what a run was made from and on (git commit, config and its hash, data and
//! checkpoint checksums, machine, threads, times, per-stage seconds), and what the rows of its
//! `results.csv` mean ([`RowInputs`]): a sweep that extends an existing `results.csv` checks its
//! inputs against that record first ([`RowCheck`]) and refuses to mix rows of different
//! evaluations.

use crate::results::{Row, write_atomic};
use crate::sections::{EvalConfig, SweepConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// File name of the manifest in a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The machine a run ran on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// CPU model name (from `/proc/cpuinfo`; `unknown` elsewhere).
    pub cpu_model: String,
    /// Logical cores available to the process.
    pub cores: usize,
    /// Operating system and architecture (`linux-x86_64`).
    pub os: String,
    /// Total memory in GiB (from `/proc/meminfo`; 0 if unknown).
    pub mem_gib: f64,
}

impl Machine {
    /// Probes the current machine.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            mem_gib: (mem_gib * 10.0).round() / 10.0,
        }
    }
}

/// The manifest of one run directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Run name (`results/<name>/`).
    pub name: String,
    /// The command line that produced this manifest.
    pub command: Vec<String>,
    /// `git rev-parse HEAD` of the source tree at run time (with `-dirty` if it had changes), or
    /// `unknown`.
    pub git_commit: String,
    /// The commit the running binary was built from ([`build_commit`]); differs from
    /// `git_commit` when a prebuilt binary runs in a checkout that has moved on. Empty in
    /// manifests written before this field existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_commit: String,
    /// Path of the config file as given.
    pub config_path: String,
    /// The config file's text.
    pub config: String,
    /// SHA-256 of the config file's bytes (hex).
    pub config_sha256: String,
    /// SHA-256 of the data files (one hex digest per file, by file name).
    pub data_sha256: BTreeMap<String, String>,
    /// SHA-256 of the checkpoint's weights file (hex), if a checkpoint was used.
    pub checkpoint_sha256: Option<String>,
    /// Checkpoint directory, if any.
    pub checkpoint: Option<String>,
    /// The machine.
    pub machine: Machine,
    /// Worker threads used (rayon and candle).
    pub threads: usize,
    /// Start time (UTC, RFC 3339).
    pub start_time: String,
    /// End time (UTC, RFC 3339); empty while running.
    pub end_time: String,
    /// Wall seconds per stage (`data`, `checkpoint`, `eval_full`, `sweep`, `plot`, ...).
    pub stage_seconds: BTreeMap<String, f64>,
    /// Version of the `bench` crate.
    pub bench_version: String,
    /// The earlier runs whose rows this run kept (a sweep skips the rows `results.csv` already
    /// holds and adds the missing ones): what each was made from and when, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_runs: Vec<EarlierRun>,
    /// What the rows of `results.csv` were computed with (evaluation subset, data and checkpoint
    /// digests, tokenizer, the sweep options that change a row); `None` in manifests written
    /// before this record existed, and until the sweep has checked its inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_inputs: Option<RowInputs>,
}

/// What an earlier run of the same directory was made from (its manifest's provenance fields).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EarlierRun {
    /// Its command line.
    pub command: Vec<String>,
    /// Its checkout's commit at run time.
    pub git_commit: String,
    /// The commit its binary was built from (empty if its manifest predates the field).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_commit: String,
    /// SHA-256 of its config file.
    pub config_sha256: String,
    /// Its start and end times (UTC, RFC 3339).
    pub start_time: String,
    /// End time; empty if it was interrupted.
    pub end_time: String,
    /// Its wall seconds per stage.
    pub stage_seconds: BTreeMap<String, f64>,
}

impl Manifest {
    /// Starts a manifest: reads and hashes the config, probes machine and git, records the time.
    pub fn start(name: &str, config_path: &Path, threads: usize) -> Result<Self> {
        let config_bytes = std::fs::read(config_path)
            .with_context(|| format!("cannot read config {}", config_path.display()))?;
        Ok(Manifest {
            name: name.to_string(),
            command: std::env::args().collect(),
            git_commit: git_commit(),
            build_commit: build_commit().to_string(),
            config_path: config_path.display().to_string(),
            config: String::from_utf8_lossy(&config_bytes).into_owned(),
            config_sha256: sha256_hex(&config_bytes),
            data_sha256: BTreeMap::new(),
            checkpoint_sha256: None,
            checkpoint: None,
            machine: Machine::probe(),
            threads,
            start_time: now_rfc3339(),
            end_time: String::new(),
            stage_seconds: BTreeMap::new(),
            bench_version: env!("CARGO_PKG_VERSION").to_string(),
            earlier_runs: Vec::new(),
            row_inputs: None,
        })
    }

    /// Records `previous` (the directory's manifest before this run, whose rows this run keeps)
    /// and the runs it had recorded as this run's earlier runs.
    pub fn keep_history(&mut self, previous: &Manifest) {
        self.earlier_runs = previous.earlier_runs.clone();
        self.earlier_runs.push(EarlierRun {
            command: previous.command.clone(),
            git_commit: previous.git_commit.clone(),
            build_commit: previous.build_commit.clone(),
            config_sha256: previous.config_sha256.clone(),
            start_time: previous.start_time.clone(),
            end_time: previous.end_time.clone(),
            stage_seconds: previous.stage_seconds.clone(),
        });
    }

    /// Adds the seconds elapsed since `t0` to stage `stage`.
    pub fn add_stage(&mut self, stage: &str, t0: Instant) {
        *self.stage_seconds.entry(stage.to_string()).or_default() += t0.elapsed().as_secs_f64();
    }

    /// Records the end time and writes `manifest.json` into `dir` atomically.
    pub fn finish(&mut self, dir: &Path) -> Result<()> {
        self.end_time = now_rfc3339();
        self.write(dir)
    }

    /// The `manifest.json` in `dir`, if there is a readable one (a previous run's).
    pub fn read(dir: &Path) -> Option<Self> {
        Self::read_checked(dir).ok().flatten()
    }

    /// The `manifest.json` in `dir`: `None` if there is none.
    ///
    /// # Errors
    /// If it exists but cannot be read or parsed (damaged, or written by a newer `bench`).
    pub fn read_checked(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .with_context(|| format!("{} is damaged or of a newer bench", path.display()))
    }

    /// Writes `manifest.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())
    }
}

/// What the rows of a `results.csv` were computed with, besides their method and ratio: the
/// inputs that change a row's meaning. A sweep that adds rows to an existing `results.csv`
/// compares its own inputs with this record of the run that wrote the rows ([`RowCheck`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RowInputs {
    /// `[eval]`: `max_samples` and `seed` choose the evaluated reviews (and `seed` the
    /// calibration and refit reviews) and are compared; `batch_size` is recorded only (padding
    /// is masked, so it changes nothing but rounding).
    pub eval: EvalConfig,
    /// SHA-256 of the data files (one hex digest per file, by file name).
    pub data_sha256: BTreeMap<String, String>,
    /// SHA-256 of the checkpoint's weights file.
    pub checkpoint_sha256: String,
    /// The tokenizer the reviews were encoded with.
    pub tokenizer: TokenizerInputs,
    /// The `[sweep]` options that change rows (each compared only when a row of a method that
    /// uses it exists).
    pub sweep: SweepRowOptions,
}

/// The tokenizer a sweep encodes reviews with (from `[data]`, or the checkpoint's
/// `tokenizer.json`): its kind, truncation length and vocabulary size.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenizerInputs {
    /// `byte` or `char` (`data.tokenizer`).
    pub kind: String,
    /// Longest encoded review, in tokens (`data.max_len` or the checkpoint's).
    pub max_len: usize,
    /// Number of token ids.
    pub vocab_size: usize,
}

impl TokenizerInputs {
    /// The record of `tok`.
    pub fn of(tok: &dyn lra::Tokenize) -> Self {
        let kind = serde_json::to_value(tok.kind())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", tok.kind()).to_lowercase());
        TokenizerInputs {
            kind,
            max_len: tok.max_len(),
            vocab_size: tok.vocab_size(),
        }
    }
}

impl std::fmt::Display for TokenizerInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (max_len {}, {} ids)",
            self.kind, self.max_len, self.vocab_size
        )
    }
}

/// The `[sweep]` options that change the meaning of a row, with the defaults filled in (so an
/// option written out at its default value is no change).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepRowOptions {
    /// `sweep.refit_ridge` (rows of `+refit` and `+refit-seq` recipes).
    pub refit_ridge: f64,
    /// `sweep.refit_reviews` (rows of `+refit` and `+refit-seq` recipes).
    pub refit_reviews: usize,
    /// `sweep.lqo_floor_fraction` (rows of `lqo-h2`).
    pub lqo_floor_fraction: f64,
    /// `sweep.hinf_horizon` (rows of `last`, `global-hinf`, `uniform-hinf`); `None` = infinite.
    pub hinf_horizon: Option<usize>,
}

impl SweepRowOptions {
    /// The row-affecting options of `[sweep]`.
    pub fn of(sweep: &SweepConfig) -> Self {
        SweepRowOptions {
            refit_ridge: sweep.refit_options().ridge,
            refit_reviews: sweep.refit_reviews(),
            lqo_floor_fraction: sweep.reduce_options().lqo.floor_fraction,
            hinf_horizon: sweep.hinf_horizon,
        }
    }

    /// `(config key, value before, value now)` of every option that differs and that a row of
    /// one of `methods` depends on (a method name that is not a recipe counts as using all).
    fn differences(&self, now: &Self, methods: &[&str]) -> Vec<(&'static str, String, String)> {
        use mor::Method;
        let recipes: Vec<Option<mor::recipe::Recipe>> = methods
            .iter()
            .filter(|m| **m != crate::results::FULL)
            .map(|m| m.parse().ok())
            .collect();
        let used = |f: &dyn Fn(&mor::recipe::Recipe) -> bool| {
            recipes.iter().any(|r| r.as_ref().is_none_or(f))
        };
        let refit = used(&|r| r.post.is_some());
        let lqo = used(&|r| matches!(r.reducer, Method::LqoH2 | Method::LqoH2Taylor));
        let hinf = used(&|r| {
            matches!(
                r.reducer,
                Method::Last | Method::GlobalHinf | Method::UniformHinf
            )
        });
        let horizon =
            |h: Option<usize>| h.map_or_else(|| "none (infinite)".into(), |h| h.to_string());
        let mut out = Vec::new();
        if refit && self.refit_ridge.to_bits() != now.refit_ridge.to_bits() {
            out.push((
                "sweep.refit_ridge",
                self.refit_ridge.to_string(),
                now.refit_ridge.to_string(),
            ));
        }
        if refit && self.refit_reviews != now.refit_reviews {
            out.push((
                "sweep.refit_reviews",
                self.refit_reviews.to_string(),
                now.refit_reviews.to_string(),
            ));
        }
        if lqo && self.lqo_floor_fraction.to_bits() != now.lqo_floor_fraction.to_bits() {
            out.push((
                "sweep.lqo_floor_fraction",
                self.lqo_floor_fraction.to_string(),
                now.lqo_floor_fraction.to_string(),
            ));
        }
        if hinf && self.hinf_horizon != now.hinf_horizon {
            out.push((
                "sweep.hinf_horizon",
                horizon(self.hinf_horizon),
                horizon(now.hinf_horizon),
            ));
        }
        out
    }
}

/// Checks, stage by stage, that a sweep about to add rows to a run directory's `results.csv`
/// computes them from the same inputs as the rows already there (per the directory's previous
/// manifest). With no rows there is nothing to mix and every check passes. A manifest written
/// before [`RowInputs`] existed is checked on what it holds (the data and checkpoint digests);
/// one without any manifest passes with a warning.
#[derive(Debug)]
pub struct RowCheck<'a> {
    dir: &'a Path,
    previous: Option<&'a Manifest>,
    /// Methods of the existing rows; empty = no rows.
    methods: Vec<&'a str>,
}

impl<'a> RowCheck<'a> {
    /// The check of run directory `dir` whose `results.csv` holds `rows` and whose manifest
    /// before this run was `previous`.
    pub fn new(dir: &'a Path, previous: Option<&'a Manifest>, rows: &'a [Row]) -> Self {
        let mut methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
        methods.sort_unstable();
        methods.dedup();
        if previous.is_none() && !rows.is_empty() {
            tracing::warn!(
                "{}/results.csv has rows but no {MANIFEST_FILE} beside it: cannot check what they                  were computed with; adding rows as configured",
                dir.display()
            );
        }
        RowCheck {
            dir,
            previous: previous.filter(|_| !rows.is_empty()),
            methods,
        }
    }

    fn recorded(&self) -> Option<&'a RowInputs> {
        self.previous.and_then(|m| m.row_inputs.as_ref())
    }

    /// The configuration part: `[eval]` subset and the row-affecting `[sweep]` options (checked
    /// before any data is loaded or model trained).
    ///
    /// # Errors
    /// When they differ from the recorded ones (see [`refuse`]).
    pub fn config(&self, eval: &EvalConfig, sweep: &SweepRowOptions) -> Result<()> {
        let Some(rec) = self.recorded() else {
            return Ok(());
        };
        let mut diff = Vec::new();
        if rec.eval.max_samples != eval.max_samples {
            diff.push((
                "eval.max_samples",
                rec.eval.max_samples.to_string(),
                eval.max_samples.to_string(),
            ));
        }
        if rec.eval.seed != eval.seed {
            diff.push((
                "eval.seed",
                rec.eval.seed.to_string(),
                eval.seed.to_string(),
            ));
        }
        diff.extend(rec.sweep.differences(sweep, &self.methods));
        refuse(self.dir, &diff)
    }

    /// The data files' digests.
    ///
    /// # Errors
    /// When they differ from the recorded ones.
    pub fn data(&self, data_sha256: &BTreeMap<String, String>) -> Result<()> {
        let Some(prev) = self.previous else {
            return Ok(());
        };
        let rec = self
            .recorded()
            .map_or(&prev.data_sha256, |r| &r.data_sha256);
        if rec.is_empty() || rec == data_sha256 {
            return Ok(());
        }
        let show = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(f, d)| format!("{f} {}", &d[..d.len().min(12)]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        refuse(
            self.dir,
            &[("the data files (sha256)", show(rec), show(data_sha256))],
        )
    }

    /// The checkpoint's weights digest.
    ///
    /// # Errors
    /// When it differs from the recorded one.
    pub fn checkpoint(&self, sha256: &str) -> Result<()> {
        let Some(prev) = self.previous else {
            return Ok(());
        };
        let rec = self
            .recorded()
            .map(|r| r.checkpoint_sha256.as_str())
            .or(prev.checkpoint_sha256.as_deref());
        match rec {
            Some(rec) if rec != sha256 => refuse(
                self.dir,
                &[(
                    "the checkpoint's weights (sha256)",
                    rec.to_string(),
                    sha256.to_string(),
                )],
            ),
            _ => Ok(()),
        }
    }

    /// The tokenizer.
    ///
    /// # Errors
    /// When it differs from the recorded one.
    pub fn tokenizer(&self, tok: &TokenizerInputs) -> Result<()> {
        match self.recorded() {
            Some(rec) if &rec.tokenizer != tok => refuse(
                self.dir,
                &[(
                    "the tokenizer (data.tokenizer, data.max_len or the checkpoint's \
                     tokenizer.json)",
                    rec.tokenizer.to_string(),
                    tok.to_string(),
                )],
            ),
            _ => Ok(()),
        }
    }
}

/// The refusal to mix rows: `diff` lists `(what, recorded value, value now)`; `Ok` if empty.
///
/// # Errors
/// When `diff` is not empty, naming every difference and how to start a new run.
pub fn refuse(dir: &Path, diff: &[(&str, String, String)]) -> Result<()> {
    if diff.is_empty() {
        return Ok(());
    }
    let list = diff
        .iter()
        .map(|(what, was, now)| format!("{what} was {was}, now {now}"))
        .collect::<Vec<_>>()
        .join("; ");
    anyhow::bail!(
        "{}/results.csv holds rows computed with other inputs than this run's ({list}, per its \
         {MANIFEST_FILE}); adding rows would mix different evaluations in one table, so nothing \
         was changed. To start a new run, set another `name` in the configuration, or move \
         results.csv and kept_modes.csv out of {} (or move the whole directory away); or restore \
         the previous setting to extend these rows",
        dir.display(),
        dir.display()
    )
}

/// The commit of the sources this binary was built from, embedded by `crates/bench/build.rs`:
/// `git rev-parse HEAD` at build time, `-dirty` if `crates/` or the workspace's Cargo files had
/// uncommitted changes, `unknown` without git.
pub fn build_commit() -> &'static str {
    env!("BENCH_BUILD_COMMIT")
}

/// The source tree's commit (`git rev-parse HEAD`, `-dirty` if `git status` shows changes to
/// tracked files), or `unknown` when git or the repository is missing.
pub fn git_commit() -> String {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if built_in.exists() {
        built_in.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf())
    };
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}

/// Lower-case hex SHA-256 of bytes ([`lra::fetch::sha256_hex`]).
pub fn sha256_hex(bytes: &[u8]) -> String {
    lra::fetch::sha256_hex(bytes)
}

/// Lower-case hex SHA-256 of a file, streamed ([`lra::fetch::sha256_file`]).
///
/// # Errors
/// The file cannot be opened or read.
pub fn sha256_file(path: &Path) -> Result<String> {
    lra::fetch::sha256_file(path).with_context(|| format!("cannot hash {}", path.display()))
}

/// The current UTC time as RFC 3339 (`2026-11-29T10:21:51Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as RFC 3339 UTC (civil-from-days, H. Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str) -> Row {
        let mut r: Row = serde_json::from_value(serde_json::json!({
            "method": method, "ratio": 0.5, "kept_modes": 1, "ssm_params": 1,
            "total_params": 1, "param_reduction": 0.1, "ssm_param_reduction": 0.1,
            "accuracy": 0.5, "n_eval": 1, "logit_err_mean": 0.0, "logit_err_max": 0.0,
            "bound_max": 0.0, "bound_holds": true, "stable": true, "reduce_seconds": 0.0,
            "eval_seconds": 0.0
        }))
        .unwrap();
        r.method = method.into();
        r
    }

    fn sweep(methods: &[&str]) -> SweepConfig {
        SweepConfig {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            ratios: vec![0.5],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        }
    }

    fn inputs(eval: &EvalConfig, s: &SweepConfig) -> RowInputs {
        RowInputs {
            eval: eval.clone(),
            data_sha256: [("train.parquet".to_string(), "d1".repeat(32))].into(),
            checkpoint_sha256: "aa".into(),
            tokenizer: TokenizerInputs {
                kind: "byte".into(),
                max_len: 96,
                vocab_size: 257,
            },
            sweep: SweepRowOptions::of(s),
        }
    }

    /// The embedded build commit names this checkout's sources: a commit id (with `-dirty` when
    /// they had changes), the same commit as the checkout at run time, or `unknown` without git.
    /// Manifests written before the field existed still read, with it empty.
    #[test]
    fn build_commit_names_the_compiled_sources() {
        let built = build_commit();
        let now = git_commit();
        if built == "unknown" || now == "unknown" {
            println!("skipped the commit comparison: no git repository ({built}, {now})");
        } else {
            let hash = built.trim_end_matches("-dirty");
            assert!(
                hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{built}"
            );
            assert_eq!(hash, now.trim_end_matches("-dirty"));
        }
        let mut m = Manifest::start("x", Path::new("Cargo.toml"), 1).unwrap();
        assert_eq!(m.build_commit, built);
        let mut old = serde_json::to_value(&m).unwrap();
        old.as_object_mut().unwrap().remove("build_commit");
        let old: Manifest = serde_json::from_value(old).unwrap();
        assert_eq!(old.build_commit, "");
        m.keep_history(&old);
        assert_eq!(m.earlier_runs[0].build_commit, "");
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text.matches("build_commit").count(), 1, "{text}");
    }

    #[test]
    fn rows_of_another_checkpoint_are_refused() {
        let dir = Path::new("results/x");
        let mut prev = Manifest::start("x", Path::new("Cargo.toml"), 1).unwrap();
        let rows = [row("full"), row("modal")];
        // No digest recorded, or no rows yet: nothing to protect.
        assert!(
            RowCheck::new(dir, Some(&prev), &rows)
                .checkpoint("bb")
                .is_ok()
        );
        assert!(RowCheck::new(dir, None, &rows).checkpoint("bb").is_ok());
        prev.checkpoint_sha256 = Some("aa".into());
        assert!(
            RowCheck::new(dir, Some(&prev), &[])
                .checkpoint("bb")
                .is_ok()
        );
        assert!(
            RowCheck::new(dir, Some(&prev), &rows)
                .checkpoint("aa")
                .is_ok()
        );
        let msg = RowCheck::new(dir, Some(&prev), &rows)
            .checkpoint("bb")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("aa") && msg.contains("bb") && msg.contains("results/x"),
            "{msg}"
        );
        // Round trip through the file.
        let tmp = tempfile::tempdir().unwrap();
        prev.row_inputs = Some(inputs(&EvalConfig::default(), &sweep(&["modal"])));
        prev.write(tmp.path()).unwrap();
        assert_eq!(Manifest::read(tmp.path()), Some(prev));
        assert_eq!(Manifest::read(&tmp.path().join("missing")), None);
        assert!(
            Manifest::read_checked(&tmp.path().join("missing"))
                .unwrap()
                .is_none()
        );
        std::fs::write(tmp.path().join(MANIFEST_FILE), b"{\"name\": 1}").unwrap();
        let e = format!("{:#}", Manifest::read_checked(tmp.path()).unwrap_err());
        assert!(e.contains("manifest.json is damaged"), "{e}");
    }

    #[test]
    fn rows_of_other_inputs_are_refused_naming_what_differs() {
        let dir = Path::new("results/x");
        let eval = EvalConfig {
            max_samples: 16,
            batch_size: 16,
            seed: 0,
            estimate_reviews: 0,
        };
        let s = sweep(&["modal", "last"]);
        let mut prev = Manifest::start("x", Path::new("Cargo.toml"), 1).unwrap();
        prev.row_inputs = Some(inputs(&eval, &s));
        let rows = [row("full"), row("modal"), row("last")];
        let check = RowCheck::new(dir, Some(&prev), &rows);
        let opts = SweepRowOptions::of(&s);
        check.config(&eval, &opts).unwrap();
        // The batch size is not compared.
        let bigger = EvalConfig {
            batch_size: 64,
            ..eval.clone()
        };
        check.config(&bigger, &opts).unwrap();
        let reseeded = EvalConfig {
            seed: 3,
            max_samples: 8,
            ..eval.clone()
        };
        let e = check.config(&reseeded, &opts).unwrap_err().to_string();
        assert!(
            e.contains("eval.seed was 0, now 3")
                && e.contains("eval.max_samples was 16, now 8")
                && e.contains("another `name`"),
            "{e}"
        );
        // Options are compared only when a row uses them: `last` rows use the horizon ...
        let mut s2 = s.clone();
        s2.hinf_horizon = Some(96);
        let e = check
            .config(&eval, &SweepRowOptions::of(&s2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sweep.hinf_horizon was none (infinite), now 96"),
            "{e}"
        );
        // ... no row uses the refit or the lqo floor.
        s2 = s.clone();
        s2.refit_ridge = Some(1e-3);
        s2.lqo_floor_fraction = Some(1.0);
        check.config(&eval, &SweepRowOptions::of(&s2)).unwrap();
        let rows_refit = [row("full"), row("modal+refit")];
        let e = RowCheck::new(dir, Some(&prev), &rows_refit)
            .config(&eval, &SweepRowOptions::of(&s2))
            .unwrap_err()
            .to_string();
        let default_ridge = mor::refit::RefitOptions::default().ridge;
        assert!(
            e.contains(&format!("sweep.refit_ridge was {default_ridge}, now 0.001")),
            "{e}"
        );
        // The default written out is no change.
        s2 = s.clone();
        s2.refit_ridge = Some(mor::refit::RefitOptions::default().ridge);
        RowCheck::new(dir, Some(&prev), &rows_refit)
            .config(&eval, &SweepRowOptions::of(&s2))
            .unwrap();
        // Data digests and the tokenizer.
        let rec = prev.row_inputs.clone().unwrap();
        check.data(&rec.data_sha256).unwrap();
        let other: BTreeMap<String, String> =
            [("train.parquet".to_string(), "ee".repeat(32))].into();
        let e = check.data(&other).unwrap_err().to_string();
        assert!(
            e.contains(
                "the data files (sha256) was train.parquet d1d1d1d1d1d1, now \
                        train.parquet eeeeeeeeeeee"
            ),
            "{e}"
        );
        check.tokenizer(&rec.tokenizer).unwrap();
        let t = TokenizerInputs {
            max_len: 128,
            ..rec.tokenizer.clone()
        };
        let e = check.tokenizer(&t).unwrap_err().to_string();
        assert!(
            e.contains("byte (max_len 96, 257 ids), now byte (max_len 128"),
            "{e}"
        );
        // Old manifests (no record): the top-level digests are still compared, nothing else.
        let mut old = prev.clone();
        old.row_inputs = None;
        old.data_sha256 = rec.data_sha256.clone();
        let check = RowCheck::new(dir, Some(&old), &rows);
        check.config(&reseeded, &opts).unwrap();
        check.tokenizer(&t).unwrap();
        assert!(check.data(&other).is_err());
        // No rows: nothing to mix.
        let check = RowCheck::new(dir, Some(&prev), &[]);
        check.config(&reseeded, &opts).unwrap();
        check.data(&other).unwrap();
        check.checkpoint("zz").unwrap();
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (leap day) 12:34:56
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"abc"));
    }

    #[test]
    fn manifest_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "name = \"x\"\n").unwrap();
        let mut m = Manifest::start("x", &cfg, 2).unwrap();
        m.add_stage("sweep", Instant::now());
        m.finish(dir.path()).unwrap();
        let back: Manifest = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, m);
        assert_eq!(back.config_sha256, sha256_hex(b"name = \"x\"\n"));
        assert!(back.machine.cores >= 1);
    }
}
