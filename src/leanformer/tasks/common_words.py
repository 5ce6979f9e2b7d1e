"""``common_words``: find the most frequent words of a long list (RULER's common-words extraction, CWE).

A numbered list, one word per line, holds ``n_common`` common words ``common_freq`` times each and as many rare
words as fit, ``rare_freq`` times each, in a random order. Words are pronounceable pseudo-words so that no word is
favoured by a model's prior. Short contexts lower the common frequency (never below ``rare_freq + 2``) so that the
common words take at most half of the list. Answer: the common words, ``<answer>WORD, WORD, ...</answer>``
(any order). Score: intersection over union.
"""

from __future__ import annotations

import dataclasses
import random

from leanformer.errors import ConfigError
from leanformer.tasks.base import Sample, Task, iou, split_items
from leanformer.tasks.vocab import pseudo_words


class _WordPool:
    """Distinct pseudo-words drawn on demand from one seeded stream (prefixes are stable)."""

    def __init__(self, seed: str, exclude: set[str]):
        self._rng = random.Random(seed)
        self._seen = set(exclude)
        self.words: list[str] = []

    def first(self, n: int) -> list[str]:
        while len(self.words) < n:
            for w in pseudo_words(self._rng, n - len(self.words)):
                if w not in self._seen:
                    self._seen.add(w)
                    self.words.append(w)
        return self.words[:n]


@dataclasses.dataclass
class CommonWords(Task):
    n_common: int = 10
    common_freq: int = 30
    rare_freq: int = 3

    name = "common_words"
    intro = "Below is a numbered list of words. Some words appear many more times than the others."

    def __post_init__(self):
        if self.n_common < 1 or self.rare_freq < 1 or self.common_freq < self.rare_freq + 2:
            raise ConfigError(f"common_words: need n_common >= 1, rare_freq >= 1 and common_freq >= rare_freq + 2 "
                              f"(got {self.n_common}, {self.rare_freq}, {self.common_freq})")

    @property
    def answer_hint(self) -> str:
        return f"List the {self.n_common} most common words, as <answer>WORD, WORD, ...</answer>."

    def plan(self, rng: random.Random, length: int, count) -> dict:
        common = pseudo_words(rng, self.n_common)
        pool = _WordPool(f"cwe-rare:{rng.random()}", set(common))
        probe = pool.first(20)
        per_entry = count("\n".join(f"{i}. {w}" for i, w in enumerate(probe, 100))) / len(probe)
        fit_common = int(0.5 * length / per_entry / self.n_common)
        freq = min(self.common_freq, max(self.rare_freq + 2, fit_common))
        return {"common": common, "freq": freq, "pool": pool, "order_seed": rng.random()}

    def question(self, plan: dict) -> str:
        return f"What are the {self.n_common} most common words in the list?"

    def context(self, plan: dict, n: int) -> str:
        words = plan["common"] * plan["freq"] + plan["pool"].first(n) * self.rare_freq
        random.Random(f"{plan['order_seed']}:{n}").shuffle(words)
        return "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))

    def gold(self, plan: dict) -> tuple[list[str], list[str]]:
        return list(plan["common"]), list(plan["common"])

    def score(self, prediction: str, sample: Sample) -> float:
        return iou(split_items(prediction), list(sample.answer))
