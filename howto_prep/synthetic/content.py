"""What the synthetic corpus shows, sounds like and says: its tasks and their steps.

Every step of every task owns one visual pattern (shape + colour + motion), one sound signature
(tone / chord / noise band / pulsed tone at its own frequency) and three narration words that no
other step uses. A video is one task: its steps play one after another, and the ASR-like captions
say the step's words (with fillers, distractors, timing errors and some silent steps), so a model
can learn which words go with which picture and sound, but not trivially (video plans: `plans`;
captions: `narration`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "cross", "stripes")
COLOURS = {  # big saturated colours survive 1 fps sampling and a 112 px downscale
    "red": (230, 30, 30), "yellow": (250, 220, 20), "green": (30, 200, 60), "blue": (40, 90, 240),
    "magenta": (220, 40, 220), "cyan": (30, 220, 230), "orange": (250, 140, 20), "white": (245, 245, 245),
}
MOTIONS = ("right", "left", "up", "down", "circle", "zigzag")
SOUNDS = ("tone", "chord", "noise", "pulse")

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
