//! `bench`: the reproduction runner. Subcommands: `data` (fetch, verify and describe the IMDb reviews).

mod config;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::RunConfig;

/// Reproduction runner for S5 on LRA IMDb with model order reduction.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Run configuration (TOML); a bare file name not found in the working directory is looked up in
    /// `configs/`.
    #[arg(long, global = true, default_value = "imdb.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch the IMDb reviews if missing, run the self-checks and print the dataset statistics.
    Data {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config_path = config::resolve(&cli.config)?;
    let cfg = RunConfig::load(&config_path)?;
    match cli.command {
        Command::Data { json } => data(&cfg, json),
    }
}

/// `bench data`: load (fetching what is missing), verify, print the statistics.
fn data(cfg: &RunConfig, json: bool) -> Result<()> {
    let (imdb, stats) = lra::Imdb::load_verified(&cfg.data).with_context(|| {
        format!(
            "loading the IMDb reviews (data.source = {:?}, data.dir = {})",
            cfg.data.source,
            cfg.data.dir.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!(
        "IMDb reviews from {:?}: {}, {}",
        imdb.origin,
        imdb.files[0].display(),
        imdb.files[1].display()
    );
    println!("all self-checks passed (counts, distinct texts, bytes)");
    println!("{:<28} {:>12} {:>12}", "", "train", "test");
    let rows: [(&str, usize, usize); 8] = [
        ("reviews", stats.train, stats.test),
        ("positive", stats.train_pos, stats.test_pos),
        ("distinct texts", stats.train_distinct, stats.test_distinct),
        ("UTF-8 bytes", stats.train_bytes, stats.test_bytes),
        (
            "length p50 (bytes)",
            stats.len_p50.train,
            stats.len_p50.test,
        ),
        (
            "length p90 (bytes)",
            stats.len_p90.train,
            stats.len_p90.test,
        ),
        (
            "length max (bytes)",
            stats.len_max.train,
            stats.len_max.test,
        ),
        (
            "truncated at max_len",
            stats.truncated_at_max_len.train,
            stats.truncated_at_max_len.test,
        ),
    ];
    for (name, train, test) in rows {
        println!("{name:<28} {train:>12} {test:>12}");
    }
    println!("{:<28} {:>12}", "texts in both splits", stats.overlap);
    println!("{:<28} {:>12}", "max_len", cfg.data.max_len);
    Ok(())
}
