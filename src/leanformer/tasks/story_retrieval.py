"""``story_retrieval``: which location / character / item belongs to given chapters (The Sparse Frontier's Story
Retrieval; several queries per sample, default 16).

Queries are distinct (chapter, attribute) pairs; attributes are the location visited, the character met and the
item bought (only chapters with a purchase). Answer: one item per query in order,
``<answer>ANSWER 1, ANSWER 2, ...</answer>``; an item may also be written ``QUERY: ANSWER`` (the text after its last
colon is taken). Score: the fraction of queries answered right.
"""

from __future__ import annotations

import dataclasses
import random

from leanformer.errors import ConfigError
from leanformer.tasks.base import Sample, fraction_correct, normalize, split_items
from leanformer.tasks.story import StoryTask

_ASK = ("location", "character", "item")
_LEAD = ("For each query, name the location the traveller visited, the character the traveller met, or the item "
         "the traveller bought in the given chapter:")


@dataclasses.dataclass
class StoryRetrieval(StoryTask):
    n_queries: int = 16

    name = "story_retrieval"
    answer_hint = ("Answer every question in order, as <answer>ANSWER 1, ANSWER 2, ...</answer> (a location, a "
                   "character's full name or an item's full description).")

    def __post_init__(self):
        if self.n_queries < 1:
            raise ConfigError(f"story_retrieval: n_queries={self.n_queries} must be >= 1")

    def min_chapters(self) -> int:
        return -(-self.n_queries // 3)

    def plan(self, rng: random.Random, length: int, count) -> dict:
        plan = super().plan(rng, length, count)
        pairs = [(ch.number, a) for ch in plan["chapters"] for a in _ASK if a != "item" or ch.purchase]
        queries = rng.sample(pairs, min(self.n_queries, len(pairs)))
        by_number = {ch.number: ch for ch in plan["chapters"]}
        plan["queries"] = queries
        plan["answers"] = [getattr(by_number[k], a) for k, a in queries]
        return plan

    def question(self, plan: dict) -> str:
        return _LEAD + "; ".join(f" ({i}) {a} in chapter {k}" for i, (k, a) in enumerate(plan["queries"], 1)) + "."

    def gold(self, plan: dict) -> tuple[list[str], list[str]]:
        return list(plan["answers"]), list(plan["answers"])

    def keyed_items(self, plan: dict) -> list[str]:
        return [f"({i}) {a} in chapter {k}: {ans}"
                for i, ((k, a), ans) in enumerate(zip(plan["queries"], plan["answers"]), 1)]

    def score(self, prediction: str, sample: Sample) -> float:
        return fraction_correct(split_items(prediction, keyed=True), [normalize(a) for a in sample.answer])
