"""Benchmark: reading a shard set from disk vs from S3 (moto's server on 127.0.0.1), the way training reads.

Writes N shards of random .npy members (webdataset's TarWriter, as the shard writer does; each sample
is one `resnet152.npy` of about --sample-mb plus a small meta.json), uploads them with
`howto_prep.object_store.Store.put_file` (then each per-shard JSON, last, as a writer must), and
iterates every shard once per row with the pipeline `mft_train` reads through:
`wds.DataPipeline(wds.SimpleShardList(urls), mft_train.data.reader.tar_samples(...))`. A local path
takes the reader's random-access tar path; an s3:// URL takes webdataset's `url_opener` -> `gopen`,
which in webdataset 1.0.2 has no s3 handler: `object_store.register_webdataset_schemes()` adds one
(an fsspec/s3fs file with a 64 MiB read-ahead block). Rows:

  disk, cold          the tars evicted from the page cache first (fsync + posix_fadvise DONTNEED)
  disk, warm          the same again, now from the page cache
  s3, training path   s3:// URLs through the same pipeline (gopen -> fsspec read-ahead stream)
  s3, random access   tarfile "r:" (one read per member, as the reader does for local tars) over
                      Store.open_read: what the reader's remote path could do (not wired today)
  s3, whole GET       Store.get_bytes (one GET per shard) then tarfile in memory: the server's ceiling

moto runs in its own process (`moto_server`), so its Python does not share our GIL; its numbers are
moto's (a single-threaded Flask app on loopback), not S3's: read the s3 rows as "the code path works,
and costs this much over moto", and compare rows with each other, not with a real bucket.

    .venv/bin/python bench/bench_object_store.py [--shards 20] [--shard-mb 50] [--sample-mb 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2 ** 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).read()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto_server did not start")


def write_shards(folder: Path, shards: int, shard_mb: float, sample_mb: float, seed: int = 0) -> list[Path]:
    import webdataset as wds

    from howto_prep.shards import npy_bytes

    rng = np.random.default_rng(seed)
    rows = max(1, int(sample_mb * MiB / (2048 * 2)))
    per_shard = max(1, round(shard_mb / sample_mb))
    paths = []
    for index in range(shards):
        path = folder / f"shard-{index:06d}.tar"
        with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0.0) as tar:
            for n in range(per_shard):
                key = f"v{index:04d}x{n:03d}"
                features = np.frombuffer(rng.bytes(rows * 2048 * 2), dtype=np.float16).reshape(rows, 2048)
                tar.write({"__key__": key, "resnet152.npy": npy_bytes(features),
                           "meta.json": json.dumps({"video_id": key, "duration": rows}).encode()})
            stream.flush()
            os.fsync(stream.fileno())
        paths.append(path)
    return paths


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_pipeline(urls: list[str]) -> tuple[int, int, float]:
    """Samples, payload bytes and seconds to iterate every shard once through mft_train's reader."""
    import webdataset as wds

    from mft_train.data.reader import tar_samples

    started = time.perf_counter()
    samples = payload = 0
    for sample in wds.DataPipeline(wds.SimpleShardList(list(urls)), tar_samples(handler=wds.reraise_exception)):
        samples += 1
        payload += sum(len(v) for k, v in sample.items() if isinstance(v, bytes))
    return samples, payload, time.perf_counter() - started


def read_random_access(store, keys: list[str]) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    """The reader's local fast path (tarfile "r:", one read per member) over a seekable s3fs file."""
    from howto_prep.object_store import READ_BLOCK_BYTES

    started = time.perf_counter()
    samples = payload = 0
    for key in keys:
        handle = store.open_read(key, block_size=READ_BLOCK_BYTES)
        with handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for member in tar:
                tar.members = []
                if member.isreg():
                    payload += len(tar.extractfile(member).read())
                    samples += member.name.endswith(".meta.json")
    return samples, payload, time.perf_counter() - started


def read_whole_objects(store, keys: list[str]) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    samples = payload = 0
    for key in keys:
        data = store.get_bytes(key)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isreg():
                    payload += len(tar.extractfile(member).read())
                    samples += member.name.endswith(".meta.json")
    return samples, payload, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--shard-mb", type=float, default=50)
    parser.add_argument("--sample-mb", type=float, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="where the local shards go (default: a temp dir)")
    args = parser.parse_args()

    port = free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-object-store-"))
    work.mkdir(parents=True, exist_ok=True)
    moto = start_moto(port)
    try:
        from howto_prep.object_store import Store, register_webdataset_schemes

        started = time.perf_counter()
        paths = write_shards(work, args.shards, args.shard_mb, args.sample_mb)
        write_s = time.perf_counter() - started
        total = sum(p.stat().st_size for p in paths)

        store = Store.for_url("s3://bench/set")
        store.fs.mkdir("bench")
        started = time.perf_counter()
        for path in paths:
            store.put_file(path, path.name)
            store.put_bytes(path.with_suffix(".json").name, json.dumps({"url": path.name}).encode())
        upload_s = time.perf_counter() - started

        register_webdataset_schemes()
        rows = []
        evict(paths)
        rows.append(("disk, cold (mft_train reader)", *read_pipeline([str(p) for p in paths])))
        rows.append(("disk, warm (mft_train reader)", *read_pipeline([str(p) for p in paths])))
        rows.append(("s3 moto, training path (gopen -> fsspec read-ahead)",
                     *read_pipeline([store.url_of(p.name) for p in paths])))
        rows.append(("s3 moto, random-access tar over an s3fs file (not wired)",
                     *read_random_access(store, [p.name for p in paths])))
        rows.append(("s3 moto, whole-object GET + tarfile", *read_whole_objects(store, [p.name for p in paths])))

        print(f"\n{args.shards} shards x {total / args.shards / MiB:.1f} MiB = {total / MiB:.0f} MiB, "
              f"{rows[0][1]} samples of ~{args.sample_mb} MiB; written in {write_s:.1f} s; uploaded to moto "
              f"(Store.put_file, multipart) in {upload_s:.1f} s = {total / MiB / upload_s:.0f} MiB/s\n")
        print("| read | seconds | MiB/s (tar bytes) | samples/s |")
        print("|---|---:|---:|---:|")
        for name, samples, _payload, seconds in rows:
            print(f"| {name} | {seconds:.2f} | {total / MiB / seconds:.0f} | {samples / seconds:.1f} |")
        assert len({row[1] for row in rows}) == 1, "every path must read the same samples"
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
