//! Consistency checks of a compressed checkpoint (`bench compress`'s output): the full model's
//! files, `reduced_ssm.safetensors` and `reduction.json` must belong together, and the reduced
//! blocks must be finite and stable. A checkpoint that fails is refused rather than evaluated
//! (evaluating the full model in its place, or a model of NaNs, would print a wrong accuracy).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File of a compressed checkpoint holding the reduced SSM blocks (`mor` safetensors layout).
pub const REDUCED_BLOCKS_FILE: &str = "reduced_ssm.safetensors";
/// File of a compressed checkpoint describing the reduction.
pub const REDUCTION_FILE: &str = "reduction.json";

/// `reduction.json` of a compressed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReductionInfo {
    /// Reduction method.
    pub method: String,
    /// Fraction of SSM modes removed.
    pub ratio: f64,
    /// Complex modes kept per layer.
    pub kept_modes: Vec<usize>,
    /// Whether every kept mode has `|λ̄| < 1`.
    pub stable: bool,
    /// Trainable parameters of the reduced model.
    pub total_params: usize,
    /// SHA-256 of the full model's `model.safetensors`.
    pub source_sha256: String,
}

/// Whether the checkpoint in `dir` is a compressed one: both [`REDUCED_BLOCKS_FILE`] and
/// [`REDUCTION_FILE`] present (plain: neither).
///
/// # Errors
/// If only one of the two is present (an incomplete compressed checkpoint).
pub fn is_compressed(dir: &Path) -> Result<bool> {
    let blocks = dir.join(REDUCED_BLOCKS_FILE).exists();
    let info = dir.join(REDUCTION_FILE).exists();
    match (blocks, info) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (false, true) => bail!(
            "{} is a compressed checkpoint ({REDUCTION_FILE} is there) but \
             {REDUCED_BLOCKS_FILE} is missing; refusing to evaluate the full model in its place: \
             recreate it with `bench compress`",
            dir.display()
        ),
        (true, false) => bail!(
            "{} has {REDUCED_BLOCKS_FILE} but no {REDUCTION_FILE}; the compressed checkpoint is \
             incomplete: recreate it with `bench compress`",
            dir.display()
        ),
    }
}

/// Checks a compressed checkpoint in `dir` before it is used:
///
/// - `model_sha256` (of the `model.safetensors` beside the blocks) is the `source_sha256` the
///   reduction recorded;
/// - one block per layer of `full`, each with the recorded number of kept modes, no more modes
///   than the full layer, and the full layer's input and output dimensions and direction;
/// - every entry of every block is finite and every `|λ̄| < 1`.
///
/// # Errors
/// The first failed check, naming the file, the layer and the fix.
pub fn verify(
    dir: &Path,
    info: &ReductionInfo,
    model_sha256: &str,
    full: &mor::DeepSsm,
    blocks: &[mor::DiagBlock],
) -> Result<()> {
    let blocks_path = dir.join(REDUCED_BLOCKS_FILE);
    let recreate = "recreate it with `bench compress`";
    if info.source_sha256 != model_sha256 {
        bail!(
            "{}: the full weights beside the reduced blocks (model.safetensors, SHA-256 {}) are \
             not the ones they were reduced from ({REDUCTION_FILE} records source_sha256 {}); \
             {recreate}",
            dir.display(),
            short(model_sha256),
            short(&info.source_sha256)
        );
    }
    if blocks.len() != full.layers.len() || info.kept_modes.len() != full.layers.len() {
        bail!(
            "{}: {} reduced blocks and {} kept-mode counts in {REDUCTION_FILE} for a model of {} \
             layers: the blocks come from another model; {recreate}",
            blocks_path.display(),
            blocks.len(),
            info.kept_modes.len(),
            full.layers.len()
        );
    }
    for (l, ((b, f), &kept)) in blocks
        .iter()
        .zip(&full.layers)
        .zip(&info.kept_modes)
        .enumerate()
    {
        let f = &f.ssm;
        if b.n_modes() != kept
            || b.n_modes() > f.n_modes()
            || b.n_inputs() != f.n_inputs()
            || b.n_outputs() != f.n_outputs()
            || b.is_bidirectional() != f.is_bidirectional()
        {
            bail!(
                "{}: layer {l}'s reduced block ({} modes, {} inputs, {} outputs, bidirectional \
                 {}) does not match {REDUCTION_FILE} ({kept} kept modes) and the full layer ({} \
                 modes, {} inputs, {} outputs, bidirectional {}): the blocks come from another \
                 model or reduction; {recreate}",
                blocks_path.display(),
                b.n_modes(),
                b.n_inputs(),
                b.n_outputs(),
                b.is_bidirectional(),
                f.n_modes(),
                f.n_inputs(),
                f.n_outputs(),
                f.is_bidirectional()
            );
        }
        let finite = b
            .lambda
            .iter()
            .all(|z| z.re.is_finite() && z.im.is_finite())
            && [Some(&b.b), Some(&b.c), b.c_rev.as_ref()]
                .into_iter()
                .flatten()
                .all(|m| {
                    (0..m.nrows()).all(|i| {
                        (0..m.ncols()).all(|j| m[(i, j)].re.is_finite() && m[(i, j)].im.is_finite())
                    })
                })
            && b.d.iter().flatten().all(|x| x.is_finite());
        if !finite {
            bail!(
                "{}: layer {l}'s reduced block has non-finite (NaN or infinite) entries; the file \
                 is damaged; {recreate}",
                blocks_path.display()
            );
        }
        let max = b.max_abs_lambda();
        if max.is_nan() || max >= 1.0 {
            bail!(
                "{}: layer {l}'s reduced block is unstable (max |λ̄| = {max}, must be < 1; \
                 {REDUCTION_FILE} says stable: {}); refusing to evaluate it: recreate it with \
                 `bench compress`, with another method or ratio if the reduction itself is \
                 unstable",
                blocks_path.display(),
                info.stable
            );
        }
    }
    Ok(())
}

/// The first 12 hex digits of a digest.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
