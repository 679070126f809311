#!/usr/bin/env bash
# The project's spine: synthetic corpus -> loopback mirror -> download -> extract -> pretrain -> evaluate.
# Run through `make demo` (which installs everything first). Every stage says what it ran and made.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO_DIR:-demo}
VIDEOS=${DEMO_VIDEOS:-12}
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0

stage() { printf '\n=== %s ===\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
start=$(date +%s)

stage "1. synthetic HowTo100M corpus ($VIDEOS videos)"
run howto-prep synth --out "$DEMO/corpus" --videos "$VIDEOS" --seed 0
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
