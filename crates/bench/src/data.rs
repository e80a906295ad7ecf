//! The data side of a run: loading the reviews (fetching what is missing), the training slice, the
//! evaluation subset, and a synthetic fixture in the Hugging Face parquet layout for tests and CI.

use crate::subset::balanced_subset;
use anyhow::{Context, Result};
use lra::{DataConfig, Encoded, Imdb, Split, Tokenize};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Loads the reviews as `[data]` says, fetching what is missing. The full IMDb self-checks run
/// when the split sizes are the real ones (25,000 each); a smaller dataset (a fixture under
/// `source = "dir"`) is loaded as is.
pub fn load(cfg: &DataConfig) -> Result<Imdb> {
    let imdb = Imdb::load(cfg).with_context(|| {
        format!(
            "loading the IMDb reviews (data.source = {:?}, data.dir = {})",
            cfg.source,
            cfg.dir.display()
        )
    })?;
    if imdb.train.len() == 25_000 && imdb.test.len() == 25_000 {
        let stats = lra::DatasetStats::compute(&imdb.train, &imdb.test, cfg.max_len);
        stats
            .verify_imdb(&imdb.files[0].display().to_string())
            .context("the IMDb self-checks failed")?;
    } else {
        tracing::warn!(
            "{} train / {} test reviews: not the full IMDb set (a fixture or a subset); \
             self-checks skipped",
            imdb.train.len(),
            imdb.test.len()
        );
    }
    Ok(imdb)
}

/// The first `max` items of a seeded class-balanced sample of `split` (all if `max` is 0).
pub fn slice(split: &Split, max: usize, seed: u64) -> Split {
    let labels: Vec<usize> = split.labels.iter().map(|&l| usize::from(l)).collect();
    let idx = balanced_subset(&labels, max, seed);
    Split {
        texts: idx.iter().map(|&i| split.texts[i].clone()).collect(),
        labels: idx.iter().map(|&i| split.labels[i]).collect(),
    }
}

/// Tokenizes a split.
pub fn encode(tok: &dyn Tokenize, split: &Split) -> Encoded {
    Encoded::new(tok, split)
}

/// Words of the synthetic fixture: the class is decided by which sentiment words a review holds.
const POS: [&str; 6] = [
    "great",
    "excellent",
    "wonderful",
    "loved",
    "superb",
    "brilliant",
];
const NEG: [&str; 6] = ["awful", "boring", "terrible", "hated", "dull", "worst"];
const FILLER: [&str; 16] = [
    "the", "movie", "film", "plot", "actor", "scene", "was", "and", "a", "of", "story", "ending",
    "cast", "it", "this", "director",
];

/// One synthetic review of `label` (1 = positive): filler words with a few sentiment words mixed
/// in, sometimes a `<br />` tag and a non-ASCII character, as in the real reviews.
fn review(rng: &mut ChaCha8Rng, label: u8, min_words: usize, max_words: usize) -> String {
    let n = rng.random_range(min_words..=max_words);
    let mut words = Vec::with_capacity(n + 2);
    for _ in 0..n {
        let r: f64 = rng.random();
        let w = if r < 0.12 {
            let set = if label == 1 { &POS } else { &NEG };
            set[rng.random_range(0..set.len())]
        } else if r < 0.14 {
            "<br />"
        } else if r < 0.15 {
            "café"
        } else {
            FILLER[rng.random_range(0..FILLER.len())]
        };
        words.push(w);
    }
    words.join(" ")
}

/// Writes a synthetic, learnable IMDb-like dataset (`n_train` and `n_test` reviews, balanced,
/// `min_words..=max_words` words each) in the Hugging Face layout under `dir`
/// (`dir/imdb/plain_text/{train,test}-00000-of-00001.parquet`), readable with
/// `data.source = "dir"`, `data.dir = dir`. Returns the two file paths.
pub fn write_fixture(
    dir: &Path,
    n_train: usize,
    n_test: usize,
    min_words: usize,
    max_words: usize,
    seed: u64,
) -> Result<[PathBuf; 2]> {
    let files = lra::local_files(dir);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (path, n) in files.iter().zip([n_train, n_test]) {
        let labels: Vec<u8> = (0..n).map(|i| u8::from(i % 2 == 1)).collect();
        let texts = labels
            .iter()
            .map(|&l| review(&mut rng, l, min_words, max_words))
            .collect();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        lra::write_split(path, &Split { texts, labels })
            .with_context(|| format!("writing the fixture {}", path.display()))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_round_trip_through_lra() {
        let dir = tempfile::tempdir().unwrap();
        write_fixture(dir.path(), 40, 20, 5, 30, 1).unwrap();
        let cfg = DataConfig {
            source: lra::Source::Dir,
            dir: dir.path().to_path_buf(),
            ..DataConfig::default()
        };
        let imdb = load(&cfg).unwrap();
        assert_eq!(imdb.train.len(), 40);
        assert_eq!(imdb.test.len(), 20);
        assert_eq!(imdb.test.positives(), 10);
        // the class is visible in the text
        for (t, &l) in imdb.train.texts.iter().zip(&imdb.train.labels) {
            let pos = POS.iter().any(|w| t.contains(w));
            let neg = NEG.iter().any(|w| t.contains(w));
            assert!(!(pos && neg), "{t}");
            if l == 1 {
                assert!(!neg);
            } else {
                assert!(!pos);
            }
        }
        let s = slice(&imdb.train, 10, 3);
        assert_eq!(s.len(), 10);
        assert_eq!(s.positives(), 5);
    }
}
