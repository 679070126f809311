"""What the synthetic corpus shows, sounds like and says: tasks, steps, video plans, narration.

Every step of every task owns one visual pattern (shape + colour + motion), one sound signature
(tone / chord / noise band / pulsed tone at its own frequency) and three narration words that no
other step uses. A video is one task: its steps play one after another, and the ASR-like captions
say the step's words (with fillers, distractors, timing errors and some silent steps), so a model
can learn which words go with which picture and sound, but not trivially.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "cross", "stripes")
COLOURS = {  # big saturated colours survive 1 fps sampling and a 112 px downscale
    "red": (230, 30, 30), "yellow": (250, 220, 20), "green": (30, 200, 60), "blue": (40, 90, 240),
    "magenta": (220, 40, 220), "cyan": (30, 220, 230), "orange": (250, 140, 20), "white": (245, 245, 245),
}
MOTIONS = ("right", "left", "up", "down", "circle", "zigzag")
SOUNDS = ("tone", "chord", "noise", "pulse")
# 4:3 and 16:9, 240p to 360p; 240p twice as often, as it is the cheapest to encode
RESOLUTIONS = ((320, 240), (426, 240), (480, 360), (640, 360), (320, 240), (426, 240))
FRAME_RATES = (24.0, 25.0, 29.97, 30.0)
AUDIO_FORMATS = ((16_000, 1), (44_100, 2), (48_000, 1), (44_100, 1), (48_000, 2), (16_000, 2))
NO_AUDIO_EVERY = 8  # one video in eight has no audio stream (index % 8 == 2)
ID_ALPHABET = string.ascii_letters + string.digits + "-_"

# Filler words of ASR narration (stop-words already removed, as in HowTo100M's caption.json).
FILLERS = ("okay", "yeah", "guys", "really", "right", "little", "bit", "good", "nice", "thing",
           "want", "make", "sure", "know", "let's", "going", "see", "actually", "go", "well")
# Words that captions use but word2vec.bin leaves out, so the out-of-vocabulary rule is exercised.
# "a", "and", "of", "to" are also missing from the real GoogleNews vectors.
OOV_WORDS = ("uhm", "gonna", "y'all", "kinda", "a", "and", "of", "to")
OUTRO_WORDS = ("thanks", "watching", "subscribe", "channel", "comment", "below", "video", "next")


@dataclass(frozen=True)
class Step:
    """One narrated step: its words, sentence, and audio-visual signature."""

    index: int  # global step index, 0..len(STEPS)-1
    task: int
    name: str
    words: tuple[str, str, str]  # unique to this step
    sentence: str  # clean description (YouCook2/MSR-VTT style)
    shape: str
    colour: str
    motion: str
    sound: str
    frequency: float  # Hz


@dataclass(frozen=True)
class Task:
    index: int
    task_id: int
    name: str
    category_1: str
    category_2: str
    words: tuple[str, ...]  # task-level words shared by its steps
    steps: tuple[Step, ...] = field(default=())


_TASK_TABLE = (
    (11967, "Make Scrambled Eggs", "Food and Entertaining", "Recipes", ("eggs", "breakfast"), (
        ("crack eggs", ("crack", "shell", "yolk"), "crack the eggs and drop the shell"),
        ("whisk eggs", ("whisk", "fork", "froth"), "whisk the eggs with a fork until they froth"),
        ("melt butter", ("butter", "melt", "skillet"), "melt the butter in a skillet"),
        ("stir eggs", ("stir", "spatula", "scramble"), "stir and scramble the eggs with a spatula"))),
    (20412, "Plant Tomato Seedlings", "Home and Garden", "Gardening", ("tomato", "garden"), (
        ("dig hole", ("dig", "shovel", "hole"), "dig a hole with a shovel"),
        ("add compost", ("compost", "soil", "mix"), "mix compost into the soil"),
        ("set seedling", ("seedling", "roots", "plant"), "plant the seedling and cover the roots"),
        ("water plant", ("water", "hose", "soak"), "soak the plant with water from the hose"))),
    (31255, "Change a Bike Tire", "Sports and Fitness", "Cycling", ("bike", "bicycle"), (
        ("remove wheel", ("wheel", "axle", "unbolt"), "unbolt the axle and remove the wheel"),
        ("lever tire", ("lever", "tire", "rim"), "lever the tire off the rim"),
        ("patch tube", ("tube", "patch", "glue"), "glue a patch on the tube"),
        ("pump tire", ("pump", "inflate", "pressure"), "pump to inflate the tire to pressure"))),
    (40878, "Paint a Wooden Chair", "Hobbies and Crafts", "Woodworking", ("chair", "wood"), (
        ("sand chair", ("sand", "sandpaper", "smooth"), "sand the chair smooth with sandpaper"),
        ("apply primer", ("primer", "coat", "brush"), "brush a coat of primer"),
        ("paint chair", ("paint", "roller", "color"), "paint the color on with a roller"),
        ("varnish chair", ("varnish", "gloss", "dry"), "add gloss varnish and let it dry"))),
    (52031, "Wash a Dog", "Pets and Animals", "Dogs", ("dog", "puppy"), (
        ("wet fur", ("fur", "rinse", "lukewarm"), "rinse the fur with lukewarm water"),
        ("shampoo dog", ("shampoo", "lather", "massage"), "massage the shampoo into a lather"),
        ("towel dry", ("towel", "rub", "wipe"), "rub and wipe the dog with a towel"),
        ("comb fur", ("comb", "tangles", "groom"), "groom and comb out the tangles"))),
    (63390, "Replace a Car Headlight", "Cars & Other Vehicles", "Car Maintenance", ("car", "lamp"), (
        ("open hood", ("hood", "latch", "open"), "pull the latch and open the hood"),
        ("unplug connector", ("connector", "unplug", "wire"), "unplug the wire connector"),
        ("swap bulb", ("bulb", "headlight", "socket"), "put the new headlight bulb in the socket"),
        ("test beam", ("switch", "beam", "test"), "switch on the lights to test the beam"))),
)


def _build_tasks() -> tuple[Task, ...]:
    """Give each step a unique (shape, colour) pair and a frequency far from its neighbours'."""
    colour_names = list(COLOURS)
    n_steps = sum(len(row[5]) for row in _TASK_TABLE)
    frequencies = np.geomspace(200.0, 4800.0, n_steps)  # chords stay below 8 kHz (16 kHz audio)
    tasks, g = [], 0
    for t, (task_id, name, cat1, cat2, task_words, step_rows) in enumerate(_TASK_TABLE):
        steps = []
        for step_name, words, sentence in step_rows:
            steps.append(Step(
                index=g, task=t, name=step_name, words=words, sentence=sentence,
                shape=SHAPES[g % len(SHAPES)],
                colour=colour_names[(g % len(SHAPES) + g // len(SHAPES)) % len(colour_names)],
                motion=MOTIONS[(g + g // len(MOTIONS)) % len(MOTIONS)],
                sound=SOUNDS[g % len(SOUNDS)],
                frequency=float(round(frequencies[(g * 7) % n_steps], 1)),
            ))
            g += 1
        tasks.append(Task(t, task_id, name, cat1, cat2, task_words, tuple(steps)))
    return tuple(tasks)


TASKS = _build_tasks()
STEPS = tuple(step for task in TASKS for step in task.steps)


@dataclass(frozen=True)
class Segment:
    """One step shown from `start` to `end` seconds."""

    step: int  # global step index
    start: float
    end: float


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video and its narration, derived from the seed alone."""

    video_id: str
    task: int
    duration: float
    fps: float
    width: int
    height: int
    sample_rate: int | None  # None: no audio stream
    channels: int
    segments: tuple[Segment, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom gradient colours
    clutter: tuple[tuple[float, float, float, float, int, int, int], ...]  # static rectangles
    sprite_scale: float
    pan: float  # -1 left .. 1 right (stereo only)
    rank: int
    noise_seed: int


def make_ids(rng: np.random.Generator, count: int) -> list[str]:
    """YouTube-like ids: 11 chars of [A-Za-z0-9_-], unique; some with '-', '_', one leading '-'."""
    letters = np.array(list(string.ascii_letters + string.digits))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        i = len(ids)
        chars = list(rng.choice(letters, 11))
        if i % 4 == 1:
            chars[int(rng.integers(1, 11))] = "-"
        if i % 4 == 3:
            chars[int(rng.integers(1, 11))] = "_"
        if i % 12 == 5:
            chars[0] = "-"  # real ids can start with '-': tools must not read them as options
        video_id = "".join(chars)
        if video_id not in seen:
            seen.add(video_id)
            ids.append(video_id)
    return ids


def _cycled(rng: np.random.Generator, options: tuple, count: int) -> list:
    """Each block of len(options) videos uses every option once, in a seeded order."""
    values: list = []
    while len(values) < count:
        values.extend(options[j] for j in rng.permutation(len(options)))
    return values[:count]


DURATION_POWER = 10  # mean duration: low + (high - low) / 11


def _durations(rng: np.random.Generator, count: int, low: float, high: float) -> list[float]:
    """low + (high - low) * q**10 with q stratified over blocks of up to 24 videos.

    Most videos are short and each block has its long ones (the top stratum lies in the top third
    of the range), so a default corpus spans 10 s to a few minutes and still encodes fast.
    """
    values: list[float] = []
    while len(values) < count:
        block = min(24, count - len(values))
        strata = rng.permutation(block)
        for stratum in strata:
            q = (stratum + float(rng.random())) / block
            values.append(round(float(low + (high - low) * q ** DURATION_POWER), 2))
    return values


def _segments(rng: np.random.Generator, task: Task, duration: float) -> tuple[Segment, ...]:
    """Intro, then the task's steps in order (cyclically, from a random first step), then an outro."""
    intro = float(rng.uniform(0.5, 3.0)) if duration >= 14 else float(rng.uniform(0.3, 1.0))
    outro = float(rng.uniform(1.0, 4.0)) if duration >= 30 else 0.0
    usable = duration - intro - outro
    count = max(2, int(round(usable / rng.uniform(7.0, 11.0))))
    weights = rng.uniform(0.6, 1.4, count)
    lengths = usable * weights / weights.sum()
    first = int(rng.integers(len(task.steps)))
    segments, t = [], intro
    for k, length in enumerate(lengths):
        step = task.steps[(first + k) % len(task.steps)]
        segments.append(Segment(step.index, round(t, 3), round(t + float(length), 3)))
        t += float(length)
    return tuple(segments)


def make_plans(
    rng: np.random.Generator, ids: list[str], min_seconds: float, max_seconds: float, first_index: int = 0
) -> list[VideoPlan]:
    """Plans for `ids`; formats cycle so that any 4+ videos include 29.97 fps and 3+ an audio-less one."""
    count = len(ids)
    resolutions = _cycled(rng, RESOLUTIONS, count)
    rates = _cycled(rng, FRAME_RATES, count)
    audio = _cycled(rng, AUDIO_FORMATS, count)
    durations = _durations(rng, count, min_seconds, max_seconds)
    plans = []
    for i, video_id in enumerate(ids):
        task = TASKS[int(rng.integers(len(TASKS)))] if i >= len(TASKS) else TASKS[(i + first_index) % len(TASKS)]
        has_audio = (i + first_index) % NO_AUDIO_EVERY != 2
        top = tuple(int(v) for v in rng.integers(0, 90, 3))
        bottom = tuple(int(v) for v in rng.integers(0, 90, 3))
        clutter = tuple(
            (float(rng.uniform(0, 0.8)), float(rng.uniform(0, 0.8)), float(rng.uniform(0.1, 0.3)),
             float(rng.uniform(0.05, 0.2)), *(int(v) for v in rng.integers(60, 140, 3)))
            for _ in range(int(rng.integers(1, 4)))
        )
        plans.append(VideoPlan(
            video_id=video_id, task=task.index, duration=durations[i], fps=rates[i],
            width=resolutions[i][0], height=resolutions[i][1],
            sample_rate=audio[i][0] if has_audio else None, channels=audio[i][1] if has_audio else 0,
            segments=_segments(rng, task, durations[i]), background=(top, bottom), clutter=clutter,
            sprite_scale=float(rng.uniform(0.9, 1.1)), pan=float(rng.uniform(-0.6, 0.6)),
            rank=int(rng.integers(1, 150)), noise_seed=int(rng.integers(2**31)),
        ))
    return plans


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
