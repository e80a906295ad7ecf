#!/usr/bin/env bash
# Issue 32, item 7, start to end: the exactly-LQO (quadratic-gate) S5 IMDb model and what MOR
# does to it (results/imdb-quadratic/README.md).
#   1. training by configs/imdb-quadratic.toml (9,378 steps: 1.4 s per step on 2 quiet cores,
#      2.1 s with builds beside it, so 3.6-5.5 h from scratch); it resumes from the newest step
#      checkpoint in results/imdb-quadratic/model/checkpoints/, and does nothing once the model
#      is published;
#   2. the sample sweep of the config (1,000 test reviews; rows already in
#      results/imdb-quadratic/results.csv are kept), with its plots and summary;
#   3. the per-layer comparison of the h2, tlh2 and lqo-h2 objectives at the same orders on
#      held-out training reviews (crates/bench/examples/lqo_vs_h2.rs), written to
#      results/imdb-quadratic/lqo-vs-h2.json.
# Every step can be killed and the script run again. Nothing is deleted.
#
# Usage: scripts/imdb-quadratic.sh
# Environment: BENCH (default `cargo run --release -q -p bench --`) for steps 1-2; step 3 always
# runs through cargo (which builds the example on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a bench <<< "${BENCH:-cargo run --release -q -p bench --}"
"${bench[@]}" --config imdb-quadratic.toml train
"${bench[@]}" --config imdb-quadratic.toml
cargo run --release -q -p bench --example lqo_vs_h2 -- results/imdb-quadratic/model
