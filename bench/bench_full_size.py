"""Benchmark: the driver's memory and start-up at HowTo100M's real size (and fractions of it).

HowTo100M is 1.22 M videos (HowTo100M_v1.csv), 136 M caption lines (caption.json, several GB) and a
3 M x 300 GoogleNews word2vec .bin (3.6 GB). For each `--fractions` f this writes metadata of that
size times f into --work (cached between runs, rewritten when a file is missing), with a few real
synthetic videos (`howto-prep synth`) among the ids so that extract has something to extract, then
runs each command in a fresh child process of the checkout `--repo` (cwd and PYTHONPATH; the
interpreter stays this one):

- `howto-prep download --csv CSV --out DIR --source mirror` against the package's loopback mirror
  (which holds only the synthetic videos: most ids fail with not_found, quickly), up to its first
  finished task: the first manifest row that is done or failed (manifest.sqlite read read-only);
- `howto-prep extract --videos synth/videos --captions C --csv CSV --word2vec W --shard-size 64KB
  --features logmel,tokens`, up to its first finished shard (the first `<prefix>-NNNNNN.json`).

Then the child's process group is killed, and so is every process whose command line names the
child's private RAY_TMPDIR (its Ray daemons and workers; no other Ray is touched, and `ray stop` is
never run). Driver peak RSS = VmHWM of the CLI process itself (Ray workers are other processes),
read from /proc until that moment; a driver whose RSS passes --rss-cap-gb is killed and reported as
"> cap (killed)". Targets: driver peak RSS <= 3 GB at full size, growing < 2x from 10 % to 100 %,
and extract's first shard within 5 minutes.

    python bench/bench_full_size.py --fractions 0.01 0.1 1.0 --work /tmp/fullsize \
        [--repo /tmp/before] [--commands download extract] [--rss-cap-gb 10] [--json out.json]

(`--repo`: e.g. the committed code, `git archive HEAD | tar -x -C /tmp/before`.) Disk: the 100 %
metadata is ~7 GB of caption.json + 3.6 GB of word2vec.bin; outputs are deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proc_tree import status_kib  # noqa: E402 (bench/, next to this script)

FULL_VIDEOS = 1_220_000
FULL_CAPTION_LINES = 136_000_000
FULL_WORDS = 3_000_000
FULL_TASKS = 23_611
DIM = 300
TARGET_RSS_GB = 3.0
TARGET_GROWTH = 2.0
TARGET_FIRST_SHARD_S = 300.0
SHARD_JSON = re.compile(r"^.+-\d{6}\.json$")
ID_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
CONSONANTS = np.frombuffer(b"bdfgklmnprstvz", np.uint8)
VOWELS = np.frombuffer(b"aeiou", np.uint8)
SYLLABLES = len(CONSONANTS) * len(VOWELS)  # 70 two-letter syllables: words are 1-4 of them
OOV_SHARE = 0.04  # caption words that word2vec does not know
MAX_CENTISECONDS = 3 * 3600 * 100  # caption times are clipped to 3 h
CATEGORIES = {
    "Food and Entertaining": ("Recipes", "Drinks", "Entertaining", "Barbecue", "Baking"),
    "Home and Garden": ("Gardening", "Home Maintenance", "Housekeeping", "Home Decorating", "Plumbing"),
    "Hobbies and Crafts": ("Crafts", "Woodworking", "Needlework", "Model Making", "Paper Craft"),
    "Cars & Other Vehicles": ("Cars", "Motorcycles", "Bicycles", "Boats", "Trucks"),
    "Pets and Animals": ("Dogs", "Cats", "Fish", "Birds", "Horses"),
    "Personal Care and Style": ("Hair Care", "Makeup", "Fashion", "Nail Care", "Skin Care"),
    "Sports and Fitness": ("Exercise", "Yoga", "Running", "Cycling", "Team Sports"),
    "Health": ("Medication", "Injury", "Nutrition", "Emotional Health", "Dental Care"),
    "Education and Communications": ("Writing", "Mathematics", "Languages", "Presentations", "Studying"),
    "Arts and Entertainment": ("Drawing", "Painting", "Music", "Photography", "Games"),
    "Computers and Electronics": ("Computers", "Phones", "Software", "Hardware", "Networking"),
    "Holidays and Traditions": ("Christmas", "Halloween", "Easter", "Birthdays", "Weddings"),
}


def scaled(full: int, fraction: float) -> int:
    return max(1, int(round(full * fraction)))


def fraction_name(fraction: float) -> str:
    return f"f{fraction:g}"


# --- the synthetic videos (real files, so that download and extract have real work) ------------------

@dataclass
class Synth:
    videos: Path
    csv_rows: list[str]  # data lines of its HowTo100M_v1.csv
    captions: dict[str, dict]
    words: list[bytes]
    vectors: np.ndarray


def make_synth(work: Path, videos: int) -> Synth:
    folder = work / "synth"
    if not (folder / "word2vec.bin").is_file() or len(list((folder / "videos").glob("*.mp4"))) < videos:
        subprocess.run([sys.executable, "-m", "howto_prep.cli", "synth", "--out", str(folder), "--videos", str(videos),
                        "--heldout", "0", "--max-seconds", "20"], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = (folder / "HowTo100M_v1.csv").read_text().splitlines()[1:]
    captions = json.loads((folder / "caption.json").read_text())
    words, vectors = read_word2vec(folder / "word2vec.bin")
    return Synth(folder / "videos", rows, captions, words, vectors)


def read_word2vec(path: Path) -> tuple[list[bytes], np.ndarray]:
    """A small GoogleNews-format .bin (with or without a newline after each vector)."""
    data = path.read_bytes()
    end = data.index(b"\n")
    count, dim = map(int, data[:end].split())
    words, vectors, at = [], np.empty((count, dim), np.float32), end + 1
    for row in range(count):
        while data[at] == 10:
            at += 1
        space = data.index(b" ", at)
        words.append(data[at:space])
        vectors[row] = np.frombuffer(data, np.float32, dim, space + 1)
        at = space + 1 + 4 * dim
    return words, vectors


# --- metadata at a fraction of HowTo100M's size ---------------------------------------------------

def padded(words: list[bytes], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """bytes -> (n, width) uint8 matrix, left-aligned, and the lengths."""
    lengths = np.fromiter(map(len, words), np.int64, len(words))
    width = width or int(lengths.max(initial=1))
    matrix = np.zeros((len(words), width), np.uint8)
    matrix[np.arange(width)[None, :] < lengths[:, None]] = np.frombuffer(b"".join(words), np.uint8)
    return matrix, lengths


def syllable_words(count: int, reserved: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct made-up words, shortest first (so log-uniform draws favour short ones, as in
    English): 1-4 consonant-vowel syllables; every 7th capitalised, every 5th 4-syllable one a phrase
    with '_' (GoogleNews has both); none equal to a `reserved` word."""
    width = 9
    blocks, lengths, made = [], [], 0
    for syllables in range(1, 5):
        size = min(SYLLABLES ** syllables, count + len(reserved) - made)
        if size <= 0:
            break
        index = np.arange(size, dtype=np.int64)
        letters = np.zeros((size, width), np.uint8)
        for digit in range(syllables):
            syllable = (index // SYLLABLES ** digit) % SYLLABLES
            letters[:, 2 * digit] = CONSONANTS[syllable // len(VOWELS)]
            letters[:, 2 * digit + 1] = VOWELS[syllable % len(VOWELS)]
        length = np.full(size, 2 * syllables, np.int64)
        if syllables == 4:
            phrase = (index % 5) == 1
            letters[phrase, 5:9] = letters[phrase, 4:8]
            letters[phrase, 4] = ord("_")
            length[phrase] = 9
        capital = ((index + made) % 7) == 3
        letters[capital, 0] -= 32
        blocks.append(letters)
        lengths.append(length)
        made += size
    matrix, length = np.concatenate(blocks), np.concatenate(lengths)
    if reserved:
        taken = np.isin(matrix.view(f"S{width}").ravel(), np.array(reserved, dtype=f"S{width}"))
        matrix, length = matrix[~taken], length[~taken]
    return matrix[:count], length[:count]


def write_csv(path: Path, count: int, synth: Synth, rng: np.random.Generator) -> np.ndarray:
    """HowTo100M_v1.csv with `count` rows (the synthetic ones spread evenly among them); returns the
    generated ids as an (n, 11) uint8 matrix, in file order, synthetic ones left out."""
    generated = count - len(synth.csv_rows)
    raw = ID_ALPHABET[rng.integers(0, 64, (int(generated * 1.001) + 64, 11))]
    keys = raw.view("S11").ravel()
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    first = first[~np.isin(keys[first], np.array([r.split(",")[0].encode() for r in synth.csv_rows], "S11"))]
    ids = raw[first[:generated]]
    tasks = scaled(FULL_TASKS, count / FULL_VIDEOS)
    task_ids = rng.choice(np.arange(1, 150_000), tasks, replace=False)
    names = list(CATEGORIES)
    task_category = rng.integers(0, len(names), tasks)
    task_sub = rng.integers(0, 5, tasks)
    video_task = rng.integers(0, tasks, generated)
    order = np.argsort(video_task, kind="stable")
    starts = np.searchsorted(video_task[order], np.arange(tasks))
    rank = np.empty(generated, np.int64)
    rank[order] = np.arange(generated) - starts[video_task[order]] + 1
    labels = [f"{name},{CATEGORIES[name][sub]}" for name, sub in zip(
        (names[c] for c in task_category), task_sub)]
    every = max(1, generated // max(1, len(synth.csv_rows)))
    synth_at = {index * every: row for index, row in enumerate(synth.csv_rows)}
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("video_id,category_1,category_2,rank,task_id\n")
        text_ids = ids.view("S11").ravel()
        for begin in range(0, generated, 200_000):
            lines = []
            for row in range(begin, min(begin + 200_000, generated)):
                if row in synth_at:
                    lines.append(synth_at[row])
                task = video_task[row]
                lines.append(f"{text_ids[row].decode()},{labels[task]},{rank[row]},{task_ids[task]}")
            handle.write("\n".join(lines) + "\n")
        for index in sorted(synth_at):
            if index >= generated:
                handle.write(synth_at[index] + "\n")
    return ids


class CaptionPool:
    """Every byte string a caption.json is made of, one per row of a (rows, 32) matrix: the fixed
    tokens, every time (with and without the ', ' that follows it), every word in three forms
    (followed by a space, by '", "' or by '"') and each video's opening `, "<id>": {"start": [`."""

    WIDTH = 32

    def __init__(self, words: np.ndarray, word_lengths: np.ndarray, ids: np.ndarray) -> None:
        fixed = [b'], "end": [', b'], "text": ["', b']}']
        self.END, self.TEXT, self.CLOSE = 0, 1, 2
        times = [f"{c // 100}.{c % 100:02d}".encode() for c in range(MAX_CENTISECONDS)]
        self.TIME_SEP = len(fixed)
        self.TIME_LAST = self.TIME_SEP + MAX_CENTISECONDS
        self.WORD = self.TIME_LAST + MAX_CENTISECONDS
        self.words = len(words)
        self.ID = self.WORD + 3 * self.words
        rows = self.ID + len(ids)
        self.matrix = np.zeros((rows, self.WIDTH), np.uint8)
        self.lengths = np.zeros(rows, np.int64)
        for row, token in enumerate(fixed):
            self._put(row, token)
        time_matrix, time_lengths = padded(times, 8)
        for offset, suffix in ((self.TIME_SEP, b", "), (self.TIME_LAST, b"")):
            self._put_block(offset, time_matrix, time_lengths, suffix)
        for variant, suffix in enumerate((b" ", b'", "', b'"')):
            self._put_block(self.WORD + variant * self.words, words, word_lengths, suffix)
        id_rows = slice(self.ID, self.ID + len(ids))
        self.matrix[id_rows, :3] = np.frombuffer(b', "', np.uint8)
        self.matrix[id_rows, 3:14] = ids
        self.matrix[id_rows, 14:28] = np.frombuffer(b'": {"start": [', np.uint8)
        self.lengths[id_rows] = 28

    def _put(self, row: int, token: bytes) -> None:
        self.matrix[row, :len(token)] = np.frombuffer(token, np.uint8)
        self.lengths[row] = len(token)

    def _put_block(self, offset: int, matrix: np.ndarray, lengths: np.ndarray, suffix: bytes) -> None:
        rows = slice(offset, offset + len(matrix))
        self.matrix[rows, :matrix.shape[1]] = matrix
        columns = lengths[:, None] + np.arange(len(suffix))[None, :]
        if suffix:
            np.put_along_axis(self.matrix[rows], columns, np.frombuffer(suffix, np.uint8)[None, :], axis=1)
        self.lengths[rows] = lengths + len(suffix)

    def render(self, pieces: np.ndarray) -> np.ndarray:
        """The bytes of a sequence of pool rows, concatenated (one gather of the flat matrix)."""
        kind = np.int32 if self.matrix.size < 2**31 else np.int64
        lengths = self.lengths[pieces].astype(kind)
        ends = np.cumsum(lengths)
        index = np.repeat(pieces.astype(kind) * kind(self.WIDTH) - (ends - lengths), lengths)
        index += np.arange(int(ends[-1]), dtype=kind)
        return self.matrix.ravel()[index]


def caption_chunk(pool: CaptionPool, rng: np.random.Generator, videos: np.ndarray, counts: np.ndarray,
                  vocabulary: int, oov: int) -> np.ndarray:
    """The caption.json entries of `videos` (indices of the pool's ids) with `counts` lines each."""
    nv, lines = len(counts), int(counts.sum())
    words = rng.integers(3, 9, lines)
    line_video = np.repeat(np.arange(nv), counts)
    first_line = np.cumsum(counts) - counts
    j = np.arange(lines) - first_line[line_video]
    last_line = j == counts[line_video] - 1
    video_words = np.bincount(line_video, weights=words, minlength=nv).astype(np.int64)
    per_video = 4 + 2 * counts + video_words
    base = np.cumsum(per_video) - per_video
    pieces = np.empty(int(per_video.sum()), np.int64)
    pieces[base] = pool.ID + videos
    step = rng.integers(100, 700, lines)
    step[first_line] = rng.integers(0, 300, nv)
    total = np.cumsum(step)
    start = total - (total[first_line] - step[first_line])[line_video]
    end = np.minimum(start + rng.integers(150, 800, lines), MAX_CENTISECONDS - 1)
    start = np.minimum(start, MAX_CENTISECONDS - 1)
    pieces[base[line_video] + 1 + j] = np.where(last_line, pool.TIME_LAST, pool.TIME_SEP) + start
    pieces[base + 1 + counts] = pool.END
    pieces[base[line_video] + 2 + counts[line_video] + j] = np.where(last_line, pool.TIME_LAST, pool.TIME_SEP) + end
    pieces[base + 2 + 2 * counts] = pool.TEXT
    count = int(words.sum())
    word_line = np.repeat(np.arange(lines), words)
    line_first_word = np.cumsum(words) - words
    last_word = np.arange(count) == (line_first_word + words - 1)[word_line]
    word_video = line_video[word_line]
    in_video = np.arange(count) - line_first_word[first_line][word_video]
    # log-uniform over the vocabulary (short, frequent words first), plus some unknown words
    choice = np.minimum(np.floor((vocabulary + 1.0) ** rng.random(count)).astype(np.int64) - 1, vocabulary - 1)
    unknown = rng.random(count) < OOV_SHARE
    choice[unknown] = vocabulary + rng.integers(0, oov, int(unknown.sum()))
    variant = np.where(~last_word, 0, np.where(last_line[word_line], 2, 1))
    pieces[base[word_video] + 3 + 2 * counts[word_video] + in_video] = pool.WORD + variant * pool.words + choice
    pieces[base + 3 + 2 * counts + video_words] = pool.CLOSE
    return pool.render(pieces)


def write_captions(path: Path, ids: np.ndarray, lines: int, synth: Synth, words: np.ndarray,
                   word_lengths: np.ndarray, oov: list[bytes], rng: np.random.Generator) -> int:
    """caption.json: the synthetic videos' real captions first, then `lines` lines in all over every
    id (gamma-distributed per video, at least one each), streamed chunk by chunk. Returns its lines."""
    oov_matrix, oov_lengths = padded(oov, words.shape[1])
    all_words = np.concatenate([words, oov_matrix])
    all_lengths = np.concatenate([word_lengths, oov_lengths])
    pool = CaptionPool(all_words, all_lengths, ids)
    synth_lines = sum(len(entry["text"]) for entry in synth.captions.values())
    left = max(len(ids), lines - synth_lines)
    weights = rng.gamma(1.0, 1.0, len(ids))
    counts = 1 + np.floor(weights / weights.sum() * (left - len(ids))).astype(np.int64)
    counts[: left - int(counts.sum())] += 1
    with open(path, "wb") as handle:
        handle.write(b"{" + b", ".join(json.dumps({video_id: entry})[1:-1].encode()
                                       for video_id, entry in synth.captions.items()))
        ends = np.cumsum(counts)
        begin = 0
        while begin < len(ids):
            done_lines = int(ends[begin - 1]) if begin else 0
            stop = min(max(int(np.searchsorted(ends, done_lines + 400_000)) + 1, begin + 1), len(ids))
            chunk = caption_chunk(pool, rng, np.arange(begin, stop), counts[begin:stop], len(words), len(oov))
            chunk.tofile(handle)
            begin = stop
        handle.write(b"}")
    return synth_lines + int(counts.sum())


def write_word2vec(path: Path, synth: Synth, words: np.ndarray, word_lengths: np.ndarray,
                   rng: np.random.Generator) -> None:
    """GoogleNews binary format: '<count> 300\\n', then per word: the word, a space, 300 float32 and a
    newline (as word2vec.c writes it). The synthetic corpus's words come first, with their vectors."""
    count = len(synth.words) + len(words)
    width = max(words.shape[1], max(len(w) for w in synth.words))
    with open(path, "wb") as handle:
        handle.write(f"{count} {DIM}\n".encode())
        synth_matrix, synth_lengths = padded(synth.words, width)
        _write_rows(handle, synth_matrix, synth_lengths, synth.vectors)
        for begin in range(0, len(words), 100_000):
            part = words[begin:begin + 100_000]
            matrix = np.zeros((len(part), width), np.uint8)
            matrix[:, :part.shape[1]] = part
            vectors = rng.standard_normal((len(part), DIM), dtype=np.float32) * np.float32(0.1)
            _write_rows(handle, matrix, word_lengths[begin:begin + 100_000], vectors)


def _write_rows(handle: BinaryIO, matrix: np.ndarray, lengths: np.ndarray, vectors: np.ndarray) -> None:
    """Rows of [word right-aligned in `width`][space][vector][newline], then the unused left part dropped."""
    n, width = matrix.shape
    rows = np.zeros((n, width + 2 + 4 * DIM), np.uint8)
    column = np.arange(width)[None, :]
    shift = (width - lengths)[:, None]
    source = np.clip(column - shift, 0, width - 1)
    rows[:, :width] = np.where(column >= shift, np.take_along_axis(matrix, source, axis=1), 0)
    rows[:, width] = ord(" ")
    rows[:, width + 1:width + 1 + 4 * DIM] = np.ascontiguousarray(vectors, np.float32).view(np.uint8)
    rows[:, -1] = ord("\n")
    keep = np.arange(rows.shape[1])[None, :] >= shift
    rows[keep].tofile(handle)


@dataclass
class Metadata:
    fraction: float
    folder: str
    csv: str
    captions: str
    word2vec: str
    videos: int
    caption_lines: int
    words: int
    csv_bytes: int
    caption_bytes: int
    word2vec_bytes: int
    seconds: dict  # what writing each file took (when it was written)
    key: dict  # what the files were made from (seed, synthetic ids): other values rewrite them


def metadata(work: Path, fraction: float, synth: Synth, seed: int) -> Metadata:
    folder = work / fraction_name(fraction)
    stamp = folder / "metadata.json"
    csv_path, caption_path, w2v_path = folder / "HowTo100M_v1.csv", folder / "caption.json", folder / "word2vec.bin"
    key = {"seed": seed, "synthetic_ids": sorted(synth.captions)}
    if stamp.is_file() and all(p.is_file() for p in (csv_path, caption_path, w2v_path)):
        cached = json.loads(stamp.read_text())
        if cached.get("key") == key:
            return Metadata(**cached)
    stamp.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, int(fraction * 1e6)])
    videos = max(scaled(FULL_VIDEOS, fraction), len(synth.csv_rows) + 1)
    word_count = max(scaled(FULL_WORDS, fraction), len(synth.words) + SYLLABLES)
    seconds = {}
    began = time.monotonic()
    ids = write_csv(csv_path, videos, synth, rng)
    seconds["csv"] = time.monotonic() - began
    began = time.monotonic()
    from howto_prep.synthetic.content import OOV_WORDS

    reserved = list(synth.words) + [w.encode() for w in OOV_WORDS]
    words, word_lengths = syllable_words(word_count - len(synth.words), reserved)
    seconds["vocabulary"] = time.monotonic() - began
    began = time.monotonic()
    write_word2vec(w2v_path, synth, words, word_lengths, rng)
    seconds["word2vec"] = time.monotonic() - began
    began = time.monotonic()
    width = max(words.shape[1], max(len(w) for w in synth.words)) + 2
    synth_matrix, synth_lengths = padded(synth.words, width)
    caption_words = np.zeros((len(synth.words) + len(words), width), np.uint8)
    caption_words[:len(synth.words)] = synth_matrix
    caption_words[len(synth.words):, :words.shape[1]] = words
    oov = [w.encode() for w in OOV_WORDS] + [b"q" + w.tobytes()[:int(n)] + b"x"
                                               for w, n in zip(words[:200], word_lengths[:200])]
    lines = write_captions(caption_path, ids, scaled(FULL_CAPTION_LINES, fraction), synth, caption_words,
                           np.concatenate([synth_lengths, word_lengths]), oov, rng)
    seconds["caption.json"] = time.monotonic() - began
    info = Metadata(fraction, str(folder), str(csv_path), str(caption_path), str(w2v_path), videos, lines,
                    word_count, csv_path.stat().st_size, caption_path.stat().st_size, w2v_path.stat().st_size,
                    {k: round(v, 1) for k, v in seconds.items()}, key)
    stamp.write_text(json.dumps(asdict(info), indent=1))
    return info


# --- measuring a driver ---------------------------------------------------------------------------

def pids_naming(text: str) -> list[int]:
    """Processes (of this user) whose command line contains `text`."""
    found, needle = [], text.encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def session_pids(sid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                found.append(int(entry.name))
    return found


def stop_tree(child: subprocess.Popen, ray_tmp: Path) -> int:
    """Kill the child's process group, its session, and every process naming its private Ray temp dir;
    returns how many stragglers were still found after the group was killed."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
    stragglers = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = set(pids_naming(str(ray_tmp))) | set(session_pids(child.pid))
        if not left:
            break
        stragglers = max(stragglers, len(left))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return stragglers


def first_manifest_outcome(out: Path) -> str | None:
    path = out / "manifest.sqlite"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute("SELECT video_id, status FROM videos WHERE status IN ('done','failed') LIMIT 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return f"{row[0]} {row[1]}" if row else None


def first_shard(out: Path) -> str | None:
    if not out.is_dir():
        return None
    names = sorted(p.name for p in out.iterdir() if SHARD_JSON.match(p.name))
    return names[0] if names else None


@dataclass
class Measurement:
    fraction: float
    command: str
    peak_rss_kib: int
    seconds: float
    outcome: str  # "first task: <id> failed", "killed at the cap", "exited 1", "timed out"
    killed: bool
    log: str


def measure(command: str, argv: list[str], repo: Path, out: Path, finished: Callable[[Path], str | None],
            cap_kib: int, timeout_s: float, log: Path, fraction: float, check_s: float,
            poll_s: float = 0.2) -> Measurement:
    """Run `argv` in a fresh session until `finished(out)` says something, the cap, an exit or the timeout."""
    shutil.rmtree(out, ignore_errors=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="fsb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(PYTHONPATH=str(repo), RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    began = time.monotonic()
    with open(log, "wb") as handle:
        child = subprocess.Popen(argv, cwd=repo, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    peak, outcome, killed = 0, "timed out", False
    try:
        next_check = 0.0
        while True:
            peak = max(peak, status_kib(child.pid, "VmHWM"))
            if peak > cap_kib:
                outcome, killed = "> cap (killed)", True
                break
            now = time.monotonic() - began
            if now >= next_check:  # a manifest query scans the table: not at every poll
                next_check = now + check_s
                found = finished(out)
                if found:
                    outcome = f"first: {found}"
                    break
            if child.poll() is not None:
                found = finished(out)
                outcome = f"first: {found}" if found else f"exited {child.returncode} before any"
                break
            if now > timeout_s:
                break
            time.sleep(poll_s)
        seconds = time.monotonic() - began
        peak = max(peak, status_kib(child.pid, "VmHWM"))
    finally:
        stragglers = stop_tree(child, ray_tmp)
    if stragglers:
        print(f"  (killed {stragglers} leftover process(es) of the run)", file=sys.stderr)
    return Measurement(fraction, command, peak, seconds, outcome, killed, str(log))


def download_argv(meta: Metadata, out: Path, mirror_url: str, credentials: Path) -> list[str]:
    return [sys.executable, "-m", "howto_prep.cli", "download", "--csv", meta.csv, "--out", str(out),
            "--source", "mirror", "--mirror-url", mirror_url, "--credentials", str(credentials)]


def extract_argv(meta: Metadata, synth: Synth, out: Path, shard_size: str) -> list[str]:
    return [sys.executable, "-m", "howto_prep.cli", "extract", "--videos", str(synth.videos), "--captions",
            meta.captions, "--csv", meta.csv, "--word2vec", meta.word2vec, "--out", str(out), "--shard-size",
            shard_size, "--features", "logmel,tokens"]


# --- report ---------------------------------------------------------------------------------------

def gib(kib: int) -> float:
    return kib / 2**20


def print_metadata(metas: list[Metadata]) -> None:
    print("| fraction | videos | caption lines | word2vec words | CSV MB | caption.json GB | word2vec.bin GB | "
          "written in (s): csv / vocabulary / word2vec / caption.json |")
    print("|---|---|---|---|---|---|---|---|")
    for m in metas:
        s = m.seconds
        print(f"| {m.fraction:g} | {m.videos:,} | {m.caption_lines:,} | {m.words:,} | {m.csv_bytes / 1e6:.1f} | "
              f"{m.caption_bytes / 1e9:.2f} | {m.word2vec_bytes / 1e9:.2f} | {s.get('csv', 0):.1f} / "
              f"{s.get('vocabulary', 0):.1f} / {s.get('word2vec', 0):.1f} / {s.get('caption.json', 0):.1f} |")


def rss_text(m: Measurement, cap_gb: float) -> str:
    return f"> {cap_gb:g} GB cap (killed)" if m.killed else f"{gib(m.peak_rss_kib):.2f} GB"


def print_results(results: list[Measurement], metas: dict[float, Metadata], repo: Path, cap_gb: float) -> None:
    print(f"\ndrivers of `{repo}` (targets: peak RSS <= {TARGET_RSS_GB:g} GB at 1.0, < {TARGET_GROWTH:g}x from "
          f"0.1 to 1.0, extract's first shard <= {TARGET_FIRST_SHARD_S / 60:g} min)\n")
    print("| fraction | videos | caption lines | word2vec words | command | driver peak RSS | time to first "
          "task/shard | outcome |")
    print("|---|---|---|---|---|---|---|---|")
    for m in results:
        meta = metas[m.fraction]
        print(f"| {m.fraction:g} | {meta.videos:,} | {meta.caption_lines:,} | {meta.words:,} | {m.command} | "
              f"{rss_text(m, cap_gb)} | {m.seconds:.1f} s | {m.outcome} |")
    print("\n| command | peak RSS 0.1 -> 1.0 | growth (target < 2x) | peak at 1.0 (target <= 3 GB) | "
          "first task/shard at 1.0 |")
    print("|---|---|---|---|---|")
    for command in dict.fromkeys(m.command for m in results):
        by = {m.fraction: m for m in results if m.command == command}
        small, full = by.get(0.1), by.get(1.0)
        if small is None or full is None:
            continue
        growth = ("> " if full.killed else "") + f"{full.peak_rss_kib / max(1, small.peak_rss_kib):.1f}x"
        ok_growth = not full.killed and full.peak_rss_kib < TARGET_GROWTH * small.peak_rss_kib
        ok_rss = not full.killed and gib(full.peak_rss_kib) <= TARGET_RSS_GB
        first = "-" if full.killed else f"{full.seconds:.0f} s"
        if command == "extract" and not full.killed:
            met = full.seconds <= TARGET_FIRST_SHARD_S and full.outcome.startswith("first")
            first += " (met)" if met else " (missed)"
        print(f"| {command} | {rss_text(small, cap_gb)} -> {rss_text(full, cap_gb)} | {growth} "
              f"({'met' if ok_growth else 'missed'}) | {'met' if ok_rss else 'missed'} | {first} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fullsize"))
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose CLI runs (cwd, PYTHONPATH)")
    parser.add_argument("--commands", nargs="+", choices=["download", "extract"], default=["download", "extract"])
    parser.add_argument("--rss-cap-gb", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per measurement")
    parser.add_argument("--shard-size", default="64KB")
    parser.add_argument("--synth-videos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metadata-only", action="store_true", help="write the metadata, measure nothing")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    work, repo = args.work.resolve(), args.repo.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    synth = make_synth(work, args.synth_videos)
    metas = {}
    for fraction in args.fractions:
        print(f"metadata at {fraction:g} ...", file=sys.stderr, flush=True)
        metas[fraction] = metadata(work, fraction, synth, args.seed)
    print_metadata(list(metas.values()))
    if args.metadata_only:
        return
    from howto_prep.download.credentials import Credentials
    from howto_prep.synthetic.mirror_server import LoopbackMirror

    credentials = work / "mirror-credentials.txt"
    credentials.write_text("bench:bench-password\n")
    credentials.chmod(0o600)
    cap_kib = int(args.rss_cap_gb * 2**20)
    label = re.sub(r"[^A-Za-z0-9]+", "_", str(repo)).strip("_")
    results = []
    with LoopbackMirror(synth.videos, credentials=Credentials("bench", "bench-password")) as mirror:
        for fraction in args.fractions:
            meta = metas[fraction]
            for command in args.commands:
                out = work / f"out-{command}"
                log = work / "logs" / f"{label}-{command}-{fraction_name(fraction)}.log"
                if command == "download":
                    argv, finished = download_argv(meta, out, mirror.url, credentials), first_manifest_outcome
                    check_s = 1.0
                else:
                    argv, finished = extract_argv(meta, synth, out, args.shard_size), first_shard
                    check_s = 0.2
                print(f"{command} at {fraction:g} ...", file=sys.stderr, flush=True)
                result = measure(command, argv, repo, out, finished, cap_kib, args.timeout_s, log, fraction, check_s)
                print(f"  {rss_text(result, args.rss_cap_gb)} in {result.seconds:.1f} s: {result.outcome}",
                      file=sys.stderr, flush=True)
                results.append(result)
                shutil.rmtree(out, ignore_errors=True)
    print_results(results, metas, repo, args.rss_cap_gb)
    if args.json:
        args.json.write_text(json.dumps({"repo": str(repo), "metadata": [asdict(m) for m in metas.values()],
                                         "results": [asdict(r) for r in results]}, indent=1))


if __name__ == "__main__":
    main()
