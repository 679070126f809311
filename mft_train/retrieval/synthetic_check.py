"""Does a text search find the right seconds? Scored against the synthetic corpus's ground truth.

Why: `howto-prep synth` knows which step every second of every video shows (synth_truth.json), so a
search for one step's narration words can be scored exactly: a window "is" step s when segments of
s cover more than half of it (so a window is at most one step). precision@k = the share of the top k windows that are s; chance = the
share of all indexed windows that are s (what a random ranking scores on average). The demo ends with
this (scripts/demo.sh):

  python -m mft_train.retrieval.synthetic_check query --index INDEX --truth synth_truth.json
      prints the narration words of the step shown by the most windows of the index (among the steps
      whose words are in the index's vocabulary): the demo's query
  python -m mft_train.retrieval.synthetic_check score --index INDEX --truth synth_truth.json \
      --results search.json [--all-steps]
      the hits of `mft-train search --json` with the step each one shows, precision@k against chance;
      --all-steps also searches every step's words (same model, same index) and averages: the verdict
      is then that mean (one query's precision@5 moves in steps of 0.2 and depends on the step asked)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from howto_prep import schema
from howto_prep.errors import UserError
from howto_prep.cli_support import main_for
from mft_train.retrieval import index_store

COVER = 0.5  # a window is a step when that step covers more than half of it


def load_truth(path: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """({video id: its segments}, the steps) of a synth_truth.json."""
    try:
        truth = json.loads(Path(path).read_text())
        videos = {v["video_id"]: v["segments"] for v in truth["videos"] + truth["heldout"]}
        return videos, truth["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a synthetic corpus's synth_truth.json") from None


def window_steps(video_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, truth: dict[str, list[dict]],
                 steps: int) -> np.ndarray:
    """(windows, steps) bool: which step each window shows (at most one: more than COVER of it)."""
    shows = np.zeros((len(video_ids), steps), bool)
    for row, (video_id, start, end) in enumerate(zip(video_ids.tolist(), starts.tolist(), ends.tolist())):
        covered = np.zeros(steps)
        for segment in truth.get(video_id, []):
            covered[segment["step"]] += max(0.0, min(end, segment["end"]) - max(start, segment["start"]))
        if end > start:
            shows[row] = covered > COVER * (end - start)
    return shows


def labelled_windows(index: Path, truth_path: Path) -> tuple[dict, index_store.WindowTable, np.ndarray, list[dict]]:
    manifest = index_store.read_manifest(index)
    table = index_store.WindowTable.load(index, manifest)
    truth, steps = load_truth(truth_path)
    shows = window_steps(table.video_id, table.start, table.end, truth, len(steps))
    if not np.isin(table.video_id, list(truth)).any():
        raise UserError(f"no video of index {index} is in {truth_path}: not the same synthetic corpus")
    return manifest, table, shows, steps


def chosen_step(shows: np.ndarray, steps: list[dict], vocabulary: set[str]) -> int:
    """The step with the most windows in the index among those whose narration words are all in the
    index's vocabulary (the model has seen them in training; else: at least one), ties the lower index."""
    counts = shows.sum(axis=0)
    if counts.max() == 0:
        raise UserError("no indexed window shows a single step for more than half its length; use a shorter --window")
    for rule in (all, any):
        known = np.array([rule(word in vocabulary for word in step["words"]) for step in steps])
        if (counts * known).max() > 0:
            return int(np.argmax(counts * known))
    raise UserError("no step shown in the index has a narration word in the index's vocabulary")


def precision(hits: list[dict], shows: np.ndarray, step: int, k: int) -> float:
    return sum(bool(shows[hit["row"], step]) for hit in hits[:k]) / k


def index_vocabulary(manifest: dict) -> set[str]:
    words = Path(manifest["vocab"]["root"]) / schema.VOCAB_DIR / schema.VOCAB_WORDS
    try:
        return set(words.read_text().splitlines())
    except OSError:
        raise UserError(f"the index's vocabulary {words} is gone") from None


def run_query(args: argparse.Namespace) -> int:
    manifest, _, shows, steps = labelled_windows(Path(args.index), Path(args.truth))
    step = steps[chosen_step(shows, steps, index_vocabulary(manifest))]
    print(" ".join(step["words"]))
    print(f"synthetic_check: the shown query follows a rule fixed before any search (the narration words of the "
          f"step the most windows show, among steps whose words the vocabulary holds): step {step['index']} "
          f"{step['name']!r}, shown by {int(shows[:, step['index']].sum())} of {len(shows)} windows", file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace) -> int:
    manifest, table, shows, steps = labelled_windows(Path(args.index), Path(args.truth))
    try:
        report = json.loads(Path(args.results).read_text())
        hits = report["results"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{args.results} is not the JSON of `mft-train search --json`") from None
    words = set(report.get("words", [])) | set(report.get("out_of_vocabulary", []))
    step = next((s["index"] for s in steps if set(s["words"]) <= words), None)
    if step is None:
        raise UserError(f"the query {report.get('query')!r} is not the narration words of a synthetic step")
    k = args.k
    if len(hits) < k:
        raise UserError(f"{args.results} holds {len(hits)} hits; search with --top {k} or more")
    name = steps[step]["name"]
    print(f"query {report['query']!r} = narration of step {step} {name!r}; the top {k} hits:")
    for hit in hits[:k]:
        shown = [steps[s]["name"] for s in np.flatnonzero(shows[hit["row"]])]
        mark = "yes" if shows[hit["row"], step] else "no"
        print(f"  {hit['rank']:>2}. {hit['video_id']} {hit['start']:6.1f}-{hit['end']:6.1f} s  score {hit['score']:.3f}  "
              f"shows {', '.join(shown) or '(no single step)'}: {mark}")
    p_at_k, chance = precision(hits, shows, step, k), shows[:, step].mean()
    print(f"this query: precision@{k} {p_at_k:.2f} vs chance {chance:.2f} ({int(shows[:, step].sum())} of {len(table)} "
          f"windows show {name!r}): {'above' if p_at_k > chance else 'not above'} chance")
    if args.all_steps:
        # One query's precision@5 moves in steps of 0.2 and depends on which step was asked for; the
        # verdict is the mean over one query per step, same model, same index.
        p_at_k, chance, count = all_steps(Path(args.index), manifest, shows, steps, k)
        print(f"one query per step, all {count} steps shown in the index: mean precision@{k} {p_at_k:.2f} "
              f"vs mean chance {chance:.2f}")
    verdict = "beats" if p_at_k > chance else "does not beat"
    print(f"verdict: the search {verdict} chance ({p_at_k:.2f} vs {chance:.2f}"
          f"{f', {p_at_k / chance:.1f}x' if chance > 0 else ''})")
    return 0


def all_steps(index: Path, manifest: dict, shows: np.ndarray, steps: list[dict], k: int) -> tuple[float, float, int]:
    """Mean precision@k and mean chance over every step that some window shows, one search each."""
    from mft_train.retrieval.query import QueryEncoder
    from mft_train.retrieval.search import Searcher

    searcher = Searcher(index, manifest, "va")
    encoder = QueryEncoder(manifest)
    scores, chances = [], []
    for step in steps:
        if not shows[:, step["index"]].any():
            continue
        try:
            _, embedding = encoder.encode(" ".join(step["words"]))
        except UserError:  # none of its words in the vocabulary: it cannot be searched for
            continue
        hits = searcher.search(embedding, k)
        scores.append(precision(hits, shows, step["index"], k))
        chances.append(shows[:, step["index"]].mean())
    if not scores:
        raise UserError("no step's words are in the index's vocabulary")
    return float(np.mean(scores)), float(np.mean(chances)), len(scores)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthetic_check", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    query = sub.add_parser("query", help="the narration words of the step most windows show")
    score = sub.add_parser("score", help="precision@k of a search's hits against the ground truth")
    for command in (query, score):
        command.add_argument("--index", type=Path, required=True)
        command.add_argument("--truth", type=Path, required=True)
    query.set_defaults(handler="mft_train.retrieval.synthetic_check:run_query")
    score.add_argument("--results", type=Path, required=True, help="the output of `mft-train search --json`")
    score.add_argument("--k", type=int, default=5)
    score.add_argument("--all-steps", action="store_true")
    score.set_defaults(handler="mft_train.retrieval.synthetic_check:run_score")
    return parser


if __name__ == "__main__":
    raise SystemExit(main_for("synthetic_check", build_parser, None))
