"""A needle the question shares no word with (NoLiMa's idea, arXiv 2502.05167; our own needles and wording).

Each character of the context lives next to a landmark, each in another city; the question asks who has been to
one landmark's city. The city is named nowhere in the context, so literal matching cannot find the needle: the
model must know where the landmark is. Every character's sentence names a landmark, so "the character next to a
place" is no shortcut: without the landmark -> city knowledge the best strategy is a guess, and `chance` =
1 / characters. The answer is correct when it names the asked character and none of the others
(string_match_part on the name). `literal=True` is the control: the question names the landmark itself.
"""

from __future__ import annotations

import random

from kvcompress.errors import UserError
from kvcompress.tasks.contract import Question, TaskContext

# (landmark, its city): the city's name does not occur in the landmark's
LANDMARKS = [
    ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Brandenburg Gate", "Berlin"),
    ("Statue of Liberty", "New York"), ("Sagrada Familia", "Barcelona"), ("Golden Gate Bridge", "San Francisco"),
    ("Acropolis", "Athens"), ("Kremlin", "Moscow"), ("Forbidden City", "Beijing"), ("Charles Bridge", "Prague"),
    ("Space Needle", "Seattle"), ("Burj Khalifa", "Dubai"), ("Hagia Sophia", "Istanbul"), ("Atomium", "Brussels"),
    ("CN Tower", "Toronto"), ("Alhambra", "Granada"), ("Petronas Towers", "Kuala Lumpur"),
]
NAMES = "Ines Tomas Priya Oskar Leila Mateo Hana Felix Amara Jonas Sofia Ravi Greta Kofi Elena Bruno".split()
NEEDLE = "{name} lives next to the {landmark}."
DISTRACTORS = 2  # characters next to other landmarks (other cities), never asked


def make(seed: int, questions: int = 1, literal: bool = False) -> TaskContext:
    """`literal`: the control variant, whose question names the landmark itself (literal matching finds it)."""
    characters = questions + DISTRACTORS
    if characters > min(len(LANDMARKS), len(NAMES)):
        raise UserError(f"nolima has {min(len(LANDMARKS), len(NAMES))} characters, {DISTRACTORS} of them never "
                        f"asked: at most {min(len(LANDMARKS), len(NAMES)) - DISTRACTORS} questions")
    rng = random.Random(seed)
    places = rng.sample(LANDMARKS, characters)
    names = rng.sample(NAMES, characters)
    asked = names[:questions]
    sentences = [NEEDLE.format(name=n, landmark=landmark) for n, (landmark, _) in zip(names, places)]
    where = [f"the {landmark}" if literal else city for landmark, city in places[:questions]]
    qs = [Question(f"Which character has been to {w}? Answer with the name only.", [name],
                   scorer="string_match_part", distractors=[n for n in names if n != name],
                   answer_prefix=f"The character who has been to {w} is")
          for name, w in zip(asked, where)]
    task = TaskContext("nolima-literal" if literal else "nolima", qs, sentences,
                       label="nolima:" + ",".join(f"{n}@{landmark}" for n, (landmark, _) in zip(asked, places)))
    task.chance = lambda text: chance(task)
    return task


def chance(task: TaskContext) -> float:
    """A guess among the context's characters (the text adds nothing: every character sits by some landmark)."""
    return 1 / len(task.questions[0].distractors + task.questions[0].answers)
