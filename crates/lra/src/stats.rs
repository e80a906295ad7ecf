//! Self-checks of the loaded reviews (counts, distinct texts, bytes, lengths).

use std::collections::HashSet;

use serde::Serialize;

use crate::store::Split;
use crate::{Error, Result};

/// One number per split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PerSplit {
    /// Value on the train split.
    pub train: usize,
    /// Value on the test split.
    pub test: usize,
}

/// Statistics of the two splits; serializes to exactly the keys `bench data --json` prints.
/// Lengths are in UTF-8 bytes, i.e. byte-level tokens before truncation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatasetStats {
    /// Number of train reviews.
    pub train: usize,
    /// Number of test reviews.
    pub test: usize,
    /// Positive train reviews.
    pub train_pos: usize,
    /// Positive test reviews.
    pub test_pos: usize,
    /// Distinct train texts.
    pub train_distinct: usize,
    /// Distinct test texts.
    pub test_distinct: usize,
    /// Distinct texts present in both splits.
    pub overlap: usize,
    /// Total UTF-8 bytes of the train texts.
    pub train_bytes: usize,
    /// Total UTF-8 bytes of the test texts.
    pub test_bytes: usize,
    /// Median length in bytes (nearest rank: the ⌈0.5 n⌉-th smallest).
    pub len_p50: PerSplit,
    /// 90th percentile of the length in bytes (nearest rank: the ⌈0.9 n⌉-th smallest).
    pub len_p90: PerSplit,
    /// Longest review in bytes.
    pub len_max: PerSplit,
    /// Reviews longer than `max_len` bytes (truncated by the byte tokenizer).
    pub truncated_at_max_len: PerSplit,
}

/// Expected values of the real data (issue 2): `(name, value)`.
pub const IMDB_EXPECTED: [(&str, usize); 9] = [
    ("train", 25_000),
    ("test", 25_000),
    ("train_pos", 12_500),
    ("test_pos", 12_500),
    ("train_distinct", 24_904),
    ("test_distinct", 24_801),
    ("overlap", 123),
    ("train_bytes", 33_132_823),
    ("test_bytes", 32_350_685),
];

/// Nearest-rank percentile of sorted values: the ⌈p n⌉-th smallest (1-based), `p` in (0, 1].
fn nearest_rank(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl DatasetStats {
    /// Computes the statistics of two splits; `max_len` is the truncation length of the tokenizer.
    pub fn compute(train: &Split, test: &Split, max_len: usize) -> Self {
        fn distinct(s: &Split) -> HashSet<&str> {
            s.texts.iter().map(String::as_str).collect()
        }
        let train_set = distinct(train);
        let test_set = distinct(test);
        let overlap = train_set.intersection(&test_set).count();
        let lens = |s: &Split| {
            let mut l: Vec<usize> = s.texts.iter().map(String::len).collect();
            l.sort_unstable();
            l
        };
        let (ltr, lte) = (lens(train), lens(test));
        let per = |f: &dyn Fn(&[usize]) -> usize| PerSplit {
            train: f(&ltr),
            test: f(&lte),
        };
        DatasetStats {
            train: train.len(),
            test: test.len(),
            train_pos: train.positives(),
            test_pos: test.positives(),
            train_distinct: train_set.len(),
            test_distinct: test_set.len(),
            overlap,
            train_bytes: ltr.iter().sum(),
            test_bytes: lte.iter().sum(),
            len_p50: per(&|l| nearest_rank(l, 0.5)),
            len_p90: per(&|l| nearest_rank(l, 0.9)),
            len_max: per(&|l| l.last().copied().unwrap_or(0)),
            truncated_at_max_len: per(&|l| l.iter().filter(|&&x| x > max_len).count()),
        }
    }

    /// The checked values as `(name, value)`, in the order of [`IMDB_EXPECTED`].
    pub fn checked_values(&self) -> [(&'static str, usize); 9] {
        [
            ("train", self.train),
            ("test", self.test),
            ("train_pos", self.train_pos),
            ("test_pos", self.test_pos),
            ("train_distinct", self.train_distinct),
            ("test_distinct", self.test_distinct),
            ("overlap", self.overlap),
            ("train_bytes", self.train_bytes),
            ("test_bytes", self.test_bytes),
        ]
    }

    /// Compares against `expected` (`(name, value)` pairs, names as in [`DatasetStats::checked_values`]).
    ///
    /// Errors: [`Error::Verify`] listing every mismatch; `origin` names the data in the message.
    pub fn verify(&self, expected: &[(&str, usize)], origin: &str) -> Result<()> {
        let got = self.checked_values();
        let mut mismatches = Vec::new();
        for (name, want) in expected {
            match got.iter().find(|(n, _)| n == name) {
                Some((_, v)) if v == want => {}
                Some((_, v)) => mismatches.push(format!("{name}: got {v}, expected {want}")),
                None => mismatches.push(format!("{name}: unknown check")),
            }
        }
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(Error::Verify {
                origin: origin.to_string(),
                mismatches: mismatches.join("; "),
            })
        }
    }

    /// [`DatasetStats::verify`] against the real data's values ([`IMDB_EXPECTED`], issue 2).
    pub fn verify_imdb(&self, origin: &str) -> Result<()> {
        self.verify(&IMDB_EXPECTED, origin)
    }
}
