"""isoFLOPS / iso-cost analysis: accuracy against cost for every (model size, sparsity), the Pareto frontier, and
"at this cost, is a larger sparse model better than a smaller dense one?" (The Sparse Frontier, Nawrot et al.,
2025, §isoFLOPS).

For a (task, length, phase) every cell of that phase — and the dense cell of every model — is a point
``(cost, accuracy)``. The cost is the mean forward FLOPs per sample recorded by the harness (from
:mod:`leanformer.analysis.flops`), of the kind chosen by ``cost``: ``phase`` (prefill FLOPs for the prefill phase,
decode FLOPs for the decode phase, total for ``both``), ``prefill``, ``decode`` or ``total``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from leanformer.analysis.stats import bootstrap_ci
from leanformer.analysis.store import Cell, paired_scores

SPARSE_PHASES = ("prefill", "decode", "both")


@dataclasses.dataclass
class Point:
    cell: Cell
    cost: float

    @property
    def accuracy(self) -> float:
        return self.cell.accuracy


def cost_kind(phase: str, cost: str = "phase") -> str:
    if cost != "phase":
        return cost
    return phase if phase in ("prefill", "decode") else "total"


def points(cells: list[Cell], task: str, length: int, phase: str, cost: str = "phase") -> list[Point]:
    """Dense cells of every model plus the cells of ``phase``, for one task and length, with their cost."""
    kind = cost_kind(phase, cost)
    return [Point(c, c.cost(kind)) for c in cells
            if c.task == task and c.length == length and c.phase in ("dense", phase)]


def pareto(pts: list[Point]) -> list[Point]:
    """Points not dominated by a cheaper-or-equal point with at least their accuracy, sorted by cost."""
    out, best = [], -np.inf
    for p in sorted(pts, key=lambda p: (p.cost, -p.accuracy)):
        if p.accuracy > best:
            out.append(p)
            best = p.accuracy
    return out


@dataclasses.dataclass
class IsoCost:
    """The best point of ``large`` whose cost is within ``slack`` × the dense cost of ``small``, if any."""

    task: str
    length: int
    phase: str
    small: Cell
    small_cost: float
    large_model: str
    large: Cell | None  # None: no sparse point of the larger model fits the budget
    large_cost: float
    delta: float  # accuracy(large sparse) - accuracy(small dense)
    ci_low: float  # 95% paired-bootstrap interval of delta (paired by seed)
    ci_high: float

    @property
    def verdict(self) -> str:
        if self.large is None:
            return "no sparse point fits"
        if self.ci_low > 0:
            return "larger sparse better"
        if self.ci_high < 0:
            return "smaller dense better"
        return "tie"


def iso_cost(cells: list[Cell], phase: str, cost: str = "phase", slack: float = 1.0,
             n_boot: int = 2000, seed: int = 42) -> list[IsoCost]:
    """For each (task, length) and each pair (smaller model, larger model): compare the smaller model's dense
    point with the most accurate point of the larger model (sparse, in ``phase``) costing at most
    ``slack`` × the dense cost."""
    out = []
    for task, length in sorted({(c.task, c.length) for c in cells}):
        pts = points(cells, task, length, phase, cost)
        dense = sorted((p for p in pts if p.cell.phase == "dense"), key=lambda p: p.cell.model_params)
        for i, small in enumerate(dense):
            for large in dense[i + 1:]:
                fits = [p for p in pts if p.cell.model == large.cell.model and p.cell.phase == phase
                        and p.cost <= slack * small.cost]
                if not fits:
                    out.append(IsoCost(task, length, phase, small.cell, small.cost, large.cell.model, None, np.nan,
                                       np.nan, np.nan, np.nan))
                    continue
                best = max(fits, key=lambda p: (p.accuracy, -p.cost))
                a, b = paired_scores(small.cell, best.cell)
                lo, hi = bootstrap_ci(b - a, 0.95, n_boot, seed)
                out.append(IsoCost(task, length, phase, small.cell, small.cost, large.cell.model, best.cell, best.cost,
                                   float(np.mean(b - a)) if a.size else np.nan, float(lo), float(hi)))
    return out
