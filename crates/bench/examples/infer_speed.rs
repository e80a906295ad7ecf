//! Inference throughput of the reference model and of its reductions, on the fixed synthetic
//! batch of `results.csv`'s `infer_tokens_per_s` ([`bench::backend::INFER_BATCH`] ×
//! [`bench::backend::INFER_LEN`] tokens), measured back to back on a quiet machine with more
//! repetitions than the sweep uses. The kept modes, not the reducer, set a reduced model's cost,
//! so `modal` stands for every recipe at the same order. Also the share of the time spent outside
//! the SSMs: the model with every layer reduced to one mode.
//!
//! ```text
//! cargo run --release -p bench --example infer_speed -- [CHECKPOINT] [RATIOS] [REPS]
//! ```
//!
//! Defaults: `results/imdb/model`, ratios `0,0.6,0.8,0.9`, 7 repetitions (median). Prints a
//! Markdown table; writes nothing.

#[allow(dead_code)] // this example needs only the checkpoint of the shared setup
mod common;

use std::path::PathBuf;

use anyhow::Result;
use mor::Method;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let ratios = common::ratios(args.get(2), &[0.0, 0.6, 0.8, 0.9])?;
    let reps = common::count(args.get(3), "REPS", 7)?;
    let common::Setup {
        git_commit, loaded, ..
    } = common::setup(&ckpt)?;
    let vocab = loaded.model.config().vocab_size;
    let (batch, len) = (bench::backend::INFER_BATCH, bench::backend::INFER_LEN);
    let speed = |m: &s5::S5Model| -> Result<f64> {
        Ok(s5::perf::infer_tokens_per_s(m, vocab, batch, len, reps)?)
    };
    let deep = s5::to_mor(&loaded.model, loaded.meta.max_len)?;
    let opts = mor::ReduceOptions::default();
    let full = speed(&loaded.model)?;
    println!(
        "commit {git_commit}, {} threads, batch {batch} × {len} tokens, median of {reps}\n",
        rayon::current_num_threads()
    );
    println!("| modes removed | kept modes | tokens/s | × full |");
    println!("|---:|---:|---:|---:|");
    for &ratio in &ratios {
        let tps = if ratio == 0.0 {
            full
        } else {
            let red = mor::reduce_model(&deep, Method::Modal, ratio, &opts)?;
            speed(&s5::with_reduced(&loaded.model, &red.model)?)?
        };
        let kept = if ratio == 0.0 {
            deep.layers.iter().map(|l| l.ssm.n_modes()).sum()
        } else {
            mor::reduce::mode_budget(
                &deep
                    .layers
                    .iter()
                    .map(|l| l.ssm.n_modes())
                    .collect::<Vec<_>>(),
                ratio,
            )?
        };
        println!(
            "| {:.0} % | {kept} | {tps:.0} | {:.2} |",
            100.0 * ratio,
            tps / full
        );
    }
    // One mode per layer: what the rest of the network (encoder, norms, gates, pooling,
    // decoder) costs on its own.
    let floor = deep.layers.iter().map(|l| l.ssm.n_modes()).sum::<usize>();
    let one = mor::reduce_model(
        &deep,
        Method::Modal,
        1.0 - deep.layers.len() as f64 / floor as f64,
        &opts,
    )?;
    let rest = speed(&s5::with_reduced(&loaded.model, &one.model)?)?;
    println!(
        "| one mode per layer | {} | {rest:.0} | {:.2} |",
        deep.layers.len(),
        rest / full
    );
    println!(
        "\nShare of the full model's time outside the SSMs (one-mode model's time / full's): {:.0} %",
        100.0 * full / rest
    );
    Ok(())
}
