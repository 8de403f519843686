"""A needle the question shares no word with (NoLiMa's idea, arXiv 2502.05167; our own needles and wording).

The needle says a character was at a landmark; the question asks who has been to the landmark's city. The city is
named nowhere in the context, so literal matching cannot find the needle: the model must know where the landmark
is. Other characters appear in sentences that mention no place, so "the only name in the text" is no shortcut
either: the answer is correct when it names the right character and none of the others (string_match_part on the
name). `chance` = 1 / characters in the context.
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
NEEDLE = "In the end, {} took a long, slow walk all around the {}."
FILLER = ["{} read a short letter by the window.", "{} fixed the squeaky hinge on the shed door.",
          "{} forgot the umbrella on the kitchen table.", "{} counted the coins in the jar twice."]
DISTRACTORS = 2  # characters who appear without any place


def make(seed: int, questions: int = 1, literal: bool = False) -> TaskContext:
    """`literal`: the control variant, whose question names the landmark itself (literal matching finds it)."""
    if questions > len(LANDMARKS) or questions + DISTRACTORS > len(NAMES):
        raise UserError(f"nolima has {len(LANDMARKS)} landmarks: at most that many questions")
    rng = random.Random(seed)
    places = rng.sample(LANDMARKS, questions)
    names = rng.sample(NAMES, questions + DISTRACTORS)
    asked, others = names[:questions], names[questions:]
    sentences = [NEEDLE.format(n, landmark) for n, (landmark, _) in zip(asked, places)]
    sentences += [rng.choice(FILLER).format(n) for n in others]
    where = [f"the {landmark}" if literal else city for landmark, city in places]
    qs = [Question(f"Which character has been to {w}? Answer with the name only.", [name],
                   scorer="string_match_part", distractors=[n for n in names if n != name],
                   answer_prefix=f"The character who has been to {w} is")
          for name, w in zip(asked, where)]
    return TaskContext("nolima-literal" if literal else "nolima", qs, sentences,
                       label="nolima:" + ",".join(f"{n}@{landmark}" for n, (landmark, _) in zip(asked, places)))


def chance(task: TaskContext) -> float:
    return 1 / len(task.questions[0].distractors + task.questions[0].answers)
