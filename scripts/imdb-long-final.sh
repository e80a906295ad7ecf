#!/usr/bin/env bash
# The end of the imdb-long run, as fixed before its end (results/imdb/README.md, "Session 14: the
# running statistics, measured" and "Session 15: weight averaging, and the end-of-run rule
# amended"):
#   1. the run's model: the uniform weight average (SWA) of the epoch-end checkpoints in
#      EPOCHS (default results/imdb-long/model/epochs/step-*, epochs 17-35: 19 members), with precise
#      BatchNorm from 2,000 training reviews, seed 1, batches of 50 (`bench swa`);
#   2. beside it, the final checkpoint: recalibrated the same way (`bench recalibrate-bn`), and of
#      {as trained, recalibrated} the one with the higher accuracy on 2,000 *training* reviews (the
#      config's `[eval]` subset rule, eval seed 0; a tie keeps the model as trained) — chosen
#      without looking at any test review;
#   3. all of them on the 2,000-review test sample and on all 25,000 test reviews, recorded with
#      the choice in `<out>/final.json` (written via a temp file + rename).
#
# Usage: scripts/imdb-long-final.sh [CHECKPOINT] [OUT]
#   CHECKPOINT  default results/imdb-long/model (the run's published final weights)
#   OUT         default results/imdb-long/final (checkpoints go to OUT/swa and OUT/precise-bn)
# Environment: BENCH (default `cargo run --release -q -p bench --`), LONG_CONFIG (default
# imdb-long.toml: the training subset and the test sample), FULL_CONFIG (default
# imdb-full-test.toml: all 25,000 test reviews), REVIEWS (default 2000), EPOCHS (default
# "results/imdb-long/model/epochs/step-*"), MEMBERS (expected SWA members, default 19), for trying the
# script on a small config.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-results/imdb-long/model}
out=${2:-results/imdb-long/final}
long=${LONG_CONFIG:-imdb-long.toml}
full=${FULL_CONFIG:-imdb-full-test.toml}
reviews=${REVIEWS:-2000}
read -r -a epochs <<< "$(echo ${EPOCHS:-results/imdb-long/model/epochs/step-*})"
expected=${MEMBERS:-19}
read -r -a bench <<< "${BENCH:-cargo run --release -q -p bench --}"
if [ ! -f "$model/model.safetensors" ]; then
  echo "error: no final weights in $model (model.safetensors is published when training ends;" \
       "finish the run with \`bench --config $long train\` first)" >&2
  exit 1
fi
command -v jq > /dev/null || { echo "error: this script needs jq (apt install jq)" >&2; exit 1; }
if [ "${#epochs[@]}" -ne "$expected" ] || [ ! -f "${epochs[0]}/model.safetensors" ]; then
  echo "error: the average needs $expected epoch-end checkpoints, found ${#epochs[@]} (${epochs[*]})" >&2
  exit 1
fi
mkdir -p "$out"
pbn=$out/precise-bn
swa=$out/swa
eval_json() { "${bench[@]}" --config "$1" eval --checkpoint "$2" --split "$3" --json; }

echo "== 1. SWA of ${#epochs[@]} epoch-end checkpoints -> $swa" >&2
"${bench[@]}" --config "$long" swa --checkpoints "${epochs[@]}" --out "$swa" \
  --reviews "$reviews" --seed 1 --batch 50 > /dev/null
echo "== 2a. precise BatchNorm: $model -> $pbn ($reviews training reviews, seed 1, batch 50)" >&2
"${bench[@]}" --config "$long" recalibrate-bn --checkpoint "$model" --out "$pbn" \
  --reviews "$reviews" --seed 1 --batch 50 > /dev/null
echo "== 2b. final checkpoint: as trained or recalibrated, by training reviews" >&2
train_as=$(eval_json "$long" "$model" train)
train_pbn=$(eval_json "$long" "$pbn" train)
if jq -e -n --argjson a "$train_as" --argjson b "$train_pbn" '$b.accuracy > $a.accuracy' > /dev/null; then
  chosen=precise_bn
else
  chosen=as_trained
fi
echo "   as trained $(jq .accuracy <<< "$train_as"), precise BatchNorm $(jq .accuracy <<< "$train_pbn"): $chosen" >&2
echo "== 3. test reviews (sample, then all)" >&2
train_swa=$(eval_json "$long" "$swa" train)
sample_swa=$(eval_json "$long" "$swa" test)
full_swa=$(eval_json "$full" "$swa" test)
sample_as=$(eval_json "$long" "$model" test)
sample_pbn=$(eval_json "$long" "$pbn" test)
full_as=$(eval_json "$full" "$model" test)
full_pbn=$(eval_json "$full" "$pbn" test)

jq -n --arg commit "$(git rev-parse HEAD)$(git diff --quiet HEAD -- crates configs || echo -dirty)" \
  --arg model "$model" --arg pbn "$pbn" --arg chosen "$chosen" \
  --arg long "$long" --arg full "$full" \
  --argjson recal "$(cat "$pbn/recalibration.json")" \
  --argjson swa_rec "$(cat "$swa/recalibration.json")" --arg swa "$swa" \
  --argjson train_swa "$train_swa" --argjson sample_swa "$sample_swa" --argjson full_swa "$full_swa" \
  --argjson train_as "$train_as" --argjson train_pbn "$train_pbn" \
  --argjson sample_as "$sample_as" --argjson sample_pbn "$sample_pbn" \
  --argjson full_as "$full_as" --argjson full_pbn "$full_pbn" \
  '{rule: "the run'"'"'s model is the SWA of the epoch-end checkpoints of epochs 17-35 with precise BatchNorm (session 15); the final checkpoint beside it: the higher training-review accuracy of {as trained, precise BatchNorm} (tie: as trained; session 14)",
    git_commit: $commit, sample_config: $long, full_test_config: $full,
    swa: {checkpoint: $swa, recalibration: $swa_rec, train_reviews: $train_swa, test_sample: $sample_swa, full_test: $full_swa},
    final_checkpoint_chosen: $chosen,
    as_trained: {checkpoint: $model, train_reviews: $train_as, test_sample: $sample_as, full_test: $full_as},
    precise_bn: {checkpoint: $pbn, recalibration: $recal, train_reviews: $train_pbn, test_sample: $sample_pbn, full_test: $full_pbn}}' \
  > "$out/final.json.tmp"
mv "$out/final.json.tmp" "$out/final.json"
jq -r '"all \(.swa.full_test.n_eval) test reviews: the run'"'"'s model (SWA) \(.swa.full_test.accuracy); final checkpoint as trained \(.as_trained.full_test.accuracy), recalibrated \(.precise_bn.full_test.accuracy) (chosen by training reviews: \(.final_checkpoint_chosen))"' "$out/final.json"
