"""Shared fixtures: one small synthetic corpus per test session (real mp4s, captions, word2vec)."""

from __future__ import annotations

import types

import pytest

from howto_prep.doctor import first_problem
from howto_prep.synthetic.corpus import CorpusInfo, generate_corpus



def pytest_sessionstart(session: pytest.Session) -> None:
    """The environment self-test first: a broken wheel stops the suite with one sentence naming it,
    instead of failing dozens of tests in confusing ways (`howto-prep doctor` runs the same checks)."""
    quick = "not slow" in (session.config.getoption("markexpr") or "")  # every Ray test is marked slow
    problem = first_problem(skip_ray=quick)
    if problem:
        pytest.exit(problem, returncode=3)


# `pytest -m "not slow"` is the quick loop (under a minute on 2 cores); `pytest` (CI, `make test`) runs all.
SLOW_MODULES = {  # slow as a whole: Ray, CLI child processes, torchrun, ffmpeg, full-size CNNs on CPU
    "test_bench_standin", "test_chaos", "test_ddp", "test_doctor", "test_download", "test_extract",
    "test_extract_clips", "test_failure_semantics", "test_gpu_share", "test_pipeline", "test_ray_address",
    "test_storage_faults", "test_synthetic", "test_reference_chain", "test_features_2d", "test_features_3d",
    "test_agents", "test_multinode", "test_object_store",  # agents on a local Ray; a 3-node cluster; a moto S3 server
    "test_embed_search",  # the whole embed + index pipeline on a trained model, once per module
    "test_download_object_store",  # downloads to a moto S3 server, one run on a local Ray
    "test_train_object_store",  # pretrain/evaluate/embed from a moto S3 server, a CLI child process
    "test_run_object_store",  # run folders and checkpoints on a moto S3 server: pretrain, resume, finetune
    "test_gcs_object_store",  # extract, pretrain and evaluate on a GCS emulator
}
SLOW_NAMES = frozenset({"subprocess", "ray"})  # a test whose own code uses these starts a process or a cluster


def _names(code: types.CodeType) -> set[str]:
    """Global names a function's code (nested functions included) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow tests in this one place, so a quick run can leave them out and nothing else changes."""
    for item in items:
        function = getattr(item, "function", None)
        in_slow_module = item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES
        if in_slow_module or (function is not None and SLOW_NAMES & _names(function.__code__)):
            item.add_marker(pytest.mark.slow)


SYNTH_VIDEOS = 6
SYNTH_HELDOUT = 3


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusInfo:
    """6 pretraining videos of 10-25 s (seed 0) and 3 held-out ones; generated once per session.

    It always holds at least one video without an audio stream (`no_audio_ids`) and one at
    29.97 fps (`fps`), in 4:3 and 16:9 sizes; treat it as read-only (copy files you change).
    """
    out = tmp_path_factory.mktemp("synth") / "corpus"
    return generate_corpus(out, videos=SYNTH_VIDEOS, seed=0, heldout_videos=SYNTH_HELDOUT,
                           min_seconds=10, max_seconds=25)


@pytest.fixture(scope="session")
def local_set(synth_corpus: CorpusInfo, tmp_path_factory: pytest.TempPathFactory):
    """synth_corpus extracted to a local folder (logmel and tokens, one video per shard), once per
    session: the reference the object-store tests compare their sets with. Read it only."""
    from test_extract_object_store import explain, extract_args, run_cli

    base = tmp_path_factory.mktemp("local-run")
    result = run_cli(extract_args(synth_corpus, str(base / "shards")), base)
    assert result.returncode == 0, explain(result)
    return base / "shards"


@pytest.fixture(scope="module")
def two_torch_threads():
    """torch on 2 threads for a module (the CI machine's cores), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
