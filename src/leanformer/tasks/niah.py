"""``niah``: multi-key needle in a haystack (RULER's multi-key / multi-query NIAH, Hsieh et al., 2024).

``n_needles`` needles "The value for key K is: V." (K a pseudo-word, V a 7-digit number) sit at random depths in
filler sentences; ``n_queries`` of them are asked for. Answer: the values in the order of the queried keys,
``<answer>V1, V2, ...</answer>``; an item may also be written ``K: V`` (its last word is taken). Score: the
fraction of queried values right.
"""

from __future__ import annotations

import dataclasses
import random

from leanformer.errors import ConfigError
from leanformer.tasks.base import Sample, Task, fraction_correct, positional_hits, split_items
from leanformer.tasks.vocab import FillerStream, pseudo_words


@dataclasses.dataclass
class NIAH(Task):
    n_needles: int = 6
    n_queries: int = 4

    name = "niah"
    intro = ("Some special key-value pairs are hidden in the following text. Remember them; you will be asked for "
             "the values of some keys.")
    answer_hint = "Write the values in the order of the keys, as <answer>VALUE, VALUE, ...</answer>."

    def __post_init__(self):
        if not 1 <= self.n_queries <= self.n_needles:
            raise ConfigError(f"niah: n_queries={self.n_queries} must be in [1, n_needles={self.n_needles}]")

    def plan(self, rng: random.Random, length: int, count) -> dict:
        keys = pseudo_words(rng, self.n_needles)
        values = [str(v) for v in rng.sample(range(1_000_000, 10_000_000), self.n_needles)]
        depths = sorted(rng.random() for _ in range(self.n_needles))
        order = rng.sample(range(self.n_needles), self.n_needles)
        queries = order[: self.n_queries]
        return {"keys": keys, "values": values, "depths": depths, "queries": queries,
                "filler": FillerStream(f"niah-filler:{rng.random()}")}

    def question(self, plan: dict) -> str:
        keys = [plan["keys"][i] for i in plan["queries"]]
        listed = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
        return f"What are the values for the keys {listed}?"

    def context(self, plan: dict, n: int) -> str:
        sentences = plan["filler"].take(n)
        # Insert from the deepest needle backwards so earlier insertion points stay valid.
        for depth, k, v in sorted(zip(plan["depths"], plan["keys"], plan["values"]), reverse=True):
            sentences.insert(round(depth * len(sentences)), f"The value for key {k} is: {v}.")
        return " ".join(sentences)

    def gold(self, plan: dict) -> tuple[list[str], list[str]]:
        values = [plan["values"][i] for i in plan["queries"]]
        return values, values

    def keyed_items(self, plan: dict) -> list[str]:
        # led by the key as the question lists it, not as the needle says it ("key K is: V"): with that form a
        # CPU mini-run copied keys from the needles, repeating one, instead of taking the question's next key
        return [f"{plan['keys'][i]}: {plan['values'][i]}" for i in plan["queries"]]

    def item_scores(self, prediction: str, sample: Sample) -> list[bool]:
        """Whether each queried value is right, in the question's order (item ``i`` of the answer against value
        ``i``); :meth:`score` is their mean (``leanformer depth`` places each by its needle's depth)."""
        return positional_hits(self._items(prediction), list(sample.answer))

    def score(self, prediction: str, sample: Sample) -> float:
        return fraction_correct(self._items(prediction), list(sample.answer))

    @staticmethod
    def _items(prediction: str) -> list[str]:
        return [it.split()[-1] for it in split_items(prediction)]
