"""Progressive layer dropping (Zhang & He, 2020, "Accelerating Training of Transformer-Based Language Models with
Progressive Layer Dropping"; as run in "No Train No Gain", Kaddour et al., 2023).

Rule: at budget fraction ``t`` the keep rate is ``theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar``
(``gamma`` = the paper's factor / budget with time measured in budget units: 100 for BERT, 20 for T5;
``theta_bar`` = 0.5), and block ``l`` of ``L`` (1-based, per stack) is dropped with probability
``(l / L) * (1 - theta(t))``: deeper blocks are dropped more, and dropping grows as training goes on. A dropped
block is the identity (no compute, no gradient); the RST clock is charged for the blocks that ran. Every block runs
at evaluation. Drops are drawn once per optimizer step (per micro-batch when ``grad_accum`` is 1), seeded by
``(seed, step)``, so resumed runs draw the same drops.
"""

from __future__ import annotations

import math

import numpy as np

from leanformer.errors import ConfigError
from leanformer.train.hooks import TrainHook
from leanformer.train.methods.common import layer_stacks, set_skipped


def keep_rate(t: float, theta_bar: float = 0.5, gamma: float = 20.0) -> float:
    """``theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar`` for budget fraction ``t``."""
    return (1.0 - theta_bar) * math.exp(-gamma * t) + theta_bar


def drop_probabilities(n_layers: int, t: float, theta_bar: float = 0.5, gamma: float = 20.0) -> np.ndarray:
    """Drop probability of blocks ``l = 1..L``: ``(l / L) * (1 - theta(t))``."""
    layer = np.arange(1, n_layers + 1)
    return layer / n_layers * (1.0 - keep_rate(t, theta_bar, gamma))


class ProgressiveLayerDrop(TrainHook):
    name = "layerdrop"

    def __init__(self, theta_bar: float = 0.5, gamma: float = 20.0):
        if not 0.0 <= theta_bar <= 1.0 or gamma < 0:
            raise ConfigError(f"layerdrop: theta_bar={theta_bar} must be in [0, 1] and gamma={gamma} >= 0")
        self.theta_bar, self.gamma = theta_bar, gamma

    def setup(self, trainer) -> None:
        self.stacks = layer_stacks(trainer.model)

    def on_step_begin(self, trainer, step: int, progress: float) -> None:
        rng = np.random.default_rng([trainer.cfg.seed, step, 1234])
        ran = total = 0
        for s in self.stacks:
            drop = rng.random(len(s)) < drop_probabilities(len(s), progress, self.theta_bar, self.gamma)
            for layer, d in zip(s, drop):
                set_skipped(layer, bool(d))
            ran += int((~drop).sum())
            total += len(s)
        trainer.clock.active_fraction = ran / total

    def on_step_end(self, trainer, step: int) -> None:
        for s in self.stacks:
            for layer in s:
                set_skipped(layer, False)
        trainer.clock.active_fraction = 1.0
