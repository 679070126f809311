"""ASR-like narration of a video plan: HowTo100M-style captions timed to the steps it shows."""

from __future__ import annotations

import numpy as np

from howto_prep.synthetic.content import FILLERS, OOV_WORDS, OUTRO_WORDS, STEPS, TASKS
from howto_prep.synthetic.plans import VideoPlan


def narrate(plan: VideoPlan, rng: np.random.Generator) -> dict[str, list]:
    """ASR-like captions {"start", "end", "text"} timed to the steps, with HowTo100M-style noise.

    Per step: 3-5 s captions holding 1-3 of the step's words, fillers, sometimes a task word or a
    word of another step of the task (a distractor); one caption in five is off by about a second;
    about one step in eight is not narrated. Captions may overlap a little, as ASR segments do.
    """
    task = TASKS[plan.task]
    captions: list[tuple[float, float, str]] = []

    def filler(count: int) -> list[str]:
        pool = FILLERS + OOV_WORDS[:4]
        return [str(word) for word in rng.choice(pool, count)]

    first = plan.segments[0].start
    if first >= 1.0:
        words = ["today", "show", *task.name.lower().split()[1:], *filler(1)]
        captions.append((0.0, first + float(rng.uniform(0, 0.5)), " ".join(words)))
    for segment in plan.segments:
        step = STEPS[segment.step]
        if rng.random() < 0.12:
            continue  # a silent step, as when the narrator just works
        length = segment.end - segment.start
        pieces = max(1, int(round(length / rng.uniform(3.0, 5.0))))
        for k in range(pieces):
            start = segment.start + length * k / pieces
            end = segment.start + length * (k + 1) / pieces + float(rng.uniform(0.0, 0.6))
            shift = float(rng.choice([-1.0, 1.0])) if rng.random() < 0.2 else float(rng.uniform(-0.2, 0.2))
            words = [str(w) for w in rng.choice(step.words, int(rng.integers(1, 4)), replace=False)]
            words += filler(int(rng.integers(1, 4)))
            if rng.random() < 0.3:
                words.append(str(rng.choice(task.words)))
            if rng.random() < 0.12:
                other = task.steps[int(rng.integers(len(task.steps)))]
                words.append(str(rng.choice(other.words)))
            rng.shuffle(words)
            captions.append((start + shift, end + shift, " ".join(words)))
    last = plan.segments[-1].end
    if plan.duration - last >= 1.0 and rng.random() < 0.8:
        words = [str(w) for w in rng.choice(OUTRO_WORDS, 3, replace=False)] + filler(1)
        captions.append((last - 0.3, plan.duration, " ".join(words)))

    cleaned = []
    for start, end, text in captions:
        start, end = max(0.0, round(start, 2)), min(plan.duration, round(end, 2))
        if end - start >= 0.5:
            cleaned.append((start, end, text))
    cleaned.sort(key=lambda caption: caption[0])
    return {"start": [c[0] for c in cleaned], "end": [c[1] for c in cleaned], "text": [c[2] for c in cleaned]}
