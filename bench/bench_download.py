"""Download throughput from the loopback mirror: `howto-prep download` with 1, 4 and 16 Ray workers
against a plain sequential urllib loop measured in the same run.

    .venv/bin/python bench/bench_download.py [--videos 32] [--throttle-mbps 2] [--workers 1,4,16]

The mirror can throttle each connection (like a remote mirror whose per-connection bandwidth, not the
disk, is the limit); the baseline and every run use the same mirror, files and credentials. The
downloader's numbers include what the baseline skips: decord validation, atomic renames and one
manifest commit per video.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from howto_prep.cluster import init_ray
from howto_prep.download.catalog import CatalogEntry
from howto_prep.download.command import download_all
from howto_prep.download.credentials import CredentialSource, Credentials
from howto_prep.download.plan import DownloadPlan
from howto_prep.synthetic.mirror_server import LoopbackMirror
from howto_prep.synthetic.mp4 import write_mp4

CREDENTIALS = Credentials("bench", "bench-password")


def make_library(root: Path, videos: int, seconds: float) -> list[str]:
    """One real noisy mp4 (hard to compress, so about 1 MB) copied under `videos` ids."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(int(seconds * 12))]
    tone = (0.1 * np.sin(np.arange(int(seconds * 16000)) / 5)).astype(np.float32)
    master = write_mp4(root / "master.mp4", frames, 12, tone, sample_rate=16000, crf=18)
    ids = [f"bench{index:04d}" for index in range(videos)]
    for video_id in ids:
        shutil.copyfile(master, root / f"{video_id}.mp4")
    master.unlink()
    return ids


def sequential_baseline(url: str, ids: list[str], out: Path) -> float:
    """The plain loop a user would write: GET each file with Basic auth and save it. Returns seconds."""
    out.mkdir(parents=True)
    header = "Basic " + base64.b64encode(f"{CREDENTIALS.username}:{CREDENTIALS.password}".encode()).decode()
    started = time.perf_counter()
    for video_id in ids:
        request = urllib.request.Request(f"{url}/{video_id}.mp4", headers={"Authorization": header})
        with urllib.request.urlopen(request, timeout=60) as response:
            (out / f"{video_id}.mp4").write_bytes(response.read())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each test video")
    parser.add_argument("--throttle-mbps", type=float, default=2.0, help="per-connection MB/s; 0 = unlimited")
    parser.add_argument("--workers", default="1,4,16")
    args = parser.parse_args()
    throttle = args.throttle_mbps * 1e6 if args.throttle_mbps > 0 else None
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        library = work / "mirror"
        library.mkdir()
        ids = make_library(library, args.videos, args.seconds)
        total_mb = sum(path.stat().st_size for path in library.iterdir()) / 1e6
        # Keep the warmed-up Ray workers alive between timed runs (Ray otherwise stops idle workers beyond
        # one per CPU), so each run measures steady-state fetching rather than worker start-up.
        os.environ.setdefault("RAY_num_workers_soft_limit", str(max(int(n) for n in args.workers.split(","))))
        started = time.perf_counter()
        init_ray(None)
        ray_start = time.perf_counter() - started
        records = [CatalogEntry(video_id) for video_id in ids]
        rows = []
        secret_file = work / "credentials.txt"  # workers read the credentials themselves
        secret_file.write_text(f"{CREDENTIALS.username}:{CREDENTIALS.password}\n")
        secret_file.chmod(0o600)
        source = CredentialSource(str(secret_file))
        with LoopbackMirror(library, CREDENTIALS, throttle_bytes_per_s=throttle) as mirror:
            baseline = sequential_baseline(mirror.url, ids, work / "baseline")
            rows.append(("sequential urllib loop", baseline, args.videos))
            warm = max(int(n) for n in args.workers.split(","))  # start the Ray workers once, untimed
            download_all(records[:warm], DownloadPlan(work / "warmup", "mirror", mirror.url, CREDENTIALS,
                                                      source, workers=warm, show_progress=False))
            for workers in (int(n) for n in args.workers.split(",")):
                plan = DownloadPlan(work / f"w{workers}", "mirror", mirror.url, CREDENTIALS, source, workers=workers,
                                    show_progress=False)
                summary = download_all(records, plan)
                rows.append((f"howto-prep download, {workers} workers", summary.seconds, summary.done))
    print(f"\n{args.videos} videos, {total_mb:.1f} MB in all, per-connection limit "
          f"{f'{args.throttle_mbps:g} MB/s' if throttle else 'none'}; Ray start {ray_start:.1f} s (not counted)")
    print(f"{'method':<34} {'seconds':>8} {'videos/s':>9} {'MB/s':>7} {'vs loop':>8}")
    for name, seconds, done in rows:
        assert done == args.videos, f"{name}: only {done} of {args.videos} videos done"
        print(f"{name:<34} {seconds:>8.2f} {args.videos / seconds:>9.2f} {total_mb / seconds:>7.2f} "
              f"{baseline / seconds:>7.2f}x")


if __name__ == "__main__":
    main()
