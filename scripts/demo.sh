#!/usr/bin/env bash
# The project's spine: synthetic corpus -> loopback mirror -> download -> extract -> pretrain -> evaluate.
# Run through `make demo` (which installs everything first). Every stage says what it ran and made.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO_DIR:-demo}
VIDEOS=${DEMO_VIDEOS:-12}
HELDOUT=${DEMO_HELDOUT:-16}
MAX_SECONDS=${DEMO_MAX_SECONDS:-40}
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0

stage() { printf '\n=== %s ===\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
start=$(date +%s)

stage "1. synthetic HowTo100M corpus ($VIDEOS videos up to ${MAX_SECONDS} s, $HELDOUT held-out)"
run howto-prep synth --out "$DEMO/corpus" --videos "$VIDEOS" --heldout "$HELDOUT" --max-seconds "$MAX_SECONDS" --seed 0
ls "$DEMO/corpus"

stage "2. loopback mirror (HTTP Basic auth, Range) on 127.0.0.1"
umask 077
printf 'demo-user:%s\n' "$(python -c 'import secrets; print(secrets.token_urlsafe(12))')" > "$DEMO/credentials.txt"
umask 022
howto-prep mirror --root "$DEMO/corpus/videos" --credentials "$DEMO/credentials.txt" > "$DEMO/mirror.log" 2>&1 &
MIRROR_PID=$!
trap 'kill $MIRROR_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q '^http://' "$DEMO/mirror.log" 2>/dev/null && break; sleep 0.2; done
MIRROR_URL=$(grep -m1 '^http://' "$DEMO/mirror.log")
echo "mirror serving $DEMO/corpus/videos at $MIRROR_URL (pid $MIRROR_PID)"

stage "3. download from the mirror (Ray, resumable, manifest.sqlite)"
run howto-prep download --ids "$DEMO/corpus/ids.txt" --out "$DEMO/videos" --source mirror \
    --mirror-url "$MIRROR_URL" --credentials "$DEMO/credentials.txt" --workers 4
run howto-prep status "$DEMO/videos"

W2V="$DEMO/corpus/word2vec.bin"
WEIGHTS=(--weights-2d random --weights-3d random)   # offline: real weights cannot be downloaded here

stage "4. extract features once per video into WebDataset shards (random weights: offline demo)"
run howto-prep extract --videos "$DEMO/videos" --captions "$DEMO/corpus/caption.json" --word2vec "$W2V" \
    --csv "$DEMO/corpus/HowTo100M_v1.csv" --out "$DEMO/shards" "${WEIGHTS[@]}"
run howto-prep extract --videos "$DEMO/corpus/heldout/videos" --word2vec "$W2V" "${WEIGHTS[@]}" \
    --youcook2 "$DEMO/corpus/heldout/youcookii_annotations_trainval.json" --split training --out "$DEMO/yc2-train"
run howto-prep extract --videos "$DEMO/corpus/heldout/videos" --word2vec "$W2V" "${WEIGHTS[@]}" \
    --youcook2 "$DEMO/corpus/heldout/youcookii_annotations_trainval.json" --split validation --out "$DEMO/yc2-val"
run howto-prep status "$DEMO/shards"

stage "5. pretrain Everything-at-Once (small CPU demo preset: 4 s clips, 300 steps) on the synthetic shards"
# eao_demo = eao_small's model with 4 s clips, no audio shift, all six loss weights 1 and lr 1e-3 over
# 300 steps (the synthetic steps last ~5 s; mft_train/configs/eao_demo.yaml says why each differs).
run mft-train pretrain --shards "$DEMO/shards" --out "$DEMO/runs/pretrain" --config eao_demo
tail -n 1 "$DEMO/runs/pretrain/metrics.jsonl"

stage "6. zero-shot retrieval on the held-out YouCook2-style validation clips"
run mft-train evaluate --checkpoint "$DEMO/runs/pretrain" --shards "$DEMO/yc2-val" --json "$DEMO/zero-shot.json"

stage "7. fine-tune (paper recipe: all six loss weights 1, BatchNorm frozen; demo preset: 15 epochs) and evaluate"
run mft-train finetune --init "$DEMO/runs/pretrain" --shards "$DEMO/yc2-train" --eval-shards "$DEMO/yc2-val" \
    --out "$DEMO/runs/finetune" --config eao_finetune_demo
# The last epoch, not best.pt: best.pt is picked on the validation clips, i.e. the videos searched below.
FINETUNED=$(ls "$DEMO"/runs/finetune/checkpoints/step-*.pt | tail -n 1)
run mft-train evaluate --checkpoint "$FINETUNED" --shards "$DEMO/yc2-val" --json "$DEMO/finetuned.json"

stage "8. embed the held-out validation videos in windows and search them by text (scored against the synthetic truth)"
# Synthetic steps last about 5 s: 4 s windows (the eao_demo training clip) every 1 s, so that most
# steps are shown by 5 or more windows and precision@5 can reach 1 (every 2 s, half the steps had 2-3).
# These videos were extracted without captions, so their set has no vocabulary: queries use the
# pretraining shards' (the same word2vec file). One search is shown, chosen by a rule fixed before any
# search (the step most windows show); the verdict is the mean precision@5 over one search per step
# (a single query's score moves in steps of 0.2).
run mft-train embed --checkpoint "$FINETUNED" --shards "$DEMO/yc2-val/video-level" \
    --vocab "$DEMO/shards" --out "$DEMO/index" --window 4 --stride 1
QUERY=$(python -m mft_train.retrieval.synthetic_check query --index "$DEMO/index" --truth "$DEMO/corpus/synth_truth.json")
run mft-train search --index "$DEMO/index" "$QUERY" --top 5 --html "$DEMO/search.html" --videos "$DEMO/corpus/heldout/videos"
mft-train search --index "$DEMO/index" "$QUERY" --top 5 --json > "$DEMO/search.json"
run python -m mft_train.retrieval.synthetic_check score --index "$DEMO/index" --truth "$DEMO/corpus/synth_truth.json" \
    --results "$DEMO/search.json" --all-steps

stage "done in $(( $(date +%s) - start )) s"
echo "outputs: $DEMO/ (corpus, videos + manifest.sqlite, shards, yc2-train, yc2-val, runs/, *.json + *.png, index/, search.html)"
