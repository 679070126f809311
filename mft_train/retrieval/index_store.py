"""An embedding index on disk: what `mft-train embed` writes and `mft-train search` reads.

Layout of INDEX/:
  index.json        the manifest: format, model identity (checkpoint fingerprint, step, config),
                    shard identity (root, vocabulary fingerprints), window settings, one entry per
                    part, the vector-index settings and the run's numbers; "complete" once the
                    vector indexes exist
  parts/NAME.npz    one per shard (NAME = the shard's tar name): video_id, start, end (s), float16
                    unit embeddings va, v, a (windows x dim), v_empty / a_empty, the shard identity it
                    was made from and the captions of its videos (JSON); written atomically, so a part
                    that exists is whole: embedding resumes shard by shard
  va.faiss, v.faiss, a.faiss   the vector-search indexes over all parts, rows in manifest part order
Why this split: the parts are the durable, library-independent result (plain numpy), the faiss files
are derived from them and can be rebuilt with another index type without running the model again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from howto_prep.errors import UserError
from howto_prep.files import atomic_path, atomic_write_json

FORMAT = "mft-train window index"
VERSION = 1
MANIFEST = "index.json"
PARTS_DIR = "parts"
KEYS = ("va", "v", "a")  # fused video+audio (the default search target), video alone, audio alone


def vector_file(root: Path, key: str) -> Path:
    return Path(root) / f"{key}.faiss"


def part_file(root: Path, shard_url: str) -> Path:
    return Path(root) / PARTS_DIR / f"{Path(shard_url).stem}.npz"


def read_manifest(root: Path, complete: bool = True) -> dict:
    """The manifest of an index folder; UserError when it is not one (or, with `complete`, unfinished)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise UserError(f"index {root} does not exist; build it with `mft-train embed --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{root} is not an embedding index (no readable {MANIFEST}); build one with `mft-train embed`") from None
    return checked_manifest(manifest, str(root), complete)


def checked_manifest(manifest: object, where: str, complete: bool = True) -> dict:
    """`manifest` if it is an index manifest this tool reads (and, with `complete`, a finished one);
    UserError naming `where` (a folder or a URL) otherwise."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{where} is not an embedding index ({MANIFEST} is not one of `mft-train embed`)")
    if manifest.get("version") != VERSION:
        raise UserError(f"{where} is an index of format version {manifest.get('version')}; this tool reads {VERSION}")
    if complete and not manifest.get("complete"):
        raise UserError(f"index {where} is unfinished; rerun the same `mft-train embed` command to complete it")
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_json(Path(root) / MANIFEST, manifest)


def write_part(path: Path, *, identity: str, video_ids: list[str], starts: list[float], ends: list[float],
               embeddings: dict[str, np.ndarray], empty: dict[str, np.ndarray], captions: dict[str, dict]) -> None:
    """One shard's windows, atomically (a part that exists is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "identity": np.array(identity),
        "video_id": np.array(video_ids, dtype=str),
        "start": np.asarray(starts, np.float64),
        "end": np.asarray(ends, np.float64),
        "captions": np.array(json.dumps(captions)),
        **{key: np.asarray(value, np.float16) for key, value in embeddings.items()},
        **{f"{key}_empty": np.asarray(value, bool) for key, value in empty.items()},
    }
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez(handle, **arrays)


def part_identity(path: Path) -> str | None:
    """The shard identity a part was made from; None when there is no readable part."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["identity"])
    except (OSError, ValueError, KeyError):
        return None


def read_part(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in fields}
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"index part {path} is unreadable ({err}); rerun `mft-train embed` to rebuild it") from None


@dataclass
class WindowTable:
    """Every window of an index in row order: video id, start, end; captions read on demand."""

    root: Path
    parts: list[dict]
    video_id: np.ndarray
    start: np.ndarray
    end: np.ndarray
    offsets: np.ndarray  # first row of each part, plus the total
    _captions: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, manifest: dict) -> "WindowTable":
        parts = manifest["parts"]
        loaded = [read_part(Path(root) / part["file"], ("video_id", "start", "end")) for part in parts]
        counts = [len(item["video_id"]) for item in loaded]
        if counts != [part["windows"] for part in parts]:
            raise UserError(f"the parts of index {root} do not match its {MANIFEST}; rerun `mft-train embed`")
        join = (lambda name: np.concatenate([item[name] for item in loaded])) if loaded else (lambda name: np.zeros(0))
        return cls(Path(root), parts, join("video_id"), join("start"), join("end"),
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.video_id)

    def captions_of(self, row: int) -> dict:
        """{"start", "end", "text"} of the captions of the video of window `row` (empty lists if none)."""
        part = int(np.searchsorted(self.offsets, row, side="right") - 1)
        if part not in self._captions:
            stored = read_part(self.root / self.parts[part]["file"], ("captions",))["captions"]
            self._captions[part] = json.loads(str(stored))
        return self._captions[part].get(str(self.video_id[row]), {"start": [], "end": [], "text": []})

    def window(self, row: int) -> dict:
        """The window of `row` with the caption nearest to it in time."""
        start, end = float(self.start[row]), float(self.end[row])
        caption = nearest_caption(self.captions_of(row), start, end)
        return {"row": int(row), "video_id": str(self.video_id[row]), "start": start, "end": end, **caption}


def nearest_caption(captions: dict, start: float, end: float) -> dict:
    """The caption overlapping [start, end] the most; with none overlapping, the one closest in time."""
    best, best_key = None, None
    texts = captions.get("text") or []
    for i, text in enumerate(texts):
        c_start, c_end = float(captions["start"][i]), float(captions["end"][i])
        overlap = min(end, c_end) - max(start, c_start)
        gap = max(c_start - end, start - c_end, 0.0)
        key = (overlap > 0, overlap if overlap > 0 else -gap)
        if best_key is None or key > best_key:
            best, best_key = i, key
    if best is None:
        return {"caption": "", "caption_start": None, "caption_end": None}
    return {"caption": str(texts[best]), "caption_start": float(captions["start"][best]),
            "caption_end": float(captions["end"][best])}
