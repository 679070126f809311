"""`howto-prep download`: decide what is left to fetch, run it as bounded Ray tasks, record every outcome.

The manifest is the record; this driver is its only writer (one commit per video). Workers fetch,
validate and rename (see download.task); a rerun skips what is done, `--retry-failed` retries only
what failed, and a mirror that rejects the credentials stops the run after a handful of requests.
With `--out s3://bucket/prefix` the same run works on a local work folder and each worker uploads its
video (download.to_store: where the manifest lives, and why).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from howto_prep.download.catalog import Catalog, CatalogEntry, load_catalog
from howto_prep.download.credentials import redact
from howto_prep.download.manifest import DONE, FAILED, PENDING, Manifest, manifest_summary
from howto_prep.download.plan import DownloadPlan, plan_from_args, sources_for
from howto_prep.download.stored import StoredVideos
from howto_prep.download.task import MIRROR, YOUTUBE, FetchJob, FetchResult, fetch_video, job_credentials
from howto_prep.errors import FailureKind, SystemFault, UserError
from howto_prep.output_lock import output_lock

STOPPING_KINDS = frozenset({FailureKind.DISK_FULL, FailureKind.OUT_OF_MEMORY})  # system faults that stop a run
AUTH_STOP_AFTER = 3  # mirror auth rejections, before any mirror success, that stop the run
TASK_CPUS = 0.05  # downloads wait on the network: many may share a core


@dataclass
class NodeTally:
    """What one Ray node fetched in this run."""

    ip: str
    done: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass
class RunSummary:
    """What this run did (the manifest holds the whole history)."""

    selected: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    nodes: dict[str, NodeTally] = field(default_factory=dict)  # node id (or IP) -> tally; results of known nodes

    def count(self, result: FetchResult) -> None:
        """Add one recorded outcome to the totals and to its node's tally."""
        if result.ok:
            self.done += 1
            self.bytes += result.bytes or 0
        else:
            self.failed += 1
        if result.node_id or result.node_ip:
            tally = self.nodes.setdefault(result.node_id or result.node_ip or "",
                                          NodeTally(result.node_ip or "?"))
            if result.ok:
                tally.done += 1
                tally.bytes += result.bytes or 0
            else:
                tally.failed += 1

    def node_lines(self) -> list[str]:
        """One line per node, by IP, when more than one node took part (else none: the total says it all)."""
        if len(self.nodes) < 2:
            return []
        return [f"  node {tally.ip} ({node[:8]}): {tally.done} done, {tally.failed} failed, "
                f"{tally.bytes / 1e6:.1f} MB"
                for node, tally in sorted(self.nodes.items(), key=lambda item: (item[1].ip, item[0]))]


class CredentialsRejected(SystemFault):
    """The mirror answered 401/403 to the first videos: the credentials, not the videos, are wrong."""


def run_download(args: argparse.Namespace) -> int:
    """CLI handler: the catalog from --csv/--ids, then download_all (to a folder or, with an --out URL,
    through a work folder to the store), then the summary table."""
    catalog = load_catalog(*source_lists(args))
    if args.limit:
        catalog = catalog.head(args.limit)
    plan = plan_from_args(args)
    if plan.store_url is not None:
        from howto_prep.download.to_store import MANIFEST_KEY, download_to_store

        summary = download_to_store(catalog, plan)
    else:
        with output_lock(plan.out, "howto-prep download"):
            summary = download_all(catalog, plan)
    print(f"this run: {summary.done} done, {summary.failed} failed, {summary.skipped} already recorded, "
          f"{summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s")
    for line in summary.node_lines():
        print(line)
    if plan.store_url is not None:
        print(f"videos in {plan.store_url}/, a copy of the manifest in {plan.store_url}/{MANIFEST_KEY}; "
              f"the run's state in {plan.out}")
    print(manifest_summary(plan.out))
    return 0


def source_lists(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(--csv, --ids) as local files: a path as given, an s3:// / gs:// object's copy in the local
    cache (downloaded once, reused while unchanged; the catalog streams it like any file)."""
    from howto_prep.local_copies import local_file

    csv_path = local_file(args.csv, "--csv") if args.csv is not None else None
    ids_path = local_file(args.ids, "--ids") if args.ids is not None else None
    return csv_path, ids_path


# What select_work learns of each catalog entry from the manifest.
_NEW, _PENDING, _DONE, _FAILED, _VANISHED = range(5)
_STATE = {PENDING: _PENDING, DONE: _DONE, FAILED: _FAILED}


def select_work(catalog: Catalog, manifest: Manifest, plan: DownloadPlan,
                stored: StoredVideos | None = None) -> np.ndarray:
    """Positions in `catalog` (in its order) of the new and pending videos (or, with --retry-failed,
    only the failed ones); a done row whose file vanished is redone. With `stored` (the listing of an
    object-store output) the store decides what is there: a catalog video with an object is done
    (recorded so, whatever its row said), a done row without one is redone.

    One streaming pass over the manifest (a batch of rows at a time) gives each catalog entry its state
    in an int8 array; then the vanished rows go back to pending and the new ids are registered as
    pending, each in one commit. Memory: a byte per entry plus one batch, not an object per row.
    """
    state = np.full(len(catalog), _NEW, np.int8)
    in_store = stored.in_catalog(catalog) if stored is not None else None
    for rows in manifest.states():
        found = catalog.positions(np.array([row[0].encode("utf-8") for row in rows], dtype="S"))
        for (video_id, status, path), position in zip(rows, found.tolist()):
            if position < 0:
                continue
            present = in_store[position] >= 0 if in_store is not None else path and (plan.out / path).is_file()
            if status == DONE and not present:
                state[position] = _VANISHED
            else:
                state[position] = _STATE.get(status, _PENDING)
    vanished = np.flatnonzero(state == _VANISHED)
    if len(vanished):
        manifest.mark_pending_many(catalog.video_id(position) for position in vanished)
    source = MIRROR if plan.source != "youtube" and plan.mirror_url else YOUTUBE
    if in_store is not None and stored is not None:
        adopted = np.flatnonzero((in_store >= 0) & (state != _DONE))
        if len(adopted):  # uploaded by a run whose record of it is lost (a fresh work folder, a kill)
            manifest.mark_stored_many(((catalog.video_id(position), *stored.row(int(in_store[position])))
                                       for position in adopted), source)
            state[adopted] = _DONE
    if plan.retry_failed:
        return np.flatnonzero(state == _FAILED)
    new = np.flatnonzero(state == _NEW)
    if len(new):
        manifest.add_pending((catalog.video_id(position) for position in new), source)
    return np.flatnonzero(np.isin(state, (_NEW, _PENDING, _VANISHED)))


def download_all(records: Iterable[CatalogEntry] | Catalog, plan: DownloadPlan, stored: StoredVideos | None = None,
                 guard: Callable[[], None] | None = None) -> RunSummary:
    """Fetch every selected record; each outcome is committed to the manifest as it arrives.

    `records` is a Catalog or any iterable of entries (duplicates are fetched once). Jobs are made as
    Ray takes them, so the driver never holds one per video. For an object-store output, `stored` is
    its listing (select_work) and `guard` raises SystemFault once the output's lock is lost (checked
    before each record)."""
    catalog = records if isinstance(records, Catalog) else Catalog.from_entries(records)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with Manifest(plan.out) as manifest:
        work = select_work(catalog, manifest, plan, stored)
        summary = RunSummary(selected=len(work), skipped=len(catalog) - len(work))
        if plan.credentials is not None and plan.credential_source is None:
            raise UserError("credentials must come from a file or HOWTO100M_USER/PASSWORD (plan.credential_source), "
                            "so that workers read them and no task argument carries the password")
        jobs = (FetchJob(record, str(plan.out), sources_for(record, plan), plan.mirror_url, plan.credential_source,
                         str(plan.cookies) if plan.cookies else None, plan.settings, plan.store_url)
                for record in catalog.entries(work))
        recorder = _Recorder(manifest, plan, summary, guard)
        if len(work) and plan.workers:
            from howto_prep.cluster import init_ray

            init_ray(plan.address)  # before the MB/s clock starts: Ray's start-up is not download time
        fetching_since = time.monotonic()
        progress = _progress_bar(len(work), plan.show_progress)
        results = _run_jobs(jobs, plan)
        try:
            for job, result in results:
                recorder.record(job, result)
                _update_progress(progress, summary, fetching_since)
            recorder.finish()
        finally:
            results.close()
            progress.close()
    summary.seconds = time.monotonic() - started
    return summary


class _Recorder:
    """Writes results to the manifest; holds back mirror auth failures until the credentials are proven good."""

    def __init__(self, manifest: Manifest, plan: DownloadPlan, summary: RunSummary,
                 guard: Callable[[], None] | None = None) -> None:
        self.manifest, self.plan, self.summary = manifest, plan, summary
        self.guard = guard
        self.mirror_accepted = False
        self.held: list[FetchResult] = []

    def record(self, job: FetchJob, result: FetchResult) -> None:
        if result.store_fault:  # the upload failed: the store's fault, not the video's (it stays pending)
            raise SystemFault(f"{redact(result.store_fault, self.plan.credentials)}; {result.video_id} and the "
                              "rest stay pending: rerun the same command to continue")
        if self.guard is not None:
            self.guard()
        if not result.ok and result.failure_kind in STOPPING_KINDS:  # not the video's doing: it stays pending
            raise SystemFault(f"{result.failure_kind.meaning} ({redact(result.error or '', self.plan.credentials)}); "
                              f"{result.video_id} and the rest stay pending: free the resource and rerun")
        if result.ok and result.source == MIRROR:
            self.mirror_accepted = True
        if result.mirror_auth_rejected and not self.mirror_accepted:
            if not result.ok:
                self.held.append(result)
                if len(self.held) >= AUTH_STOP_AFTER:
                    self._stop()
                return
        if self.mirror_accepted and self.held:
            for held in self.held:
                self._write(held)
            self.held.clear()
        self._write(result)

    def finish(self) -> None:
        if self.held:  # every mirror answer this run was a rejection
            self._stop()

    def _stop(self) -> None:
        raise CredentialsRejected(
            f"the mirror rejected the credentials for the first {len(self.held)} video(s); check --credentials "
            "(those videos stay pending and nothing else was requested)")

    def _write(self, result: FetchResult) -> None:
        text = redact(result.error or "", self.plan.credentials)
        previous = self.manifest.get(result.video_id)
        source = result.source or (previous.source if previous else None)
        if result.ok:
            self.manifest.mark_done(result.video_id, source or "", result.path or "", result.bytes or 0,
                                    result.duration or 0.0, result.attempts)
        else:
            self.manifest.mark_failed(result.video_id, source, result.failure_kind or FailureKind.ERROR, text,
                                      result.attempts)
        self.summary.count(result)


def _run_jobs(jobs: Iterable[FetchJob], plan: DownloadPlan) -> Iterator[tuple[FetchJob, FetchResult]]:
    """(job, result) in completion order: Ray tasks with at most `workers` in flight, or in-process when 0.
    `jobs` is pulled only as slots free up (bounded_map), so it may be a generator over the work."""
    if plan.workers == 0:
        for job in jobs:
            yield job, _safe_fetch(job)
        return
    import ray

    from howto_prep.cluster import bounded_map, init_ray, task_failure

    init_ray(plan.address)
    remote = ray.remote(fetch_video).options(num_cpus=TASK_CPUS, max_retries=0, scheduling_strategy="SPREAD")
    for job, result in bounded_map(remote.remote, jobs, plan.workers):
        if isinstance(result, Exception):  # the task raised, or its worker died (e.g. the decoder crashed it)
            result = _failed_task(job, task_failure(result)[0], result)
        yield job, result


def _safe_fetch(job: FetchJob) -> FetchResult:
    try:
        return fetch_video(job)
    except Exception as err:
        return _failed_task(job, FailureKind.ERROR, err)


def _failed_task(job: FetchJob, kind: FailureKind, err: Exception) -> FetchResult:
    """The result of a fetch that raised instead of returning (the error text redacted)."""
    text = f"{err.__class__.__name__}: {err}"[:2000]
    return FetchResult(job.record.video_id, False, None, failure_kind=kind, error=redact(text, job_credentials(job)),
                       attempts=1)


def _progress_bar(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="download", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def _update_progress(progress, summary: RunSummary, started: float) -> None:  # type: ignore[no-untyped-def]
    elapsed = max(time.monotonic() - started, 1e-6)
    progress.set_postfix(done=summary.done, failed=summary.failed, MB_s=f"{summary.bytes / 1e6 / elapsed:.2f}",
                         refresh=False)
    progress.update(1)
