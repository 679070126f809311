"""Input files given as s3:// URLs (moto behind tests/s3_server.py's fault proxy): `extract --captions
--word2vec --csv`, the clip annotations, `download --ids`, and `synth --out URL` feeding `extract`.

One synth-to-the-store plus two extract runs (from URLs to the store, from the same files on disk to a
folder) are shared by the module's first tests; the others run the CLI in this process on runs that
never start Ray (an empty video folder, a set with nothing to do), so the module stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from howto_prep import schema
from howto_prep.cli import build_parser
from howto_prep.cli import main as cli_main
from howto_prep.extract.plan import plan_from_args
from howto_prep.synthetic.corpus import PARAMETERS_FILE
from howto_prep.synthetic.mirror_server import LoopbackMirror
from s3_server import DUMMY_SECRET, S3Server, moto_server, s3, serving_bucket  # noqa: F401 (fixtures)
from test_download import make_video
from test_extract_object_store import (FEATURES, SHARD_SIZE, assert_no_secret, explain, local_samples, run_cli,
                                       stored, stored_samples)

pytestmark = pytest.mark.slow

INPUTS = {"--captions": "caption.json", "--word2vec": "word2vec.bin", "--csv": "HowTo100M_v1.csv"}


def gets_of(server: S3Server, keys: list[str], since: int = 0) -> int:
    """Object reads (GET, not listings) of the given keys the proxy passed on since request `since`."""
    paths = {f"/{server.bucket}/{key}" for key in keys}
    return sum(1 for seen in server.proxy.seen[since:] if seen.method == "GET" and seen.path.split("?")[0] in paths)


def put_keys(server: S3Server, since: int = 0) -> list[str]:
    """Keys the store took by PUT since request `since`, in order (multipart parts once per key)."""
    keys: list[str] = []
    for seen in server.proxy.seen[since:]:
        key = seen.path.split("?")[0].split("/", 2)[-1]
        if seen.method == "PUT" and seen.outcome == "200" and key not in keys:
            keys.append(key)
    return keys


def in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run `howto-prep` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as stop:  # argparse's refusal
            code = int(stop.code)
    return code, out.getvalue(), err.getvalue()


def upload(server: S3Server, key: str, path: Path) -> str:
    server.client().put_object(Bucket=server.bucket, Key=key, Body=path.read_bytes())
    return f"s3://{server.bucket}/{key}"


@pytest.fixture(scope="module")
def shared_s3(moto_server: tuple[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The `s3` fixture's bucket and environment for a whole module (its runs are shared by tests)."""
    base = tmp_path_factory.mktemp("shared-s3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOWTO_MFT_CACHE", str(base / "cache"))
        with serving_bucket(moto_server, patch, base) as server:
            yield server


@dataclass
class UrlRun:
    server: S3Server
    base: Path
    corpus_work: Path  # the local folder synth wrote before uploading
    synth_puts: list[str]
    synth_text: str
    url_run: object  # CompletedProcess of extract from URLs to the store
    local_run: object  # CompletedProcess of extract from the same files on disk
    input_gets: int  # GETs of the three input objects during the URL run
    cache: Path  # $HOWTO_MFT_CACHE of the runs


@pytest.fixture(scope="module")
def url_run(shared_s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> UrlRun:
    """synth --out s3://B/corpus, then extract with every input a URL (--out s3://B/shards), and the
    reference: extract from the work folder's files to a local folder."""
    base = tmp_path_factory.mktemp("url-run")
    corpus_url, work = f"s3://{shared_s3.bucket}/corpus", base / "synth-work"
    mark = len(shared_s3.proxy.seen)
    code, out, err = in_process(["synth", "--out", corpus_url, "--work", str(work), "--videos", "2",
                                 "--heldout", "0", "--max-seconds", "10", "--seed", "5"])
    assert code == 0, err
    synth_puts = put_keys(shared_s3, mark)
    mark = len(shared_s3.proxy.seen)
    from_urls = ["--videos", f"{corpus_url}/videos"] + [arg for option, name in INPUTS.items()
                                                        for arg in (option, f"{corpus_url}/{name}")]
    url_result = run_cli(["extract", *from_urls, "--features", FEATURES, "--shard-size", SHARD_SIZE,
                          "--out", f"s3://{shared_s3.bucket}/shards", "--work", str(base / "work")], base)
    assert url_result.returncode == 0, explain(url_result)
    input_gets = gets_of(shared_s3, [f"corpus/{name}" for name in INPUTS.values()], mark)
    from_files = ["--videos", str(work / "videos")] + [arg for option, name in INPUTS.items()
                                                      for arg in (option, str(work / name))]
    local_result = run_cli(["extract", *from_files, "--features", FEATURES, "--shard-size", SHARD_SIZE,
                            "--out", str(base / "local")], base)
    assert local_result.returncode == 0, explain(local_result)
    return UrlRun(shared_s3, base, work, synth_puts, out + err, url_result, local_result, input_gets,
                  Path(os.environ["HOWTO_MFT_CACHE"]))


def test_synth_to_s3_uploads_the_corpus_with_its_complete_markers_last(url_run: UrlRun) -> None:
    objects = stored(url_run.server, "corpus")
    local = {path.relative_to(url_run.corpus_work).as_posix(): path.read_bytes()
             for path in url_run.corpus_work.rglob("*") if path.is_file()}
    assert objects == local  # every file, the parameters stamp included, byte for byte
    assert url_run.synth_puts[0] == f"corpus/{PARAMETERS_FILE}"  # the prefix is a (partial) corpus first
    assert url_run.synth_puts[-2:] == ["corpus/synth_truth.json", "corpus/README.txt"]
    assert len([key for key in objects if key.startswith("videos/") and key.endswith(".mp4")]) == 2


def test_extract_from_url_inputs_gives_the_samples_of_the_local_files(url_run: UrlRun) -> None:
    objects = stored(url_run.server, "shards")
    samples = stored_samples(objects)
    assert len(samples) == 2 and samples == local_samples(url_run.base / "local")
    assert all(sample[schema.META_FIELD]["category_1"] for sample in samples.values())  # the --csv was read
    for name in (schema.VOCAB_W2V_IDS, schema.VOCAB_VECTORS, schema.VOCAB_WORDS):
        assert objects[f"{schema.VOCAB_DIR}/{name}"] == (url_run.base / "local" / schema.VOCAB_DIR / name).read_bytes()
    assert url_run.input_gets >= 3  # each input object was read once into the cache


def test_no_secret_in_any_output_of_the_url_runs(url_run: UrlRun) -> None:
    runs = (url_run.url_run, url_run.local_run)
    assert list(url_run.cache.rglob("caption.json"))  # the copies are there, and scanned
    assert_no_secret(url_run.synth_text, *(text for run in runs for text in (run.stdout, run.stderr)),
                     folders=(url_run.base, url_run.cache),
                     objects={**stored(url_run.server, "shards"), **stored(url_run.server, "corpus")})


@pytest.fixture
def store_inputs(s3: S3Server, synth_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """caption.json and word2vec.bin of the session corpus on the store, an empty video folder (the
    runs below never start Ray: nothing to decode), a fresh cache."""
    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "no-videos").mkdir()
    return {"--captions": upload(s3, "in/caption.json", synth_corpus.captions),
            "--word2vec": upload(s3, "in/word2vec.bin", synth_corpus.word2vec)}


def empty_extract(tmp_path: Path, inputs: dict, out: str = "shards") -> list[str]:
    return ["extract", "--videos", str(tmp_path / "no-videos"), *[arg for item in inputs.items() for arg in item],
            "--features", FEATURES, "--out", str(tmp_path / out)]


def test_a_rerun_reuses_the_cached_copies_and_index_and_a_changed_object_is_refused(
        s3: S3Server, store_inputs: dict, synth_corpus, tmp_path: Path) -> None:
    keys = ["in/caption.json", "in/word2vec.bin"]
    code, _, first = in_process(empty_extract(tmp_path, store_inputs))
    assert code == 0, first
    assert gets_of(s3, keys) >= 2 and "caption index: indexing" in first
    mark = len(s3.proxy.seen)
    code, _, again = in_process(empty_extract(tmp_path, store_inputs))
    assert code == 0, again
    assert gets_of(s3, keys, mark) == 0  # the cached copies, unchanged on the store, are reused
    assert "indexing" not in again  # and so is the index built from them under the output
    changed = json.loads(synth_corpus.captions.read_text())
    changed["added0000"] = {"start": [0.0], "end": [1.0], "text": ["a new line"]}
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    upload(s3, "in/caption.json", tmp_path / "changed.json")
    mark = len(s3.proxy.seen)
    code, _, refused = in_process(empty_extract(tmp_path, store_inputs))
    assert gets_of(s3, ["in/caption.json"], mark) >= 1  # fetched again: the object changed
    lines = refused.strip().splitlines()
    assert code == 2 and lines[-1].startswith("howto-prep: error: --captions ") and \
        "is not the file this output was indexed from" in lines[-1], refused
    code, _, fresh = in_process(empty_extract(tmp_path, store_inputs, out="new-shards"))  # a new --out indexes it
    assert code == 0 and "caption index: indexing" in fresh, fresh
    assert_no_secret(first, again, refused, fresh, folders=(tmp_path,))


def test_a_missing_object_is_one_line_exit_2_and_a_refused_store_exit_5(s3: S3Server, store_inputs: dict,
                                                                       tmp_path: Path) -> None:
    missing = {**store_inputs, "--captions": f"s3://{s3.bucket}/in/nope.json"}
    code, _, err = in_process(empty_extract(tmp_path, missing))
    assert code == 2 and err.strip() == f"howto-prep: error: --captions s3://{s3.bucket}/in/nope.json does not exist"
    s3.proxy.fail("403", times=50, method="GET")
    code, _, err = in_process(empty_extract(tmp_path, store_inputs))
    s3.proxy.clear()
    lines = err.strip().splitlines()
    assert code == 5 and len(lines) == 1 and lines[0].startswith("howto-prep: system fault: object store refused")
    assert "Traceback" not in err and DUMMY_SECRET not in err


def test_clip_annotations_from_urls_are_read_as_the_local_files(s3: S3Server, synth_corpus, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    database = json.loads(synth_corpus.youcook2_json.read_text())["database"]
    clips_csv = tmp_path / "clips.csv"
    clips_csv.write_text("video_id,start,end,text\n" + "".join(
        f"{video_id},{a['segment'][0]},{a['segment'][1]},{a['sentence']}\n"
        for video_id, entry in database.items() for a in entry["annotations"]))
    files = {"--youcook2": [synth_corpus.youcook2_json], "--msrvtt": [synth_corpus.msrvtt_json],
             "--clips": [clips_csv], "--test-list": [synth_corpus.msrvtt_test_list]}
    urls = {option: [upload(s3, f"ann/{path.name}", path) for path in paths] for option, paths in files.items()}
    base = ["extract", "--videos", str(tmp_path), "--word2vec", str(synth_corpus.word2vec),
            "--out", str(tmp_path / "o")]
    parser = build_parser()
    for options in (["--youcook2"], ["--msrvtt", "--test-list"], ["--clips"]):
        def argv(given: dict) -> list[str]:
            return base + [str(value) for option in options for value in (option, *given[option])]
        from_urls, from_files = (plan_from_args(parser.parse_args(argv(given))) for given in (urls, files))
        assert from_urls.clip_annotations == from_files.clip_annotations, options
        assert from_urls.clip_annotations.clips, options
    # the real command: the clips file read from its URL names videos this (empty) folder lacks
    code, _, err = in_process(base + ["--clips", urls["--clips"][0]])
    assert code == 2 and "none of the" in err and f"annotated videos is in {tmp_path}" in err, err


def test_download_reads_its_id_list_from_a_url_and_secrets_stay_local(s3: S3Server, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    library = tmp_path / "library"
    library.mkdir()
    make_video(library / "urlvid01.mp4", 1, seconds=1.0)
    (tmp_path / "ids.txt").write_text("urlvid01\n")
    ids_url = upload(s3, "lists/ids.txt", tmp_path / "ids.txt")
    with LoopbackMirror(library) as mirror:
        code, out, err = in_process(["download", "--ids", ids_url, "--out", str(tmp_path / "videos"),
                                     "--source", "mirror", "--mirror-url", mirror.url, "--workers", "0"])
    assert code == 0 and "1 done" in out, err
    assert (tmp_path / "videos" / "ur" / "urlvid01.mp4").is_file()
    for option in ("--credentials", "--cookies"):
        code, _, err = in_process(["download", "--ids", ids_url, "--out", str(tmp_path / "videos"), option,
                                   f"s3://{s3.bucket}/secret.txt"])
        assert code == 2 and "a secret must be a local file" in err, err


def test_a_node_that_lacks_a_cached_copy_is_told_to_put_the_cache_on_the_shared_filesystem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents open caption.json and the .bin on their node: a copy in a node-local cache fails the node
    check, whose line then says what to do; a copied --csv (read by the driver alone) is not checked."""
    from dataclasses import replace

    from howto_prep import node_check
    from howto_prep.errors import SystemFault
    from howto_prep.extract import run
    from howto_prep.extract.plan import ExtractPlan

    monkeypatch.setenv("HOWTO_MFT_CACHE", str(tmp_path / "cache"))
    checked: list[dict] = []

    def node_lacks_captions(paths: dict) -> None:
        checked.append(dict(paths))
        raise SystemFault("--captions /x/caption.json is not the same file on node 10.0.0.2: no such file")

    monkeypatch.setattr(node_check, "check_nodes_see", node_lacks_captions)
    plan = ExtractPlan(videos_dir=tmp_path, out=tmp_path / "out", captions=tmp_path / "c.json",
                       csv=tmp_path / "h.csv", copied_inputs=("--captions", "--csv"))
    with pytest.raises(SystemFault) as caught:
        run.check_nodes(plan)
    hint = f"read from its copy in {tmp_path / 'cache'}: set HOWTO_MFT_CACHE to a folder on the shared"
    assert hint in str(caught.value)
    assert "--csv" not in checked[0] and "--captions" in checked[0]
    with pytest.raises(SystemFault) as caught:  # given as paths: the node check's own line, unchanged
        run.check_nodes(replace(plan, copied_inputs=()))
    assert "HOWTO_MFT_CACHE" not in str(caught.value) and "--csv" in checked[1]
