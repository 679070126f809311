"""Before any work: every alive Ray node must see the same output folder and the same inputs.

A cluster whose nodes mount different things at one path (a node-local disk where the others have
the shared filesystem, a mount missing on one node) would otherwise write shards nobody else sees or
fail video by video. One tiny task per node (hard node affinity, no CPU) compares each path with what
the driver sees:

- the output folder (writable): the driver writes a token file with random content and a hidden name
  (`.node-check-<hex>`); the node must read back the same content and write its own reply beside it
  (`.node-check-<hex>.<node>`), which the driver must then see: both directions, since each node
  writes shards and the driver reads their JSONs. Every such file is removed afterwards.
- an input file: the same size and mtime (to within MTIME_TOLERANCE_NS: some filesystems keep
  coarser times).
- an input folder: it is a folder, and one file inside it, chosen by the driver, has the same size
  and mtime there.

The driver's own node is checked in the driver's process (no task: a one-node local Ray costs a few
file operations). A node that does not answer within the timeout is a SystemFault naming it; a node
that died meanwhile (Ray no longer lists it alive) is left out, as it gets no work either.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from howto_prep.errors import SystemFault, UserError
from howto_prep.files import remove_quietly, storage_faults

logger = logging.getLogger(__name__)

TOKEN_PREFIX = ".node-check-"
OUTPUT_OPTIONS = ("--out",)  # the options whose path is written (checked with a token), unless told otherwise
MTIME_TOLERANCE_NS = 1_000_000_000  # FAT keeps 2 s, some FUSE mounts 1 s; a different file differs in size anyway
TOKEN_RETRY_S = 2.0  # a node that does not see the token at once looks again for this long (lazy attribute caches)
SCAN_LIMIT = 2000  # directory entries an input folder's sample file is looked for in (a huge folder is not walked)
CHANGING_SUFFIXES = (".sqlite", ".db", "-journal", "-wal", "-shm", ".lock")  # rewritten in place: never the sample


def check_nodes_see(paths: Mapping[str, Path | str | None], timeout_s: float = 60.0,
                    outputs: Collection[str] = OUTPUT_OPTIONS) -> list[dict]:
    """Check, on every alive Ray node, that each named path is the same file or folder the driver sees.

    `paths` maps an option ('--out', '--videos', ...) to its path (None: left out); the options in
    `outputs` are folders the run writes (an output folder that does not exist yet is created).
    Call after `ray.init`. Returns one record per checked node, the driver's node first:
    {"node": id hex, "host": ip, "name": Ray's node name, "driver": True for the driver's node,
    "seconds": how long its check took}. Raises SystemFault with one line naming the option, the path
    and the node(s) when a node sees something else or does not answer within `timeout_s`.
    """
    started = time.monotonic()
    probes = _driver_probes({option: Path(path) for option, path in paths.items() if path is not None}, set(outputs))
    try:
        nodes = alive_nodes()
        here = _driver_node_id()
        records: list[dict] = []
        failures: list[tuple[dict, list[tuple[str, str]]]] = []
        if here in nodes:  # the driver's own node: its view is the driver's, no task needed
            record = _node_record(nodes[here], driver=True)
            record["seconds"] = round(time.monotonic() - started, 3)
            records.append(record)
        remote = [node for node_id, node in nodes.items() if node_id != here]
        if remote:
            answers, silent = _run_probes(remote, probes, timeout_s)
            for node, answer in answers:
                problems = answer["problems"] + _missing_replies(probes, answer)
                if problems:
                    failures.append((node, problems))
                else:
                    records.append({**_node_record(node, driver=False), "seconds": answer["seconds"]})
            if silent:
                still_alive = alive_nodes()
                gone = [node for node in silent if node["NodeID"] not in still_alive]
                for node in gone:
                    logger.warning("node check: node %s died during the check; it gets no work", _node_text(node))
                hung = [node for node in silent if node["NodeID"] in still_alive]
                if hung:
                    raise SystemFault(f"{_nodes_text(hung)} did not answer the shared-filesystem check within "
                                      f"{timeout_s:g} s (a hung mount, or a dying node?): every node of the cluster "
                                      "must see the output and the inputs on a shared filesystem")
        if failures:
            raise SystemFault(_failure_line(probes, failures))
        return records
    finally:
        _remove_tokens(probes)


def alive_nodes() -> dict[str, dict]:
    """Ray's alive nodes by id hex (ray.nodes() entries)."""
    import ray

    return {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}


def _driver_node_id() -> str | None:
    """The node the driver runs on; None for a Ray Client driver (it runs elsewhere: every node gets a task)."""
    import ray

    try:
        if ray.util.client.ray.is_connected():
            return None
    except AttributeError:
        pass
    return ray.get_runtime_context().get_node_id()


def _driver_probes(paths: dict[str, Path], outputs: set[str]) -> list[dict]:
    """What each node must find, as the driver sees it (the output tokens are written here)."""
    probes: list[dict] = []
    try:
        for option, path in paths.items():
            path = Path(os.path.abspath(path))
            if option in outputs:
                probes.append(_output_probe(option, path))
            elif path.is_dir():
                probes.append(_folder_probe(option, path))
            elif path.exists():
                stat = path.stat()
                probes.append({"option": option, "path": str(path), "kind": "file", "size": stat.st_size,
                               "mtime_ns": stat.st_mtime_ns})
            else:
                raise UserError(f"{option} {path} does not exist")
    except BaseException:
        _remove_tokens(probes)
        raise
    return probes


def _output_probe(option: str, folder: Path) -> dict:
    token = secrets.token_hex(16)
    token_path = folder / f"{TOKEN_PREFIX}{token[:12]}"
    with storage_faults(token_path):
        folder.mkdir(parents=True, exist_ok=True)
        with open(token_path, "x", encoding="ascii") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
    return {"option": option, "path": str(folder), "kind": "output", "token_path": str(token_path), "token": token}


def _folder_probe(option: str, folder: Path) -> dict:
    probe: dict[str, Any] = {"option": option, "path": str(folder), "kind": "folder", "member": None}
    member = _sample_file(folder)
    if member is not None:
        stat = member.stat()
        probe.update(member=str(member.relative_to(folder)), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return probe


def _sample_file(folder: Path) -> Path | None:
    """One regular, non-hidden file under `folder` (breadth first, at most SCAN_LIMIT entries looked at)
    that is not rewritten in place (a manifest database would change size under a running download)."""
    queue, seen = [folder], 0
    while queue and seen < SCAN_LIMIT:
        current = queue.pop(0)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_file(follow_symlinks=True) and not entry.name.endswith(CHANGING_SUFFIXES):
                    return Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    queue.append(Path(entry.path))
            except OSError:
                continue
    return None


def _run_probes(nodes: list[dict], probes: list[dict], timeout_s: float) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """Run the probe on each node; ([(node, answer)], nodes that gave no answer in time or died)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(probe_node)
    refs = {task.options(num_cpus=0, max_retries=0, name="howto-prep node check",
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(probes, node["NodeID"]): node for node in nodes}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    answers, silent = [], [refs[ref] for ref in pending]
    for ref in ready:
        try:
            answers.append((refs[ref], ray.get(ref)))
        except Exception as err:  # the node died, its worker crashed, the task could not be placed
            logger.warning("node check: no answer from node %s: %s", _node_text(refs[ref]),
                           " ".join(str(err).split())[:300])
            silent.append(refs[ref])
    for ref in pending:
        ray.cancel(ref, force=True)
    return answers, silent


def probe_node(probes: list[dict], node_id: str) -> dict:
    """On one node: compare each probe with what this node sees. Returns
    {"problems": [(option, why)], "replies": [reply file paths written], "seconds": float}."""
    started = time.monotonic()
    problems: list[tuple[str, str]] = []
    replies: list[str] = []
    for probe in probes:
        try:
            why = _check(probe, node_id, replies)
        except OSError as err:
            why = f"cannot read it there ({errno.errorcode.get(err.errno, err.errno)})"
        if why:
            problems.append((probe["option"], why))
    return {"problems": problems, "replies": replies, "seconds": round(time.monotonic() - started, 3)}


def _check(probe: dict, node_id: str, replies: list[str]) -> str | None:
    """Why this node does not see `probe` as the driver does (None: it does)."""
    path = Path(probe["path"])
    if probe["kind"] == "output":
        token_path = Path(probe["token_path"])
        deadline = time.monotonic() + TOKEN_RETRY_S
        while True:
            seen = _read_token(token_path)
            if seen == probe["token"] or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if seen is None:
            return "the folder is missing there" if not path.is_dir() else "a file the driver wrote there is missing"
        if seen != probe["token"]:
            return "a file the driver wrote there has other content"
        reply = Path(f"{token_path}.{node_id[:16]}")
        try:
            with open(reply, "w", encoding="ascii") as handle:
                handle.write(probe["token"])
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            return f"it is not writable there ({errno.errorcode.get(err.errno, err.errno)})"
        replies.append(str(reply))
        return None
    if probe["kind"] == "file":
        if not path.exists():
            return "it is missing there"
        return _same_file(path, probe)
    if not path.is_dir():
        return "it is missing there" if not path.exists() else "it is not a folder there"
    if probe["member"] is None:
        return None
    member = path / probe["member"]
    if not member.exists():
        return f"{probe['member']} is missing there"
    why = _same_file(member, probe)
    return f"{probe['member']}: {why}" if why else None


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        return ""


def _same_file(path: Path, probe: dict) -> str | None:
    stat = path.stat()
    if stat.st_size != probe["size"]:
        return f"a different file there ({stat.st_size} bytes, the driver sees {probe['size']})"
    if abs(stat.st_mtime_ns - probe["mtime_ns"]) >= MTIME_TOLERANCE_NS:
        return "a different file there (another modification time)"
    return None


def _missing_replies(probes: list[dict], answer: dict) -> list[tuple[str, str]]:
    """The output folders where the node's reply does not reach the driver (it wrote where the driver cannot see)."""
    problems = []
    failed = {option for option, _ in answer["problems"]}
    replies = answer["replies"]
    for probe in probes:
        if probe["kind"] != "output" or probe["option"] in failed:
            continue
        mine = [reply for reply in replies if reply.startswith(probe["token_path"] + ".")]
        if not mine or _read_token(Path(mine[0])) != probe["token"]:
            problems.append((probe["option"], "what the node writes there does not reach the driver"))
    return problems


def _remove_tokens(probes: Iterable[dict]) -> None:
    """Remove the driver's tokens and every node's reply beside them."""
    for probe in probes:
        if probe.get("kind") != "output":
            continue
        token_path = Path(probe["token_path"])
        remove_quietly(token_path)
        try:
            names = [name for name in os.listdir(token_path.parent) if name.startswith(token_path.name + ".")]
        except OSError:
            continue
        for name in names:
            remove_quietly(token_path.parent / name)


def _node_record(node: dict, driver: bool) -> dict:
    return {"node": node["NodeID"], "host": node.get("NodeManagerAddress", "?"), "name": node.get("NodeName", ""),
            "driver": driver}


def _node_text(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (id {node['NodeID'][:8]})"


def _nodes_text(nodes: list[dict]) -> str:
    return ("node " if len(nodes) == 1 else "nodes ") + ", ".join(_node_text(node) for node in nodes)


def _failure_line(probes: list[dict], failures: list[tuple[dict, list[tuple[str, str]]]]) -> str:
    """One line: the first option some node does not see (the output first), which nodes, why; others named."""
    kinds = {probe["option"]: probe for probe in probes}
    order = [probe["option"] for probe in sorted(probes, key=lambda probe: probe["kind"] != "output")]
    bad = {option for _, problems in failures for option, _ in problems}
    first = next(option for option in order if option in bad)
    nodes = [node for node, problems in failures if any(option == first for option, _ in problems)]
    why = next(text for node, problems in failures for option, text in problems if option == first)
    probe = kinds[first]
    noun = "file" if probe["kind"] == "file" else "folder"
    what = "the output" if probe["kind"] == "output" else "the inputs"
    others = sorted(bad - {first}, key=order.index)
    also = f"; the same holds for {', '.join(others)}" if others else ""
    return (f"{first} {probe['path']} is not the same {noun} on {_nodes_text(nodes)}: {why} (a node-local path?)"
            f"{also}; every node of the cluster must see {what} on a shared filesystem")
