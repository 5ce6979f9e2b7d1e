"""Budget clocks: what the trainer's time budget counts.

A *clock* measures the time budget ``trainer.max_seconds`` and drives the schedule's progress fraction. The trainer
reports every piece of work to it (:meth:`WallClock.micro_batch`, :meth:`WallClock.forward`,
:meth:`WallClock.optimizer_step`) and the measured wall time of each step (:meth:`WallClock.wall`); a clock counts
what it trusts:

- :class:`WallClock` (default): measured wall seconds of training steps (evaluation and checkpoints excluded).
- :class:`RSTClock` (``trainer.rst_table=PATH``): *reference system time* (Kaddour et al., 2023, "No Train No
  Gain"): each piece of work is charged the seconds a calibration table (:class:`leanformer.train.rst.RSTTable`)
  says it takes on the reference machine, so a run on a slower or busier machine follows the same schedule and
  stops at the same step.

How methods join the loop is :mod:`leanformer.train.hooks`.
"""

from __future__ import annotations

from leanformer.errors import ConfigError
from leanformer.train.rst import RSTTable


class WallClock:
    """Budget seconds = measured wall seconds of training steps. ``active_fraction`` is ignored (wall time
    already reflects skipped layers)."""

    kind = "wall"

    def __init__(self):
        self.seconds = 0.0
        self.active_fraction = 1.0  # fraction of layers the next passes run (set by layer stacking / dropping)

    def micro_batch(self, examples: int) -> None:
        """A forward + backward pass over ``examples`` sequences at ``active_fraction`` of the layers."""

    def forward(self, examples: int, active_fraction: float | None = None) -> None:
        """A forward-only (no-grad) pass over ``examples`` sequences."""

    def optimizer_step(self) -> None:
        """One optimizer update."""

    def wall(self, seconds: float) -> None:
        """The measured wall time of one training step."""
        self.seconds += seconds

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = float(state["seconds"])


class RSTClock(WallClock):
    """Budget seconds = reference system time from an :class:`RSTTable`; wall time is ignored."""

    kind = "rst"

    def __init__(self, table: RSTTable, optimizer: str = "adamw"):
        super().__init__()
        if optimizer not in table.optimizer_step:
            raise ConfigError(f"optim.name={optimizer!r} has no step time in the RST table (it has "
                              f"{', '.join(sorted(table.optimizer_step))}); re-run `leanformer rst calibrate`")
        self.table, self.optimizer = table, optimizer

    def micro_batch(self, examples: int) -> None:
        self.seconds += self.table.fwd_bwd_seconds(self.active_fraction, examples)

    def forward(self, examples: int, active_fraction: float | None = None) -> None:
        f = self.active_fraction if active_fraction is None else active_fraction
        self.seconds += self.table.forward_seconds(f, examples)

    def optimizer_step(self) -> None:
        self.seconds += self.table.optimizer_step[self.optimizer]

    def wall(self, seconds: float) -> None:
        pass  # the point of RST: a slower or busier machine follows the same schedule


def build_clock(cfg):
    """The clock a run config asks for: RST when ``trainer.rst_table`` is set, wall time otherwise."""
    table = getattr(cfg.trainer, "rst_table", None)
    if not table:
        return WallClock()
    return RSTClock(RSTTable.load(table).check(cfg), optimizer=cfg.optim.name)
