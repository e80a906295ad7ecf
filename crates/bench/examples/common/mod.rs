//! Argument parsing shared by the examples.

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
