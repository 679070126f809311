"""Held-out annotations in the benchmarks' own formats: YouCook2 segments and MSR-VTT clips.

YouCook2: one entry per held-out video, one integer-second segment per shown step, the step's
clean sentence. MSR-VTT: each clip is one or two consecutive steps of a held-out video, written as
its own short mp4 (`msrvtt/videoN.mp4`, as the real data set ships one file per clip), with 20
sentences, a split, and a 1k-A-style list of the test clips in the JSFusion csv format.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from howto_prep.synthetic.content import STEPS, TASKS
from howto_prep.synthetic.plans import VideoPlan

MSRVTT_SENTENCES = 20
MSRVTT_SPLIT_CYCLE = ("test", "train", "test", "validate")
_TEMPLATES = (
    "{s}", "a person is going to {s}", "someone shows how to {s}", "a man is about to {s}",
    "a woman explains how to {s}", "how to {s}", "a tutorial where someone will {s}",
    "a video about how to {t}", "someone is working on how to {t}", "people {s}",
)


@dataclass(frozen=True)
class MsrvttClip:
    """One MSR-VTT video: a span of a held-out video."""

    index: int  # N of "videoN"
    source: VideoPlan
    start: float
    end: float
    steps: tuple[int, ...]  # global step indices shown
    split: str

    @property
    def video_id(self) -> str:
        return f"video{self.index}"


def youcook2_database(plans: list[VideoPlan]) -> dict:
    """{"database": {id: {...}}} with alternating training/validation subsets (validation first)."""
    database = {}
    for i, plan in enumerate(plans):
        last_second = int(math.floor(plan.duration))
        annotations = []
        for segment in plan.segments:
            start, end = int(round(segment.start)), min(int(round(segment.end)), last_second)
            if end > start:
                annotations.append({"id": len(annotations), "segment": [start, end],
                                    "sentence": STEPS[segment.step].sentence})
        database[plan.video_id] = {
            "duration": plan.duration,
            "subset": "validation" if i % 2 == 0 else "training",
            "recipe_type": str(TASKS[plan.task].task_id),
            "video_url": f"https://www.youtube.com/watch?v={plan.video_id}",
            "annotations": annotations,
        }
    return {"database": database}


def msrvtt_clips(plans: list[VideoPlan], rng: np.random.Generator, per_video: int = 2) -> list[MsrvttClip]:
    """Up to `per_video` non-overlapping clips per video, each one or two whole steps."""
    clips: list[MsrvttClip] = []
    for plan in plans:
        k = 0
        while k < len(plan.segments) and sum(1 for c in clips if c.source is plan) < per_video:
            width = min(int(rng.integers(1, 3)), len(plan.segments) - k)
            chosen = plan.segments[k:k + width]
            split = MSRVTT_SPLIT_CYCLE[len(clips) % len(MSRVTT_SPLIT_CYCLE)]
            clips.append(MsrvttClip(len(clips), plan, round(chosen[0].start, 2), round(chosen[-1].end, 2),
                                    tuple(segment.step for segment in chosen), split))
            k += width + int(rng.integers(0, 2))
    return clips


def _sentences(clip: MsrvttClip, rng: np.random.Generator) -> list[str]:
    descriptions = [STEPS[step].sentence for step in clip.steps]
    task_name = TASKS[clip.source.task].name.lower()
    sentences = []
    for _ in range(MSRVTT_SENTENCES):
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        if len(descriptions) > 1 and rng.random() < 0.5:
            action = f"{descriptions[0]} and then {descriptions[1]}"
        else:
            action = descriptions[int(rng.integers(len(descriptions)))]
        sentences.append(template.format(s=action, t=task_name))
    return sentences


def msrvtt_info(clips: list[MsrvttClip], rng: np.random.Generator) -> dict:
    """videodatainfo.json: {"info", "videos", "sentences"} with 20 sentences per video."""
    videos = [{
        "category": clip.source.task, "url": f"https://www.youtube.com/watch?v={clip.source.video_id}",
        "video_id": clip.video_id, "start time": clip.start, "end time": clip.end,
        "split": clip.split, "id": clip.index,
    } for clip in clips]
    sentences = []
    for clip in clips:
        for caption in _sentences(clip, rng):
            sentences.append({"caption": caption, "video_id": clip.video_id, "sen_id": len(sentences)})
    info = {"contributor": "howto-mft synthetic corpus", "data_created": "synthetic",
            "version": "1.0", "description": "MSR-VTT-format clips of the held-out synthetic videos"}
    return {"info": info, "videos": videos, "sentences": sentences}


def jsfusion_list(test_clips: list[MsrvttClip], info: dict) -> str:
    """The JSFusion 1k-A list's csv (key,vid_key,video_id,sentence): each video once, with one of its
    sentences (its sixth by sen_id, so that the query is not simply the first sentence)."""
    sentences: dict[str, list[str]] = {}
    for item in sorted(info["sentences"], key=lambda item: item["sen_id"]):
        sentences.setdefault(item["video_id"], []).append(item["caption"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "vid_key", "video_id", "sentence"])
    for number, clip in enumerate(test_clips):
        writer.writerow([f"ret{number}", clip.video_id.replace("video", "msr"), clip.video_id,
                         sentences[clip.video_id][5 % len(sentences[clip.video_id])]])
    return buffer.getvalue()
