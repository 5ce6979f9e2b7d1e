"""``story_multihop``: the last item acquired before a given item (The Sparse Frontier's Story Multi-hop).

Two hops: find the chapter where the named item was bought, then the purchase in the chapter before it (every
chapter has a purchase in this task). Answer ``<answer>ITEM</answer>``; exact match after normalization (articles,
case and punctuation ignored).
"""

from __future__ import annotations

import dataclasses
import random

from leanformer.tasks.base import Sample, extract_answer, normalize
from leanformer.tasks.story import StoryTask


@dataclasses.dataclass
class StoryMultihop(StoryTask):
    name = "story_multihop"
    answer_hint = "Write the item's full description, as <answer>ITEM</answer>."

    def plan(self, rng: random.Random, length: int, count) -> dict:
        plan = super().plan(rng, length, count)
        chapters = plan["chapters"]
        k = rng.randrange(1, len(chapters))
        plan["asked"], plan["answer"] = chapters[k].item, chapters[k - 1].item
        return plan

    def question(self, plan: dict) -> str:
        return f"Which item did the traveller buy right before buying the {plan['asked']}?"

    def gold(self, plan: dict) -> tuple[str, list[str]]:
        return plan["answer"], [plan["answer"]]

    def score(self, prediction: str, sample: Sample) -> float:
        pred = normalize(extract_answer(prediction))
        return float(bool(pred) and pred == normalize(sample.answer))
