"""`mft-train evaluate --json s3://bucket/reports/NAME.json`: the report on an object store.

The three files `save_report` writes (NAME.json, NAME.queries.jsonl, NAME.png) are written into a
temporary local folder exactly as on disk, then each is uploaded whole (an object appears whole or
not at all), the .json last: the file a reader looks for comes only after the ones it names. The
store is checked with one listing before the evaluation starts, so a refused or missing bucket costs
no encoding (SystemFault, exit 5).
"""

from __future__ import annotations

from pathlib import Path

from howto_prep.local_copies import split_url
from howto_prep.object_store import Store


class StoredReport:
    """Where a URL --json report goes: the store of its folder and the file's name."""

    def __init__(self, url: str) -> None:
        folder, self.name = split_url(url)  # a URL naming only a bucket: one line, exit 2
        self.store = Store.for_url(folder)
        self.store.check_access()

    def url_of(self, path: Path) -> str:
        return self.store.url_of(Path(path).name)

    def publish(self, json_path: Path, png: Path, queries: Path) -> None:
        """The query lines and the plot first, the JSON report last, each whole under its own name."""
        for path in (queries, png, json_path):
            self.store.put_file(path, Path(path).name)
