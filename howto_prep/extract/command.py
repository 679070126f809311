"""`howto-prep extract`: the CLI handler; a video-level shard set, or a clip-level one cut from it."""

from __future__ import annotations

import argparse

from howto_prep import schema, shards
from howto_prep.extract.inputs import find_videos, open_captions, open_word2vec
from howto_prep.extract.plan import ExtractPlan, plan_from_args
from howto_prep.output_lock import output_lock


def run_extract(args: argparse.Namespace) -> int:
    """Validate the options once (the plan), load the inputs, then build the set the options ask for."""
    plan = plan_from_args(args)
    if plan.store_url is not None:
        from howto_prep.extract.to_store import extract_to_store

        print(extract_to_store(plan))
        return 0
    with output_lock(plan.out, "howto-prep extract"):
        extract_with_lock(plan)
    print(shards.shard_set_summary(plan.out))
    return 0


def extract_with_lock(plan: ExtractPlan) -> None:
    videos = find_videos(plan.videos_dir)
    captions = open_captions(plan.captions, plan.out) if plan.captions else None
    if plan.clip_annotations is None:
        from howto_prep.extract.video_set import extract_video_set

        vocab = open_word2vec(plan.word2vec, plan.out) if plan.wants(schema.TOKENS_FEATURE) else None
        extract_video_set(plan, videos, captions, vocab)
    else:
        from howto_prep.extract.clip_set import build_clip_set

        build_clip_set(plan, videos, captions, open_word2vec(plan.word2vec, plan.out))  # clip captions: always tokenised
