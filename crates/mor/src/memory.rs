//! Memory a `mor` command needs, estimated from the block's sizes before anything large is
//! allocated, so that a block too large for the machine is refused with the estimate instead of
//! growing until the operating system kills the process.
//!
//! The estimates follow the dense matrices each computation holds at once (`n` stored modes, `m`
//! inputs, `p` outputs; complex numbers take 16 bytes):
//! - h2 norm (and the h2 error, on the difference block of `n_full + n_red` modes; `modal`,
//!   `last`, `global-hinf`, `uniform-hinf` reductions): four `[n, n]` complex matrices of the
//!   Cauchy-like Gramian sum, 64·n² bytes;
//! - Hankel singular values and the balanced-truncation family (`bt`, and `h2`, `tlh2`,
//!   `lqo-h2`, which start from it): the Gramians of the `2n` real states, their square-root
//!   factors and SVD, about 600·n² bytes (measured 530–560·n²);
//! - the certified H∞ bound: frequency responses, O(n·(m + p));
//! - always the block itself and its JSON text while it is parsed (about 8 bytes of memory per
//!   byte of the file).
//!
//! Measured peaks (n = 400 and 800, m = p = 4) are within these estimates. The limit is
//! [`DEFAULT_LIMIT_GIB`] unless the caller raises it (`mor --max-memory-gib`).

use crate::error::{Error, Result};

/// The default limit of [`check`], in GiB.
pub const DEFAULT_LIMIT_GIB: f64 = 8.0;

/// Bytes per GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// Memory per byte of a JSON file while it is parsed (the text, the parsed tree, the arrays).
pub const JSON_PARSE_FACTOR: f64 = 8.0;

/// The kinds of computation whose memory is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// h2 norm or h2 error by the closed-form Gramian (64·n² bytes).
    H2,
    /// Hankel singular values, balanced truncation and the h2-optimal reductions (600·n² bytes).
    Balanced,
    /// Certified H∞ bound (frequency responses).
    Hinf,
}

/// Estimated peak bytes of `work` on a block of `n` modes, `m` inputs and `p` outputs (`s`
/// quadratic outputs), the block's own storage included ([module doc](self)).
pub fn estimate_bytes(work: Work, n: usize, m: usize, p: usize, s: usize) -> f64 {
    let (n, m, p, s) = (n as f64, m as f64, p as f64, s as f64);
    // The block (B, C, C_rev, E, N_i) twice (the parsed and the working copy).
    let block = 2.0 * (16.0 * n * (m + 2.0 * p) + 8.0 * (p * p * (s + 1.0)));
    // p × p output Gramians and their products (LQO terms).
    let outputs = 8.0 * p * p * (s + 6.0);
    let work = match work {
        Work::H2 => 64.0 * n * n + 32.0 * n * (m + p),
        Work::Balanced => 600.0 * n * n + 64.0 * n * (m + p),
        Work::Hinf => 64.0 * n * (m + p + 4.0),
    };
    block + outputs + work
}

/// Bytes as GiB with two decimals, or MiB below one GiB.
pub fn human(bytes: f64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", (bytes / (1u64 << 20) as f64).max(1.0))
    }
}

/// Errors if `bytes` (the estimate for `what`) exceeds `limit_gib` GiB.
///
/// # Errors
/// [`Error::Argument`] with the estimate, the limit and how to raise it.
pub fn check(what: &str, bytes: f64, limit_gib: f64) -> Result<()> {
    if bytes > limit_gib * GIB {
        return Err(Error::Argument(format!(
            "{what} needs about {} of memory, more than the limit of {limit_gib} GiB, so \
             nothing was computed; pass --max-memory-gib {} to allow it if the machine has that \
             much free memory, or work on a smaller block",
            human(bytes),
            (bytes / GIB * 1.25).ceil()
        )));
    }
    Ok(())
}

/// Checks a `--max-memory-gib` value: finite and positive.
///
/// # Errors
/// [`Error::Argument`] naming the value.
pub fn check_limit(limit_gib: f64) -> Result<()> {
    if !(limit_gib.is_finite() && limit_gib > 0.0) {
        return Err(Error::Argument(format!(
            "--max-memory-gib {limit_gib}: the memory limit must be a positive number of GiB \
             (default {DEFAULT_LIMIT_GIB})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_thousand_modes_are_refused_by_default() {
        // The case of the report: h2 of a 20,000-mode block reached 24 GB.
        let b = estimate_bytes(Work::H2, 20_000, 1, 1, 0);
        assert!(b > 24e9 && b < 27e9, "{b}");
        let e = check("h2 of x.json", b, DEFAULT_LIMIT_GIB)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("about 23.8") && e.contains("8 GiB") && e.contains("--max-memory-gib 30"),
            "{e}"
        );
        assert!(check("h2", b, 30.0).is_ok());
        // Small blocks pass; the balanced family is the most expensive.
        assert!(check("h2", estimate_bytes(Work::H2, 1000, 256, 256, 0), 8.0).is_ok());
        assert!(
            estimate_bytes(Work::Balanced, 1000, 4, 4, 0) > estimate_bytes(Work::H2, 1000, 4, 4, 0)
        );
        assert!(check_limit(0.0).is_err() && check_limit(f64::NAN).is_err());
        assert_eq!(human(3.0 * (1u64 << 20) as f64), "3 MiB");
    }
}
