"""Shared fixtures: one small synthetic corpus per test session (real mp4s, captions, word2vec)."""

from __future__ import annotations

import pytest

from howto_prep.doctor import first_problem
from howto_prep.synthetic.corpus import CorpusInfo, generate_corpus



def pytest_sessionstart(session: pytest.Session) -> None:
    """The environment self-test first: a broken wheel stops the suite with one sentence naming it,
    instead of failing dozens of tests in confusing ways (`howto-prep doctor` runs the same checks)."""
    problem = first_problem()
    if problem:
        pytest.exit(problem, returncode=3)


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


@pytest.fixture(scope="module")
def two_torch_threads():
    """torch on 2 threads for a module (the CI machine's cores), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
