"""Shared CLI plumbing: lazy subcommand dispatch, one-line error reporting, and where library logs go."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Callable, Sequence, Union

from howto_prep.errors import ExitCode, ToolError

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
LABELS = {ExitCode.SYSTEM_FAULT: "system fault", ExitCode.DIVERGED: "diverged", ExitCode.INTERRUPTED: "stopped"}


def local_path(value: str) -> Path:
    """A path on a local or shared filesystem. A URL (s3://, gs://, http://...) is refused: taken as a
    path it would silently become a local folder named "s3:" while the user believes it is the bucket."""
    if URL_SCHEME.match(value):
        raise argparse.ArgumentTypeError(f"{value}: URLs are not supported (yet); give a local or "
                                         "shared-filesystem path")
    return Path(value)


STORE_SCHEMES = ("s3", "s3a", "gs", "gcs")  # object stores this toolkit writes and reads (object_store.py)
Location = Union[Path, str]  # a local/shared-filesystem folder (Path) or an object-store URL (str)


def location(value: str) -> Location:
    """A folder that may also be on object storage: `s3://bucket/prefix` or `gs://bucket/prefix` stays
    a URL string (handled by howto_prep.object_store); any other URL is refused (taken as a path it
    would become a local folder named "http:"), everything else is a Path."""
    match = URL_SCHEME.match(value)
    if not match:
        return Path(value)
    scheme = match.group(0)[:-3].lower()
    if scheme not in STORE_SCHEMES:
        raise argparse.ArgumentTypeError(f"{value}: {scheme}:// URLs are not supported; give a local or "
                                         "shared-filesystem path, or an s3:// or gs:// URL")
    return value


def input_file(value: str) -> Location:
    """An input file that may also be an object: `s3://bucket/key` or `gs://bucket/key` stays a URL
    string, which the handler copies once into the local cache (local_copies.local_file) and then reads
    as a local file; any other URL is refused as by `location`, and so is a URL naming only a bucket."""
    found = location(value)
    if isinstance(found, str) and "/" not in found.split("://", 1)[1].strip("/"):
        raise argparse.ArgumentTypeError(f"{value} names a bucket, not a file: give s3://bucket/key")
    return found


def secret_file(value: str) -> Path:
    """A file holding a secret (mirror password, YouTube cookies): always a local path. A URL is
    refused: fetching it would need store credentials, put the secret in the cache folder and in
    the store's access logs; keep it in a local file readable by you only (chmod 600)."""
    if URL_SCHEME.match(value):
        raise argparse.ArgumentTypeError(f"{value}: a secret must be a local file (it is never fetched from a "
                                         "bucket: copy it to this machine, chmod 600)")
    return Path(value)


def is_store_url(value: object) -> bool:
    """True for what `location` returned for an object-store URL."""
    return isinstance(value, str) and bool(URL_SCHEME.match(value))


def run_handler(prog: str, args: argparse.Namespace) -> int:
    """Import `args.handler` ("module:function") only when needed and run it.

    Heavy imports (torch, ray) happen inside the handler, so `--help` stays fast.
    """
    module_name, func_name = args.handler.split(":")
    try:
        handler: Callable[[argparse.Namespace], int | None] = getattr(
            importlib.import_module(module_name), func_name
        )
        return int(handler(args) or 0)
    except ToolError as err:  # every failure of ours: one line and its own exit code
        label = LABELS.get(err.exit_code, "error")
        print(f"{prog}: {label}: {err}", file=sys.stderr)
        return int(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


class CurrentStderr(logging.StreamHandler):
    """A handler that writes each record to whatever sys.stderr is at that moment (pytest swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


PACKAGES = ("howto_prep", "mft_train")


def configure_logging() -> None:
    """The library's loggers print their message alone on stderr, as the CLI's own lines do; once per process."""
    for name in PACKAGES:
        package = logging.getLogger(name)
        if not any(isinstance(handler, CurrentStderr) for handler in package.handlers):
            handler = CurrentStderr()
            handler.setFormatter(logging.Formatter("%(message)s"))
            package.addHandler(handler)
            package.setLevel(logging.INFO)
            package.propagate = False


def main_for(prog: str, build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_handler(prog, args)
