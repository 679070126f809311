"""Measure a process tree from the outside (/proc): CPU time and memory of a command and everything it
starts (Ray daemons, workers, actors), sampled in a thread. Linux only; used by the benchmarks.

CPU: each process's utime + stime, the last value seen (a process that exits keeps it; at most one
sampling interval of its CPU is missed). Memory: each process's own VmHWM (peak RSS, only grows),
and the peaks of the summed RSS and (with `pss=True`) the summed PSS, which splits shared pages such
as Ray's object store between the processes that map them.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int | str, field: str) -> int:
    """A /proc/PID/status field in KiB (VmHWM: peak RSS so far, VmRSS: now); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process on the machine."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeSampler:
    """Samples the tree under `root` every `interval` s in a thread until `stop()`.

    `include_root=False` leaves the root out (a benchmark measuring its own worker pool). `roles`
    maps a process title to a role name by substring, first match wins; a process keeps the first
    role it showed (a Ray worker shows `ray::IDLE` again between tasks), except the `provisional`
    ones (e.g. an idle Ray worker, which may become a decode worker); the root is "driver"."""

    def __init__(self, root: int, interval: float = 0.25, include_root: bool = True, pss: bool = False,
                 roles: dict[str, str] | None = None, started: float | None = None,
                 provisional: tuple[str, ...] = ()) -> None:
        self.root, self.interval, self.include_root, self.pss = root, interval, include_root, pss
        self.role_rules = roles or {}
        self.provisional = provisional
        self.role_series: list[tuple[float, dict[str, float]]] = []  # (seconds since start, CPU s by role)
        self.started = time.monotonic() if started is None else started  # the origin of `series`
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.series: list[tuple[float, float]] = []  # (seconds since start, CPU seconds of the tree)
        self.peak_rss = self.peak_pss = 0
        self.gpu = None  # a GpuSampler (bench/gpu_sampler.py) running beside this one, if any
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                self.sample()
                return

    def sample(self) -> None:
        table = processes()
        rss = pss = 0
        for pid in descendants(self.root, table):
            if pid == self.root and not self.include_root:
                continue
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), table.get(pid, (0, 0.0))[1])
            if pid == self.root:
                self.role[pid] = "driver"
            elif self.role_rules and self.role.get(pid, self.provisional[0] if self.provisional else None) in (
                    *self.provisional, None):
                text = title(pid)
                match = next((name for key, name in self.role_rules.items() if key in text), None)
                if match is not None:
                    self.role[pid] = match
            self.hwm[pid] = max(self.hwm.get(pid, 0), status_kib(pid, "VmHWM"))
            rss += status_kib(pid, "VmRSS")
            pss += pss_kib(pid) if self.pss else 0
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        now = time.monotonic() - self.started
        self.series.append((now, sum(self.cpu.values())))
        by_role: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            role = self.role.get(pid, "other")
            by_role[role] = by_role.get(role, 0.0) + seconds
        self.role_series.append((now, by_role))

    def stop(self) -> "TreeSampler":
        self._stop.set()
        self._thread.join()
        return self

    def cpu_at(self, t: float) -> float:
        """The tree's CPU seconds at `t` seconds after the start (linear between samples)."""
        times = [s[0] for s in self.series]
        i = bisect_left(times, t)
        if i <= 0:
            return self.series[0][1]
        if i >= len(times):
            return self.series[-1][1]
        (t0, c0), (t1, c1) = self.series[i - 1], self.series[i]
        return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)

    def role_cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by role between two times (the samples nearest inside the window)."""
        inside = [entry for entry in self.role_series if start <= entry[0] <= end] or self.role_series[-1:]
        first, last = inside[0][1], inside[-1][1]
        scale = (end - start) / max(inside[-1][0] - inside[0][0], 1e-9)
        return {role: scale * (last[role] - first.get(role, 0.0)) for role in last}

    def hwm_mib_by_role(self, default: str = "other") -> dict[str, float]:
        """Each role's largest own VmHWM (MiB)."""
        peaks: dict[str, float] = {}
        for pid, kib in self.hwm.items():
            role = self.role.get(pid, default)
            peaks[role] = max(peaks.get(role, 0.0), kib / 1024)
        return peaks
