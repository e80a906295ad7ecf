//! Diagonal state-space blocks: the contract of the `diag-ssm/1` format.
//!
//! A block has `n` stored complex modes (the other `n` are their conjugates, so the real state
//! dimension is `2n`):
//!
//! - forward scan  `x_k  = λ ⊙ x_{k−1} + B̄ u_k`
//! - reverse scan  `x'_k = λ ⊙ x'_{k+1} + B̄ u_k` (only when `c_rev` is present)
//! - state output  `s_k = 2 Re(C̃ x_k) + 2 Re(C̃_rev x'_k)`, `s_k ∈ R^p`
//! - block output  `y_k = [E s_k ; s_kᵀ N_1 s_k ; … ; s_kᵀ N_s s_k]`
//!
//! `D u_k` is shared by a model and its reductions and is not part of any norm.

use crate::error::{Error, Result};
use faer::{Mat, c64};

/// One diagonal (conjugate-symmetric) SSM block, possibly bidirectional, possibly with a
/// linear-quadratic output (LQO).
///
/// Shapes: `n` stored complex modes, `m` inputs, `p` state outputs, `q` linear read-outs,
/// `s` quadratic outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagBlock {
    /// Discrete eigenvalues Λ̄ (`lambda_bar`), `[n]`; stable iff every `|λ_i| < 1`.
    pub lambda: Vec<c64>,
    /// Input matrix B̄ (`b_bar`), `[n, m]`.
    pub b: Mat<c64>,
    /// Output matrix C̃ (`c_tilde`) of the forward scan, `[p, n]`.
    pub c: Mat<c64>,
    /// Output matrix C̃_rev of the reverse scan, `[p, n]`; `None` for a causal block.
    pub c_rev: Option<Mat<c64>>,
    /// Feed-through D, `[m]` (requires `m == p`); not part of any norm.
    pub d: Option<Vec<f64>>,
    /// Linear read-out E, `[q, p]`; `None` means the identity (`q = p`).
    pub linear: Option<Mat<f64>>,
    /// Symmetric quadratic forms N_1..N_s, each `[p, p]`; empty for a purely linear block.
    pub quadratic: Vec<Mat<f64>>,
}

impl DiagBlock {
    /// Checks a reduced order: `r` must be in `1..=n` (the stored modes).
    ///
    /// # Errors
    /// [`Error::Argument`] naming `what` (the reduction asked for) otherwise.
    pub fn check_order(&self, r: usize, what: &str) -> Result<()> {
        let n = self.n_modes();
        if r == 0 || r > n {
            return Err(Error::Argument(format!(
                "{what}: reduced order r = {r} must be in 1..={n} (the block's stored modes)"
            )));
        }
        Ok(())
    }

    /// Number of stored complex modes `n` (real state dimension `2n`).
    pub fn n_modes(&self) -> usize {
        self.lambda.len()
    }
    /// Input dimension `m`.
    pub fn n_inputs(&self) -> usize {
        self.b.ncols()
    }
    /// State-output dimension `p`.
    pub fn n_outputs(&self) -> usize {
        self.c.nrows()
    }
    /// Whether the block has a reverse scan (`c_rev` present).
    pub fn is_bidirectional(&self) -> bool {
        self.c_rev.is_some()
    }
    /// Largest `|λ_i|` (0 for an empty block); the block is stable iff this is `< 1`.
    pub fn max_abs_lambda(&self) -> f64 {
        self.lambda.iter().map(|l| l.norm()).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use crate::gram::tests::random_block;

    #[test]
    fn check_order_accepts_one_to_n_and_names_the_reduction() {
        let b = random_block(1, 4, 2, 2, false, 0, None, 0.9);
        assert!(b.check_order(1, "x").is_ok() && b.check_order(4, "x").is_ok());
        for r in [0, 5] {
            let e = b
                .check_order(r, "balanced truncation")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("balanced truncation") && e.contains("1..=4"),
                "{e}"
            );
        }
    }
}
