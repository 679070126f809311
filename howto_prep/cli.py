"""`howto-prep`: argparse subcommands only; each handler lives in its own module."""

from __future__ import annotations

import argparse
from typing import Sequence

from howto_prep import schema
from howto_prep.cli_support import input_file, local_path, location, main_for, secret_file
from howto_prep.extract.failure_storm import DEFAULT_THRESHOLD as FAILURE_STORM
from howto_prep.extract.plan import DEFAULT_ACTOR_TIMEOUT_S, DEFAULT_DECODE_TIMEOUT_S


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64KiB' or a plain byte count -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = text.strip().upper()
    number = value.rstrip("KMGTIB")
    unit = value[len(number):]
    try:
        if unit not in units:
            raise ValueError
        size = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1GB, 500MB)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def parse_features(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in schema.ALL_FEATURE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown feature(s) {','.join(unknown) or text!r}; choose from {','.join(schema.ALL_FEATURE_NAMES)}"
        )
    return names


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """A count that must be at least 1: 0 videos, a limit of 0 or a storm of 0 failures is a mistake."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A number where 0 is a choice (no held-out set, a free port, no Ray, one CPU actor, automatic)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def gpu_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {text!r}")
    return value


URL_INPUT_HELP = "a path, or an s3:// / gs:// URL (copied once into $HOWTO_MFT_CACHE, reused while unchanged)"
SECRET_HELP = ("file with one line username:password; a local file only (a secret: never fetched from a bucket, "
               "where reading it would need store credentials and leave a copy in the cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="howto-prep", description="HowTo100M data preparation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    synth = sub.add_parser("synth", help="write a small synthetic corpus in HowTo100M's formats")
    synth.add_argument("--out", type=location, required=True,
                       help="a folder, or s3://bucket/prefix (gs://): written in --work, then uploaded")
    synth.add_argument("--work", type=local_path, default=None,
                       help="with an --out URL: the local folder the corpus is written in before the upload; "
                            "default .howto-prep/work/<scheme>/<bucket>/<prefix>")
    synth.add_argument("--videos", type=positive_int, default=24, help="number of pretraining videos")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--heldout", type=non_negative_int, default=None,
                       help="held-out videos for YouCook2/MSR-VTT-style evaluation (default: videos // 3, at most 8)")
    synth.add_argument("--max-seconds", type=float, default=180.0, help="longest video (shortest: 10 s)")
    synth.add_argument("--encoding", choices=["quick", "howto"], default="quick",
                       help="quick: small ultrafast files for tests and the demo (default); howto: like HowTo100M's "
                            "YouTube files (360p/720p, H.264 High with B-frames at 400-800 kbit/s, x264 medium, AAC), "
                            "for decode benchmarks; slower to write")
    synth.set_defaults(handler="howto_prep.synthetic.command:run_synth")

    mirror = sub.add_parser("mirror", help="serve a video folder like the authors' mirror on 127.0.0.1")
    mirror.add_argument("--root", type=local_path, required=True, help="folder of <id>.<ext> files (searched recursively)")
    mirror.add_argument("--port", type=non_negative_int, default=0, help="0 picks a free port")
    mirror.add_argument("--credentials", type=secret_file, help=SECRET_HELP)
    mirror.add_argument("--fault", action="append", default=[], metavar="ID=KIND",
                        help="inject a fault for one id: not_found, auth, transient, truncated, stall")
    mirror.set_defaults(handler="howto_prep.synthetic.command:run_mirror")

    download = sub.add_parser("download", help="fetch videos from the mirror or YouTube, resumably")
    source = download.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=input_file, help="HowTo100M_v1.csv (a path, or s3:// / gs:// URL)")
    source.add_argument("--ids", type=input_file,
                        help="file with one video id (or URL) per line (a path, or s3:// / gs:// URL)")
    download.add_argument("--out", type=location, required=True, help="a folder, or s3://bucket/prefix (gs://)")
    download.add_argument("--work", type=local_path, default=None,
                          help="with an --out URL: the local folder of the run's state (manifest, files being "
                               "uploaded); default .howto-prep/work/<scheme>/<bucket>/<prefix>")
    download.add_argument("--source", choices=["mirror", "youtube", "auto"], default="auto")
    download.add_argument("--mirror-url", help="base URL of the authors' mirror")
    download.add_argument("--credentials", type=secret_file, help=SECRET_HELP)
    download.add_argument("--cookies", type=secret_file,
                          help="cookies.txt passed to yt-dlp; a local file only (a secret: never fetched from "
                               "a bucket)")
    download.add_argument("--workers", type=non_negative_int, default=4)
    download.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    download.add_argument("--retry-failed", action="store_true")
    download.add_argument("--limit", type=positive_int)
    download.set_defaults(handler="howto_prep.download.command:run_download")

    extract = sub.add_parser("extract", help="decode once and write 2D/3D/audio/text features to shards")
    extract.add_argument("--videos", type=location, required=True,
                         help="a folder (a download's --out), or s3://bucket/prefix of one")
    extract.add_argument("--captions", type=input_file,
                         help="caption.json (video-level sets; optional with clip annotations); " + URL_INPUT_HELP)
    extract.add_argument("--word2vec", type=input_file,
                         help="word2vec .bin (GoogleNews format); needed for the tokens feature and clip-level sets; "
                              + URL_INPUT_HELP)
    extract.add_argument("--out", type=location, required=True, help="a folder, or s3://bucket/prefix (gs://)")
    extract.add_argument("--work", type=local_path, default=None,
                         help="with an --out URL: the local folder of the run's state (indexes, shards being "
                              "uploaded); default .howto-prep/work/<scheme>/<bucket>/<prefix>; shared by all nodes")
    extract.add_argument("--csv", type=input_file,
                         help="HowTo100M_v1.csv for the category columns in meta.json; " + URL_INPUT_HELP)
    extract.add_argument("--gpus", type=non_negative_int, default=0, help="model actors, each on a GPU (0: one CPU actor)")
    extract.add_argument("--gpu-share", type=gpu_share, default=1.0,
                         help="the share of a GPU each actor reserves (default 1); e.g. --gpus 3 --gpu-share 0.33 "
                              "puts three actors on one device")
    extract.add_argument("--workers", type=non_negative_int, default=0, help="CPU decode tasks in flight (0: auto)")
    extract.add_argument("--features", type=parse_features, default=list(schema.ALL_FEATURE_NAMES))
    extract.add_argument("--weights-2d", default="imagenet", help="imagenet | PATH | random")
    extract.add_argument("--weights-3d", default="random", help="PATH to resnext101.pth | random")
    extract.add_argument("--shard-size", type=parse_size, default=schema.DEFAULT_SHARD_BYTES)
    extract.add_argument("--prefix", default=schema.DEFAULT_PREFIX)
    extract.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    extract.add_argument("--retry-failed", action="store_true")
    extract.add_argument("--limit", type=positive_int)
    extract.add_argument("--decode-timeout", type=float, default=DEFAULT_DECODE_TIMEOUT_S, metavar="SECONDS",
                         help="a video whose decoding produces nothing for this long is killed and recorded as "
                              "decode_timeout (default %(default)g)")
    extract.add_argument("--actor-timeout", type=float, default=DEFAULT_ACTOR_TIMEOUT_S, metavar="SECONDS",
                         help="a model actor that answers nothing for this long while it has work is killed and "
                              "restarted; one that keeps hanging stops the run as a system fault (default %(default)g)")
    extract.add_argument("--failure-storm", type=positive_int, default=FAILURE_STORM, metavar="N",
                         help="N videos in a row failing with the same error stop the run as a system fault, "
                              "none of them recorded (default %(default)s)")
    clips = extract.add_argument_group("clip-level sets (evaluation / fine-tuning): one sample per annotated clip; "
                                       "each annotation file a path or an s3:// / gs:// URL")
    annotation = clips.add_mutually_exclusive_group()
    annotation.add_argument("--youcook2", type=input_file, help="youcookii_annotations_trainval.json")
    annotation.add_argument("--msrvtt", type=input_file, nargs="+", metavar="INFO_JSON",
                            help="MSR-VTT videodatainfo.json file(s), e.g. train_val_videodatainfo.json test_videodatainfo.json")
    annotation.add_argument("--clips", type=input_file,
                            help="a clips csv: video_id,start,end and text or caption (e.g. validation_youcook.csv)")
    clips.add_argument("--split", help="YouCook2: training|validation (default validation); "
                                       "MSR-VTT: train|validate (or val)|test (default test)")
    clips.add_argument("--test-list", type=input_file,
                       help="MSR-VTT: the rows to keep: bare ids, a video_id csv (7k/9k lists) or the JSFusion "
                            "1k-A csv (its sentence is the query)")
    clips.add_argument("--protocol", help="assert the evaluation protocol these inputs define: "
                                          "msrvtt-1ka | msrvtt-full | youcook2-val | youcook2-val-all | custom "
                                          "(default: inferred; docs/recipes.md)")
    extract.set_defaults(handler="howto_prep.extract.command:run_extract")

    verify = sub.add_parser("verify", help="check every shard's size, sha256 and members against its JSON")
    verify.add_argument("shards", type=location, help="a shard set folder or s3://bucket/prefix URL")
    verify.set_defaults(handler="howto_prep.verify:run_verify")

    doctor = sub.add_parser("doctor", help="check that every native library of the stack works (names the broken one)")
    doctor.add_argument("--skip-ray", action="store_true", help="leave out the Ray start (about 5 s)")
    doctor.set_defaults(handler="howto_prep.doctor:run_doctor")

    status = sub.add_parser("status", help="counts by status and failure kind for videos/ or shards/")
    status.add_argument("path", type=location)
    status.set_defaults(handler="howto_prep.status:run_status")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("howto-prep", build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
