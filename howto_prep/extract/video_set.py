"""A video-level shard set: choose the work (what is not yet done), run it, finish the set.

Progress lives on disk (finished shards, failures.jsonl), so a rerun resumes where a killed run
stopped; no single video's failure stops the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from howto_prep import schema, shards
from howto_prep.errors import FailureKind
from howto_prep.extract.inputs import load_csv_columns, source_name
from howto_prep.extract.plan import ExtractPlan

if TYPE_CHECKING:
    from howto_prep.extract.run import CaptionSource
    from howto_prep.features.word2vec_table import Word2VecTable

logger = logging.getLogger(__name__)


def extract_video_set(plan: ExtractPlan, videos: dict[str, Path], captions: CaptionSource,
                      vocab: Word2VecTable | None) -> None:
    """Decode and embed `videos` into the video-level shard set `plan.out`.

    `captions`: the caption index, or a small dict of captions (a clip set's videos)."""
    shards.prepare_output(plan.out)  # also clears a killed run's residue
    todo = choose_work(plan, videos)
    warn_random_weights(plan)
    notes = 0
    if todo:
        from howto_prep.extract.run import run_work

        csv_rows = load_csv_columns(plan.csv, {video_id for video_id, _ in todo})
        notes = run_work(plan, todo, captions, csv_rows, vocab)
    finish_set(plan.out, vocab)
    if notes:
        logger.warning("extract: %d video(s) not in caption.json were written with empty captions", notes)


def choose_work(plan: ExtractPlan, videos: dict[str, Path]) -> list[tuple[str, Path]]:
    """(id, file) of the videos neither in a finished shard nor recorded as failed (unless --retry-failed).

    An id that cannot be a WebDataset key (it holds a dot) is recorded as failed here, never tried.
    """
    done = shards.finished_keys(plan.out)
    failed = {} if plan.retry_failed else shards.read_failures(plan.out)
    todo = [(vid, path) for vid, path in videos.items() if vid not in done and vid not in failed]
    for vid, path in [item for item in todo if "." in item[0]]:
        shards.record_failure(plan.out, vid, FailureKind.BAD_ID, f"{source_name(path)}: a video id must not contain a dot")
    todo = [item for item in todo if "." not in item[0]]
    if plan.limit:
        todo = todo[:plan.limit]
    logger.info("extract: %d videos found, %d already in shards, %d skipped as failed%s, %d to do", len(videos),
                len(done & videos.keys()), len(failed.keys() & videos.keys() - done),
                " (use --retry-failed)" if failed else "", len(todo))
    return todo


def warn_random_weights(plan: ExtractPlan) -> None:
    """Say so on stderr when a visual feature comes from random weights (meta.json records it too)."""
    for option, spec, feature in (("--weights-2d", plan.weights_2d, schema.RESNET152.name),
                                  ("--weights-3d", plan.weights_3d, schema.RESNEXT101.name)):
        if spec == "random" and plan.wants(feature):
            logger.warning("WARNING: %s random: features come from RANDOM weights (tests only); meta.json records it",
                           option)


def finish_set(out_dir: Path, vocab: Word2VecTable | None) -> None:
    """Write what describes the whole set: vocab/ (the words its shards use) and index.json."""
    if vocab is not None:
        from howto_prep.features.tokens import write_vocab

        write_vocab(vocab, shards.used_token_ids(out_dir), out_dir)
    shards.write_index(out_dir)  # the agents' writers leave it to the end
