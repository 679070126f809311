"""How an evaluation is shown and kept: the printed table, the JSON report, its per-query JSON lines and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

from howto_prep.extract.protocols import describe
from howto_prep.files import atomic_write_text
from mft_train.evaluation.metrics import RECALL_AT
from mft_train.evaluation.plots import plot_recall_at_k

METRIC_COLUMNS = tuple(f"R{k}" for k in RECALL_AT) + ("MedR", "MeanR")
QUERIES_SUFFIX = ".queries.jsonl"


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


def report_title(report: dict, similarity: str) -> str:
    """The table's title: the protocol line (name, N, query rule, missing clips), then what was scored."""
    queries = ""
    if report.get("num_expected_queries", report["num_expected"]) != report["num_expected"]:
        queries = (f"; t->x over {report['num_queries']} of {report['num_expected_queries']} sentence queries "
                   "(x->t: a clip's best sentence)")
    return (f"{describe(report.get('protocol'), report.get('missing'))}\n"
            f"{report['benchmark']}: {report['num_clips']} clips of {report['num_expected']} expected{queries}, "
            f"strategy {report['strategy']}, {similarity} similarity")


def queries_path(json_path: Path) -> Path:
    """Where a report's per-query JSON lines go: beside it, `NAME.queries.jsonl`."""
    return Path(json_path).with_suffix(QUERIES_SUFFIX)


def write_query_lines(path: Path, records: list[dict]) -> Path:
    """One JSON line per query (clip id, sentence, ranks), written atomically (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def save_report(report: dict, json_path: Path) -> tuple[Path, Path, Path]:
    """Write the JSON (without ranks), the per-query JSON lines and the recall-at-K PNG of the headline similarity."""
    json_path = Path(json_path)
    write_json(json_path, {k: v for k, v in report.items() if not k.startswith("_")})
    queries = write_query_lines(queries_path(json_path), report.get("_queries", []))
    headline = report["headline"]
    png = json_path.with_suffix(".png")
    protocol = (report.get("protocol") or {}).get("name", report["benchmark"])
    title = f"{protocol} ({report['strategy']}, {headline}), N = {report['num_expected']}"
    plot_recall_at_k(report["_ranks"][headline], report["num_expected"], png, title, report.get("_queries_expected"))
    return json_path, png, queries
