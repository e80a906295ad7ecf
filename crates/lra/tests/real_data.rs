//! Checks on the real 50,000 reviews; skipped (with a printed reason) when the cache is absent.

use std::path::PathBuf;

use lra::{DataConfig, DatasetStats, Fetchers, Imdb, Origin, Source};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

#[test]
fn real_data_counts() {
    let dir = data_dir();
    if !lra::local_files(&dir).iter().all(|p| p.exists()) {
        println!(
            "skipped: no parquet cache in {} (run `cargo run --release -p bench -- data` to fetch it)",
            dir.display()
        );
        return;
    }
    let cfg = DataConfig {
        source: Source::Dir,
        dir,
        ..Default::default()
    };
    let imdb = Imdb::load_with(&cfg, &Fetchers::from_env()).unwrap();
    assert_eq!(imdb.origin, Origin::Dir);
    let stats = DatasetStats::compute(&imdb.train, &imdb.test, cfg.max_len);
    stats.verify_imdb("data/").unwrap();
    // LRA feeds raw bytes: markup and non-ASCII characters are still there.
    assert!(imdb.train.texts.iter().any(|t| t.contains("<br />")));
    assert!(imdb.train.texts.iter().any(|t| !t.is_ascii()));
    // Negatives first within each split, as in the Hugging Face files.
    assert!(imdb.train.labels[..12_500].iter().all(|&l| l == 0));
    assert!(imdb.test.labels[12_500..].iter().all(|&l| l == 1));
}
