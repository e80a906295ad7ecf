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

/// The calibration reviews the sweep records on (the first 64 of the seed-0 training sample) and
/// `n` held-out training reviews (tokens) that are not among them, from the seed-1 sample: what
/// an example measures a layer's error on without touching test reviews or the data a method
/// was calibrated on.
#[allow(dead_code)] // used by the examples that measure layer errors, not by every example
pub fn calibration_and_held_out(
    setup: &Setup,
    n: usize,
) -> Result<(bench::pipeline::EvalSet, Vec<Vec<u32>>)> {
    use bench::pipeline::EvalSet;
    let cfg = |max_samples, seed| bench::sections::EvalConfig {
        max_samples,
        batch_size: 16,
        seed,
        estimate_reviews: 0,
    };
    let calibration = EvalSet::new(&setup.imdb.train, setup.tok.as_ref(), &cfg(64, 0))?;
    let candidates = EvalSet::new(&setup.imdb.train, setup.tok.as_ref(), &cfg(n + 64, 1))?;
    let held = candidates
        .indices
        .iter()
        .zip(candidates.tokens)
        .filter(|(i, _)| !calibration.indices.contains(i))
        .map(|(_, t)| t)
        .take(n)
        .collect();
    Ok((calibration, held))
}

/// The full model's SSM input of every layer on each of `reviews` (token sequences), grouped by
/// layer: `inputs[ℓ][i]` is layer ℓ's `[len_i, m]` input on review `i`
/// ([`bench::reducer::layer_inputs`]).
#[allow(dead_code)] // used by the examples that measure layer errors, not by every example
pub fn inputs_per_layer(
    model: &s5::S5Model,
    reviews: &[Vec<u32>],
) -> Result<Vec<Vec<faer::Mat<f64>>>> {
    let mut inputs: Vec<Vec<faer::Mat<f64>>> = Vec::new();
    for tokens in reviews {
        let per_layer = bench::reducer::layer_inputs(model, tokens)?;
        inputs.resize_with(per_layer.len(), Vec::new);
        for (l, u) in per_layer.into_iter().enumerate() {
            inputs[l].push(u);
        }
    }
    Ok(inputs)
}

/// Writes `value` as pretty JSON to `path` atomically and says so on stdout with the time since
/// `start`.
#[allow(dead_code)] // used by the examples that write a report, not by every example
pub fn write_report(
    path: &std::path::Path,
    value: &serde_json::Value,
    start: std::time::Instant,
) -> Result<()> {
    bench::results::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())?;
    println!(
        "wrote {} in {:.0} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The sweep's calibration sets drawn from the training reviews as `bench` draws them by
/// default (seed 0, batches of 16, the default refit size), so that an example's reductions are
/// the sweep's.
#[allow(dead_code)] // used by the examples that reduce, not by every example
pub fn calibration(
    imdb: &lra::Imdb,
    tok: &dyn lra::Tokenize,
) -> Result<bench::reducer::Calibration> {
    bench::reducer::Calibration::sample(
        &imdb.train,
        tok,
        16,
        0,
        bench::sections::DEFAULT_REFIT_REVIEWS,
    )
}

/// `n` test reviews, the class-balanced sample of seed 0, in batches of 8: the review set of the
/// reporting examples (`bound_ladder`, `gate_boxes`, `linearity`).
#[allow(dead_code)] // used by the reporting examples, not by every example
pub fn test_sample(setup: &Setup, n: usize) -> Result<bench::pipeline::EvalSet> {
    let cfg = bench::sections::EvalConfig {
        max_samples: n,
        batch_size: 8,
        seed: 0,
        estimate_reviews: 0,
    };
    bench::pipeline::EvalSet::new(&setup.imdb.test, setup.tok.as_ref(), &cfg)
}

/// A reducer over `setup`'s checkpoint with the sweep's default options and its calibration sets
/// `cal` ([`calibration`]), so that its reductions are the sweep's.
#[allow(dead_code)] // used by the examples that reduce, not by every example
pub fn sweep_reducer<'a>(
    setup: &'a Setup,
    cal: &'a bench::reducer::Calibration,
) -> Result<bench::reducer::Reducer<'a>> {
    bench::reducer::Reducer::new(
        &setup.loaded.model,
        setup.loaded.meta.max_len,
        Default::default(),
        Default::default(),
        Some(cal),
    )
}

/// A comma-separated list of recipes (`modal,h2`) from argument `name`, or `default` when absent.
#[allow(dead_code)] // used by the examples that take recipes, not by every example
pub fn recipes(
    arg: Option<&String>,
    name: &str,
    default: &str,
) -> Result<Vec<mor::recipe::Recipe>> {
    arg.map_or(default, String::as_str)
        .split(',')
        .map(|m| {
            m.parse()
                .map_err(|e: mor::Error| anyhow::anyhow!("{name}: {e}"))
        })
        .collect()
}
