"""The demo's query rule (mft_train.retrieval.synthetic_check.chosen_step): fixed before any search."""

from __future__ import annotations

import numpy as np
import pytest

from howto_prep.errors import UserError
from mft_train.retrieval.synthetic_check import chosen_step


def _steps() -> list[dict]:
    return [{"index": 0, "words": ["crack", "shell"]}, {"index": 1, "words": ["whisk", "fork"]},
            {"index": 2, "words": ["butter", "melt"]}]


def test_the_query_is_the_step_most_windows_show_among_those_whose_words_are_known() -> None:
    shows = np.zeros((9, 3), bool)
    shows[:5, 0] = True   # step 0 shown most, but "shell" is not in the vocabulary
    shows[5:8, 1] = True  # step 1: 3 windows, both words known
    shows[8, 2] = True
    vocabulary = {"crack", "whisk", "fork", "butter", "melt"}
    assert chosen_step(shows, _steps(), vocabulary) == 1
    # ties go to the lower step; with no step fully known, a step with some known word is taken
    shows[:, :] = False
    shows[:2, 1] = shows[2:4, 2] = True
    assert chosen_step(shows, _steps(), vocabulary) == 1
    assert chosen_step(shows, _steps(), {"melt"}) == 2


def test_no_window_showing_a_single_step_is_a_user_error() -> None:
    with pytest.raises(UserError, match="shorter --window"):
        chosen_step(np.zeros((4, 3), bool), _steps(), {"whisk"})
