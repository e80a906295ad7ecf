//! L-BFGS (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4, two-loop recursion)
//! with a backtracking Armijo line search (`c1 = 1e-4`, halving, at most 40 trials; non-finite
//! values count as failures). Stops after `max_iter` iterations, when the largest gradient entry
//! is below `gtol`, when the relative decrease of the objective stays below `ftol` for 3
//! consecutive iterations, or when the line search fails. Used by the h2-optimal reducers
//! ([`crate::h2opt`]).

/// Options of [`minimise`].
#[derive(Clone, Debug)]
pub struct LbfgsOptions {
    /// Maximum iterations.
    pub max_iter: usize,
    /// Stop when the relative objective decrease stays below this for 3 iterations.
    pub ftol: f64,
    /// Stop when the largest gradient entry is below this.
    pub gtol: f64,
    /// Memory (pairs `(s, y)` kept).
    pub memory: usize,
}

/// Result of [`minimise`].
#[derive(Clone, Debug)]
pub struct LbfgsOut {
    /// The last accepted point.
    pub x: Vec<f64>,
}

/// Minimises `f` (returns the value at `x` and writes its gradient) from `x0` (module doc).
pub fn minimise(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    x0: Vec<f64>,
    opts: &LbfgsOptions,
) -> LbfgsOut {
    let n = x0.len();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut x = x0;
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    if !fx.is_finite() {
        return LbfgsOut { x };
    }
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut small = 0;
    let mut iters = 0;
    let mut xn = vec![0.0; n];
    let mut gn = vec![0.0; n];
    for it in 0..opts.max_iter {
        iters = it + 1;
        let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if gmax < opts.gtol {
            break;
        }
        // Two-loop recursion.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &d);
            for (dj, yj) in d.iter_mut().zip(&y_hist[i]) {
                *dj -= alpha[i] * yj;
            }
        }
        let gamma = if k > 0 {
            dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1])
        } else {
            1.0 / dot(&g, &g).sqrt().max(1e-300)
        };
        for dj in d.iter_mut() {
            *dj *= gamma;
        }
        for i in 0..k {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &d);
            for (dj, sj) in d.iter_mut().zip(&s_hist[i]) {
                *dj += (alpha[i] - beta) * sj;
            }
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: restart with steepest descent.
            s_hist.clear();
            y_hist.clear();
            let sc = 1.0 / dot(&g, &g).sqrt().max(1e-300);
            d = g.iter().map(|v| -v * sc).collect();
            slope = dot(&g, &d);
        }
        // Backtracking Armijo.
        let mut step = 1.0;
        let mut ok = false;
        let mut fnew = f64::INFINITY;
        for _ in 0..40 {
            for i in 0..n {
                xn[i] = x[i] + step * d[i];
            }
            fnew = f(&xn, &mut gn);
            if fnew.is_finite() && fnew <= fx + 1e-4 * step * slope {
                ok = true;
                break;
            }
            step *= 0.5;
        }
        if !ok {
            break;
        }
        let s: Vec<f64> = (0..n).map(|i| xn[i] - x[i]).collect();
        let y: Vec<f64> = (0..n).map(|i| gn[i] - g[i]).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > opts.memory {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let dec = fx - fnew;
        std::mem::swap(&mut x, &mut xn);
        std::mem::swap(&mut g, &mut gn);
        fx = fnew;
        if dec <= opts.ftol * fx.abs().max(1e-300) {
            small += 1;
            if small >= 3 {
                break;
            }
        } else {
            small = 0;
        }
    }
    let _ = iters;
    LbfgsOut { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rosenbrock function from (−1.2, 1): L-BFGS reaches the minimum (1, 1).
    #[test]
    fn minimises_rosenbrock() {
        let f = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let opts = LbfgsOptions {
            max_iter: 500,
            ftol: 1e-15,
            gtol: 1e-10,
            memory: 8,
        };
        let out = minimise(f, vec![-1.2, 1.0], &opts);
        assert!(
            (out.x[0] - 1.0).abs() < 1e-5 && (out.x[1] - 1.0).abs() < 1e-5,
            "{:?}",
            out.x
        );
    }

    /// A non-finite start returns the start unchanged.
    #[test]
    fn non_finite_start_is_returned() {
        let opts = LbfgsOptions {
            max_iter: 10,
            ftol: 1e-9,
            gtol: 1e-10,
            memory: 4,
        };
        let out = minimise(|_, _| f64::NAN, vec![3.0], &opts);
        assert_eq!(out.x, vec![3.0]);
    }
}
