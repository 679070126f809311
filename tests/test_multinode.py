"""The CLI on a real 3-node Ray cluster on this machine (tests/ray_cluster.py): a head and two worker
nodes, each its own raylet; one worker runs in a private mount namespace where one folder is a
node-local tmpfs (a node that does not see the shared filesystem there).

Every command runs in a child process with `--address <head>` (or RAY_ADDRESS, or `--address auto`),
the synthetic corpus, `--features logmel,tokens` (fast) and a small `--shard-size` (one video per
shard), so several nodes write shards. A run on the cluster must equal a run on a one-node local Ray;
a node removed mid-run loses nothing once the command is run again; an output folder that one node
cannot see stops the run before any work.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from howto_prep import schema, shards
from ray_cluster import RayCluster, three_nodes_one_private

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEATURES = "logmel,tokens"
SHARD_SIZE = "100KB"  # below one video's logmel: every video closes its own shard
META_MAY_DIFFER: frozenset[str] = frozenset({"node", "host", "extracted_at", "time", "seconds"})
RUN_TIMEOUT_S = 300
USER, PASSWORD = "researcher", "pw-multinode-1"


# ------------------------------------------------------------------ helpers
def howto_prep(args: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def extract_args(corpus, out: Path, *extra: str, videos: Path | None = None) -> list[str]:
    return ["extract", "--videos", str(videos or corpus.videos_dir), "--captions", str(corpus.captions),
            "--word2vec", str(corpus.word2vec), "--features", FEATURES, "--shard-size", SHARD_SIZE,
            "--out", str(out), *extra]


def local_env(ray_tmpdir: Path) -> dict[str, str]:
    """No RAY_ADDRESS: a new local Ray, in its own temp folder."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmpdir)
    return env


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stderr tail:\n{result.stderr[-3000:]}"


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member extension: bytes} over every finished shard; a key twice is an error."""
    samples: dict[str, dict[str, bytes]] = {}
    for record in shards.read_shard_records(out):
        seen_here: set[str] = set()
        with tarfile.open(out / record["url"]) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                if key not in seen_here:
                    assert key not in samples, f"{key} is in two shards"
                    seen_here.add(key)
                    samples[key] = {}
                samples[key][extension] = tar.extractfile(member).read()
        assert seen_here == set(record["keys"]), record["url"]
    return samples


def comparable(sample: dict[str, bytes]) -> dict:
    """Every member's bytes, meta.json decoded without the keys that may differ between runs."""
    result: dict = dict(sample)
    meta = json.loads(sample[schema.META_FIELD])
    result[schema.META_FIELD] = {key: value for key, value in meta.items() if key not in META_MAY_DIFFER}
    return result


def shard_keys(out: Path) -> list[str]:
    return [key for record in shards.read_shard_records(out) for key in record["keys"]]


def ray_sessions(cluster: RayCluster) -> tuple[set[str], set[str]]:
    """(the Ray sessions in the cluster's RAY_TMPDIR, the drivers that joined the head's session): a command
    that joins the cluster adds a driver log to the head's session; one that started a local Ray in this
    RAY_TMPDIR would add a session."""
    ray_dir = cluster.tmpdir / "ray"
    sessions = {path.name for path in ray_dir.glob("session_2*")}
    drivers = {path.name for path in ray_dir.glob("session_2*/logs/python-core-driver-*")}
    return sessions, drivers


def assert_joined(cluster: RayCluster, before: tuple[set[str], set[str]], out: Path) -> None:
    sessions, drivers = ray_sessions(cluster)
    assert sessions == before[0], f"a new Ray session: {sessions - before[0]}"
    assert len(drivers - before[1]) == 1, f"no driver joined the head: {drivers - before[1]}"
    nodes = {record["node"] for record in shards.read_shard_records(out) if "node" in record}
    assert nodes <= {node.node_id for node in cluster.nodes.values()}, f"written by nodes not of the cluster: {nodes}"


def many_videos(corpus, folder: Path, copies: int) -> Path:
    """`copies` hard links of each synthetic video under new ids (a longer run; their captions are empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(Path(corpus.videos_dir).iterdir()):
        for copy in range(copies):
            target = folder / f"{source.stem}_c{copy}{source.suffix}"
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return folder


# ------------------------------------------------------------------ a node removed mid-run (its own cluster)
def test_a_node_removed_mid_run_then_a_rerun_leaves_every_video_in_exactly_one_shard(synth_corpus, tmp_path,
                                                                                      record_property):
    """First in the module: it starts its own cluster before the shared one exists (2 cores)."""
    videos = many_videos(synth_corpus, tmp_path / "videos", copies=4)
    all_ids = {path.stem for path in videos.iterdir()}
    out = tmp_path / "shards"
    with RayCluster(workers=2) as cluster:
        args = extract_args(synth_corpus, out, "--address", cluster.address, videos=videos)
        log_out, log_err = tmp_path / "run1.out", tmp_path / "run1.err"
        with open(log_out, "wb") as stdout, open(log_err, "wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "howto_prep.cli", *args], cwd=REPO, env=cluster.env(),
                                       stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (out.is_dir() and shards.shard_jsons(out)):
                assert process.poll() is None, f"ended before any shard: {log_err.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no shard JSON in time"
                time.sleep(0.05)
            writers = {record.get("node") for record in shards.read_shard_records(out)}
            # A worker that has not committed a shard yet still has its videos in flight; else w2.
            victim = next((name for name in ("w1", "w2") if cluster.node_id(name) not in writers), "w2")
            assert process.poll() is None, "the run finished before a node could be removed: use more videos"
            removed_after = len(shards.shard_jsons(out))
            dead_after_s = cluster.remove_node(victim)
            first = process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        first_err = log_err.read_text()
        record_property("first_run_exit", first)
        record_property("removed", f"{victim} after {removed_after} shard(s); dead in {dead_after_s} s")
        fault = [line for line in first_err.splitlines() if "system fault" in line]
        print(f"first run: exit {first} ({victim} removed after {removed_after} shard JSON(s); Ray marked it dead "
              f"in {dead_after_s} s); {fault or 'no fault line'}")
        assert first in (0, 5), f"exit {first}: {first_err[-3000:]}"
        assert "Traceback" not in first_err, first_err[-3000:]
        if first == 5:
            faults = [line for line in first_err.splitlines() if line.startswith("howto-prep: system fault: ")]
            assert len(faults) == 1, first_err[-2000:]

        again = howto_prep(args, cluster.env())
        assert again.returncode == 0, explain(again)

    keys = shard_keys(out)
    assert len(keys) == len(set(keys)), sorted(key for key in set(keys) if keys.count(key) > 1)
    failed = set(shards.read_failures(out))
    record_property("failures", sorted(failed))
    assert set(keys) | failed == all_ids, sorted(all_ids - set(keys) - failed)
    assert not set(keys) & failed, sorted(set(keys) & failed)
    samples = read_samples(out)  # every finished shard reads whole, no key twice
    assert set(samples) == set(keys)


# ------------------------------------------------------------------ the shared 3-node cluster
@pytest.fixture(scope="module")
def bucket() -> dict[str, str]:
    """A moto S3 server for the cluster's object-store test: its bucket, and the standard AWS
    variables every node and the driver get (each node its own credentials, never in a task)."""
    import boto3

    from s3_server import DUMMY_KEY_ID, DUMMY_SECRET, REGION, start_moto

    server = start_moto()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET, "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION, aws_access_key_id=DUMMY_KEY_ID,
                 aws_secret_access_key=DUMMY_SECRET).create_bucket(Bucket="cluster")
    try:
        yield {"name": "cluster", **env}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(bucket: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """head + w1 + w2, one CPU each; on w2, `root/nodelocal` is an empty node-local tmpfs."""
    node_env = {key: value for key, value in bucket.items() if key.startswith("AWS_")}
    with three_nodes_one_private(tmp_path_factory.mktemp("multinode"), env=node_env) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_run(local_set: Path) -> Path:
    """The same extraction on a one-node local Ray (no --address, no RAY_ADDRESS): conftest's local_set."""
    return local_set


def test_download_with_address_on_the_cluster(cluster: RayCluster, synth_corpus, tmp_path: Path) -> None:
    from howto_prep.download.manifest import done_videos
    from howto_prep.synthetic.mirror_server import LoopbackMirror

    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(synth_corpus.video_ids) + "\n")
    credentials = tmp_path / "credentials.txt"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    out = tmp_path / "videos"
    with LoopbackMirror(synth_corpus.videos_dir, (USER, PASSWORD)) as mirror:
        result = howto_prep(["download", "--ids", str(ids), "--out", str(out), "--source", "mirror",
                             "--mirror-url", mirror.url, "--credentials", str(credentials), "--workers", "3",
                             "--address", cluster.address], cluster.env())
        requests = sum(mirror.requests.values())
    assert result.returncode == 0, explain(result)
    done = done_videos(out)
    assert set(done) == set(synth_corpus.video_ids) and requests >= len(done)
    for video_id, path in done.items():
        assert path.read_bytes() == (Path(synth_corpus.videos_dir) / f"{video_id}.mp4").read_bytes(), video_id


@pytest.fixture(scope="module")
def cluster_run(cluster: RayCluster, synth_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`extract --address <head>` on the 3-node cluster, once for the tests below."""
    out = tmp_path_factory.mktemp("cluster_run") / "shards"
    result = howto_prep(extract_args(synth_corpus, out, "--address", cluster.address), cluster.env())
    assert result.returncode == 0, explain(result)
    return out


def test_extract_on_three_nodes_equals_a_local_run(cluster_run: Path, local_run: Path, synth_corpus) -> None:
    here, there = read_samples(cluster_run), read_samples(local_run)
    assert set(here) == set(there) == set(synth_corpus.video_ids)
    for key in there:
        assert comparable(here[key]) == comparable(there[key]), key
    assert not (cluster_run / schema.FAILURES_FILE).exists()
    assert len(shards.read_shard_records(cluster_run)) >= 3


def test_extract_on_three_nodes_to_s3_equals_a_local_run(cluster: RayCluster, bucket: dict[str, str],
                                                          local_run: Path, synth_corpus) -> None:
    """--out s3://... on a cluster: agents on every node upload their own shards with their node's
    credentials; the work folder (indexes, shards being written) is on the shared filesystem."""
    import boto3

    aws = {key: value for key, value in bucket.items() if key.startswith("AWS_")}
    url, work = f"s3://{bucket['name']}/shards", cluster.root / "work"
    result = howto_prep(extract_args(synth_corpus, url, "--work", str(work), "--address", cluster.address),
                        cluster.env(**aws))
    assert result.returncode == 0, explain(result)
    client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_DEFAULT_REGION"],
                          aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])
    listed = client.list_objects_v2(Bucket=bucket["name"], Prefix="shards/")["Contents"]
    objects = {item["Key"][len("shards/"):]: client.get_object(Bucket=bucket["name"], Key=item["Key"])["Body"].read()
               for item in listed}
    records = [json.loads(data) for key, data in objects.items() if shards.SHARD_JSON_PATTERN.match(key)]
    here = {}
    for record in records:
        with tarfile.open(fileobj=io.BytesIO(objects[record["url"]])) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                here.setdefault(key, {})[extension] = tar.extractfile(member).read()
    there = read_samples(local_run)
    assert set(here) == set(there) == set(synth_corpus.video_ids)
    for key in there:
        assert comparable(here[key]) == comparable(there[key]), key
    assert len({record["node"] for record in records}) >= 2, "only one node uploaded shards"
    assert not list(work.glob("*.tar"))  # every node's uploaded tars left the shared work folder
    assert bucket["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


def test_each_node_writes_its_own_shards_and_names_itself(cluster: RayCluster, cluster_run: Path) -> None:
    records = shards.read_shard_records(cluster_run)
    assert all("node" in record and "host" in record for record in records), sorted(records[0])
    nodes = {record["node"] for record in records}
    assert nodes <= {node.node_id for node in cluster.nodes.values()}, nodes
    assert {record["host"] for record in records} <= {node.ip for node in cluster.nodes.values()}
    assert len(nodes) >= 2, f"only {[cluster.name_of(node) for node in nodes]} wrote shards"


def test_an_output_folder_one_node_cannot_see_stops_the_run_before_any_work(cluster: RayCluster, synth_corpus) -> None:
    out = cluster.root / "nodelocal" / "shards"  # on w2 the whole `nodelocal` is an empty tmpfs
    result = howto_prep(extract_args(synth_corpus, out, "--address", cluster.address), cluster.env())
    assert result.returncode == 5, explain(result)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    fault_lines = [line for line in result.stderr.splitlines() if "system fault" in line]
    assert len(fault_lines) == 1, result.stderr[-3000:]
    line = fault_lines[0]  # (Ray may relay a raylet's log line after it)
    assert line.startswith(f"howto-prep: system fault: --out {out} is not the same folder on node "), line
    assert f"(id {cluster.node_id('w2')[:8]})" in line and cluster.node_id("w1")[:8] not in line, line
    assert "shared filesystem" in line, line
    left = sorted(path.name for path in out.iterdir()) if out.exists() else []
    assert not [name for name in left if name.endswith((".tar", ".json", ".jsonl")) or ".node-check-" in name], left


def test_ray_address_without_address_joins_the_cluster(cluster: RayCluster, synth_corpus, tmp_path: Path) -> None:
    """cluster.ray_target: no --address, RAY_ADDRESS set -> the cluster it names (as Ray jobs and KubeRay set it)."""
    before = ray_sessions(cluster)
    out = tmp_path / "shards"
    result = howto_prep(extract_args(synth_corpus, out, "--limit", "2"), cluster.env(RAY_ADDRESS=cluster.address))
    assert result.returncode == 0, explain(result)
    assert len(shard_keys(out)) == 2
    assert_joined(cluster, before, out)


def test_address_auto_joins_the_cluster_of_this_ray_tmpdir(cluster: RayCluster, synth_corpus, tmp_path: Path) -> None:
    before = ray_sessions(cluster)
    out = tmp_path / "shards"
    result = howto_prep(extract_args(synth_corpus, out, "--limit", "2", "--address", "auto"), cluster.env())
    assert result.returncode == 0, explain(result)
    assert len(shard_keys(out)) == 2
    assert_joined(cluster, before, out)
