//! `manifest.json`: what a run was made from and on (git commit, config and its hash, data and
//! checkpoint checksums, machine, threads, times, per-stage seconds).

use crate::results::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
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
    /// `git rev-parse HEAD` of the source tree (with `-dirty` if it had changes), or `unknown`.
    pub git_commit: String,
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
}

/// What an earlier run of the same directory was made from (its manifest's provenance fields).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EarlierRun {
    /// Its command line.
    pub command: Vec<String>,
    /// Its source commit.
    pub git_commit: String,
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
        })
    }

    /// Records `previous` (the directory's manifest before this run, whose rows this run keeps)
    /// and the runs it had recorded as this run's earlier runs.
    pub fn keep_history(&mut self, previous: &Manifest) {
        self.earlier_runs = previous.earlier_runs.clone();
        self.earlier_runs.push(EarlierRun {
            command: previous.command.clone(),
            git_commit: previous.git_commit.clone(),
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
        let text = std::fs::read(dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes `manifest.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())
    }
}

/// Refuses to add rows to a run directory whose `results.csv` was computed from another
/// checkpoint: `previous` is the directory's existing manifest, `has_rows` whether its
/// `results.csv` holds rows, `sha256` the weights digest of the checkpoint about to be swept.
/// Without a previous manifest (or one without a checkpoint digest) there is nothing to compare.
///
/// # Errors
/// When the digests differ, with both digests and the fix.
pub fn check_same_checkpoint(
    dir: &Path,
    previous: Option<&Manifest>,
    has_rows: bool,
    sha256: &str,
) -> Result<()> {
    let Some(prev) = previous.and_then(|m| m.checkpoint_sha256.as_deref()) else {
        return Ok(());
    };
    if has_rows && prev != sha256 {
        anyhow::bail!(
            "{}/results.csv holds rows of another checkpoint (weights sha256 {prev}, per its \
             manifest.json) than the one configured now (sha256 {sha256}); mixing them would \
             compare different models. Move or delete results.csv and kept_modes.csv there, or set \
             another `name` in the config",
            dir.display()
        );
    }
    Ok(())
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

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    #[test]
    fn rows_of_another_checkpoint_are_refused() {
        let dir = Path::new("results/x");
        let mut prev = Manifest::start("x", Path::new("Cargo.toml"), 1).unwrap();
        // No digest recorded, or no rows yet: nothing to protect.
        assert!(check_same_checkpoint(dir, Some(&prev), true, "bb").is_ok());
        assert!(check_same_checkpoint(dir, None, true, "bb").is_ok());
        prev.checkpoint_sha256 = Some("aa".into());
        assert!(check_same_checkpoint(dir, Some(&prev), false, "bb").is_ok());
        assert!(check_same_checkpoint(dir, Some(&prev), true, "aa").is_ok());
        let msg = check_same_checkpoint(dir, Some(&prev), true, "bb")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("aa") && msg.contains("bb") && msg.contains("results/x"),
            "{msg}"
        );
        // Round trip through the file.
        let tmp = tempfile::tempdir().unwrap();
        prev.write(tmp.path()).unwrap();
        assert_eq!(Manifest::read(tmp.path()), Some(prev));
        assert_eq!(Manifest::read(&tmp.path().join("missing")), None);
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
