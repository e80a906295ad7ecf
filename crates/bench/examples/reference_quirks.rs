//! What the public codes' arithmetic changes (issue 9, item 6): the kept modes of `last` vs
//! `last-ref` and of `aire` vs `aire-ref` on a checkpoint, per ratio: kept modes per layer and the
//! Jaccard overlap of the kept sets (|A ∩ B| / |A ∪ B| over all layers). No evaluation, so it
//! runs in seconds.
//!
//! ```text
//! cargo run --release -p bench --example reference_quirks -- [CHECKPOINT] [RATIOS]
//! ```
//!
//! Defaults: `results/imdb/model`, ratios `0.6,0.8,0.9`. Prints a Markdown table.

#[allow(dead_code)] // this example uses only the argument helpers
mod common;

use anyhow::Result;
use mor::Method;
use mor::reduce::{ReduceOptions, reduce_model};
use std::collections::HashSet;
use std::path::PathBuf;

/// The kept modes of every layer as `(layer, λ̄ bits)` pairs (modes are identified by their
/// eigenvalue; a truncation keeps the original values).
fn kept_set(red: &mor::ModelReduction) -> HashSet<(usize, u64, u64)> {
    red.model
        .layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| {
            layer
                .ssm
                .lambda
                .iter()
                .map(move |z| (l, z.re.to_bits(), z.im.to_bits()))
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let ratios = common::ratios(args.get(2), &[0.6, 0.8, 0.9])?;
    let loaded = bench::pipeline::load(&ckpt)?;
    let deep = s5::to_mor(&loaded.model, loaded.meta.max_len)?;
    let opts = ReduceOptions::default();
    println!(
        "| pair | modes removed | kept per layer (formula) | kept per layer (code) | Jaccard |"
    );
    println!("|---|---:|---|---|---:|");
    for (a, b) in [
        (Method::Last, Method::LastRef),
        (Method::Aire, Method::AireRef),
    ] {
        for &r in &ratios {
            let (ra, rb) = (
                reduce_model(&deep, a, r, &opts)?,
                reduce_model(&deep, b, r, &opts)?,
            );
            let (sa, sb) = (kept_set(&ra), kept_set(&rb));
            let jac = sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64;
            let fmt = |k: &[usize]| k.iter().map(usize::to_string).collect::<Vec<_>>().join("/");
            println!(
                "| `{a}` / `{b}` | {:.0} % | {} | {} | {jac:.3} |",
                100.0 * r,
                fmt(&ra.kept_modes),
                fmt(&rb.kept_modes)
            );
        }
    }
    Ok(())
}
