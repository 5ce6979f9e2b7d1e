"""The generated narrative behind the story tasks (The Sparse Frontier's Story Retrieval / Multi-hop / Filtering).

A traveller's journey in numbered chapters. Chapter ``k`` has a unique location and a unique character, an event,
filler conversation, the purchase of a unique item (adjective + material + object; chapters listed in
``no_purchase`` have none) and, with probability ``sale_prob``, the sale of an item bought in an earlier chapter
and not sold yet. Chapter text::

    Chapter 3.
    The traveller arrived at the Misty Harbor. There the traveller met Ada Blake, who was mending a fishing net.
    "Good morning," said Ada. "The roads are dry this week."        <- conversation lines (the filler unit)
    Before leaving the Misty Harbor, the traveller bought a shiny copper kettle.
    The traveller also sold the worn leather saddle to Ada Blake.

The number of chapters grows with the length (the chapters' fixed text takes about ``core_share`` of it); the
conversation fills the rest, one line at a time, spread evenly over the chapters.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

from leanformer.errors import UserError
from leanformer.tasks.base import Task
from leanformer.tasks.vocab import PLACE, PLACE_ADJ, unique_items, unique_names, unique_places

MAX_CHAPTERS = len(PLACE_ADJ) * len(PLACE)  # locations are unique per chapter

EVENTS = ("mending a fishing net", "painting a small boat", "arguing with a merchant", "feeding a flock of geese",
          "reading an old letter", "tuning a battered fiddle", "sweeping the front steps", "counting coins",
          "carving a wooden spoon", "waiting for a delayed cart", "watering a row of herbs", "stacking firewood",
          "repairing a broken wheel", "singing an old ballad", "chasing a runaway goat", "baking bread",
          "writing in a ledger", "sharpening a knife", "teaching a child to whistle", "washing linen")
GREETINGS = ("Good morning", "Welcome, stranger", "Well met", "Good evening", "Come in, come in", "Hello there")
TOPICS = ("the weather", "the price of bread", "the state of the roads", "the harvest", "the river crossing",
          "the local festival", "the old mill", "the tax collector", "the spring floods", "the night market")
OPINIONS = ("had been better last year", "was the talk of the town", "worried everyone a little",
            "was nothing to fear", "changed every season", "was hard to predict", "kept the elders busy")
REMARKS = ("The roads are dry this week.", "You look tired from the road.", "We rarely see visitors here.",
           "Stay for a cup of tea.", "The wind is turning cold.", "Mind the puddles on your way out.",
           "My cousin travels too.", "It has been a quiet day.")


def conversation_line(rng: random.Random, first: str) -> str:
    """One line of filler dialogue between the traveller and the chapter's character (first name ``first``)."""
    kind = rng.randrange(3)
    if kind == 0:
        return f'"{rng.choice(GREETINGS)}," said {first}. "{rng.choice(REMARKS)}"'
    if kind == 1:
        return f"The traveller asked {first} about {rng.choice(TOPICS)}."
    return f"{first} said that {rng.choice(TOPICS)} {rng.choice(OPINIONS)}."


@dataclasses.dataclass
class Chapter:
    number: int
    location: str
    character: str
    event: str
    item: str
    purchase: bool
    sold: str | None  # an item bought earlier and sold here
    lines_seed: str
    _lines: list[str] = dataclasses.field(default_factory=list, repr=False)

    def lines(self, k: int) -> list[str]:
        """The first ``k`` conversation lines (generated on demand; prefixes are stable)."""
        if len(self._lines) < k:
            rng = random.Random(f"{self.lines_seed}:{len(self._lines)}")
            first = self.character.split()[0]
            self._lines.extend(conversation_line(rng, first) for _ in range(k - len(self._lines)))
        return self._lines[:k]

    def render(self, k: int) -> str:
        head = (f"Chapter {self.number}.\nThe traveller arrived at the {self.location}. There the traveller met "
                f"{self.character}, who was {self.event}.")
        parts = [head, *self.lines(k)]
        if self.purchase:
            parts.append(f"Before leaving the {self.location}, the traveller bought a {self.item}.")
        if self.sold is not None:
            parts.append(f"The traveller also sold the {self.sold} to {self.character}.")
        return "\n".join(parts)


def make_chapters(rng: random.Random, n: int, no_purchase: int = 0, sale_prob: float = 0.3) -> list[Chapter]:
    """``n`` chapters; ``no_purchase`` of them (never chapter 1) have no purchase."""
    places, names, items = unique_places(rng, n), unique_names(rng, n), unique_items(rng, n)
    skip = set(rng.sample(range(1, n), no_purchase)) if no_purchase else set()
    chapters, owned = [], []
    for i in range(n):
        sold = None
        if owned and rng.random() < sale_prob:
            sold = owned.pop(rng.randrange(len(owned)))
        chapters.append(Chapter(i + 1, places[i], names[i], rng.choice(EVENTS), items[i], i not in skip, sold,
                                f"story-lines:{rng.random()}"))
        if i not in skip:
            owned.append(items[i])
    return chapters


@dataclasses.dataclass
class StoryTask(Task):
    """Base of the story tasks: plans a narrative sized to the length; subclasses ask questions about it.

    ``uneven_chapters``: the conversation lines go to chapters at random, in proportion to per-chapter weights drawn
    from [0.2, 1.8] (a chapter's length varies about ninefold), instead of evenly; only a chapter's header then tells
    where it is, not its position in the story. Off by default (the benchmark's samples); a training option."""

    uneven_chapters: bool = False

    intro = "Read the following story of a traveller's journey, told in numbered chapters."
    core_share: ClassVar[float] = 0.4
    sale_prob: ClassVar[float] = 0.3

    def params(self) -> dict:
        p = super().params()
        if not p["uneven_chapters"]:  # the default leaves the harness's cell keys as they were before the option
            del p["uneven_chapters"]
        return p

    def min_chapters(self) -> int:
        return 2

    def no_purchase(self) -> int:
        return 0

    def plan(self, rng: random.Random, length: int, count) -> dict:
        probe = make_chapters(random.Random(0), 4, 0, 1.0)
        per_chapter = sum(count(c.render(0)) for c in probe) / len(probe)
        n = max(self.min_chapters(), int(self.core_share * length / per_chapter))
        if n > MAX_CHAPTERS:
            raise UserError(f"{self.name}: length {length} needs {n} chapters; at most {MAX_CHAPTERS} are supported")
        plan = {"chapters": make_chapters(rng, n, self.no_purchase(), self.sale_prob)}
        if self.uneven_chapters:
            plan["spread"] = (rng.random(), [rng.uniform(0.2, 1.8) for _ in range(n)])
        return plan

    def lines_per_chapter(self, plan: dict, n: int) -> list[int]:
        """How many of the ``n`` conversation lines each chapter gets (each count non-decreasing in ``n``)."""
        c = len(plan["chapters"])
        if "spread" not in plan:
            return [n // c + (i < n % c) for i in range(c)]
        seed, weights = plan["spread"]
        counts = [0] * c
        for i in random.Random(seed).choices(range(c), weights, k=n):  # line j's chapter: a prefix-stable stream
            counts[i] += 1
        return counts

    def context(self, plan: dict, n: int) -> str:
        return "\n\n".join(ch.render(k) for ch, k in zip(plan["chapters"], self.lines_per_chapter(plan, n)))
