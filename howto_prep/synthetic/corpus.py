"""The synthetic corpus: a small HowTo100M look-alike in HowTo100M's own formats (`howto-prep synth`).

It is the default data of the demo, the tests and the benchmarks: real H.264 + AAC mp4 files
whose frames, sounds and ASR-like captions go together (see `content`), so retrieval can be
learned, and metadata files shaped exactly like the real ones, so the real loaders are used.

Layout of `--out DIR`:
    HowTo100M_v1.csv      video_id,category_1,category_2,rank,task_id
    task_ids.csv          task_id<TAB>task name, no header
    caption.json          {id: {"start": [...], "end": [...], "text": [...]}}, seconds, sorted by start
    ids.txt               one video id per line
    videos/<id>.mp4       pretraining videos
    word2vec.bin          GoogleNews-format binary word2vec (300-d); a few caption words are left out
    synth_truth.json      ground truth: per video format, task and step timeline (for checks, not models)
    heldout/              separate videos (separate ids, same generator) for fine-tuning and evaluation
      videos/<id>.mp4, caption.json, ids.txt
      youcookii_annotations_trainval.json   YouCook2 format; keys are held-out video ids
      videodatainfo.json                    MSR-VTT format; "videoN" is its own file msrvtt/videoN.mp4,
                                            cut from the held-out video named in its "url" between
                                            "start time" and "end time"
      MSRVTT_JSFUSION_test.csv              the 1k-A-style test list: key,vid_key,video_id,sentence
      msrvtt/videoN.mp4
    README.txt            this list

Same seed, same corpus: metadata files are byte-identical and decoded frames identical (mp4 bytes
may differ in muxer details).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from howto_prep.errors import UserError
from howto_prep.files import atomic_write_text, is_temp_name
from howto_prep.synthetic.benchmarks import jsfusion_list, msrvtt_clips, msrvtt_info, youcook2_database
from howto_prep.synthetic.content import TASKS
from howto_prep.synthetic.metadata import README_MARK, csv_text, ground_truth, readme_text
from howto_prep.synthetic.narration import narrate
from howto_prep.synthetic.plans import ENCODINGS, VideoPlan, make_ids, make_plans
from howto_prep.synthetic.rendering import write_video
from howto_prep.synthetic.word2vec import write_word2vec

DEFAULT_VIDEOS = 24
DEFAULT_HELDOUT = 8
DEFAULT_MAX_SECONDS = 180.0
HELDOUT_MAX_SECONDS = 60.0  # held-out videos stay short so the default corpus generates fast
GENERATOR_VERSION = 1  # bump when the same seed would render different content
SERIAL_BELOW_SECONDS = 60.0  # less video than this is encoded in-process
PARAMETERS_FILE = ".synth_parameters.json"  # written first: marks the folder as a (partial) corpus


@dataclass
class CorpusInfo:
    """Paths of a generated corpus and the ids it holds."""

    root: Path
    csv: Path
    task_ids: Path
    captions: Path
    ids: Path
    videos_dir: Path
    word2vec: Path
    heldout_dir: Path
    youcook2_json: Path
    msrvtt_json: Path
    msrvtt_test_list: Path
    video_ids: list[str]
    heldout_ids: list[str] = field(default_factory=list)
    heldout_videos_dir: Path | None = None
    heldout_captions: Path | None = None
    msrvtt_dir: Path | None = None
    msrvtt_ids: list[str] = field(default_factory=list)
    truth: Path | None = None
    no_audio_ids: list[str] = field(default_factory=list)  # main and held-out videos without audio
    fps: dict[str, float] = field(default_factory=dict)  # frame rate per main and held-out video id
    seconds: float = 0.0  # time it took to generate

def _json(data: object) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _prepare_out(out: Path) -> None:
    """Refuse a file, or a non-empty folder that is not an earlier synthetic corpus."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; give a folder (new, empty, or an earlier synth corpus)")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        ours = (out / PARAMETERS_FILE).is_file() or (
            readme.is_file() and readme.read_text(errors="replace").startswith(README_MARK))
        if not ours:
            raise UserError(f"--out {out} is a non-empty folder that is not a synthetic corpus; give a new or empty folder")
    try:
        for sub in ("videos", "heldout/videos", "heldout/msrvtt"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {err.strerror}") from None


def _render(job: tuple[VideoPlan, str, float, float | None]) -> str:
    plan, path, start, end = job
    write_video(plan, Path(path), start, end)
    return path


def _render_all(jobs: list[tuple[VideoPlan, str, float, float | None]], workers: int) -> None:
    """Encode every video, longest first, in `workers` processes (spawned: safe beside threads)."""
    from tqdm import tqdm

    jobs = sorted(jobs, key=lambda job: -((job[3] or job[0].duration) - job[2]) * job[0].width * job[0].height)
    progress = tqdm(total=len(jobs), desc="synth videos", unit="video", disable=None)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _render(job)
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(_render, jobs):
                progress.update()
    progress.close()


def _clean_stale(out: Path, wanted: set[str]) -> None:
    """Drop mp4s an earlier run (other seed or size) left behind, and temp files of a killed run."""
    for folder in (out / "videos", out / "heldout" / "videos", out / "heldout" / "msrvtt"):
        for path in folder.iterdir():
            if is_temp_name(path.name):
                path.unlink()
            elif path.suffix == ".mp4" and str(path) not in wanted:
                path.unlink()


def _same_parameters(stamp: Path, parameters: dict) -> bool:
    try:
        return json.loads(stamp.read_text()) == parameters
    except (OSError, ValueError):
        return False


def generate_corpus(
    out: Path,
    videos: int = DEFAULT_VIDEOS,
    seed: int = 0,
    heldout_videos: int = DEFAULT_HELDOUT,
    min_seconds: float = 10,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    workers: int | None = None,
    encoding: str = "quick",
) -> CorpusInfo:
    """Write the corpus under `out` and return its paths; deterministic for `seed`.

    `workers`: encoding processes (default: 2 when there is a minute of video or more, else 1).
    `encoding`: "quick" (small, x264 ultrafast: tests and the demo) or "howto" (HowTo100M-like files:
    360p/720p H.264 High with B-frames at 400-800 kbit/s; for decode benchmarks; see synthetic.plans).
    Rerunning with the same arguments keeps the videos already written.
    """
    started = time.perf_counter()
    out = Path(out)
    if videos < 1:
        raise UserError("--videos must be at least 1")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be between 0 and 4294967295 (got {seed})")
    if heldout_videos < 0:
        raise UserError("heldout_videos must be >= 0")
    if encoding not in ENCODINGS:
        raise UserError(f"--encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
    if not 2 <= min_seconds <= max_seconds:
        raise UserError(f"durations must satisfy 2 <= min_seconds <= max_seconds (got {min_seconds}, {max_seconds})")
    _prepare_out(out)
    heldout_dir = out / "heldout"

    rng = np.random.default_rng([seed, 0])
    ids = make_ids(rng, videos + heldout_videos)
    plans = make_plans(np.random.default_rng([seed, 1]), ids[:videos], min_seconds, max_seconds, encoding=encoding)
    heldout_max = min(max_seconds, max(min_seconds, HELDOUT_MAX_SECONDS))
    heldout = make_plans(np.random.default_rng([seed, 3]), ids[videos:], min_seconds, heldout_max, first_index=1,
                         encoding=encoding)
    clips = msrvtt_clips(heldout, np.random.default_rng([seed, 4]))

    jobs = [(plan, str(out / "videos" / f"{plan.video_id}.mp4"), 0.0, None) for plan in plans]
    jobs += [(plan, str(heldout_dir / "videos" / f"{plan.video_id}.mp4"), 0.0, None) for plan in heldout]
    jobs += [(c.source, str(heldout_dir / "msrvtt" / f"{c.video_id}.mp4"), c.start, c.end) for c in clips]
    # A rerun with the same parameters keeps the videos already written (each one was renamed into
    # place only when complete); any other earlier corpus is replaced.
    parameters = {"generator": GENERATOR_VERSION, "seed": seed, "videos": videos, "heldout_videos": heldout_videos,
                  "min_seconds": float(min_seconds), "max_seconds": float(max_seconds)}
    if encoding != "quick":  # absent for the quick encoding, so corpora written before the option stay valid
        parameters["encoding"] = encoding
    stamp = out / PARAMETERS_FILE
    _clean_stale(out, {job[1] for job in jobs} if _same_parameters(stamp, parameters) else set())
    atomic_write_text(stamp, _json(parameters))
    todo = [job for job in jobs if not Path(job[1]).exists()]
    if workers is None:  # spawning workers costs seconds: only worth it for more than a little video
        seconds = sum((end or plan.duration) - start for plan, _, start, end in todo)
        workers = 1 if seconds < SERIAL_BELOW_SECONDS else min(2, os.cpu_count() or 1)
    _render_all(todo, workers)

    caption_rng = np.random.default_rng([seed, 5])
    captions = {plan.video_id: narrate(plan, caption_rng) for plan in plans}
    heldout_captions = {plan.video_id: narrate(plan, caption_rng) for plan in heldout}
    info = _paths(out, [plan.video_id for plan in plans], [plan.video_id for plan in heldout],
                  [clip.video_id for clip in clips])
    write_word2vec(info.word2vec, seed)
    atomic_write_text(info.csv, csv_text(plans))
    atomic_write_text(info.task_ids, "".join(f"{task.task_id}\t{task.name}\n" for task in TASKS))
    atomic_write_text(info.captions, _json(captions))
    atomic_write_text(info.ids, "".join(f"{video_id}\n" for video_id in info.video_ids))
    atomic_write_text(info.heldout_captions, _json(heldout_captions))
    atomic_write_text(heldout_dir / "ids.txt", "".join(f"{video_id}\n" for video_id in info.heldout_ids))
    atomic_write_text(info.youcook2_json, _json(youcook2_database(heldout)))
    msrvtt = msrvtt_info(clips, np.random.default_rng([seed, 6]))
    atomic_write_text(info.msrvtt_json, _json(msrvtt))
    atomic_write_text(info.msrvtt_test_list, jsfusion_list([c for c in clips if c.split == "test"], msrvtt))
    atomic_write_text(info.truth, _json(ground_truth(plans, heldout, clips)))
    atomic_write_text(out / "README.txt", readme_text(videos, heldout_videos, len(clips), seed, encoding))
    info = load_corpus(out)
    info.seconds = time.perf_counter() - started
    return info


def _paths(root: Path, video_ids: list[str], heldout_ids: list[str], msrvtt_ids: list[str]) -> CorpusInfo:
    heldout_dir = root / "heldout"
    return CorpusInfo(
        root=root, csv=root / "HowTo100M_v1.csv", task_ids=root / "task_ids.csv", captions=root / "caption.json",
        ids=root / "ids.txt", videos_dir=root / "videos", word2vec=root / "word2vec.bin", heldout_dir=heldout_dir,
        youcook2_json=heldout_dir / "youcookii_annotations_trainval.json",
        msrvtt_json=heldout_dir / "videodatainfo.json", msrvtt_test_list=heldout_dir / "MSRVTT_JSFUSION_test.csv",
        video_ids=video_ids, heldout_ids=heldout_ids, heldout_videos_dir=heldout_dir / "videos",
        heldout_captions=heldout_dir / "caption.json", msrvtt_dir=heldout_dir / "msrvtt", msrvtt_ids=msrvtt_ids,
        truth=root / "synth_truth.json",
    )


def load_corpus(root: Path) -> CorpusInfo:
    """The `CorpusInfo` of a corpus written earlier (e.g. by the CLI), read from its synth_truth.json."""
    root = Path(root)
    try:
        truth = json.loads((root / "synth_truth.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{root} is not a complete synthetic corpus (no readable synth_truth.json)") from None
    videos = truth["videos"] + truth["heldout"]
    info = _paths(root, [v["video_id"] for v in truth["videos"]], [v["video_id"] for v in truth["heldout"]],
                  [clip["video_id"] for clip in truth["msrvtt"]])
    info.no_audio_ids = [v["video_id"] for v in videos if v["sample_rate"] is None]
    info.fps = {v["video_id"]: v["fps"] for v in videos}
    return info


