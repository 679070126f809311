"""What a run writes into its folder besides checkpoints: config.yaml, metrics.jsonl, TensorBoard.

metrics.jsonl gets one line per step (on resume, lines after the checkpoint are dropped, so the
file tells one history); TensorBoard gets each loss term, lr and clips/s every `log_every` steps,
plus whatever scalars the hooks report (fine-tuning: eval/COMBINATION/R1...). Rank 0 only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from howto_prep.errors import UserError
from howto_prep.files import atomic_write_text
from mft_train.config import RunConfig
from mft_train.presets import dump_config
from mft_train.training.checkpoints import latest_checkpoint

if TYPE_CHECKING:
    from mft_train.training.run_store import RunMirror

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
TENSORBOARD_DIR = "tensorboard"


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, is_main: bool,
                    mirror: RunMirror | None = None) -> None:
    """Create the run folder and write config.yaml; refuse to mix runs without --resume (a run that
    exists only on the store counts: `mirror`, the store copy of an --out URL)."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir) is not None and not resume:
        where = mirror.url if mirror is not None else run_dir
        raise UserError(f"{where} already holds a run; pass --resume to continue it or choose another --out")
    if mirror is not None and not resume and mirror.holds_run():
        raise UserError(f"{mirror.url} already holds a run; pass --resume to continue it or choose another --out")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after `step` (left by a run that died after its last checkpoint); atomic.

    A line that does not parse (a kill in the middle of a write tears the last one) is dropped with
    a warning instead of blocking --resume."""
    if not path.is_file():
        return
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is torn (a killed write) and was dropped", stacklevel=2)
            continue
        if record["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class RunLogger:
    """Rank-0 logging: metrics.jsonl and the tqdm bar every step; TensorBoard every `every` steps."""

    def __init__(self, run_dir: Path, enabled: bool, step: int, total: int, every: int = 1, desc: str = "train") -> None:
        self.enabled, self.every = enabled, every
        self.metrics = Path(run_dir) / METRICS_FILE
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        truncate_metrics(self.metrics, step)
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=step or None)
        self.bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
        self.handle = open(self.metrics, "a")

    def log(self, step: int, loss: float, parts: dict[str, float], lr: float, clips_per_s: float) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps({"step": step, "loss": loss, **{f"loss_{k}": v for k, v in parts.items()}, "lr": lr, "clips_per_s": clips_per_s}) + "\n")
        self.handle.flush()
        self.bar.update(1)
        if step % self.every and step != 1:
            return
        self.scalars({"loss/total": loss, **{f"loss/{term}": value for term, value in parts.items()},
                      "lr": lr, "clips_per_s": clips_per_s}, step)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{clips_per_s:.0f}")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars at `step` (rank 0)."""
        if self.enabled:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.writer.close()
            self.handle.close()
