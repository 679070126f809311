"""A run folder on an object store (`--out s3://bucket/runs/x`, gs:// the same way), and reading it back.

Training writes to a local work folder (`--work`, by default `.howto-prep/work/<scheme>/<bucket>/<prefix>`
under the current folder, as `howto-prep extract --out URL` does); the store holds the same layout.
After each checkpoint is saved locally, rank 0 publishes it: the checkpoint whole
(`Store.put_file`: an object appears whole or not at all), then config.yaml and metrics.jsonl, then
the pointer `latest.json` (the checkpoint's key, step, size and sha256), written last. A reader
follows the pointer, so it never reads a checkpoint still uploading or one already pruned: old
checkpoints are deleted on the store only after the pointer has moved past them.

`--resume` on a machine whose work folder lacks the pointer's checkpoint downloads it (with
metrics.jsonl and config.yaml) first; a work folder holding a newer checkpoint than the store's (a
run stopped between saving and uploading) publishes it first. `evaluate/embed/finetune --init` take
a run-folder URL (best.pt if there is one, else the pointer's checkpoint) or a checkpoint-file URL,
downloaded once into the mft-train cache and then read with the `weights_only=True` loader.

Store faults (refused, unreachable, failing after retries) are SystemFaults from howto_prep's
Store: one line, exit 5, secrets scrubbed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from howto_prep.cli_support import Location, is_store_url
from howto_prep.errors import UserError
from howto_prep.files import atomic_write_bytes
from howto_prep.local_copies import cache_path, default_work_folder, files_under, needs_upload
from howto_prep.object_store import Store
from mft_train.training import checkpoints
from mft_train.training.run_folder import CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, truncate_metrics

POINTER = "latest.json"
POINTER_FORMAT = "mft-train-latest"
CHECKPOINT_GLOB = f"{checkpoints.CHECKPOINT_DIR}/step-*.pt"
_STEP = re.compile(r"step-(\d{9})\.pt$")
READ_TRIES = 3  # a reader re-reads the pointer when the checkpoint it named was pruned meanwhile


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def step_of(name: str) -> int:
    match = _STEP.search(name)
    return int(match.group(1)) if match else -1


class RunMirror:
    """The store copy of one run folder; `work` is the local folder the trainer writes."""

    def __init__(self, store: Store, work: Path) -> None:
        self.store, self.work = store, Path(work)

    @classmethod
    def open(cls, url: str, work: Path) -> "RunMirror":
        """The mirror of `url`; one listing first, so a refused or missing bucket stops before any work."""
        store = Store.for_url(url)
        store.check_access()
        return cls(store, work)

    @property
    def url(self) -> str:
        return self.store.url

    # -- reading the store

    def pointer(self) -> dict | None:
        """latest.json, or None when the store has none."""
        return read_pointer(self.store)

    def holds_run(self) -> bool:
        """Whether the store already has a run here (a pointer, a checkpoint or a best.pt)."""
        return (self.pointer() is not None or bool(self.store.list(CHECKPOINT_GLOB))
                or self.store.exists(checkpoints.BEST_FILE))

    # -- writing (rank 0)

    def publish_checkpoint(self, path: Path, step: int) -> None:
        """Checkpoint whole, then config.yaml and metrics.jsonl, then the pointer (the commit) last."""
        key = f"{checkpoints.CHECKPOINT_DIR}/{path.name}"
        self.store.put_file(path, key)
        for name in (CONFIG_FILE, METRICS_FILE):
            if (self.work / name).is_file():
                self.store.put_file(self.work / name, name)
        self.publish_tensorboard()
        doc = {"format": POINTER_FORMAT, "version": 1, "checkpoint": key, "step": int(step),
               "size": path.stat().st_size, "sha256": file_sha256(path)}
        self.store.put_bytes(POINTER, (json.dumps(doc, indent=1) + "\n").encode())

    def publish_tensorboard(self) -> None:
        """TensorBoard's event files as far as they are flushed: each uploaded again whole when it has
        grown (they are append-only), with every checkpoint and when the run ends, so a copy of the
        store's `tensorboard/` shows the run up to its last checkpoint."""
        folder = self.work / TENSORBOARD_DIR
        if not folder.is_dir():
            return
        remote = self.store.list_info(TENSORBOARD_DIR)
        for name in files_under(folder):
            key = f"{TENSORBOARD_DIR}/{name}"
            if needs_upload(folder / name, remote.get(key)):
                self.store.put_file(folder / name, key)

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints on the store (never the pointer's), after it moved."""
        pointer = self.pointer()
        named = pointer["checkpoint"] if pointer else None
        for key in self.store.list(CHECKPOINT_GLOB)[:-keep]:
            if key != named:
                self.store.delete(key)

    def publish_file(self, name: str) -> None:
        """One finished file of the work folder (best.pt, results.json) under the same key."""
        self.store.put_file(self.work / name, name)

    def publish_finished_run(self, records: tuple[str, ...] = ()) -> None:
        """A finished run folder without step checkpoints (import-eao's): best.pt whole first, then
        `records`, then config.yaml last (the disk's "complete" mark). No latest.json: it names step
        checkpoints only, and readers take best.pt first (`fetch_checkpoint`), an object that appears
        whole or not at all."""
        self.publish_file(checkpoints.BEST_FILE)
        for name in records:
            self.publish_file(name)
        self.publish_file(CONFIG_FILE)

    def publish_outputs(self) -> None:
        """Every other file the run wrote (fine-tuning's reports), TensorBoard's as they are at the end;
        not the checkpoints and best.pt (published as they were saved), nor hidden temp files."""
        self.publish_tensorboard()
        skip = {checkpoints.CHECKPOINT_DIR, TENSORBOARD_DIR}
        for path in sorted(p for p in self.work.rglob("*") if p.is_file()):
            relative = path.relative_to(self.work)
            if (relative.parts[0] in skip or path.suffix == ".pt" or relative.as_posix() == POINTER
                    or any(part.startswith(".") for part in relative.parts)):
                continue
            self.store.put_file(path, relative.as_posix())

    # -- resuming

    def sync_for_resume(self, publish: bool) -> None:
        """Make the work folder and the store agree before --resume: the newer side wins.

        The store's checkpoint newer (or the work folder empty: a fresh machine): download it,
        metrics.jsonl and config.yaml. The work folder's newer (a run stopped between its save and
        its upload): publish it now (`publish`: rank 0), its metrics cut back to its step first."""
        pointer = self.pointer()
        local = checkpoints.latest_checkpoint(self.work)
        local_step = step_of(local.name) if local else -1
        if pointer is not None and pointer["step"] > local_step:
            self._download(pointer["checkpoint"], self.work / pointer["checkpoint"], pointer.get("sha256"))
            for name in (METRICS_FILE, CONFIG_FILE):
                try:
                    atomic_write_bytes(self.work / name, self.store.get_bytes(name))
                except FileNotFoundError:
                    pass
        elif local is not None and publish and (pointer is None or local_step > pointer["step"]):
            truncate_metrics(self.work / METRICS_FILE, local_step)
            self.publish_checkpoint(local, local_step)

    def _download(self, key: str, target: Path, sha256: str | None) -> None:
        download(self.store, key, target, sha256)


def read_pointer(store: Store) -> dict | None:
    try:
        raw = store.get_bytes(POINTER)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        valid = (isinstance(doc, dict) and doc.get("format") == POINTER_FORMAT and isinstance(doc.get("step"), int)
                 and isinstance(doc.get("checkpoint"), str) and _STEP.search(doc["checkpoint"]))
    except ValueError:
        valid = False
    if not valid:
        raise UserError(f"{store.url_of(POINTER)} is not an mft-train checkpoint pointer")
    return doc


def download(store: Store, key: str, target: Path, sha256: str | None = None) -> None:
    """`key` into `target` through a hidden temp file beside it (never a checkpoint-pattern name), its
    sha256 checked when known, then renamed: a killed download leaves no file with the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        store.get_file(key, temp)
        if sha256 is not None and file_sha256(Path(temp)) != sha256:
            raise UserError(f"{store.url_of(key)} does not match the sha256 {POINTER} records for it; was it "
                            "overwritten by another run?")
        modified = store.modified(key)
        os.utime(temp, ns=(int(modified * 1e9),) * 2)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- command-line plumbing


def run_location(out: Location, work: Path | None) -> tuple[Path, RunMirror | None]:
    """(the local run folder, the store mirror or None) of an --out folder or URL and its --work."""
    if is_store_url(out):
        mirror = RunMirror.open(str(out), Path(work) if work else default_work_folder(str(out)))
        return mirror.work, mirror
    if work is not None:
        raise UserError(f"--work is only for an s3:// or gs:// --out (it names the local copy); --out {out} "
                        "is already a local folder")
    return Path(out), None


def local_checkpoint(value: Location) -> Path:
    """A local checkpoint file or run folder as given; a URL's checkpoint downloaded once into the cache."""
    return fetch_checkpoint(str(value)) if is_store_url(value) else Path(value)


def fetch_checkpoint(url: str) -> Path:
    """The local copy of a checkpoint on a store: a `.pt` URL is that file; a run-folder URL its
    best.pt, else the checkpoint its latest.json names (else, with no pointer, its newest
    checkpoints/step-*.pt). Reused while its size and time match the store's object."""
    url = url.rstrip("/")
    if url.endswith(".pt"):
        root, _, key = url.rpartition("/")
        store = Store.for_url(root)
        store.check_access()
        if not store.exists(key):
            raise UserError(f"checkpoint {url} does not exist")
        return _cached(store, key, None)
    store = Store.for_url(url)
    store.check_access()
    for _ in range(READ_TRIES):
        if store.exists(checkpoints.BEST_FILE):
            key, sha256 = checkpoints.BEST_FILE, None
        else:
            pointer = read_pointer(store)
            if pointer is not None:
                key, sha256 = pointer["checkpoint"], pointer.get("sha256")
            else:
                found = store.list(CHECKPOINT_GLOB)
                if not found:
                    raise UserError(f"{url} holds no checkpoint (no {checkpoints.BEST_FILE}, no {POINTER}, no "
                                    f"{CHECKPOINT_GLOB})")
                key, sha256 = found[-1], None
        try:
            return _cached(store, key, sha256)
        except FileNotFoundError:  # pruned after we read the pointer: a newer one is named now
            continue
    raise UserError(f"{url}: its checkpoint kept changing while being read; try again")


def _cached(store: Store, key: str, sha256: str | None) -> Path:
    target = cache_path(store.url) / key
    if target.is_file():
        stat = target.stat()
        if stat.st_size == store.size(key) and stat.st_mtime_ns == int(store.modified(key) * 1e9):
            return target
    download(store, key, target, sha256)
    return target
