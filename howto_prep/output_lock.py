"""One writer per output folder: an exclusive lock that names its holder.

`download` and `extract` take `OUT/.howto-prep.lock` before touching anything in OUT. The lock is an
flock(2) on that file, so the kernel releases it when the holder dies, even by kill -9: there is no
stale lock to clean up by hand. The file's text names the holder (tool, host, pid, start time,
command), so a second run stops at once with one line that says who to wait for. On a cluster, run
one driver per output and let Ray spread the work over the nodes (README, "Several machines").
A full or read-only output filesystem stops here already, as a one-line SystemFault (files.storage_faults).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from howto_prep.errors import OutputLocked
from howto_prep.files import storage_faults

LOCK_NAME = ".howto-prep.lock"


def holder_text(tool: str) -> str:
    return json.dumps({"tool": tool, "host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))})


def describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"{holder['tool']} (pid {holder['pid']} on {holder['host']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another run"


@contextmanager
def output_lock(out_dir: Path, tool: str) -> Iterator[Path]:
    """Hold OUT's lock for the duration; OutputLocked (exit 4) at once if another run holds it."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    with storage_faults(path):
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise OutputLocked(f"{out_dir} is in use by {describe_holder(handle.read())}; one run per output "
                               "folder (wait for it, or stop it: a rerun continues where it stopped)") from None
        with storage_faults(path):
            handle.seek(0)
            handle.truncate()
            handle.write(holder_text(tool) + "\n")
            handle.flush()
        yield path
    finally:
        with contextlib.suppress(OSError):  # a write that failed above stays buffered: the fd closes anyway
            handle.close()  # releases the flock
