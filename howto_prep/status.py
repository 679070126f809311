"""`howto-prep status`: one summary for a download folder or a shard set."""

from __future__ import annotations

import argparse
from pathlib import Path

from howto_prep import schema
from howto_prep.cli_support import is_store_url
from howto_prep.errors import UserError


def run_status(args: argparse.Namespace) -> int:
    if is_store_url(args.path):
        print(stored_status(str(args.path)))
        return 0
    path = Path(args.path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    if (path / schema.MANIFEST_FILE).exists():
        from howto_prep.download.manifest import manifest_summary

        print(manifest_summary(path))
        return 0
    if (path / schema.INDEX_FILE).exists() or any(path.glob("*.tar")) or (path / schema.FAILURES_FILE).exists():
        from howto_prep.shards import shard_set_summary

        print(shard_set_summary(path))
        return 0
    raise UserError(f"{path} holds neither {schema.MANIFEST_FILE} nor shards")


def stored_status(url: str) -> str:
    """The summary of a download output or a shard set on an object store: a download output's
    manifest copy (uploaded at the end of each run) is read in a temporary folder."""
    import tempfile

    from howto_prep.object_store import Store
    from howto_prep.shard_store import StoredSet

    store = Store.for_url(url)
    if store.exists(schema.MANIFEST_FILE):
        from howto_prep.download.manifest import manifest_summary

        with tempfile.TemporaryDirectory(prefix="howto-status-") as folder:
            (Path(folder) / schema.MANIFEST_FILE).write_bytes(store.get_bytes(schema.MANIFEST_FILE))
            return f"{url} (its manifest as of the last run's end)\n" + manifest_summary(Path(folder))
    return StoredSet(store).summary()
