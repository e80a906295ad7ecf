#!/usr/bin/env bash
# Clone the committed HEAD into a temporary folder and run what a newcomer runs:
# CI (fmt, clippy, the README's test command), then the smoke pipeline on real data.
# Usage: scripts/fresh-clone-check.sh [--no-smoke]
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'echo "clone left at $work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
echo "== CI on $(git rev-parse --short HEAD) in $work/clone"
time CI=true bash .ci/run
if [ "${1:-}" != "--no-smoke" ]; then
  echo "== smoke pipeline (fetches the data if missing)"
  time cargo run --release -p bench -- --config smoke.toml
  ls -l results/smoke
fi
