"""A real multi-node Ray cluster on one machine, for tests: a head and worker nodes, each its own raylet.

    with RayCluster(workers=2) as cluster:          # 3 nodes: head + 2 workers, one machine, one IP
        run the CLI with --address cluster.address and env=cluster.env()
        cluster.remove_node("w1")                  # SIGKILL its raylet and workers; waits until Ray says dead
        cluster.add_worker("w3", private=path)     # a node on which `path` is an empty node-local tmpfs

`address` is 127.0.0.1:<head port>; Ray registers every node with the machine's IP (the same for all
of them: tell nodes apart by `node_id(name)`). Every node is a `ray start --block` child in its own
session, named with Ray's `--node-name` (head, w1, w2, ...), with every port picked free (nothing
collides with another cluster on the machine), under one private RAY_TMPDIR (short: Ray's socket
paths must fit in 107 bytes; each worker node has its own --temp-dir in it, so nodes starting together
never race for one session's socket names). Stopping kills what this cluster started, as
`ray stop --force` would (SIGKILL; a graceful stop takes Ray 10-15 s): each node's process tree, every
process carrying its node marker (TEST_RAY_CLUSTER_NODE, inherited by the raylet's workers), then any
process whose environment or command line names the cluster's RAY_TMPDIR. `ray stop` itself is never
used: it kills every Ray process of the machine by name, other clusters' included.

A node "in a private mount namespace" runs under `unshare -m --propagation private`, with a tmpfs
mounted over `private` first: on that node (its raylet and every worker it starts) the path is an
empty folder of its own, while the rest of the machine keeps the real one. That needs root (or
CAP_SYS_ADMIN) and an existing folder at `private`; `RayCluster.can_unshare()` says whether it works.

Ray 2.60's `ray start` turns token authentication on (and worker nodes need RAY_AUTH_MODE=token to
join): every process of the cluster, and every child given `env()`, uses this cluster's own token
(RAY_AUTH_TOKEN_PATH in its RAY_TMPDIR), never ~/.ray/auth_token.

Node liveness is read from the GCS by a short-lived child process (no driver joins the cluster, so no
worker is started for it). The head gets faster health checks (a killed node is marked dead in about
3-6 s instead of about 15-30 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RAY = str(Path(sys.executable).with_name("ray"))
NODE_MARKER = "TEST_RAY_CLUSTER_NODE"  # in each node's environment: <RAY_TMPDIR>/<node name>
HEALTH_CHECK_ENV = {  # GCS side: a raylet that stops answering is dead after ~3 failed checks, 1 s apart
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "3",
}

# Run in a child: print the GCS's node table as JSON (one object per node, dead ones included).
NODES_SCRIPT = r"""
import json, sys
from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
from ray._raylet import GcsClient
maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as ray.init does: `ray start` enables token auth
from ray.core.generated.gcs_pb2 import GcsNodeInfo
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=float(sys.argv[2]))
print(json.dumps([{"node_id": i.node_id.hex(), "name": i.node_name, "ip": i.node_manager_address,
                   "alive": i.state == GcsNodeInfo.GcsNodeState.ALIVE, "head": i.is_head_node,
                   "resources": dict(i.resources_total)} for i in infos.values()]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ClusterNode:
    name: str
    process: subprocess.Popen
    log: Path
    num_cpus: int
    private: Path | None = None  # the node-local (tmpfs) folder, for a node in its own mount namespace
    node_id: str | None = None  # Ray's node id (hex), known once the node registered
    ip: str | None = None  # as Ray registered it: the machine's IP, the same for every node here
    removed: bool = False


class RayCluster:
    """Start with `start()` or `with`; `address` is head's host:port. See the module docstring."""

    def __init__(self, workers: int = 2, head_cpus: int = 1, worker_cpus: int = 1, object_store_mb: int = 256,
                 start_timeout_s: float = 90.0, fast_health_checks: bool = True, env: dict[str, str] | None = None,
                 private: dict[str, Path] | None = None) -> None:
        """`private` maps a worker's name (w1, w2, ...) to the path that is node-local on it."""
        self.workers = workers
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.object_store_bytes = object_store_mb * 2**20
        self.start_timeout_s = start_timeout_s
        self.fast_health_checks = fast_health_checks
        self.extra_env = dict(env or {})
        self.private = dict(private or {})
        self.tmpdir: Path | None = None
        self.port: int | None = None
        self.nodes: dict[str, ClusterNode] = {}
        self.timings: dict[str, Any] = {}
        self.start_failures: list[str] = []  # log tails of nodes that had to be started again

    # ---------------------------------------------------------------- start
    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the cluster is not started")
        return f"127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a child that uses this cluster: its RAY_TMPDIR (so that `--address auto`
        finds it and nothing is written in the default /tmp/ray), no RAY_ADDRESS unless given."""
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=str(self.tmpdir), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.tmpdir / "auth_token"), **extra)
        return env

    def start(self) -> "RayCluster":
        started = time.monotonic()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
        (self.tmpdir / "auth_token").write_text(secrets.token_hex(32))  # this cluster's own token (see env())
        self.port = free_port()
        try:
            self._start_node("head", self.head_cpus, head=True)
            self.wait_for(["head"])
            names = [f"w{index}" for index in range(1, self.workers + 1)]
            for name in names:
                self._start_node(name, self.worker_cpus, private=self.private.get(name))
            self._wait_retrying(names)
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = round(time.monotonic() - started, 2)
        return self

    def add_worker(self, name: str | None = None, num_cpus: int | None = None, private: Path | None = None,
                   wait: bool = True) -> ClusterNode:
        """One more worker node; `private`: a path that is an empty node-local folder on it."""
        name = name or f"w{len(self.nodes)}"
        node = self._start_node(name, self.worker_cpus if num_cpus is None else num_cpus, private=private)
        if wait:
            self._wait_retrying([name])
        return self.nodes[name]

    def pause_node(self, name: str) -> None:
        """SIGSTOP every process of a node (a hung machine: Ray marks it dead only after its health checks)."""
        for pid in self._tree(self.nodes[name]):
            _kill(pid, signal.SIGSTOP)

    def resume_node(self, name: str) -> None:
        for pid in self._tree(self.nodes[name]):
            _kill(pid, signal.SIGCONT)

    def _wait_retrying(self, names: list[str]) -> None:
        """Wait for new worker nodes; one whose `ray start` gave up (Ray's raylet start-up wait on a loaded
        machine) is started once more."""
        try:
            self.wait_for(names)
        except RuntimeError:
            failed = [name for name in names if self.nodes[name].process.poll() is not None]
            if not failed:
                raise
            for name in failed:
                self.timings.setdefault("restarted", []).append(name)
                self.start_failures.append(f"{name}: {self.log_tail(name, 1500)}")
                node = self.nodes.pop(name)
                self._kill_tree(node, signal.SIGKILL)
                self._start_node(name, node.num_cpus, private=node.private)
            self.wait_for(names)

    def _start_node(self, name: str, num_cpus: int, head: bool = False, private: Path | None = None) -> ClusterNode:
        if name in self.nodes:
            raise ValueError(f"a node named {name} exists")
        log = self.tmpdir / f"{name}.log"
        # No --node-ip-address: Ray turns 127.0.0.1 into the machine's IP anyway (every node has that IP).
        command = [RAY, "start", "--block", "--node-name", name,
                   "--num-cpus", str(num_cpus), "--num-gpus", "0", "--disable-usage-stats",
                   "--object-store-memory", str(self.object_store_bytes),
                   "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                   "--min-worker-port", "0", "--max-worker-port", "0"]
        env = self.env(**self.extra_env)
        env[NODE_MARKER] = f"{self.tmpdir}/{name}"  # inherited by its raylet's workers: remove_node finds them all
        if head:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--ray-client-server-port", str(free_port())]
            if self.fast_health_checks:
                env.update(HEALTH_CHECK_ENV)
        else:  # its own temp dir: nodes starting together never race for one session's socket and log names
            command += ["--address", self.address, "--temp-dir", str(self.tmpdir / name)]
        if private is not None:
            private = Path(private)
            private.mkdir(parents=True, exist_ok=True)
            script = f'mount -t tmpfs -o size=64m tmpfs "$1" && shift && exec "$@"'
            command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(private), *command]
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        node = ClusterNode(name, process, log, num_cpus, private=private)
        self.nodes[name] = node
        return node

    # ---------------------------------------------------------------- what Ray says
    def gcs_nodes(self, timeout_s: float = 10.0) -> list[dict]:
        """The GCS's node table (dead nodes included): node_id, name, ip, alive, head, resources."""
        result = subprocess.run([sys.executable, "-c", NODES_SCRIPT, self.address, str(timeout_s)],
                                capture_output=True, text=True, timeout=timeout_s + 30, env=self.env())
        if result.returncode != 0:
            raise RuntimeError(f"cannot read the node table: {result.stderr.strip()[-500:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def wait_for(self, names: list[str], alive: bool = True, timeout_s: float | None = None) -> list[dict]:
        """Wait until every named node is alive (or, alive=False, dead) in the GCS; record their ids."""
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        last: list[dict] | str = []
        while True:
            for name in names:
                node = self.nodes[name]
                if node.process.poll() is not None and alive:
                    raise RuntimeError(f"ray node {name} exited ({node.process.returncode}): {self.log_tail(name)}")
            try:
                last = self.gcs_nodes()
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                last = str(err)
            else:
                # A name may repeat after a removal: the newest registration is the one wanted.
                by_name = {}
                for entry in last:
                    if entry["name"] in names and (entry["alive"] or entry["name"] not in by_name):
                        by_name[entry["name"]] = entry
                for name, entry in by_name.items():
                    if entry["alive"]:
                        self.nodes[name].node_id, self.nodes[name].ip = entry["node_id"], entry["ip"]
                if all(name in by_name and by_name[name]["alive"] == alive
                       and (alive or by_name[name]["node_id"] == self.nodes[name].node_id) for name in names):
                    return [by_name[name] for name in names]
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {names} not {'alive' if alive else 'dead'} after the timeout: {last}")
            time.sleep(0.5)

    def node_id(self, name: str) -> str:
        node_id = self.nodes[name].node_id
        if node_id is None:
            raise RuntimeError(f"node {name} has not registered")
        return node_id

    def name_of(self, node_id: str) -> str | None:
        return next((name for name, node in self.nodes.items() if node.node_id == node_id), None)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return self.nodes[name].log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ---------------------------------------------------------------- remove, stop
    def remove_node(self, name: str, wait_dead: bool = True, timeout_s: float = 60.0) -> float:
        """Kill a worker node at once (SIGKILL its raylet, workers, agents: a lost machine); with
        `wait_dead`, wait until the GCS marks it dead. Returns the seconds until then."""
        node = self.nodes[name]
        if name == "head":
            raise ValueError("removing the head ends the cluster: use stop()")
        started = time.monotonic()
        self._kill_tree(node, signal.SIGKILL)
        node.removed = True
        if wait_dead and node.node_id:
            self.wait_for([name], alive=False, timeout_s=timeout_s)
        return round(time.monotonic() - started, 2)

    def stop(self) -> None:
        """Kill every node this cluster started (as `ray stop --force` would: SIGKILL, no graceful drain,
        which takes Ray 10-15 s), then anything left naming its RAY_TMPDIR; remove the RAY_TMPDIR."""
        started = time.monotonic()
        for node in self.nodes.values():
            self._kill_tree(node, signal.SIGKILL)
        for _ in range(50):
            left = self.leftover_pids()
            if not left:
                break
            for pid in left:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for node in self.nodes.values():
            if node.private is not None:  # the mount point made for it (the tmpfs went with its namespace)
                with contextlib.suppress(OSError):
                    node.private.rmdir()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.timings["stop_s"] = round(time.monotonic() - started, 2)

    def leftover_pids(self) -> list[int]:
        """Live processes (not this one) whose environment or command line names this cluster's RAY_TMPDIR."""
        if self.tmpdir is None:
            return []
        return _pids_with(str(self.tmpdir).encode(), _process_table()[1])

    def _tree(self, node: ClusterNode) -> list[int]:
        """The node's live processes now: its `ray start` (or unshare) and all descendants, zombies left out.
        Read fresh each time (never a remembered pid, which another process may have by now); the root is
        our unreaped child, so its pid stays ours until we wait for it."""
        children, states = _process_table()
        found: list[int] = []
        todo = [node.process.pid] if node.process.returncode is None else []
        while todo:
            pid = todo.pop()
            if states.get(pid) not in (None, "Z", "X"):
                found.append(pid)
            todo.extend(children.get(pid, []))
        marker = f"{NODE_MARKER}={self.tmpdir}/{node.name}\0".encode()
        return sorted(set(found) | set(_pids_with(marker, states)))

    def _signal_group(self, node: ClusterNode, sig: int) -> None:
        if node.process.returncode is not None:
            return  # reaped: its process group id may belong to someone else by now
        try:
            os.killpg(node.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_tree(self, node: ClusterNode, sig: int) -> None:
        """Kill the node's whole tree (and its process group), looking again until nothing is left alive
        (a raylet may fork while it dies); then reap the root."""
        for _ in range(50):
            pids = self._tree(node)
            if not pids:
                break
            self._signal_group(node, sig)
            for pid in pids:
                _kill(pid, sig)
            time.sleep(0.05)
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    # ---------------------------------------------------------------- measures
    def memory_mb(self) -> float:
        """Resident memory (MB) of all processes of this cluster now (by RAY_TMPDIR marker)."""
        total = 0
        for pid in set(self.leftover_pids()):
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                continue
        return round(total / 1024, 1)

    @staticmethod
    def can_unshare() -> bool:
        """Whether a private mount namespace with a tmpfs can be made here (root, unshare present)."""
        if shutil.which("unshare") is None:
            return False
        probe = Path(tempfile.mkdtemp(prefix="unshare-probe-"))
        try:
            result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                     f'mount -t tmpfs tmpfs "{probe}" && touch "{probe}/x"'],
                                    capture_output=True, timeout=30)
            return result.returncode == 0 and not (probe / "x").exists()
        except (OSError, subprocess.TimeoutExpired):
            return False
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _process_table() -> tuple[dict[int, list[int]], dict[int, str]]:
    """(parent pid -> child pids, pid -> state letter) of every process now."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        states[int(entry)] = fields[0].decode()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children, states


def _pids_with(marker: bytes, states: dict[int, str]) -> list[int]:
    """Live processes (not this one) whose command line or environment contains `marker`."""
    found = []
    for pid, state in states.items():
        if pid == os.getpid() or state in ("Z", "X"):
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            if marker in data:
                found.append(pid)
                break
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def three_nodes_one_private(root: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """head + w1 + w2, one CPU each; on w2, `root/nodelocal` is an empty node-local tmpfs (a test
    skips where `unshare -m` is not allowed). `env`: what every node's environment adds (as an
    administrator sets each node's credentials)."""
    import pytest

    if not RayCluster.can_unshare():
        pytest.skip("needs root and `unshare -m` (a node with a node-local folder)")
    with RayCluster(workers=2, private={"w2": root / "nodelocal"}, env=env) as cluster:
        cluster.root = root
        yield cluster
