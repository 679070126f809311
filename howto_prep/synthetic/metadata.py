"""The metadata files of the synthetic corpus whose text is ours to compose: the HowTo100M CSV, the
generator's ground truth, and the README (the benchmark annotations are in `benchmarks`)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict

from howto_prep.schema import HOWTO100M_CSV_COLUMNS
from howto_prep.synthetic.benchmarks import MsrvttClip
from howto_prep.synthetic.content import STEPS, TASKS
from howto_prep.synthetic.plans import VideoPlan

README_MARK = "howto-mft synthetic HowTo100M corpus"


def csv_text(plans: list[VideoPlan]) -> str:
    """HowTo100M_v1.csv: one row per pretraining video, with its task's categories."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HOWTO100M_CSV_COLUMNS)
    for plan in plans:
        task = TASKS[plan.task]
        writer.writerow([plan.video_id, task.category_1, task.category_2, plan.rank, task.task_id])
    return buffer.getvalue()


def ground_truth(plans: list[VideoPlan], heldout: list[VideoPlan], clips: list[MsrvttClip]) -> dict:
    """synth_truth.json: every video's format, task and step timeline (for checks, not for models)."""
    def video(plan: VideoPlan) -> dict:
        data = asdict(plan)
        if data["bitrate"] is None:  # the quick encoding: the file looks as it did before encodings existed
            del data["bitrate"]
        data["task_name"] = TASKS[plan.task].name
        data["segments"] = [{**asdict(s), "step_name": STEPS[s.step].name, "words": list(STEPS[s.step].words)}
                            for s in plan.segments]
        return data

    return {
        "videos": [video(plan) for plan in plans],
        "heldout": [video(plan) for plan in heldout],
        "msrvtt": [{"video_id": c.video_id, "source": c.source.video_id, "start": c.start, "end": c.end,
                    "steps": list(c.steps), "split": c.split} for c in clips],
        "steps": [{"index": s.index, "task": s.task, "name": s.name, "words": list(s.words), "shape": s.shape,
                   "colour": s.colour, "motion": s.motion, "sound": s.sound, "frequency": s.frequency}
                  for s in STEPS],
    }


def readme_text(videos: int, heldout: int, clips: int, seed: int, encoding: str = "quick") -> str:
    if encoding == "howto":
        formats = ("H.264 High + B-frames, 400-800 kbit/s, AAC; 360p (some 720p), 25/29.97/30 fps "
                   "(--encoding howto)")
    else:
        formats = "H.264 + AAC (some without audio), 240p-360p, 24/25/29.97/30 fps"
    return f"""{README_MARK} (seed {seed}), written by `howto-prep synth`.

HowTo100M_v1.csv     video_id,category_1,category_2,rank,task_id ({videos} videos)
task_ids.csv         task_id<TAB>task name, no header ({len(TASKS)} tasks)
caption.json         ASR-like captions {{id: {{"start", "end", "text"}}}}, seconds, sorted by start
ids.txt              one video id per line
videos/<id>.mp4      {formats}
word2vec.bin         word2vec, GoogleNews binary format, 300-d; some caption words are out of vocabulary
synth_truth.json     generator ground truth (formats, step timelines); not for training
heldout/videos/      {heldout} held-out videos; heldout/caption.json, heldout/ids.txt
heldout/youcookii_annotations_trainval.json   YouCook2-format segments of the held-out videos
heldout/videodatainfo.json                    MSR-VTT-format clips ({clips}), 20 sentences each
heldout/msrvtt/videoN.mp4                     one file per MSR-VTT clip
heldout/MSRVTT_JSFUSION_test.csv             the 1k-A-style test list (JSFusion csv)

Each task has 4 steps; each step has its own shape+colour+motion, sound (tone, chord, noise band or
pulsed tone at its own frequency) and 3 narration words. See synth_truth.json for the mapping.
"""
