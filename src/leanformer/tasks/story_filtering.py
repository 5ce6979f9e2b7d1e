"""``story_filtering``: list the chapters without a purchase (The Sparse Frontier's Story Filtering).

``n_without`` chapters (default 3, never chapter 1) have no purchase; sales of earlier items still happen anywhere
and act as distractors. Answer: chapter numbers, ``<answer>4, 9, 17</answer>`` (any order; "chapter 4" is read as
4). Score: intersection over union of the chapter sets.
"""

from __future__ import annotations

import dataclasses
import random
import re

from leanformer.errors import ConfigError
from leanformer.tasks.base import Sample, extract_answer, iou
from leanformer.tasks.story import StoryTask


@dataclasses.dataclass
class StoryFiltering(StoryTask):
    n_without: int = 3

    name = "story_filtering"
    answer_hint = "List the chapter numbers, as <answer>NUMBER, NUMBER, ...</answer>."

    def __post_init__(self):
        if self.n_without < 1:
            raise ConfigError(f"story_filtering: n_without={self.n_without} must be >= 1")

    def min_chapters(self) -> int:
        return 2 * self.n_without + 1

    def no_purchase(self) -> int:
        return self.n_without

    def plan(self, rng: random.Random, length: int, count) -> dict:
        plan = super().plan(rng, length, count)
        plan["answer"] = [ch.number for ch in plan["chapters"] if not ch.purchase]
        return plan

    def question(self, plan: dict) -> str:
        return "In which chapters did the traveller buy nothing?"

    def gold(self, plan: dict) -> tuple[list[int], list[str]]:
        return list(plan["answer"]), [str(k) for k in plan["answer"]]

    def score(self, prediction: str, sample: Sample) -> float:
        pred = [int(x) for x in re.findall(r"\d+", extract_answer(prediction))]
        return iou([str(x) for x in pred], [str(x) for x in sample.answer])
