"""Does the demo still learn as before? Zero-shot retrieval over several seeds, today's code vs a commit.

The demo evaluates on 18 held-out clips, so one clip moves R@1 by 5.6 points and a single seed says
little. This trains the demo's pretraining preset on the same shards once per seed, with today's code
and (optionally) with the code of an earlier commit checked out in a temporary git worktree, evaluates
each zero-shot on the same clips, and prints every seed and the means.

    make demo   # leaves demo/shards and demo/yc2-val
    python bench/bench_demo_seeds.py --shards demo/shards --eval demo/yc2-val --seeds 8 --baseline-commit 7ef3dc4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMBINATIONS = ("t->va", "t->v")


def zero_shot(code: Path, shards: Path, eval_shards: Path, seed: int, work: Path, preset: str) -> dict[str, dict]:
    """Pretrain `preset` with `seed` using the code at `code`, evaluate zero-shot; {combination: metrics}."""
    run = work / f"run-{seed}"
    env = {**os.environ, "PYTHONPATH": str(code)}
    common = dict(cwd=code, env=env, capture_output=True, text=True)
    trained = subprocess.run([sys.executable, "-m", "mft_train.cli", "pretrain", "--shards", str(shards),
                              "--out", str(run), "--config", preset, "--set", f"train.seed={seed}"], **common)
    if trained.returncode != 0:
        raise SystemExit(f"pretrain (code {code}, seed {seed}) failed: {trained.stderr[-2000:]}")
    report = work / f"zero-shot-{seed}.json"
    evaluated = subprocess.run([sys.executable, "-m", "mft_train.cli", "evaluate", "--checkpoint", str(run),
                                "--shards", str(eval_shards), "--json", str(report)], **common)
    if evaluated.returncode != 0:
        raise SystemExit(f"evaluate (code {code}, seed {seed}) failed: {evaluated.stderr[-2000:]}")
    results = json.loads(report.read_text())
    return {"N": results["num_clips"], **results["results"][results["headline"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True, help="the held-out clip set (demo/yc2-val)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--preset", default="eao_small")
    parser.add_argument("--baseline-commit", default=None, help="also run the code of this commit (git worktree)")
    args = parser.parse_args()
    shards, eval_shards = args.shards.resolve(), args.eval.resolve()

    with tempfile.TemporaryDirectory(prefix="demo-seeds-") as tmp:
        codes = {"today": ROOT}
        if args.baseline_commit:
            worktree = Path(tmp) / "baseline-code"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline_commit], cwd=ROOT,
                           check=True, capture_output=True)
            codes[args.baseline_commit] = worktree
        try:
            rows = {name: [] for name in codes}
            for seed in range(args.seeds):
                for name, code in codes.items():
                    work = Path(tmp) / name.replace("/", "_")
                    work.mkdir(exist_ok=True)
                    rows[name].append(zero_shot(code, shards, eval_shards, seed, work, args.preset))
                    metrics = rows[name][-1]
                    print(f"seed {seed} {name:>10}: " + "  ".join(
                        f"{c} R@1 {metrics[c]['R1']:5.1f} MedR {metrics[c]['MedR']:4.1f}" for c in COMBINATIONS), flush=True)
        finally:
            if args.baseline_commit:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)

    clips = rows["today"][0]["N"]
    print(f"\nzero-shot on {eval_shards.name} ({clips} clips: one clip = {100 / clips:.1f} R@1 points), "
          f"{args.seeds} seeds, preset {args.preset}")
    print(f"{'code':>10} " + " ".join(f"{c + ' R@1 mean':>14} {c + ' MedR mean':>15}" for c in COMBINATIONS))
    means = {}
    for name, results in rows.items():
        means[name] = {c: statistics.mean(r[c]["R1"] for r in results) for c in COMBINATIONS}
        medr = {c: statistics.mean(r[c]["MedR"] for r in results) for c in COMBINATIONS}
        print(f"{name:>10} " + " ".join(f"{means[name][c]:14.1f} {medr[c]:15.2f}" for c in COMBINATIONS))
    if args.baseline_commit:
        one_clip = 100 / clips
        worst = min(means["today"][c] - means[args.baseline_commit][c] for c in COMBINATIONS)
        verdict = "within one clip or better" if worst >= -one_clip else "worse by more than one clip"
        print(f"today - baseline, worst combination: {worst:+.1f} R@1 points: {verdict}")


if __name__ == "__main__":
    main()
