#!/usr/bin/env bash
# `make bench`: every benchmark prints a table with a baseline measured in the same run.
# Not tests: numbers depend on the machine. Pass BENCH=name to run one (download, extract, extract_pipeline,
# long_video, decode, decode_limit, train, mcn_kmeans, mcn_vs_eao, search, fused, chaos).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
only=${BENCH:-}
bench() {
  local name=$1; shift
  [ -n "$only" ] && [ "$only" != "$name" ] && return 0
  printf '\n=== bench/%s.py %s ===\n' "bench_$name" "$*"
  python "bench/bench_$name.py" "$@"
}
bench download --videos 32 --seconds 2
bench extract --short 10 --long 40
bench extract_pipeline --videos 4 --seconds 20 --size 320x180
bench long_video
bench decode --seconds 30
bench decode_limit --videos 32 --seconds 30
bench train
bench mcn_kmeans
bench mcn_vs_eao --steps 60
bench search
bench fused
bench chaos --videos 10 --kills 1
