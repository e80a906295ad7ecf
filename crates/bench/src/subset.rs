//! The evaluation set: the whole test split, or a fixed, seeded, class-balanced subset of it.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Indices of a class-balanced sample of at most `max_samples` items (`0` = all), drawn with a
/// seeded ChaCha8 shuffle per class, returned in increasing order (so evaluation order and
/// batching are deterministic).
///
/// Each class gets `max_samples / n_classes` items (the remainder goes to the lowest labels);
/// a class with fewer items gives all it has and the others do not make up for it, so the
/// sample stays balanced. The same `(labels, max_samples, seed)` always gives the same sample.
pub fn balanced_subset(labels: &[usize], max_samples: usize, seed: u64) -> Vec<usize> {
    if max_samples == 0 || max_samples >= labels.len() {
        return (0..labels.len()).collect();
    }
    let n_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let present: Vec<usize> = (0..n_classes)
        .filter(|&c| !by_class[c].is_empty())
        .collect();
    let k = present.len().max(1);
    let mut out = Vec::with_capacity(max_samples);
    for (rank, &c) in present.iter().enumerate() {
        let quota = max_samples / k + usize::from(rank < max_samples % k);
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let idx = &mut by_class[c];
        idx.shuffle(&mut rng);
        out.extend(idx.iter().take(quota));
    }
    out.sort_unstable();
    out
}

/// Standard error of an accuracy `acc` measured on `n` independent samples,
/// `sqrt(acc (1 − acc) / n)` (binomial).
pub fn accuracy_std_error(acc: f64, n: usize) -> f64 {
    if n == 0 {
        return f64::NAN;
    }
    (acc * (1.0 - acc) / n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_deterministic_and_distinct() {
        // 70 negatives then 30 positives.
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i >= 70)).collect();
        let a = balanced_subset(&labels, 40, 7);
        let b = balanced_subset(&labels, 40, 7);
        let c = balanced_subset(&labels, 40, 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 40);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let pos = a.iter().filter(|&&i| labels[i] == 1).count();
        assert_eq!(pos, 20);
    }

    #[test]
    fn small_class_is_not_made_up() {
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i >= 95)).collect();
        let a = balanced_subset(&labels, 40, 1);
        assert_eq!(a.iter().filter(|&&i| labels[i] == 1).count(), 5);
        assert_eq!(a.iter().filter(|&&i| labels[i] == 0).count(), 20);
    }

    #[test]
    fn zero_means_everything() {
        let labels = vec![0, 1, 1, 0];
        assert_eq!(balanced_subset(&labels, 0, 3), vec![0, 1, 2, 3]);
        assert_eq!(balanced_subset(&labels, 10, 3), vec![0, 1, 2, 3]);
    }

    #[test]
    fn std_error_closed_form() {
        assert!((accuracy_std_error(0.5, 100) - 0.05).abs() < 1e-12);
    }
}
