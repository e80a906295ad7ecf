//! Loads the IMDb reviews with the default `[data]` settings (fetching and converting what is missing),
//! runs the self-checks and prints the statistics as one JSON object, with timings on stderr.
//!
//! `cargo run --release -p lra --example imdb_stats` (from the repository root).

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = lra::DataConfig::default();
    let start = Instant::now();
    let imdb = lra::Imdb::load(&cfg)?;
    let loaded = start.elapsed();
    let stats = lra::DatasetStats::compute(&imdb.train, &imdb.test, cfg.max_len);
    stats.verify_imdb(&cfg.dir.display().to_string())?;
    let checked = start.elapsed();
    eprintln!(
        "origin {:?}: load {:.2} s, load + stats + checks {:.2} s",
        imdb.origin,
        loaded.as_secs_f64(),
        checked.as_secs_f64()
    );
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
