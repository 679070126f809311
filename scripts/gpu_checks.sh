#!/usr/bin/env bash
# The GPU side in one go: extraction benches with --gpus 1, pretraining (EAO and MCN, bf16 AMP) and
# evaluation through the real CLIs on fixture shards, and the paper-preset training throughput.
# Also the fused training step against today's six-pass one (paper preset, bf16, 560 clips/step:
# clips/s, MFU, peak memory), MCN's K-means refit at paper scale (40,960 x 6,144, K = 256) and the
# loader at the paper preset's data settings with the worker counts a 16-core box can give.
# Each stage has its own time limit and log under $OUT (default gpu-results/); a failed stage does not
# stop the next.  QUICK=1 shrinks every stage (a CPU dry run of the script itself).  STAGES="a b"
# runs only the named stages.
#
#     bash scripts/gpu_checks.sh            # on a machine with a CUDA GPU and the project installed
#     STAGES="bench_fused kmeans_paper loader_paper" bash scripts/gpu_checks.sh   # the training-speed rows only
set -u
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
STAGES=${STAGES:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.txt, print its tail
    local name=$1 limit=$2 start rc
    shift 2
    if [ -n "$STAGES" ] && [[ " $STAGES " != *" $name "* ]]; then return 0; fi
    echo "=== $name (limit ${limit} s)"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    rc=$?
    echo "--- $name: exit $rc after $(($(date +%s) - start)) s"
    grep -v -E '^\s*$|it/s\]|s/it\]' "$OUT/$name.txt" | tail -n 24
}

if [ "$QUICK" = 1 ]; then
    EXTRACT=(--short 3 --long 6 --size 160x120 --device cpu); PIPE=(--videos 2 --seconds 4 --size 160x120 --gpus 0)
    STEPS=3; TRAIN=(--steps 2 --batches 2 --workers 0 --skip-paper-loader)
    FUSED=(--fixture-shards --videos 1 --steps 1 --warmup 1); KMEANS=(--rows 2048 --dim 256 --k 16 --device cpu)
    LOADER=(--paper-loader-only --long-videos 8 --paper-workers 0 1 --paper-batches 2 --paper-videos 4)
    LIMIT=(--videos 2 --seconds 4 --gpus 0 --models standin)
else
    EXTRACT=(--short 10 --long 60 --size 640x360 --device cuda); PIPE=(--videos 16 --seconds 60 --size 640x360 --gpus 1)
    STEPS=40; TRAIN=(--steps 5 --batches 10 --workers 0 --gpu-steps 5 --skip-paper-loader)
    FUSED=(--no-cpu --gpu --gpu-clips 560 --gpu-steps 6 --compile); KMEANS=(--paper --device cuda)
    LOADER=(--paper-loader-only --paper-workers 0 1 4 8 12 --paper-batches 24)
    LIMIT=(--videos 64 --seconds 30 --gpus 1 --models standin,random --scaling-gpus 3)  # issue 14: decode limit vs the whole command, --gpus 3 scaling
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
stage bench_extract 150 "$PY" bench/bench_extract.py "${EXTRACT[@]}"
stage bench_extract_pipeline 240 "$PY" bench/bench_extract_pipeline.py "${PIPE[@]}"
stage decode_limit 540 "$PY" bench/bench_decode_limit.py "${LIMIT[@]}"
stage train_cli 100 "$PY" - "$(mktemp -d)" "$STEPS" <<'PYEOF'
"""pretrain EAO and MCN (device auto: cuda + bf16 AMP when present), then evaluate, via the CLIs."""
import sys, time
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from shard_fixtures import write_shard_set
from clip_shard_fixtures import write_clip_set
from mft_train.cli import main

out, steps = Path(sys.argv[1]), int(sys.argv[2])
write_shard_set(out / "shards", videos=48, shards=4, topics=8)
write_clip_set(out / "eval", clips_per_topic=2, topics=12, benchmark="youcook2")
print("cuda:", torch.cuda.is_available())
for name, extra in (("eao", ["--config", "eao_small"]), ("mcn", ["--model", "mcn", "--config", "mcn_small"])):
    started = time.perf_counter()
    code = main(["pretrain", "--shards", str(out / "shards"), "--out", str(out / name), *extra,
                 "--set", f"train.steps_per_epoch={steps}", "--set", "train.epochs=1", "--set", "data.workers=2"])
    print(f"pretrain {name}: exit {code} in {time.perf_counter() - started:.1f} s")
    checkpoint = sorted((out / name).rglob("*.pt"))[-1]
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--shards", str(out / "eval")])
    print(f"evaluate {name}: exit {code}")
PYEOF
stage bench_train 120 "$PY" bench/bench_train.py "${TRAIN[@]}"
stage bench_fused 420 "$PY" bench/bench_fused.py "${FUSED[@]}"
stage kmeans_paper 180 "$PY" bench/bench_mcn_kmeans.py "${KMEANS[@]}"
stage loader_paper 300 "$PY" bench/bench_train.py "${LOADER[@]}"
echo "=== done; logs in $OUT"
