"""Every Ray node must see the output and the inputs: howto_prep.node_check.

The probe itself is tested as a plain function (no Ray); the whole check with a real Ray, in a child
process that joins it (a one-node local Ray; a 3-node cluster on this machine, one node in a private
mount namespace where a folder is a node-local tmpfs, one node frozen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from howto_prep.node_check import TOKEN_PREFIX, _driver_probes, _remove_tokens, check_nodes_see, probe_node
from ray_cluster import RayCluster, three_nodes_one_private

REPO = Path(__file__).resolve().parents[1]

# A driver in a child process: join Ray (argv[1]: an address, or "local"), run each check of argv[2]
# (a JSON list of {"paths": {option: path}, "timeout_s": s}), print one JSON line per check.
CHECK_SCRIPT = r"""
import json, sys, time
import ray
from howto_prep.errors import SystemFault
from howto_prep.node_check import check_nodes_see
if sys.argv[1] == "local":
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
else:
    ray.init(address=sys.argv[1], logging_level="ERROR")
for check in json.loads(sys.argv[2]):
    started = time.perf_counter()
    try:
        result = {"records": check_nodes_see(check["paths"], timeout_s=check.get("timeout_s", 60.0))}
    except SystemFault as err:
        result = {"fault": str(err)}
    result["seconds"] = time.perf_counter() - started
    print("CHECK " + json.dumps(result), flush=True)
"""


def run_checks(address: str, checks: list[dict], env: dict[str, str] | None = None, timeout: float = 240) -> list[dict]:
    if env is None:
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, address, json.dumps(checks)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    assert result.returncode == 0 and len(lines) == len(checks), (result.returncode, result.stderr[-3000:])
    return lines


def inputs(folder: Path) -> dict[str, str]:
    """A videos folder with a file in a subfolder, a captions file, a word2vec file."""
    (folder / "videos" / "part0").mkdir(parents=True, exist_ok=True)
    (folder / "videos" / "part0" / "v1.mp4").write_bytes(b"\0" * 1000)
    (folder / "videos" / ".hidden").write_bytes(b"x")
    (folder / "caption.json").write_text("{}")
    (folder / "w2v.bin").write_bytes(b"\1" * 50)
    return {"--videos": str(folder / "videos"), "--captions": str(folder / "caption.json"),
            "--word2vec": str(folder / "w2v.bin")}


def tokens_left(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(TOKEN_PREFIX)]


# ------------------------------------------------------------------ the probe, without Ray
def test_the_probe_passes_where_the_node_sees_what_the_driver_sees(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    probes = _driver_probes({"--out": out, **{k: Path(v) for k, v in inputs(tmp_path).items()}}, {"--out"})
    try:
        assert [probe["kind"] for probe in probes] == ["output", "folder", "file", "file"]
        assert probes[1]["member"] == "part0/v1.mp4"  # hidden files are never the sample
        answer = probe_node(probes, "ab" * 28)
        assert answer["problems"] == [] and len(answer["replies"]) == 1
        assert Path(answer["replies"][0]).read_text() == probes[0]["token"]
    finally:
        _remove_tokens(probes)
    assert tokens_left(out) == []


def test_the_probe_names_each_path_the_node_sees_differently(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    named = inputs(tmp_path)
    probes = _driver_probes({"--out": out, **{k: Path(v) for k, v in named.items()}}, {"--out"})
    try:
        # What another node would see: no token, another video file, a missing word2vec.
        Path(probes[0]["token_path"]).write_text("someone else's")
        (tmp_path / "videos" / "part0" / "v1.mp4").write_bytes(b"\0" * 999)
        (tmp_path / "w2v.bin").unlink()
        answer = probe_node(probes, "cd" * 28)
        problems = dict(answer["problems"])
        assert set(problems) == {"--out", "--videos", "--word2vec"}, problems
        assert "other content" in problems["--out"] and answer["replies"] == []
        assert "part0/v1.mp4" in problems["--videos"] and "999 bytes" in problems["--videos"]
        assert problems["--word2vec"] == "it is missing there"
    finally:
        _remove_tokens(probes)
    assert tokens_left(out) == []


def test_a_missing_input_is_a_usage_error_and_leaves_no_token(tmp_path: Path) -> None:
    from howto_prep.errors import UserError

    with pytest.raises(UserError, match="--captions .* does not exist"):
        check_nodes_see({"--out": tmp_path, "--captions": tmp_path / "nope.json"})
    assert tokens_left(tmp_path) == []


# ------------------------------------------------------------------ a one-node local Ray
@pytest.mark.slow
def test_one_local_node_passes_in_well_under_a_second(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    checks = [{"paths": {"--out": str(out), **inputs(tmp_path)}}] * 2
    first, second = run_checks("local", checks)
    for result in (first, second):
        assert "fault" not in result, result
        assert len(result["records"]) == 1 and result["records"][0]["driver"] is True
        assert result["seconds"] < 1.0, result
    assert tokens_left(out) == []


# ------------------------------------------------------------------ a 3-node cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """head + w1 + w2, one CPU each; on w2, `root/nodelocal` is an empty node-local tmpfs."""
    with three_nodes_one_private(tmp_path_factory.mktemp("node_check")) as cluster:
        yield cluster


@pytest.mark.slow
def test_every_node_of_a_cluster_is_checked_and_a_node_local_path_is_named(cluster: RayCluster) -> None:
    root = cluster.root
    shared_out = root / "out"
    shared_out.mkdir(exist_ok=True)
    local_out = root / "nodelocal" / "shards"  # on w2: an empty tmpfs, without `shards`
    local_out.mkdir(exist_ok=True)
    named = inputs(root)
    local_videos = root / "nodelocal" / "videos"
    local_videos.mkdir(exist_ok=True)
    (local_videos / "a.mp4").write_bytes(b"\0" * 10)
    good, bad_out, bad_videos = run_checks(cluster.address, [
        {"paths": {"--out": str(shared_out), **named}},
        {"paths": {"--out": str(local_out), **named}},
        {"paths": {"--out": str(shared_out), **named, "--videos": str(local_videos)}},
    ], env=cluster.env())
    assert "fault" not in good, good
    assert {record["name"] for record in good["records"]} == {"head", "w1", "w2"}
    assert {record["node"] for record in good["records"]} == {cluster.node_id(n) for n in ("head", "w1", "w2")}
    assert [record["driver"] for record in good["records"]] == [True, False, False]

    w2 = cluster.node_id("w2")[:8]
    line = bad_out["fault"]
    assert "\n" not in line
    assert line.startswith(f"--out {local_out} is not the same folder on node "), line
    assert f"(id {w2})" in line and cluster.node_id("w1")[:8] not in line, line
    assert "every node of the cluster must see the output on a shared filesystem" in line

    line = bad_videos["fault"]
    assert line.startswith(f"--videos {local_videos} is not the same folder on node ") and f"(id {w2})" in line, line
    assert "--out" not in line and "inputs on a shared filesystem" in line
    assert tokens_left(shared_out) == [] and tokens_left(local_out) == []


@pytest.mark.slow
def test_a_frozen_node_is_a_fault_after_the_timeout_not_a_hang(cluster: RayCluster) -> None:
    """Last in the module: the frozen node is dead afterwards."""
    out = cluster.root / "out2"
    out.mkdir()
    cluster.pause_node("w1")
    try:
        (result,) = run_checks(cluster.address, [{"paths": {"--out": str(out)}, "timeout_s": 2.0}],
                               env=cluster.env(), timeout=120)
    finally:
        cluster.remove_node("w1", wait_dead=False)
    line = result["fault"]
    assert f"(id {cluster.node_id('w1')[:8]}) did not answer the shared-filesystem check within 2 s" in line, line
    assert result["seconds"] < 10, result
    assert tokens_left(out) == []
