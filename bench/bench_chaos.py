"""Chaos benchmark: download and extract under kills, a killed actor and a concurrent second run.

Many synthetic videos go through `howto-prep download` (from the loopback mirror, with faults injected
per video) and `howto-prep extract` twice: once cleanly, once under chaos. Under chaos the driver is
killed with SIGKILL at random moments (`--kills` times per command, each time rerun with the same
arguments), a second run on the same output is attempted while one runs (it must stop with exit 4 and
touch nothing), and one feature-model actor is killed (it must be restarted). The two results must be
equal: every id done or failed with the same kind in both manifests, the same failures in
failures.jsonl, and the same shard samples, member for member, byte for byte (shard boundaries and
order may differ). Prints what was injected and what was found.

    python bench/bench_chaos.py [--videos 200] [--kills 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from howto_prep import schema, shards  # noqa: E402

USER, PASSWORD = "chaos", "chaos-password-7d1e"
FAULTS = {0: "not_found", 1: "truncated:1", 2: "html", 3: "transient:1"}  # by id position, every 10th video


def command_line(*args: str) -> list[str]:
    return [sys.executable, "-m", "howto_prep.cli", *args]


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command_line(*args), cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, **(env or {})})


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """The command in its own session; stderr to an unnamed temporary file (a pipe read only after the
    exit could fill up with progress bars and Ray logs and block the driver)."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command_line(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True,
                               start_new_session=True, env={**os.environ, **(env or {})})
    process.stderr_log = log  # Popen.stderr is set only for a pipe
    return process


def stderr_tail(process: subprocess.Popen) -> str:
    """The last 2,000 characters the process (started by `start`) wrote to stderr."""
    log = process.stderr_log
    log.seek(0)
    return log.read()[-2000:]


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
    except ProcessLookupError:
        pass
    process.wait()


def holds_lock(args: list[str], pid: int) -> bool:
    """True while the run `pid` holds its output's lock: the file names it AND the flock is taken (the
    text stays after the holder releases the lock on its way out, so the name alone is not proof)."""
    from howto_prep.output_lock import LOCK_NAME

    lock = Path(args[args.index("--out") + 1]) / LOCK_NAME
    try:
        with open(lock, "a+") as handle:
            handle.seek(0)
            if f'"pid": {pid},' not in handle.read():
                return False
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::FeatureModels"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def try_second_run(args: list[str], first: subprocess.Popen, log: dict) -> bool:
    """Start a second run on the same output while the first one holds its lock.

    The first driver is frozen (SIGSTOP keeps its flock held) before we look at the lock and for the
    second run's lifetime: without that, the first could release the lock (it does so before Ray's
    shutdown, while its process lives on) between our look and the second run's flock, and the second
    would rightly win the free lock and exit 0 (a race in this harness, not in the tool)."""
    os.kill(first.pid, signal.SIGSTOP)
    try:
        if first.poll() is not None or not holds_lock(args, first.pid):
            return False  # it finished just now: try again at the next attempt
        log["second run exit codes"].append(run(args).returncode)
        return True
    finally:
        try:
            os.kill(first.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def chaotic(args: list[str], kills: int, rng: random.Random, log: dict, kill_actor: bool = False) -> None:
    """Run `args` to completion while killing its driver `kills` times, trying a second run once and
    (for extract) killing one model actor once."""
    second_tried = actor_killed = False
    for attempt in range(kills + 1):
        process = start(args)
        deadline = time.monotonic() + rng.uniform(4.0, 12.0)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if not second_tried and time.monotonic() > deadline - 2 and holds_lock(args, process.pid):
                second_tried = try_second_run(args, process, log)
            if kill_actor and not actor_killed and actor_pids():
                time.sleep(1.0)
                for pid in actor_pids():
                    os.kill(pid, signal.SIGKILL)
                log["actors killed"] += 1
                actor_killed = True
        if process.poll() is None and attempt < kills:
            kill_group(process)
            log["drivers killed -9"] += 1
            continue
        process.wait()
        if process.returncode not in (0, None):
            raise SystemExit(f"{args[0]} ended with {process.returncode}: {stderr_tail(process)}")
        if process.returncode == 0:
            break
    final = run(args)  # whatever is left (a no-op when the last attempt finished)
    if final.returncode != 0:
        raise SystemExit(f"{args[0]} rerun ended with {final.returncode}: {final.stderr[-2000:]}")


def manifest_outcomes(videos: Path) -> dict[str, tuple[str, str | None]]:
    db = sqlite3.connect(videos / schema.MANIFEST_FILE)
    rows = db.execute("SELECT video_id, status, failure_kind FROM videos").fetchall()
    db.close()
    return {video_id: (status, kind) for video_id, status, kind in rows}


def shard_contents(out: Path) -> dict[str, dict[str, bytes]]:
    return {sample["__key__"]: {k: v for k, v in sample.items() if not k.startswith("__")}
            for sample in raw_samples(out)}


def raw_samples(out: Path):
    import webdataset as wds

    urls = [str(out / record["url"]) for record in shards.read_shard_records(out)]
    yield from wds.WebDataset(urls, shardshuffle=False, empty_check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    from howto_prep.synthetic.corpus import generate_corpus
    from howto_prep.synthetic.mirror_server import LoopbackMirror

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        corpus = generate_corpus(work / "corpus", videos=args.videos, seed=args.seed, heldout_videos=0,
                                 min_seconds=2, max_seconds=4)
        ids = sorted(corpus.video_ids)
        faults = {video: FAULTS[i // 10 % len(FAULTS)] for i, video in enumerate(ids) if i % 10 == 5}
        credentials = work / "credentials.txt"
        credentials.write_text(f"{USER}:{PASSWORD}\n")
        credentials.chmod(0o600)
        log = {"drivers killed -9": 0, "actors killed": 0, "second run exit codes": []}
        results = {}
        with LoopbackMirror(corpus.videos_dir, (USER, PASSWORD), faults=faults, transient_failures=1) as mirror:
            for name, chaos in (("clean", False), ("chaos", True)):
                videos, out = work / name / "videos", work / name / "shards"
                download = ["download", "--ids", str(corpus.ids), "--out", str(videos), "--source", "mirror",
                            "--mirror-url", mirror.url, "--credentials", str(credentials), "--workers", "4"]
                extract = ["extract", "--videos", str(videos), "--captions", str(corpus.captions), "--word2vec",
                           str(corpus.word2vec), "--out", str(out), "--features", "resnet152,logmel,tokens",
                           "--weights-2d", "random", "--shard-size", "2MB"]
                if chaos:
                    chaotic(download, args.kills, rng, log)
                    chaotic(extract, args.kills, rng, log, kill_actor=True)
                else:
                    for command in (download, extract):
                        result = run(command)
                        if result.returncode != 0:
                            raise SystemExit(f"clean {command[0]} failed: {result.stderr[-2000:]}")
                results[name] = (manifest_outcomes(videos), shards.read_failures(out), shard_contents(out))
        (clean_manifest, clean_failures, clean_samples), (chaos_manifest, chaos_failures, chaos_samples) = \
            results["clean"], results["chaos"]
        same_manifest = clean_manifest == chaos_manifest
        same_failures = {k: v["kind"] for k, v in clean_failures.items()} == \
            {k: v["kind"] for k, v in chaos_failures.items()}
        same_samples = clean_samples == chaos_samples
        done = sum(status == "done" for status, _ in chaos_manifest.values())
        rows = [("videos", str(len(ids))), ("mirror faults injected", str(len(faults))),
                ("download + extract drivers killed -9", str(log["drivers killed -9"])),
                ("model actors killed", str(log["actors killed"])),
                ("concurrent second runs (exit codes)", ", ".join(map(str, log["second run exit codes"])) or "-"),
                ("downloaded / failed (chaos)", f"{done} / {len(chaos_manifest) - done}"),
                ("every id: same status and kind as the clean run", "yes" if same_manifest else "NO"),
                ("failures.jsonl: same ids and kinds", "yes" if same_failures else "NO"),
                ("shard samples (clean / chaos)", f"{len(clean_samples)} / {len(chaos_samples)}"),
                ("samples equal member for member, byte for byte", "yes" if same_samples else "NO"),
                ("seconds", f"{time.perf_counter() - started:.0f}")]
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
        ok = same_manifest and same_failures and same_samples and all(c == 4 for c in log["second run exit codes"])
        if not ok:
            for video in sorted(set(clean_manifest) | set(chaos_manifest)):
                if clean_manifest.get(video) != chaos_manifest.get(video):
                    print(f"  manifest differs for {video}: {clean_manifest.get(video)} vs {chaos_manifest.get(video)}")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
