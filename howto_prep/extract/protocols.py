"""Named evaluation protocols: which list, how many clips (N), which sentence queries, what counts as missing.

A retrieval number can sit beside a paper's only when it was produced under the paper's protocol.
The protocol is decided when the clip set is built (from the annotation inputs, or asserted with
`--protocol`), kept in the set's `clips.json`, and printed and saved with every evaluation. The
table is docs/recipes.md's "Evaluation protocols"; `published_n` is the N the papers report with.
A list that gives another N (a fixture, a trimmed list) keeps the protocol's name but is marked
non-standard, and every report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from howto_prep.errors import UserError
from howto_prep.extract.annotations import ClipList

CUSTOM = "custom"
MISSING_RULE = ("clips whose video is absent or failed to decode, or whose segment lies outside the video file, "
                "count as misses against N")


@dataclass(frozen=True)
class Protocol:
    """One benchmark protocol as the papers use it."""

    name: str
    benchmark: str  # youcook2 | msrvtt: decides the evaluation lengths
    inputs: str  # what `howto-prep extract` is given
    published_n: int  # clips (targets) in the papers' tables
    query: str  # which sentence is the query
    all_sentences: bool = False  # every sentence of a clip is a query (else its one sentence)

    def matches(self, clips: ClipList) -> bool:
        """Whether these annotation inputs are the ones this protocol is defined on."""
        return _RULES[self.name](clips)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("msrvtt-1ka", "msrvtt", "--msrvtt INFO.json [...] --test-list MSRVTT_JSFUSION_test.csv", 1000,
             "the list's `sentence` (one per video)"),
    Protocol("msrvtt-full", "msrvtt", "--msrvtt test_videodatainfo.json --split test", 2990,
             "every one of the video's 20 sentences (59,800 queries)", all_sentences=True),
    Protocol("youcook2-val", "youcook2", "--clips validation_youcook.csv", 3350,
             "the list's `text` (one per segment)"),
    Protocol("youcook2-val-all", "youcook2", "--youcook2 youcookii_annotations_trainval.json --split validation",
             3492, "the segment's `sentence`"),
)}

_RULES = {
    "msrvtt-1ka": lambda clips: clips.list_format == "msrvtt-jsfusion",
    "msrvtt-full": lambda clips: clips.list_format == "msrvtt-json" and clips.split == "test",
    "youcook2-val": lambda clips: clips.list_format == "clips-csv" and {"task", "text"} <= set(clips.columns),
    "youcook2-val-all": lambda clips: clips.list_format == "youcook2-json" and clips.split == "validation",
}


def choose_protocol(clips: ClipList, asked: str | None = None) -> Protocol | None:
    """The protocol these inputs define (None: a custom set); `asked` must agree with the inputs."""
    found = next((protocol for protocol in PROTOCOLS.values() if protocol.matches(clips)), None)
    if asked is None or asked == CUSTOM:
        return None if asked == CUSTOM else found
    if asked not in PROTOCOLS:
        raise UserError(f"unknown protocol {asked!r}; choose from {', '.join(PROTOCOLS)} or custom")
    if found is None or found.name != asked:
        raise UserError(f"--protocol {asked} is defined on {PROTOCOLS[asked].inputs}; these inputs are "
                        f"{found.name if found else 'a custom set'}")
    return found


def protocol_record(clips: ClipList, protocol: Protocol | None) -> dict:
    """What clips.json keeps about the protocol (evaluate prints and saves it with every table)."""
    n = len(clips)
    if protocol is None:
        return {"name": CUSTOM, "benchmark": clips.benchmark, "num_expected": n, "num_queries": n,
                "published_n": None, "standard": False, "query": "the clip's first sentence",
                "all_sentences": False, "list": clips.split, "missing": MISSING_RULE}
    queries = sum(len(clip.captions) for clip in clips) if protocol.all_sentences else n
    return {"name": protocol.name, "benchmark": protocol.benchmark, "num_expected": n, "num_queries": queries,
            "published_n": protocol.published_n, "standard": n == protocol.published_n, "query": protocol.query,
            "all_sentences": protocol.all_sentences, "list": clips.split, "missing": MISSING_RULE}


def describe(record: dict | None, missing: int | None = None) -> str:
    """One line naming the protocol, its N and the query rule, for tables and logs."""
    if not record:
        return "protocol: not recorded (a clip set built before protocols were kept)"
    name = record.get("name", CUSTOM)
    n = record.get("num_expected")
    line = f"protocol {name} ({record.get('list')}): N = {n}, query = {record.get('query')}"
    if name != CUSTOM and not record.get("standard", False):
        line += f"; NOT the published N = {record.get('published_n')}: not comparable with the papers"
    if missing is not None:
        line += f"; {missing} missing clip(s) count as misses"
    return line
