"""How an evaluation is shown and kept: the printed table, the JSON report and the recall-at-K PNG."""

from __future__ import annotations

import json
from pathlib import Path

from howto_prep.files import atomic_write_text
from mft_train.evaluation.metrics import RECALL_AT
from mft_train.evaluation.plots import plot_recall_at_k

METRIC_COLUMNS = tuple(f"R{k}" for k in RECALL_AT) + ("MedR", "MeanR")


def format_table(results: dict[str, dict[str, float]], num_expected: int, title: str = "") -> str:
    """Rows = combinations, columns R@1 R@5 R@10 R@50 MedR MeanR, with chance R@1 = 100 / N beside."""
    chance = 100.0 / num_expected
    header = f"{'combination':<12}" + "".join(f"{c.replace('R', 'R@') if c[1:].isdigit() else c:>8}" for c in METRIC_COLUMNS)
    lines = [title] if title else []
    lines.append(f"{header}   chance R@1 = {chance:.2f} (N = {num_expected})")
    for name, row in results.items():
        lines.append(f"{name:<12}" + "".join(f"{row[c]:8.1f}" for c in METRIC_COLUMNS))
    return "\n".join(lines)


def write_json(path: Path, value: dict) -> None:
    """Indented JSON in the report's own key order, written atomically (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save_report(report: dict, json_path: Path) -> tuple[Path, Path]:
    """Write the JSON (without ranks) and the recall-at-K PNG of the headline similarity beside it."""
    json_path = Path(json_path)
    write_json(json_path, {k: v for k, v in report.items() if not k.startswith("_")})
    headline = report["headline"]
    png = json_path.with_suffix(".png")
    title = f"{report['benchmark']} ({report['strategy']}, {headline}), N = {report['num_expected']}"
    plot_recall_at_k(report["_ranks"][headline], report["num_expected"], png, title)
    return json_path, png
