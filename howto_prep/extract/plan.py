"""A validated `howto-prep extract` invocation, built once from the command line.

Everything below the CLI handler reads this frozen plan instead of `argparse.Namespace`, so a
library call (a test, a benchmark, the clip-set builder) states every option it relies on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from howto_prep.cli_support import is_store_url
from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.local_copies import default_work_folder, local_file, local_input
from howto_prep.extract.annotations import ClipList, ClipRecord, load_clips_csv, load_msrvtt, load_youcook2
from howto_prep.extract.failure_storm import DEFAULT_THRESHOLD
from howto_prep.extract.inputs import check_weights
from howto_prep.extract.protocols import Protocol, choose_protocol, protocol_record

DEFAULT_DECODE_TIMEOUT_S = 900.0  # a decode producing no chunk (10 s of video) for this long is hung
DEFAULT_ACTOR_TIMEOUT_S = 900.0  # a model actor answering nothing for this long while it has work is hung


@dataclass(frozen=True)
class ClipAnnotations:
    """The clips of a clip-level set, the benchmark whose files listed them and the protocol they define."""

    source: ClipList
    protocol: Protocol | None = None  # None: a custom set

    @property
    def benchmark(self) -> str:
        """youcook2 | msrvtt | clips: a protocol's benchmark wins (it sets the evaluation lengths)."""
        return self.protocol.benchmark if self.protocol else self.source.benchmark

    @property
    def clips(self) -> tuple[ClipRecord, ...]:
        return self.source.clips

    def record(self) -> dict:
        return protocol_record(self.source, self.protocol)


@dataclass(frozen=True)
class ExtractPlan:
    """Where the videos are, what to compute from them, and where the shard set goes."""

    videos_dir: Path | str  # a folder, or an s3:// / gs:// URL
    out: Path
    features: tuple[str, ...] = schema.ALL_FEATURE_NAMES
    captions: Path | None = None
    word2vec: Path | None = None
    csv: Path | None = None
    weights_2d: str = "imagenet"
    weights_3d: str = "random"
    gpus: int = 0
    gpu_share: float = 1.0  # the share of a GPU each model actor reserves (Ray's fractional num_gpus)
    workers: int = 0  # decode tasks in flight; 0: the cluster's CPUs less the GPUs
    shard_size: int = schema.DEFAULT_SHARD_BYTES
    prefix: str = schema.DEFAULT_PREFIX
    address: str | None = None
    retry_failed: bool = False
    limit: int | None = None
    clip_annotations: ClipAnnotations | None = None  # None: a video-level set
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S  # then the video is recorded as decode_timeout
    actor_timeout_s: float = DEFAULT_ACTOR_TIMEOUT_S  # then the actor is killed and restarted
    failure_storm: int = DEFAULT_THRESHOLD  # identical failures in a row that stop the run as a system fault
    store_url: str | None = None  # --out s3://...: `out` is then the local work folder (shard_store.py)
    copied_inputs: tuple[str, ...] = ()  # the options (--captions, ...) given as URLs: read from cached copies
    publisher: Any = None  # shard_store.ShardPublisher while a video-level set goes to `store_url`

    def wants(self, name: str) -> bool:
        return name in self.features

    @property
    def visual_features(self) -> list[str]:
        return [name for name in self.features if name in (schema.RESNET152.name, schema.RESNEXT101.name)]


def plan_from_args(args: argparse.Namespace) -> ExtractPlan:
    """Check the options against each other and read the annotation file, if any."""
    features = tuple(args.features)
    clip_annotations = read_clip_annotations(args)
    if clip_annotations is None and args.captions is None:
        raise UserError("--captions caption.json is required (or --youcook2/--msrvtt/--clips for a clip-level set)")
    if schema.RESNET152.name in features:
        check_model_weights(args.weights_2d, "--weights-2d", ("imagenet", "random"))
    if schema.RESNEXT101.name in features:
        check_model_weights(args.weights_3d, "--weights-3d", ("random",))
    needs_word2vec = clip_annotations is not None or schema.TOKENS_FEATURE in features
    if args.word2vec is None and needs_word2vec:
        raise UserError("--word2vec FILE.bin is required to tokenise captions (or leave tokens out of --features)")
    if args.word2vec is not None and not is_store_url(args.word2vec) and not Path(args.word2vec).is_file():
        raise UserError(f"--word2vec {args.word2vec} does not exist")
    for option, seconds in (("--decode-timeout", args.decode_timeout), ("--actor-timeout", args.actor_timeout)):
        if not seconds > 0:
            raise UserError(f"{option} must be a positive number of seconds, not {seconds:g}")
    if args.failure_storm < 1:
        raise UserError("--failure-storm must be at least 1 (identical failures in a row that stop the run)")
    out, store_url = output_folder(args.out, getattr(args, "work", None))
    # absolute: agents and decode tasks run in Ray workers, whose working folder is not this one
    videos = args.videos if is_store_url(args.videos) else absolute(args.videos)
    # last, after every cheap check: a URL's object is downloaded here (gigabytes for word2vec)
    captions, csv_path = local_input(args.captions, "--captions"), local_input(args.csv, "--csv")
    fetch_word2vec = needs_word2vec or not is_store_url(args.word2vec)  # an unused URL is not downloaded
    word2vec = local_input(args.word2vec, "--word2vec") if fetch_word2vec else None
    given = {"--captions": args.captions, "--word2vec": args.word2vec if fetch_word2vec else None, "--csv": args.csv}
    copied = tuple(option for option, value in given.items() if is_store_url(value))
    return ExtractPlan(videos_dir=videos, out=absolute(out), store_url=store_url, features=features,
                       captions=captions, word2vec=word2vec, csv=csv_path, copied_inputs=copied,
                       weights_2d=args.weights_2d, weights_3d=args.weights_3d,
                       gpus=args.gpus, gpu_share=args.gpu_share, workers=args.workers,
                       shard_size=args.shard_size, prefix=args.prefix,
                       address=args.address, retry_failed=args.retry_failed, limit=args.limit,
                       clip_annotations=clip_annotations, decode_timeout_s=args.decode_timeout,
                       actor_timeout_s=args.actor_timeout, failure_storm=args.failure_storm)


def absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def annotation_file(value: Path | str | None, option: str) -> Path | None:
    """An annotation file (read by the driver only, here): a path as given, or a URL's cached copy."""
    return None if value is None else local_file(value, option)


def output_folder(out: Path | str, work: Path | None) -> tuple[Path, str | None]:
    """(the folder the disk writer writes, the store URL it is published to or None)."""
    if is_store_url(out):
        return Path(work) if work is not None else default_work_folder(str(out)), str(out)
    if work is not None:
        raise UserError("--work is for an --out URL (s3://, gs://): the local state of a set on object storage")
    return Path(out), None


def check_model_weights(spec: str, option: str, named: tuple[str, ...]) -> None:
    """A named choice or an existing file; `bench-zero` (benchmarks only) also needs its environment key."""
    from howto_prep.features.standin import is_standin, require_bench_only

    if is_standin(spec):
        require_bench_only(option)
        return
    check_weights(spec, option, named)


def read_clip_annotations(args: argparse.Namespace) -> ClipAnnotations | None:
    """The clips of whichever annotation option was given and their protocol, or None for a video-level run."""
    if args.test_list is not None and args.msrvtt is None:
        raise UserError("--test-list only applies with --msrvtt")
    if args.youcook2 is not None:
        source = load_youcook2(annotation_file(args.youcook2, "--youcook2"), args.split or "validation")
    elif args.msrvtt is not None:
        source = load_msrvtt([annotation_file(info, "--msrvtt") for info in args.msrvtt], args.split or "test",
                             annotation_file(args.test_list, "--test-list"))
    elif args.clips is not None:
        if args.split is not None:
            raise UserError("--split only applies with --youcook2 or --msrvtt")
        source = load_clips_csv(annotation_file(args.clips, "--clips"))
    else:
        if args.split is not None:
            raise UserError("--split only applies with --youcook2 or --msrvtt")
        if getattr(args, "protocol", None) is not None:
            raise UserError("--protocol only applies with --youcook2, --msrvtt or --clips")
        return None
    return ClipAnnotations(source, choose_protocol(source, getattr(args, "protocol", None)))
