"""Selective backprop (Jiang et al., 2019, "Accelerating Deep Learning by Focusing on the Biggest Losers"; as run
in "No Train No Gain", Kaddour et al., 2023): backpropagate mostly through the examples the model gets most wrong.

Rule: a no-grad forward pass over a candidate batch gives each example's loss ``l``; its keep probability is
``P(l) = percentile(l among the last N losses) ^ beta`` (``N`` = 5,000 and ``beta`` = 1, the paper's), where the
percentile is the fraction of the history (``l`` included) not above ``l``. Kept examples are collected over
candidate batches until a full micro-batch is formed, which is then trained on as usual (extra kept examples are
dropped). Every candidate forward pass is charged to the budget clock. Candidates are the objective's batches
``0, 1, 2, ...`` in order and keep draws are seeded by ``(seed, candidate)``; the cursor and the loss history are
checkpointed, so resumed runs select the same examples.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np
import torch

from leanformer.errors import ConfigError
from leanformer.train.hooks import TrainHook
from leanformer.train.methods.common import per_example_loss, take_examples, to_device

MAX_CANDIDATES = 1000  # candidate batches per micro-batch before giving up (only reachable with a huge beta)


class LossHistory:
    """The last ``size`` losses, with the percentile of a new loss among them."""

    def __init__(self, size: int):
        self.size, self.recent, self.sorted = size, deque(), []

    def add(self, loss: float) -> float:
        """Append ``loss`` (evicting the oldest beyond ``size``) and return its percentile in (0, 1]."""
        if len(self.recent) == self.size:
            old = self.recent.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.recent.append(loss)
        bisect.insort(self.sorted, loss)
        return bisect.bisect_right(self.sorted, loss) / len(self.sorted)


class SelectiveBackprop(TrainHook):
    name = "selective_backprop"

    def __init__(self, beta: float = 1.0, history: int = 5000):
        if beta < 0 or history < 1:
            raise ConfigError(f"selective_backprop: beta={beta} must be >= 0 and history={history} >= 1")
        self.beta, self.history = beta, LossHistory(history)
        self.cursor = 0

    def keep_probabilities(self, losses: list[float]) -> np.ndarray:
        """Add ``losses`` to the history in order; return each one's ``percentile ^ beta``."""
        return np.array([self.history.add(float(x)) ** self.beta for x in losses])

    def micro_batch(self, trainer, index: int) -> dict:
        size = trainer.cfg.trainer.batch_size
        kept: list[dict] = []
        n_kept = 0
        for _ in range(MAX_CANDIDATES):
            cand = to_device(trainer.batches.batch(self.cursor), trainer.device)
            with trainer._autocast():
                losses = per_example_loss(trainer.model, cand)
            trainer.clock.forward(len(losses))
            probs = self.keep_probabilities(losses.tolist())
            rng = np.random.default_rng([trainer.cfg.seed, self.cursor, 4321])
            self.cursor += 1
            keep = np.flatnonzero(rng.random(len(probs)) < probs)
            if len(keep):
                kept.append(take_examples(cand, torch.from_numpy(keep)))
                n_kept += len(keep)
            if n_kept >= size:
                break
        else:
            raise ConfigError(f"selective_backprop kept {n_kept} of {size} examples in {MAX_CANDIDATES} candidate "
                              f"batches; lower beta={self.beta}")
        return {k: torch.cat([b[k] for b in kept])[:size] for k in kept[0]}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "history": list(self.history.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state.get("cursor", 0))
        self.history = LossHistory(self.history.size)
        for x in state.get("history", []):
            self.history.add(float(x))
