//! Run configuration (`configs/*.toml`); every field is documented in `configs/imdb.toml`.

use std::path::{Path, PathBuf};

use crate::sections::{EvalConfig, SweepConfig};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A run configuration file. Every section is optional and has defaults, except that training
/// needs `[model]` and `[train]`, and a sweep needs `[sweep]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: outputs go to `<out_dir>/<name>/`.
    pub name: String,
    /// Directory of all runs' outputs.
    pub out_dir: PathBuf,
    /// Worker threads (rayon and candle); 0 = one per core.
    pub threads: usize,
    /// Checkpoint directory; default `<out_dir>/<name>/model`. Trained there if missing.
    pub checkpoint: Option<PathBuf>,
    /// Training reviews used: 0 = the whole train split, else a seeded class-balanced subset.
    pub train_samples: usize,
    /// `[data]`: where the IMDb reviews come from, tokenizer and truncation length.
    pub data: lra::DataConfig,
    /// `[model]`: the architecture trained when no checkpoint exists.
    pub model: Option<s5::ModelConfig>,
    /// `[train]`: training hyperparameters.
    pub train: Option<s5::train::TrainConfig>,
    /// `[eval]`: the evaluation set.
    pub eval: EvalConfig,
    /// `[sweep]`: methods and ratios.
    pub sweep: Option<SweepConfig>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "imdb".into(),
            out_dir: PathBuf::from("results"),
            threads: 0,
            checkpoint: None,
            train_samples: 0,
            data: lra::DataConfig::default(),
            model: None,
            train: None,
            eval: EvalConfig::default(),
            sweep: None,
        }
    }
}

impl RunConfig {
    /// Reads, parses and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let cfg: RunConfig = toml::from_str(&text).with_context(|| {
            format!(
                "parsing the configuration {} (see configs/imdb.toml for the documented fields)",
                path.display()
            )
        })?;
        cfg.validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks the fields that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || self.name.contains(['/', '\\'])
            || self.name == "."
            || self.name == ".."
        {
            bail!(
                "name = {:?} must be a plain directory name (e.g. \"imdb\")",
                self.name
            );
        }
        if self.data.max_len == 0 {
            bail!("data.max_len must be ≥ 1");
        }
        self.eval.validate()?;
        if let Some(s) = &self.sweep {
            s.validate()?;
        }
        if let Some(t) = &self.train {
            t.validate()?;
        }
        Ok(())
    }

    /// `<out_dir>/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }

    /// The checkpoint directory (`checkpoint`, default `<out_dir>/<name>/model`).
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint
            .clone()
            .unwrap_or_else(|| self.run_dir().join("model"))
    }

    /// `[sweep]`, or a clear error.
    pub fn sweep(&self) -> Result<&SweepConfig> {
        self.sweep
            .as_ref()
            .context("the configuration has no [sweep] section (methods, ratios)")
    }

    /// Threads to use (`threads`, 0 = one per core).
    pub fn n_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// Resolves `--config`: the path as given if it exists, else `configs/<path>` when the path is a bare
/// file name (so `--config imdb.toml` finds `configs/imdb.toml`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    resolve_in(Path::new(""), path)
}

/// [`resolve`] relative to the folder `base` instead of the working directory (`""` = working
/// directory): `base/path` if it exists, else `base/configs/path` for a bare file name.
///
/// # Errors
/// Neither file exists.
pub fn resolve_in(base: &Path, path: &Path) -> Result<PathBuf> {
    let direct = base.join(path);
    if direct.exists() {
        return Ok(direct);
    }
    let bare = path.components().count() == 1;
    let in_configs = base.join("configs").join(path);
    if bare && in_configs.exists() {
        return Ok(in_configs);
    }
    let also = if bare {
        format!(" (nor {})", in_configs.display())
    } else {
        String::new()
    };
    anyhow::bail!(
        "configuration {} not found{also}; run from the repository root (where configs/ is) or \
         pass the path of an existing file, e.g. --config path/to/configs/imdb.toml",
        direct.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_name_resolves_to_configs_folder_unless_present_here() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("configs")).unwrap();
        std::fs::write(base.join("configs/a.toml"), "").unwrap();
        assert_eq!(
            resolve_in(base, Path::new("a.toml")).unwrap(),
            base.join("configs/a.toml")
        );
        // A file of that name in the folder itself wins.
        std::fs::write(base.join("a.toml"), "").unwrap();
        assert_eq!(
            resolve_in(base, Path::new("a.toml")).unwrap(),
            base.join("a.toml")
        );
        // Only bare names are looked up in configs/.
        std::fs::create_dir(base.join("sub")).unwrap();
        std::fs::write(base.join("configs/b.toml"), "").unwrap();
        assert!(resolve_in(base, Path::new("sub/b.toml")).is_err());
        let err = resolve_in(base, Path::new("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.toml") && err.contains("configs"),
            "{err}"
        );
    }

    fn parse(text: &str) -> Result<RunConfig> {
        let cfg: RunConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("configs/ is committed")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        for must in ["imdb.toml", "imdb-s5.toml", "smoke.toml"] {
            assert!(names.iter().any(|n| n == must), "configs/{must} missing");
        }
        for name in &names {
            RunConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = format!("{:#}", parse("name = \"x\"\nbogus = 1\n").unwrap_err());
        assert!(e.contains("bogus"), "{e}");
        let e = format!("{:#}", parse("[eval]\nmax_sample = 3\n").unwrap_err());
        assert!(e.contains("max_sample"), "{e}");
    }

    #[test]
    fn impossible_ratio_and_unknown_method_are_named() {
        let e = format!("{:#}", parse("[sweep]\nratios = [0.5, 1.2]\n").unwrap_err());
        assert!(e.contains("1.2") && e.contains("[0, 1)"), "{e}");
        let e = format!(
            "{:#}",
            parse("[sweep]\nmethods = [\"bt\", \"svd\"]\nratios = [0.5]\n").unwrap_err()
        );
        assert!(e.contains("svd") && e.contains("modal"), "{e}");
        let e = format!("{:#}", parse("name = \"a/b\"\n").unwrap_err());
        assert!(e.contains("plain directory name"), "{e}");
    }
}
