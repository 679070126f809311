"""`howto-prep extract --youcook2/--msrvtt/--clips`: clip-level shard sets for evaluation and fine-tuning.

The annotated videos are first extracted as a normal video-level set in `OUT/video-level/`
(resumable like any extraction), then every clip is cut from those features into `OUT/`. A video
that is missing or fails is reported; its clips still count in `clips.json`'s `num_expected`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from howto_prep import shards
from howto_prep.clip_shards import build_clip_shards
from howto_prep.clipsets import ClipRecord, load_clips_csv, load_msrvtt, load_youcook2
from howto_prep.errors import UserError
from howto_prep.extract_sample import EMPTY_CAPTIONS

VIDEO_LEVEL_DIR = "video-level"


def clip_annotations(args: argparse.Namespace) -> tuple[str, list[ClipRecord]] | None:
    """(benchmark, clips) from whichever annotation option was given, or None for a video-level run."""
    split = getattr(args, "split", None)
    if getattr(args, "test_list", None) is not None and getattr(args, "msrvtt", None) is None:
        raise UserError("--test-list only applies with --msrvtt")
    if getattr(args, "youcook2", None) is not None:
        return "youcook2", load_youcook2(args.youcook2, split or "validation")
    if getattr(args, "msrvtt", None) is not None:
        return "msrvtt", load_msrvtt(args.msrvtt, split or "test", args.test_list)
    if getattr(args, "clips", None) is not None:
        return "clips", load_clips_csv(args.clips)
    if split is not None:
        raise UserError("--split only applies with --youcook2 or --msrvtt")
    return None


def build_clip_set(args: argparse.Namespace, benchmark: str, clips: list[ClipRecord], videos: dict[str, Path],
                   captions: dict[str, dict], vocab,
                   extract_videos: Callable[[Path, dict[str, Path], dict[str, dict]], None]) -> dict:
    """Extract the annotated videos once, then cut their clips into the clip-level set `args.out`."""
    if not clips:
        raise UserError(f"the {benchmark} annotations list no clips for this split")
    wanted_ids = list(dict.fromkeys(clip.video_id for clip in clips))
    missing = [video_id for video_id in wanted_ids if video_id not in videos]
    if len(missing) == len(wanted_ids):
        raise UserError(f"none of the {len(wanted_ids)} annotated videos is in {args.videos} (e.g. {missing[0]})")
    out_dir = Path(args.out)
    video_level = out_dir / VIDEO_LEVEL_DIR
    wanted = {video_id: videos[video_id] for video_id in wanted_ids if video_id in videos}
    extract_videos(video_level, wanted, {video_id: captions.get(video_id, EMPTY_CAPTIONS) for video_id in wanted})
    result = build_clip_shards(video_level, clips, benchmark, vocab, out_dir, args.shard_size, args.prefix)
    print(f"clip set {out_dir}: {benchmark}, {result['present']} of {result['expected']} clips "
          f"({result['written']} new); {len(missing)} annotated video(s) not found in {args.videos}",
          file=sys.stderr)
    print(shards.summary_table(out_dir))
    return result
