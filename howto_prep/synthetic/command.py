"""The CLI handlers of the synthetic corpus: `howto-prep synth` and `howto-prep mirror`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from howto_prep.cli_support import is_store_url
from howto_prep.download.credentials import load_credentials
from howto_prep.errors import UserError
from howto_prep.synthetic.corpus import DEFAULT_HELDOUT, generate_corpus
from howto_prep.synthetic.mirror_server import LoopbackMirror, parse_fault

if TYPE_CHECKING:
    from howto_prep.object_store import Store


def run_synth(args: argparse.Namespace) -> int:
    """CLI handler: generate (for an --out URL: in the work folder, then upload), print a short summary."""
    heldout = args.heldout if args.heldout is not None else min(DEFAULT_HELDOUT, args.videos // 3)
    max_seconds = args.max_seconds
    if max_seconds < 10:
        raise UserError(f"--max-seconds {max_seconds:g}: videos are at least 10 s long")
    folder, store = synth_target(args.out, getattr(args, "work", None))
    info = generate_corpus(folder, videos=args.videos, seed=args.seed, heldout_videos=heldout,
                           max_seconds=max_seconds, encoding=args.encoding)
    truth = json.loads(info.truth.read_text())
    hours = sum(video["duration"] for video in truth["videos"]) / 3600
    held_hours = sum(video["duration"] for video in truth["heldout"]) / 3600
    files = sum(1 for path in info.root.rglob("*") if path.is_file())
    print(f"synthetic corpus in {info.root}: {len(info.video_ids)} videos ({hours:.2f} h, "
          f"{args.encoding} encoding), "
          f"{len(info.heldout_ids)} held-out ({held_hours:.2f} h), {len(info.msrvtt_ids)} MSR-VTT clips, "
          f"{len(info.no_audio_ids)} without audio; {files} files in {info.seconds:.1f} s")
    if store is not None:
        from howto_prep.synthetic.to_store import publish_corpus

        uploaded = publish_corpus(info.root, store)
        print(f"uploaded to {store.url}: {uploaded} new or changed file(s), README.txt last")
    return 0


def synth_target(out: Path | str, work: Path | None) -> tuple[Path, Store | None]:
    """(the folder the generator writes, the store it is then uploaded to or None). For an --out URL
    the store is checked first, before minutes of rendering."""
    if not is_store_url(out):
        if work is not None:
            raise UserError("--work is for an --out URL (s3://, gs://): the local folder the corpus is written in")
        return Path(out), None
    from howto_prep.local_copies import default_work_folder
    from howto_prep.synthetic.to_store import open_target

    store = open_target(str(out).rstrip("/"))
    return Path(work) if work is not None else default_work_folder(str(out)), store


def run_mirror(args: argparse.Namespace) -> int:
    """`howto-prep mirror`: print the URL, serve until Ctrl-C or SIGTERM."""
    credentials = load_credentials(args.credentials)
    faults = {}
    for entry in args.fault:
        video_id, sep, kind = entry.partition("=")
        if not sep or not video_id:
            raise UserError(f"--fault takes ID=KIND, got {entry!r}")
        faults[video_id] = parse_fault(kind)
    mirror = LoopbackMirror(args.root, credentials=credentials, faults=faults, port=args.port, verbose=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with mirror:
        print(mirror.url, flush=True)
        auth = f"Basic auth as {credentials.username}" if credentials else "no auth"
        print(f"serving {args.root} ({auth}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            while not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0
