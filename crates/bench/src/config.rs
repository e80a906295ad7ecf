//! Run configuration (`configs/*.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A run configuration file. Every section is optional and has defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// `[data]`: where the IMDb reviews come from, tokenizer and truncation length.
    pub data: lra::DataConfig,
}

impl RunConfig {
    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "parsing the configuration {} (see configs/imdb.toml for the documented fields)",
                path.display()
            )
        })
    }
}

/// Resolves `--config`: the path as given if it exists, else `configs/<path>` when the path is a bare
/// file name (so `--config imdb.toml` finds `configs/imdb.toml`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let in_configs = Path::new("configs").join(path);
    if path.components().count() == 1 && in_configs.exists() {
        return Ok(in_configs);
    }
    anyhow::bail!(
        "configuration {} not found (also looked for {}); pass an existing file, e.g. --config imdb.toml",
        path.display(),
        in_configs.display()
    )
}
