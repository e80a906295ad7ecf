//! Order allocations: how a model-wide budget of kept modes is split over the layers.
//!
//! Every reducer has its own allocation ([`crate::reduce::reduce_model`]: the same ratio in every
//! layer, a global score threshold for `last`/`global-hinf`, the output-error bound for
//! `lqo-h2`). An [`Allocation`] named in a recipe (`<method>@<allocation>`, [`crate::recipe`])
//! replaces it, so any reducer can be paired with any allocation:
//! - `uniform`: the same ratio in every layer ([`crate::modal::uniform_allocation`]);
//! - `bound` (`lqo-h2` only): by the output-error bound's layer weights
//!   ([`crate::lqo::bound_orders`]), the allocation of the project's first reconstruction of the
//!   paper, kept as a separate, documented preset;
//! - `sens`: by measured sensitivity. For each layer ℓ and each order `k` of a grid
//!   ([`sensitivity_grid`]) the caller measures a cost `c_ℓ(k)`: the mean squared change of the
//!   model's logits on calibration (training) sequences when layer ℓ **alone** is reduced to `k`
//!   modes by the recipe's reducer and post-step (issue 9, item 4b). [`min_cost_orders`] then
//!   returns the orders minimising `Σ_ℓ c_ℓ(k_ℓ)` subject to `Σ_ℓ k_ℓ = budget`, exactly, by
//!   dynamic programming (not greedily);
//! - `first-order`: the same, with the cost predicted instead of measured (issue 9, item 4a):
//!   `c_ℓ(k)` is the mean over calibration sequences of `‖J_ℓ (𝒮_ℓ − 𝒮̂_ℓ(k)) u_ℓ‖²`, the
//!   squared first-order logit change of layer ℓ's reduction (`J_ℓ = ∂logits/∂y_ℓ` on the full
//!   model's trajectory, `u_ℓ` the recorded layer input). It needs one linearisation of the full
//!   model, then one pass of two SSMs per grid point instead of a forward pass of the whole model.
//!
//! The sum is a model, not a measurement: it treats the layers' effects on the logits as
//! additive in squared norm (exact to first order when the layers' logit changes are
//! uncorrelated). Between measured orders the cost is interpolated linearly in `log c`, and it
//! is made non-increasing in `k` (a larger order never costs more than a smaller one measured),
//! so measurement noise cannot make the optimum keep fewer modes than it pays for.

use crate::error::{Error, Result};

/// An order allocation named in a recipe ([module doc](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allocation {
    /// The same ratio in every layer.
    Uniform,
    /// By the output-error bound's layer weights (`lqo-h2` only).
    Bound,
    /// By the measured calibration logit change of each layer reduced alone.
    Sensitivity,
    /// By the first-order (predicted) calibration logit change of each layer reduced alone.
    FirstOrder,
}

impl Allocation {
    /// Every allocation, in table order.
    pub const ALL: [Allocation; 4] = [
        Allocation::Uniform,
        Allocation::Bound,
        Allocation::Sensitivity,
        Allocation::FirstOrder,
    ];

    /// The name after the `@` (`uniform`, `bound`, `sens`, `first-order`).
    pub fn name(self) -> &'static str {
        match self {
            Allocation::Uniform => "uniform",
            Allocation::Bound => "bound",
            Allocation::Sensitivity => "sens",
            Allocation::FirstOrder => "first-order",
        }
    }
}

/// The measured cost of one layer at a few orders ([`min_cost_orders`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CostCurve {
    /// Stored modes of the full layer, `n`.
    pub n_modes: usize,
    /// Measured orders, strictly increasing, each in `1..=n`; must include 1.
    pub orders: Vec<usize>,
    /// The cost at each of `orders`: finite and `≥ 0`. At `k = n` (if measured) normally 0.
    pub costs: Vec<f64>,
}

impl CostCurve {
    /// Checks the shape of the curve; `layer` names it in the message.
    ///
    /// # Errors
    /// [`Error::Argument`] for mismatched lengths, orders not strictly increasing inside
    /// `1..=n` or not starting at 1, and negative or non-finite costs.
    pub fn validate(&self, layer: usize) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Argument(format!(
                "cost curve of layer {layer}: {what}"
            )))
        };
        if self.orders.len() != self.costs.len() {
            return bad(format!(
                "{} orders but {} costs",
                self.orders.len(),
                self.costs.len()
            ));
        }
        if self.orders.first() != Some(&1) {
            return bad("the measured orders must start at 1".into());
        }
        if self.orders.windows(2).any(|w| w[0] >= w[1])
            || self.orders.iter().any(|&k| k > self.n_modes)
        {
            return bad(format!(
                "orders {:?} must increase strictly within 1..={}",
                self.orders, self.n_modes
            ));
        }
        if let Some(c) = self.costs.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
            return bad(format!("cost {c} is not finite and ≥ 0"));
        }
        Ok(())
    }

    /// The cost at every order `1..=n` (index `k − 1`): the measured costs made non-increasing
    /// (each replaced by the least cost measured at any smaller order), then interpolated
    /// log-linearly between measured orders (linearly where an end is 0) and held constant after
    /// the last measured order ([module doc](self)).
    pub fn dense(&self) -> Vec<f64> {
        let n = self.n_modes;
        let mut costs = self.costs.clone();
        for j in 1..costs.len() {
            costs[j] = costs[j].min(costs[j - 1]);
        }
        let mut out = vec![0.0; n];
        for (k, slot) in (1..=n).zip(out.iter_mut()) {
            let j = self.orders.partition_point(|&o| o <= k) - 1;
            *slot = if self.orders[j] == k || j + 1 == self.orders.len() {
                costs[j]
            } else {
                let (a, b) = (self.orders[j], self.orders[j + 1]);
                let (ca, cb) = (costs[j], costs[j + 1]);
                let t = (k - a) as f64 / (b - a) as f64;
                if ca > 0.0 && cb > 0.0 {
                    (ca.ln() + t * (cb.ln() - ca.ln())).exp()
                } else {
                    ca + t * (cb - ca)
                }
            };
        }
        out
    }
}

/// Orders to measure for a layer of `n` modes: 1, 2, 4, then steps of `⌈n / 12⌉` (at least 1)
/// below `n`, and `n` itself (every order when `n ≤ 16`).
pub fn sensitivity_grid(n: usize) -> Vec<usize> {
    if n <= 16 {
        return (1..=n).collect();
    }
    let step = n.div_ceil(12);
    let mut g: Vec<usize> = [1, 2, 4]
        .into_iter()
        .chain((1..).map(|j| j * step).take_while(|&k| k < n))
        .collect();
    g.push(n);
    g.sort_unstable();
    g.dedup();
    g
}

/// The orders `k_ℓ ∈ 1..=n_ℓ` with `Σ k_ℓ = budget` minimising `Σ_ℓ c_ℓ(k_ℓ)` of the dense
/// curves ([`CostCurve::dense`]), by dynamic programming over layers and budget (exact for the
/// additive model; ties go to the smaller order of the earlier layer).
///
/// # Errors
/// [`Error::Argument`] for an invalid curve, no curves, or a budget outside
/// `layers..=Σ n_ℓ`.
pub fn min_cost_orders(curves: &[CostCurve], budget: usize) -> Result<Vec<usize>> {
    if curves.is_empty() {
        return Err(Error::Argument("allocation: no layers".into()));
    }
    for (l, c) in curves.iter().enumerate() {
        c.validate(l)?;
    }
    let total: usize = curves.iter().map(|c| c.n_modes).sum();
    if budget < curves.len() || budget > total {
        return Err(Error::Argument(format!(
            "allocation: budget {budget} must be in {}..={total} (at least one mode per layer)",
            curves.len()
        )));
    }
    let dense: Vec<Vec<f64>> = curves.iter().map(CostCurve::dense).collect();
    // best[l][b]: least cost of layers 0..=l keeping b modes; choice[l][b]: order of layer l.
    let mut best = vec![vec![f64::INFINITY; budget + 1]; curves.len()];
    let mut choice = vec![vec![0usize; budget + 1]; curves.len()];
    for (l, d) in dense.iter().enumerate() {
        for b in 1..=budget {
            for k in 1..=d.len().min(b) {
                let prev = if l == 0 {
                    if b == k { 0.0 } else { f64::INFINITY }
                } else {
                    best[l - 1][b - k]
                };
                let c = prev + d[k - 1];
                if c < best[l][b] {
                    best[l][b] = c;
                    choice[l][b] = k;
                }
            }
        }
    }
    let mut orders = vec![0; curves.len()];
    let mut b = budget;
    for l in (0..curves.len()).rev() {
        orders[l] = choice[l][b];
        b -= orders[l];
    }
    debug_assert_eq!(b, 0);
    Ok(orders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn curve(costs: &[f64]) -> CostCurve {
        CostCurve {
            n_modes: costs.len(),
            orders: (1..=costs.len()).collect(),
            costs: costs.to_vec(),
        }
    }

    /// Brute force over every order vector with the given sum.
    fn brute(d: &[Vec<f64>], budget: usize) -> f64 {
        fn rec(d: &[Vec<f64>], left: usize) -> f64 {
            match d.split_first() {
                None => {
                    if left == 0 {
                        0.0
                    } else {
                        f64::INFINITY
                    }
                }
                Some((c, rest)) => (1..=c.len().min(left))
                    .map(|k| c[k - 1] + rec(rest, left - k))
                    .fold(f64::INFINITY, f64::min),
            }
        }
        rec(d, budget)
    }

    #[test]
    fn dynamic_programme_matches_brute_force() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let layers = rng.random_range(1..=4);
            let curves: Vec<CostCurve> = (0..layers)
                .map(|_| {
                    let n = rng.random_range(1..=6);
                    // Decreasing costs spanning orders of magnitude, 0 at k = n.
                    let mut c: Vec<f64> = (0..n)
                        .map(|_| 10f64.powf(rng.random_range(-3.0..3.0)))
                        .collect();
                    c.sort_by(|a, b| b.total_cmp(a));
                    c[n - 1] = 0.0;
                    curve(&c)
                })
                .collect();
            let total: usize = curves.iter().map(|c| c.n_modes).sum();
            let dense: Vec<Vec<f64>> = curves.iter().map(CostCurve::dense).collect();
            for budget in layers..=total {
                let o = min_cost_orders(&curves, budget).unwrap();
                assert_eq!(o.iter().sum::<usize>(), budget);
                assert!(
                    o.iter()
                        .zip(&curves)
                        .all(|(&k, c)| (1..=c.n_modes).contains(&k))
                );
                let got: f64 = o.iter().zip(&dense).map(|(&k, d)| d[k - 1]).sum();
                let want = brute(&dense, budget);
                assert!(
                    (got - want).abs() <= 1e-12 * want.max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn dense_interpolates_in_log_and_never_increases() {
        let c = CostCurve {
            n_modes: 8,
            orders: vec![1, 3, 5, 8],
            costs: vec![100.0, 1.0, 2.0, 0.0],
        };
        let d = c.dense();
        assert_eq!(d.len(), 8);
        assert!((d[0] - 100.0).abs() < 1e-12);
        assert!(
            (d[1] - 10.0).abs() < 1e-9,
            "geometric mean of 100 and 1: {}",
            d[1]
        );
        assert!((d[2] - 1.0).abs() < 1e-12);
        // The measured rise 1 → 2 at k = 5 is flattened to 1.
        assert!((d[3] - 1.0).abs() < 1e-12 && (d[4] - 1.0).abs() < 1e-12);
        // Towards the exact 0 at n: linear from the flattened 1.
        assert!((d[5] - 2.0 / 3.0).abs() < 1e-12 && (d[6] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(d[7], 0.0);
        assert!(d.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn sensitive_layers_get_the_modes() {
        // Layer 0 loses a lot per removed mode, layer 1 almost nothing.
        let a = curve(&[1e4, 1e3, 1e2, 10.0, 0.0]);
        let b = curve(&[1e-3, 1e-4, 1e-5, 1e-6, 0.0]);
        assert_eq!(
            min_cost_orders(&[a.clone(), b.clone()], 6).unwrap(),
            vec![5, 1]
        );
        assert_eq!(min_cost_orders(&[b, a], 6).unwrap(), vec![1, 5]);
    }

    #[test]
    fn grid_and_bad_input() {
        assert_eq!(sensitivity_grid(5), vec![1, 2, 3, 4, 5]);
        let g = sensitivity_grid(96);
        assert_eq!(&g[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*g.last().unwrap(), 96);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        let c = curve(&[1.0, 0.0]);
        assert!(min_cost_orders(std::slice::from_ref(&c), 3).is_err());
        assert!(min_cost_orders(&[c.clone(), c.clone()], 1).is_err());
        assert!(min_cost_orders(&[], 1).is_err());
        let mut bad = c.clone();
        bad.costs[0] = f64::NAN;
        assert!(
            min_cost_orders(&[bad], 1)
                .unwrap_err()
                .to_string()
                .contains("layer 0")
        );
        let mut bad = c.clone();
        bad.orders = vec![2, 1];
        assert!(min_cost_orders(&[bad], 1).is_err());
        let mut bad = c;
        bad.orders = vec![2];
        bad.costs = vec![1.0];
        assert!(min_cost_orders(&[bad], 1).is_err());
    }
}
