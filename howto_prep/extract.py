"""`howto-prep extract`: videos + caption.json -> WebDataset shards of 2D, 3D, audio and text features.

The driver is the only writer: it tokenises captions (the word2vec file is loaded once, here),
receives feature rows from the Ray actors, writes samples through ShardWriter and records failures.
Progress lives on disk (finished shards, failures.jsonl), so a rerun resumes where a killed run was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.extract_inputs import check_weights, find_videos, load_captions, load_csv_columns

DEFAULT_TIMEOUT_S = 900.0  # one chunk (10 s of video) taking longer than this means a hung decode
MAX_CALLS = 50  # decode worker processes are recycled after this many videos
STREAM_BACKPRESSURE = 2  # unconsumed chunks a decode stream may hold


def run_extract(args: argparse.Namespace) -> int:
    """Video-level shard set, or (with --youcook2/--msrvtt/--clips) a clip-level one cut from it."""
    from howto_prep.extract_clips import build_clip_set, clip_annotations

    names = list(args.features)
    clip_source = clip_annotations(args)
    if clip_source is None and args.captions is None:
        raise UserError("--captions caption.json is required (or --youcook2/--msrvtt/--clips for a clip-level set)")
    if schema.RESNET152.name in names:
        check_weights(args.weights_2d, "--weights-2d", ("imagenet", "random"))
    if schema.RESNEXT101.name in names:
        check_weights(args.weights_3d, "--weights-3d", ("random",))
    if args.word2vec is None and (clip_source is not None or schema.TOKENS_FEATURE in names):
        raise UserError("--word2vec FILE.bin is required to tokenise captions (or leave tokens out of --features)")
    if args.word2vec is not None and not Path(args.word2vec).is_file():
        raise UserError(f"--word2vec {args.word2vec} does not exist")
    videos = find_videos(args.videos)
    captions = load_captions(args.captions) if args.captions else {}
    if clip_source is None:
        vocab = load_vocabulary(args.word2vec) if schema.TOKENS_FEATURE in names else None
        extract_videos(args, Path(args.out), videos, captions, vocab)
        return 0
    benchmark, clips = clip_source
    vocab = load_vocabulary(args.word2vec)  # clip captions are always tokenised
    build_clip_set(args, benchmark, clips, videos, captions, vocab,
                   lambda out, wanted, wanted_captions: extract_videos(args, out, wanted, wanted_captions, vocab))
    return 0


def extract_videos(args: argparse.Namespace, out_dir: Path, videos: dict[str, Path], captions: dict[str, dict],
                   vocab) -> None:
    """Decode and embed `videos` into the video-level shard set `out_dir`; resumable, never fatal per video."""
    from tqdm import tqdm

    from howto_prep import shards
    from howto_prep.extract_sample import build_sample

    names = list(args.features)
    visual = [n for n in names if n in (schema.RESNET152.name, schema.RESNEXT101.name)]
    csv_rows = load_csv_columns(getattr(args, "csv", None))
    writer = shards.ShardWriter(out_dir, args.shard_size, getattr(args, "prefix", schema.DEFAULT_PREFIX))
    done = shards.finished_keys(out_dir)
    failed = {} if args.retry_failed else shards.read_failures(out_dir)
    todo = [(vid, path) for vid, path in videos.items() if vid not in done and vid not in failed]
    for vid, path in [item for item in todo if "." in item[0]]:  # WebDataset keys cannot hold dots
        shards.record_failure(out_dir, vid, "bad_id", f"{path.name}: a video id must not contain a dot")
    todo = [item for item in todo if "." not in item[0]]
    if args.limit:
        todo = todo[:args.limit]
    print(f"extract: {len(videos)} videos found, {len(done & videos.keys())} already in shards, "
          f"{len(failed.keys() & videos.keys() - done)} skipped as failed"
          f"{' (use --retry-failed)' if failed else ''}, {len(todo)} to do", file=sys.stderr)
    for name, spec in (("--weights-2d", args.weights_2d), ("--weights-3d", args.weights_3d)):
        if spec == "random" and ((name == "--weights-2d" and schema.RESNET152.name in names)
                                 or (name == "--weights-3d" and schema.RESNEXT101.name in names)):
            print(f"WARNING: {name} random: features come from RANDOM weights (tests only); "
                  "meta.json records it", file=sys.stderr)
    notes = 0
    if todo:
        from howto_prep.extract_pipeline import run_pipeline

        started = time.perf_counter()
        actors, feature_info, decode = start_ray(args, names, visual)
        ready = time.perf_counter()
        written, video_seconds = 0, 0.0
        max_videos = args.workers or max(1, int(_ray_cpus()) - args.gpus)
        timeout_s = float(os.environ.get("HOWTO_PREP_DECODE_TIMEOUT", DEFAULT_TIMEOUT_S))
        outcomes = run_pipeline(todo, decode, actors, max_videos=max_videos,
                                max_chunks=2 * len(actors) + 1, timeout_s=timeout_s)
        with tqdm(total=len(todo), unit="video", desc="extract", file=sys.stderr) as bar, writer:
            for outcome in outcomes:
                bar.update(1)
                if outcome.kind is not None:
                    shards.record_failure(out_dir, outcome.video_id, outcome.kind, outcome.error or "")
                    bar.set_postfix_str(f"last failure: {outcome.video_id} ({outcome.kind})")
                    continue
                try:
                    sample = build_sample(outcome.video_id, outcome.path, outcome.header, outcome.chunks, names,
                                          feature_info, captions.get(outcome.video_id),
                                          csv_rows.get(outcome.video_id), vocab)
                except Exception as err:  # a bad result belongs to its video, not to the run
                    shards.record_failure(out_dir, outcome.video_id, "error", " ".join(str(err).split())[:800])
                    continue
                notes += bool(sample.notes)
                writer.write(sample.key, sample.fields, sample.token_ids, sample.duration)
                written, video_seconds = written + 1, video_seconds + sample.duration
        elapsed = time.perf_counter() - ready
        print(f"extract: {written} videos, {video_seconds:.0f} video-s in {elapsed:.1f} s "
              f"({video_seconds / max(elapsed, 1e-9):.2f} video-s/s) after {ready - started:.1f} s of start-up "
              "(Ray and the model actors)", file=sys.stderr)
    writer.close()
    if vocab is not None:
        from howto_prep.features.tokens import write_vocab

        write_vocab(vocab, shards.used_token_ids(out_dir), out_dir)
    shards.write_index(out_dir)
    if notes:
        print(f"extract: {notes} video(s) not in caption.json were written with empty captions", file=sys.stderr)
    print(shards.summary_table(out_dir))


def load_vocabulary(path: Path):
    """The word2vec vocabulary, loaded once in the driver (never in the workers)."""
    from howto_prep.features.tokens import Word2VecVocabulary

    try:
        return Word2VecVocabulary(Path(path))
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"--word2vec {path} cannot be read as a word2vec .bin file ({type(err).__name__})") from None


def start_ray(args: argparse.Namespace, names: list[str], visual: list[str]):
    """Start (or join) Ray, the model actors and the decode task; return (actors, feature info, decode)."""
    import ray

    from howto_prep.cluster import init_ray
    from howto_prep.extract_pipeline import failure_of
    from howto_prep.extract_worker import LOGMEL_INFO, default_cpu_threads, remote_decode, start_actors

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(args.address, num_cpus=None if args.address else max(2, os.cpu_count() or 1))
    if args.gpus and ray.cluster_resources().get("GPU", 0) < args.gpus:
        raise UserError(f"--gpus {args.gpus}: the Ray cluster has only {int(ray.cluster_resources().get('GPU', 0))} GPU(s)")
    actors = start_actors(visual, args.weights_2d, args.weights_3d, args.gpus, default_cpu_threads()) if visual else []
    try:
        feature_info = ray.get(actors[0].info.remote()) if actors else {}
    except Exception as err:
        _, text = failure_of(err)
        raise UserError(f"the feature models could not be loaded: {text}") from None
    feature_info[schema.LOGMEL.name] = LOGMEL_INFO
    feature_info[schema.TOKENS_FEATURE] = {"model": "word2vec ids, regex [\\w']+", "weights": Path(args.word2vec).name if args.word2vec else None,
                                           "rate": None, "dim": schema.WORD_DIM}
    want_1 = schema.RESNET152.name in names
    want_24 = schema.RESNEXT101.name in names
    want_audio = schema.LOGMEL.name in names
    task = remote_decode(MAX_CALLS, STREAM_BACKPRESSURE)
    return actors, feature_info, lambda path: task.remote(path, want_1, want_24, want_audio)


def _ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 1)
