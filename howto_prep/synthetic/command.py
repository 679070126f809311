"""The CLI handlers of the synthetic corpus: `howto-prep synth` and `howto-prep mirror`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from howto_prep.download.credentials import load_credentials
from howto_prep.errors import UserError
from howto_prep.synthetic.corpus import DEFAULT_HELDOUT, generate_corpus
from howto_prep.synthetic.mirror_server import LoopbackMirror, parse_fault


def run_synth(args: argparse.Namespace) -> int:
    """CLI handler: generate, then print a short summary."""
    heldout = args.heldout if args.heldout is not None else min(DEFAULT_HELDOUT, args.videos // 3)
    max_seconds = args.max_seconds
    if max_seconds < 10:
        raise UserError(f"--max-seconds {max_seconds:g}: videos are at least 10 s long")
    info = generate_corpus(args.out, videos=args.videos, seed=args.seed, heldout_videos=heldout,
                           max_seconds=max_seconds, encoding=args.encoding)
    truth = json.loads(info.truth.read_text())
    hours = sum(video["duration"] for video in truth["videos"]) / 3600
    held_hours = sum(video["duration"] for video in truth["heldout"]) / 3600
    files = sum(1 for path in info.root.rglob("*") if path.is_file())
    print(f"synthetic corpus in {info.root}: {len(info.video_ids)} videos ({hours:.2f} h, "
          f"{args.encoding} encoding), "
          f"{len(info.heldout_ids)} held-out ({held_hours:.2f} h), {len(info.msrvtt_ids)} MSR-VTT clips, "
          f"{len(info.no_audio_ids)} without audio; {files} files in {info.seconds:.1f} s")
    return 0


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
