//! What the examples share: argument parsing, the run configuration, the loaded checkpoint.

use anyhow::{Context, Result};

/// A comma-separated list of ratios (`0.4,0.5`) from the `RATIOS` argument, or `default` when
/// absent.
pub fn ratios(arg: Option<&String>, default: &[f64]) -> Result<Vec<f64>> {
    match arg {
        Some(s) => s
            .split(',')
            .map(|r| {
                r.parse()
                    .with_context(|| format!("RATIOS: `{r}` is not a number"))
            })
            .collect(),
        None => Ok(default.to_vec()),
    }
}

/// A count from argument `name` (e.g. `MAX_SAMPLES`), or `default` when absent.
pub fn count(arg: Option<&String>, name: &str, default: usize) -> Result<usize> {
    match arg {
        Some(s) => s
            .parse()
            .with_context(|| format!("{name} `{s}` is not a count")),
        None => Ok(default),
    }
}

/// What every example starts from: the source commit (read before the run, which may outlast a
/// commit), the IMDb reviews (fetched on first use like the main command), the checkpoint and
/// its tokenizer.
pub struct Setup {
    /// `git rev-parse HEAD` (with `-dirty`) at the start.
    pub git_commit: String,
    /// The reviews.
    pub imdb: lra::Imdb,
    /// The checkpoint.
    pub loaded: bench::pipeline::Loaded,
    /// Its tokenizer.
    pub tok: Box<dyn lra::Tokenize>,
}

/// The run configuration the examples read their `[data]` section from: `$BENCH_CONFIG`, or
/// `imdb.toml` (resolved as `bench --config` resolves it: the working directory, else `configs/`).
pub fn run_config() -> Result<bench::config::RunConfig> {
    let name = std::env::var_os("BENCH_CONFIG").unwrap_or_else(|| "imdb.toml".into());
    let path = bench::config::resolve(std::path::Path::new(&name))?;
    bench::config::RunConfig::load(&path)
}

/// Loads [`Setup`] for the checkpoint directory `ckpt`, with the reviews of [`run_config`]'s
/// `[data]` section.
pub fn setup(ckpt: &std::path::Path) -> Result<Setup> {
    let git_commit = bench::manifest::git_commit();
    let imdb = bench::data::load(&run_config()?.data)?;
    let loaded = bench::pipeline::load(ckpt)?;
    let tok_path = loaded.dir.join(s5::checkpoint::TOKENIZER_FILE);
    let tok = lra::load_tokenizer(&tok_path)
        .with_context(|| format!("loading {}", tok_path.display()))?;
    Ok(Setup {
        git_commit,
        imdb,
        loaded,
        tok,
    })
}
