"""What `mft-train finetune` prints and keeps at the end: the best epoch's evaluation and every epoch's row.

OUT/results.json: init, shards, chance, best epoch and every epoch's loss and metrics;
OUT/best-eval.json and .png: the full report of the best epoch; stdout: both tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mft_train.data.eval_sets import ClipSet
from mft_train.evaluation.report import format_table, report_title, save_report, write_json
from mft_train.training.checkpoints import BEST_FILE

RESULTS_FILE = "results.json"
SELECTION_NOTE = ("note: the best epoch is chosen on these same evaluation clips, so its row is optimistic; "
                  "the last epoch's row is unselected (evaluate best.pt on another split for a clean number)")
HEADLINE = ("t->va", "t->v")


def format_results(history: list[dict], best_epoch: int, chance: float) -> str:
    """One row per epoch: mean loss and the headline metrics; the best epoch is starred."""
    header = (f"{'epoch':>5} {'loss':>8} " + " ".join(f"{c + ' R@' + k:>11}" for c in HEADLINE for k in ("1", "5", "10"))
              + f" {'t->va MedR':>11}")
    lines = [f"fine-tuning results (chance R@1 = {chance:.2f})", header]
    for row in history:
        loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
        metrics = row["results"]
        cells = " ".join(f"{metrics[c]['R' + k]:11.1f}" for c in HEADLINE for k in ("1", "5", "10"))
        star = " *" if row["epoch"] == best_epoch else ""
        lines.append(f"{row['epoch']:>5} {loss:>8} {cells} {metrics['t->va']['MedR']:11.1f}{star}")
    lines.append(f"* best epoch {best_epoch} (by t->va R@1), saved as {BEST_FILE}")
    lines.append(SELECTION_NOTE)
    return "\n".join(lines)


def print_and_save_results(run_dir: Path, history: list[dict], best: dict, init_path: str | None,
                           train_set: ClipSet, eval_set: ClipSet) -> None:
    """results.json, best-eval.json/.png, and the two tables on stdout (rank 0, after training)."""
    report = best["report"]
    chance = report["chance_R1"]
    best_epoch = best["row"]["epoch"]
    write_json(run_dir / RESULTS_FILE, {"init": init_path, "train_shards": str(train_set.root),
                                        "eval_shards": str(eval_set.root), "num_expected": report["num_expected"],
                                        "chance_R1": chance, "best_epoch": best_epoch, "selection": SELECTION_NOTE,
                                        "epochs": history})
    json_path, png, queries = save_report(report, run_dir / "best-eval.json")
    print(format_table(report["results"][report["headline"]], report["num_expected"],
                       f"best epoch {best_epoch}: {report_title(report, report['headline'])}"))
    print()
    print(format_results(history, best_epoch, chance))
    print(f"finetune: wrote {run_dir / BEST_FILE}, {run_dir / RESULTS_FILE}, {json_path}, {queries}, {png}",
          file=sys.stderr)
