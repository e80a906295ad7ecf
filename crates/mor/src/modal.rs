//! Modal truncation (`modal`) and the per-mode H∞ score methods of LAST (Gwak et al.,
//! NeurIPS 2024): `last`, `global-hinf`, `uniform-hinf`, plus the mode-budget allocation helpers.
//!
//! Every method here keeps a subset of the stored modes unchanged (rows of `B̄`, columns of `C̃`
//! and `C̃_rev`), so the result is in the stored diagonal form with exactly the requested number
//! of modes and is stable whenever the full block is.

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use crate::gram;
use crate::modes;
use crate::reduction::BlockReduction;
use faer::Mat;

/// How `modal` ranks modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModalOrder {
    /// By per-mode h2 contribution [`modes::mode_h2_scores`] (default).
    #[default]
    #[serde(rename = "h2")]
    H2,
    /// By `|λ_i|` (slowest modes first).
    #[serde(rename = "abs-lambda")]
    AbsLambda,
}

/// Indices of the `r` largest scores, returned in ascending index order (ties: lower index
/// first; NaN ranks last).
pub fn top_r(scores: &[f64], r: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y
                .partial_cmp(&x)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b)),
        }
    });
    idx.truncate(r);
    idx.sort_unstable();
    idx
}

/// Keeps the listed modes and reports the infinite-horizon h2 error (with the block's `E`, `N_i`).
///
/// # Errors
/// [`Error::Unstable`] if the block is unstable (the h2 error is undefined).
pub fn truncate_modes(block: &DiagBlock, keep: &[usize]) -> Result<BlockReduction> {
    let red = modes::select_modes(block, keep);
    let h2_error = gram::h2_error(block, &red, None)?;
    Ok(BlockReduction {
        block: red,
        h2_error,
        hinf_bound: None,
    })
}

/// `modal`: keep the `r` most dominant modes, ranked by `order` (module doc).
///
/// # Errors
/// [`Error::Argument`] unless `1 ≤ r ≤ n`; [`Error::Unstable`] for an unstable block.
pub fn modal(block: &DiagBlock, r: usize, order: ModalOrder) -> Result<BlockReduction> {
    block.check_order(r, "modal truncation")?;
    gram::check_stable(block, "modal truncation: block")?;
    let scores = match order {
        ModalOrder::H2 => modes::mode_h2_scores(block),
        ModalOrder::AbsLambda => block.lambda.iter().map(|l| l.norm()).collect(),
    };
    truncate_modes(block, &top_r(&scores, r))
}

/// `emodal` (empirical modal truncation): keep the `r` modes that carry the most output power
/// under the block's recorded inputs, [`crate::empirical::mode_output_energies`] with the
/// empirical Gramian `p_emp` (`[2n, 2n]`). With the white-input Gramian it is `modal`.
///
/// # Errors
/// As [`modal`], and [`Error::Shape`] for a `p_emp` of the wrong size.
pub fn empirical_modal(block: &DiagBlock, r: usize, p_emp: &Mat<f64>) -> Result<BlockReduction> {
    block.check_order(r, "empirical modal truncation")?;
    gram::check_stable(block, "empirical modal truncation: block")?;
    let scores = crate::empirical::mode_output_energies(block, p_emp)?;
    truncate_modes(block, &top_r(&scores, r))
}

/// Keep the `r` modes with the largest H∞ scores (one layer of `uniform-hinf`; also the
/// per-layer step of `last` / `global-hinf` once the allocation is known): LAST's
/// infinite-horizon scores [`modes::mode_hinf_scores`] when `horizon` is `None`, else the
/// time-limited scores over `horizon` steps [`modes::mode_hinf_scores_horizon`].
///
/// # Errors
/// As [`modal`], and [`Error::Argument`] for `horizon == Some(0)`.
pub fn hinf_truncate(
    block: &DiagBlock,
    r: usize,
    horizon: Option<usize>,
) -> Result<BlockReduction> {
    block.check_order(r, "H∞ modal truncation")?;
    check_horizon(horizon)?;
    gram::check_stable(block, "hinf: block")?;
    truncate_modes(
        block,
        &top_r(&modes::mode_hinf_scores_horizon(block, horizon), r),
    )
}

/// A horizon of the time-limited H∞ scores must be at least one step.
///
/// # Errors
/// [`Error::Argument`] for `Some(0)`.
pub fn check_horizon(horizon: Option<usize>) -> Result<()> {
    if horizon == Some(0) {
        return Err(Error::Argument(
            "the H∞ score horizon is 0 steps; give a horizon ≥ 1 (e.g. the sequence length) \
             or none for LAST's infinite-horizon score"
                .into(),
        ));
    }
    Ok(())
}

/// LAST's layer-normalised score (Gwak et al., NeurIPS 2024, "layer-adaptive" normalisation):
/// `s_i / Σ_{k: s_k ≥ s_i} s_k`. The largest mode of each layer scores 1; a score is small when
/// removing the mode costs little relative to what the layer keeps above it.
pub fn last_normalise(scores: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = vec![0.0; scores.len()];
    let mut cum = 0.0;
    let mut k = 0;
    while k < idx.len() {
        // Ties share the same denominator (all scores ≥ s_i, ties included).
        let s = scores[idx[k]];
        let mut e = k;
        while e < idx.len() && scores[idx[e]] == s {
            cum += s;
            e += 1;
        }
        for &i in &idx[k..e] {
            out[i] = if cum > 0.0 { s / cum } else { 0.0 };
        }
        k = e;
    }
    out
}

/// One global threshold across layers: keeps the `budget` highest scores over all layers, with at
/// least one mode per layer (each layer's best mode is kept first). Returns the kept indices per
/// layer (ascending).
///
/// # Errors
/// [`Error::Argument`] if `budget` is smaller than the number of non-empty layers or larger than
/// the total number of modes.
pub fn allocate_global(scores: &[Vec<f64>], budget: usize) -> Result<Vec<Vec<usize>>> {
    let total: usize = scores.iter().map(|s| s.len()).sum();
    let layers = scores.iter().filter(|s| !s.is_empty()).count();
    if budget < layers || budget > total {
        return Err(Error::Argument(format!(
            "mode budget {budget} must be between the number of layers ({layers}) and the total number of modes ({total})"
        )));
    }
    let mut kept: Vec<Vec<usize>> = scores
        .iter()
        .map(|s| top_r(s, usize::from(!s.is_empty())))
        .collect();
    let mut rest: Vec<(f64, usize, usize)> = vec![];
    for (l, s) in scores.iter().enumerate() {
        for (i, &v) in s.iter().enumerate() {
            if kept[l].first() != Some(&i) {
                rest.push((v, l, i));
            }
        }
    }
    rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for &(_, l, i) in rest.iter().take(budget - layers) {
        kept[l].push(i);
    }
    for k in &mut kept {
        k.sort_unstable();
    }
    Ok(kept)
}

/// Equal ratio per layer: `max(1, round((1 − ratio) n_ℓ))` modes kept in a layer of `n_ℓ` modes.
pub fn uniform_orders(ns: &[usize], ratio: f64) -> Vec<usize> {
    ns.iter()
        .map(|&n| (((1.0 - ratio) * n as f64).round() as usize).clamp(1.min(n), n))
        .collect()
}

/// Equal ratio per layer with an exact total: layer `ℓ` gets `budget · n_ℓ / Σn` modes, rounded
/// by the largest-remainder method so that the orders sum to `budget`, with `1 ≤ r_ℓ ≤ n_ℓ`
/// (ties go to the earlier layer). `budget` must lie between the number of non-empty layers and
/// `Σn` (see [`crate::reduce::mode_budget`]).
pub fn uniform_allocation(ns: &[usize], budget: usize) -> Vec<usize> {
    let total: usize = ns.iter().sum();
    if total == 0 {
        return vec![0; ns.len()];
    }
    let quota: Vec<f64> = ns
        .iter()
        .map(|&n| budget as f64 * n as f64 / total as f64)
        .collect();
    let mut r: Vec<usize> = ns
        .iter()
        .zip(&quota)
        .map(|(&n, &x)| (x.floor() as usize).clamp(1.min(n), n))
        .collect();
    let mut frac: Vec<f64> = (0..ns.len()).map(|k| quota[k] - r[k] as f64).collect();
    let mut sum: usize = r.iter().sum();
    while sum < budget {
        let k = (0..ns.len())
            .filter(|&k| r[k] < ns[k])
            .max_by(|&a, &b| frac[a].total_cmp(&frac[b]).then(b.cmp(&a)))
            .expect("budget <= total modes");
        r[k] += 1;
        frac[k] -= 1.0;
        sum += 1;
    }
    while sum > budget {
        let k = (0..ns.len())
            .filter(|&k| r[k] > 1)
            .min_by(|&a, &b| frac[a].total_cmp(&frac[b]).then(b.cmp(&a)))
            .expect("budget >= number of layers");
        r[k] -= 1;
        frac[k] += 1.0;
        sum -= 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::random_block;
    use faer::c64;

    #[test]
    fn hinf_horizon_demotes_modes_slower_than_the_horizon() {
        // Mode 0: |λ| = 0.9999 (time constant ≈ 10⁴ steps), ‖b̄‖‖c‖ = 1; mode 1: |λ| = 0.5,
        // ‖b̄‖‖c‖ = 80. Infinite horizon: 1/(10⁻⁴)² = 10⁸ against 80²/0.5² = 25,600, so mode 0
        // ranks first; over 100 steps mode 0's lag sum is (1 − 0.9999¹⁰⁰)/10⁻⁴ ≈ 99.5, so
        // 9.9e3 against ≈ 25,600: mode 1 ranks first.
        let mut blk = random_block(3, 2, 1, 1, false, 0, None, 0.5);
        blk.lambda = vec![c64::new(0.9999, 0.0), c64::new(0.5, 0.0)];
        blk.b[(0, 0)] = c64::new(1.0, 0.0);
        blk.b[(1, 0)] = c64::new(80.0, 0.0);
        blk.c[(0, 0)] = c64::new(1.0, 0.0);
        blk.c[(0, 1)] = c64::new(1.0, 0.0);
        let keep = |h| hinf_truncate(&blk, 1, h).unwrap().block.lambda[0];
        assert_eq!(keep(None), blk.lambda[0]);
        assert_eq!(keep(Some(100)), blk.lambda[1]);
        assert!(matches!(
            hinf_truncate(&blk, 1, Some(0)),
            Err(Error::Argument(m)) if m.contains("horizon")
        ));
    }

    #[test]
    fn top_r_and_normalise() {
        assert_eq!(top_r(&[1.0, 5.0, 3.0, 4.0], 2), vec![1, 3]);
        let n = last_normalise(&[1.0, 4.0, 2.0, 3.0]);
        // Sorted 4,3,2,1 -> 4/4, 3/7, 2/9, 1/10.
        let want = [0.1, 1.0, 2.0 / 9.0, 3.0 / 7.0];
        for (a, b) in n.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
    }

    #[test]
    fn global_allocation_keeps_one_per_layer() {
        let s = vec![vec![0.1, 0.2], vec![10.0, 9.0, 8.0], vec![0.05]];
        let k = allocate_global(&s, 4).unwrap();
        assert_eq!(k, vec![vec![1], vec![0, 1], vec![0]]);
        assert!(allocate_global(&s, 2).is_err());
        assert_eq!(
            allocate_global(&s, 6)
                .unwrap()
                .iter()
                .map(Vec::len)
                .sum::<usize>(),
            6
        );
    }

    #[test]
    fn modal_is_best_single_mode_subset_for_orthogonal_modes() {
        // With one output per mode (disjoint supports), the h2 error of keeping a subset is
        // exactly the sum of the dropped modes' scores: modal must be optimal among all subsets.
        let mut blk = random_block(31, 4, 1, 4, false, 0, None, 0.9);
        for i in 0..4 {
            for o in 0..4 {
                if o != i {
                    blk.c[(o, i)] = faer::c64::new(0.0, 0.0);
                }
            }
        }
        let red = modal(&blk, 2, ModalOrder::H2).unwrap();
        let mut best = f64::INFINITY;
        for a in 0..4 {
            for b in a + 1..4 {
                best = best.min(truncate_modes(&blk, &[a, b]).unwrap().h2_error);
            }
        }
        assert!((red.h2_error - best).abs() < 1e-12 * best);
        let sc = modes::mode_h2_scores(&blk);
        let dropped: f64 = (0..4)
            .filter(|i| !red.block.lambda.contains(&blk.lambda[*i]))
            .map(|i| sc[i])
            .sum();
        assert!((red.h2_error.powi(2) - dropped).abs() < 1e-10 * dropped);
    }

    #[test]
    fn uniform_orders_round() {
        assert_eq!(uniform_orders(&[10, 3, 1], 0.75), vec![3, 1, 1]);
        assert_eq!(uniform_orders(&[10], 0.0), vec![10]);
        assert_eq!(uniform_allocation(&[8, 6, 10], 12), vec![4, 3, 5]);
        assert_eq!(
            uniform_allocation(&[96; 6], 100),
            vec![17, 17, 17, 17, 16, 16]
        );
        assert_eq!(uniform_allocation(&[10, 1, 1], 3), vec![1, 1, 1]);
        for b in 3..=12 {
            let r = uniform_allocation(&[10, 1, 1], b);
            assert_eq!(r.iter().sum::<usize>(), b);
            assert!(r[1] == 1 && r[2] == 1);
        }
    }
}
