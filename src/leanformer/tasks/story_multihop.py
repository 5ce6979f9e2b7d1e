"""``story_multihop``: the last item acquired before a given item (The Sparse Frontier's Story Multi-hop).

Two hops: find the chapter where the named item was bought, then the purchase in the chapter before it (every
chapter has a purchase in this task). Answer ``<answer>ITEM</answer>``; exact match after normalization (articles,
case and punctuation ignored). An answer that writes out its lookups first, ``STEP: ..., STEP: ITEM``
(:meth:`StoryMultihop.chain_items`), is scored on the text after its last colon.
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

    def chain_items(self, plan: dict) -> list[str]:
        # the asked item -> its chapter -> the item of the chapter before, in story_retrieval's keyed form; no step
        # names what is written just before a match (the place before the item, which an earlier chain went through)
        n = next(c.number for c in plan["chapters"] if c.item == plan["asked"])  # items are unique to their chapter
        return [f"{plan['asked']}: chapter {n}", f"item in chapter {n - 1}: {plan['answer']}"]

    def score(self, prediction: str, sample: Sample) -> float:
        pred = normalize(extract_answer(prediction).rsplit(":", 1)[-1])
        return float(bool(pred) and pred == normalize(sample.answer))
