"""GPU busy time and memory while a benchmark row runs, from `nvidia-smi` (no CUDA context of our own).

`nvidia-smi --query-gpu=utilization.gpu,memory.used -lms 250` prints, every 250 ms, the share of the last
sample period in which a kernel ran on each GPU and the memory in use; a thread reads the lines and stamps
them with this process's monotonic clock, so they line up with the row's steady window."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time


class GpuSampler:
    """Samples every GPU from construction until `stop()`; does nothing on a box without nvidia-smi."""

    def __init__(self, started: float, period_ms: int = 250) -> None:
        self.started = started
        self.samples: list[tuple[float, int, float, float]] = []  # (seconds since started, gpu, busy %, MiB)
        self.process = None
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={period_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            parts = [part.strip() for part in line.split(",")]
            try:
                self.samples.append((time.monotonic() - self.started, int(parts[0]), float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue

    def stop(self) -> "GpuSampler":
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.thread.join(timeout=10)
        return self

    def summary(self, start: float, end: float) -> str | None:
        """'GPU 0 busy 37 % (mean in the window), peak 5,120 MiB; ...', or None without samples."""
        if not self.samples:
            return None
        parts = []
        for gpu in sorted({sample[1] for sample in self.samples}):
            mine = [sample for sample in self.samples if sample[1] == gpu]
            inside = [busy for at, _, busy, _ in mine if start <= at <= end] or [mine[-1][2]]
            parts.append(f"GPU {gpu} busy {sum(inside) / len(inside):.0f} % (mean in the steady window), "
                         f"peak memory {max(sample[3] for sample in mine):,.0f} MiB")
        return "; ".join(parts)
