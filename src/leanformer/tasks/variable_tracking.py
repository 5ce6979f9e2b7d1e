"""``variable_tracking``: follow chains of variable assignments hidden in filler (RULER's VT, Hsieh et al., 2024).

``n_chains`` chains each start with "VAR A = 12345." and continue with ``n_hops`` statements "VAR B = VAR A.";
statements sit at random depths in filler sentences, each chain in order, chains interleaved. The question names
the value of one chain; the answer is every variable bound to it, ``<answer>A, B, ...</answer>`` (any order).
Score: intersection over union of the variable sets (an item's last word is taken, so the chain of lookups
``12345: A, A: B, ...`` of :meth:`VariableTracking.chain_items` scores as ``A, B, ...``).
"""

from __future__ import annotations

import dataclasses
import random
import string

from leanformer.errors import ConfigError
from leanformer.tasks.base import Sample, Task, iou, split_items
from leanformer.tasks.vocab import FillerStream


@dataclasses.dataclass
class VariableTracking(Task):
    n_chains: int = 8
    n_hops: int = 4

    name = "variable_tracking"
    intro = ("Memorize and track the chains of variable assignments hidden in the following text; you will be "
             "asked which variables hold a given value.")
    answer_hint = "List every such variable, as <answer>VAR, VAR, ...</answer>."

    def __post_init__(self):
        if self.n_chains < 1 or self.n_hops < 0:
            raise ConfigError(f"variable_tracking: n_chains={self.n_chains} must be >= 1 and "
                              f"n_hops={self.n_hops} >= 0")

    def plan(self, rng: random.Random, length: int, count) -> dict:
        per_chain = self.n_hops + 1
        names: list[str] = []
        seen = set()
        while len(names) < self.n_chains * per_chain:
            v = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if v not in seen and v != "VAR":
                seen.add(v)
                names.append(v)
        values = rng.sample(range(10_000, 100_000), self.n_chains)
        chains = [names[c * per_chain:(c + 1) * per_chain] for c in range(self.n_chains)]
        # Interleave the chains at random while keeping each chain's statements in order.
        slots = [c for c in range(self.n_chains) for _ in range(per_chain)]
        rng.shuffle(slots)
        nxt = [0] * self.n_chains
        statements = []
        for c in slots:
            i = nxt[c]
            rhs = str(values[c]) if i == 0 else f"VAR {chains[c][i - 1]}"
            statements.append(f"VAR {chains[c][i]} = {rhs}.")
            nxt[c] += 1
        depths = sorted(rng.random() for _ in statements)
        query = rng.randrange(self.n_chains)
        return {"chains": chains, "values": values, "statements": statements, "depths": depths, "query": query,
                "filler": FillerStream(f"vt-filler:{rng.random()}")}

    def question(self, plan: dict) -> str:
        return (f"Find all variables that are assigned the value {plan['values'][plan['query']]}, directly or "
                "through other variables.")

    def context(self, plan: dict, n: int) -> str:
        sentences = plan["filler"].take(n)
        for depth, _, s in sorted(zip(plan["depths"], range(len(plan["depths"])), plan["statements"]), reverse=True):
            sentences.insert(round(depth * len(sentences)), s)
        return " ".join(sentences)

    def gold(self, plan: dict) -> tuple[list[str], list[str]]:
        chain = list(plan["chains"][plan["query"]])
        return chain, chain

    def chain_items(self, plan: dict) -> list[str]:
        # the queried value -> the variable assigned it -> the variable assigned that one -> ...
        chain = plan["chains"][plan["query"]]
        return [f"{a}: {b}" for a, b in zip([str(plan["values"][plan["query"]]), *chain], chain)]

    def score(self, prediction: str, sample: Sample) -> float:
        pred = [it.split()[-1] for it in split_items(prediction)]
        return iou(pred, [v.lower() for v in sample.answer])
