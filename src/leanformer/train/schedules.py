"""Learning-rate schedules as multipliers of the peak LR.

Warmup is counted in optimizer steps; decay is driven by ``progress`` in [0, 1], the fraction of the run's budget
spent (steps, tokens, seconds, or later reference-system time). So the LR reaches its floor exactly when the budget
ends, whatever unit the budget is in — the fully decayed baseline of "No Train No Gain" (Kaddour et al., 2023).
``torch.optim.lr_scheduler`` and transformers' ``get_*_schedule_with_warmup`` count steps only, so they cannot.
"""

from __future__ import annotations

import math

from leanformer.config import ScheduleConfig


def lr_multiplier(sched: ScheduleConfig, step: int, progress: float, warmup_progress: float | None = None) -> float:
    """Multiplier at optimizer ``step`` (0-based) when ``progress`` of the budget is spent.

    Linear warmup over ``sched.warmup_steps`` from ``warmup_start`` (``s + (1 - s)(step + 1) / warmup``); then
    ``constant``, ``linear`` or ``cosine`` decay from 1 to ``final_lr_fraction`` over the rest of the budget.
    ``warmup_progress`` is the budget fraction at the end of warmup (defaults to 0).

    ``inverse_sqrt`` is T5's legacy schedule as nanoT5 runs it: ``min(1, sqrt(warmup / step))`` (with lr 1e-2 and
    10k warmup steps: ``min(1e-2, 1/sqrt(step))``, no ramp), then over the last 10% of the budget a linear decay
    to 0 from the value reached at 90%.
    """
    if sched.name == "inverse_sqrt":
        return _inverse_sqrt(sched.warmup_steps, step, progress)
    if step < sched.warmup_steps:
        s = sched.warmup_start
        return s + (1.0 - s) * (step + 1) / sched.warmup_steps
    if sched.name == "constant":
        return 1.0
    w = warmup_progress or 0.0
    p = min(1.0, max(0.0, (progress - w) / max(1e-12, 1.0 - w)))
    f = sched.final_lr_fraction
    if sched.name == "linear":
        return f + (1.0 - f) * (1.0 - p)
    return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * p))


def _inverse_sqrt(warmup: int, step: int, progress: float, decay_from: float = 0.9) -> float:
    def rsqrt(t: float) -> float:
        return min(1.0, math.sqrt(max(1, warmup) / max(1.0, t)))

    if progress < decay_from or step == 0:
        return rsqrt(step)
    # the step at which decay began, from the budget's pace so far (exact for step budgets)
    start = step * decay_from / progress
    return rsqrt(start) * max(0.0, 1.0 - progress) / (1.0 - decay_from)
