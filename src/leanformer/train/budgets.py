"""Budget clocks and training hooks: what the trainer's time budget counts, and how a method joins the loop.

A *clock* measures the time budget ``trainer.max_seconds`` and drives the schedule's progress fraction. The trainer
reports every piece of work to it (:meth:`WallClock.micro_batch`, :meth:`WallClock.forward`,
:meth:`WallClock.optimizer_step`) and the measured wall time of each step (:meth:`WallClock.wall`); a clock counts
what it trusts:

- :class:`WallClock` (default): measured wall seconds of training steps (evaluation and checkpoints excluded).
- :class:`leanformer.train.rst.RSTClock` (``trainer.rst_table=PATH``): *reference system time* (Kaddour et al.,
  2023, "No Train No Gain"): each piece of work is charged the seconds a calibration table says it takes on the
  reference machine, so a run on a slower or busier machine follows the same schedule and stops at the same step.

A *hook* (:class:`TrainHook`) is how an efficient-training method (layer stacking, layer dropping, selective
backprop, RHO loss; ``leanformer.train.methods``) or an optimizer that needs extra passes (Sophia's Hessian
estimate) joins the loop without branches in the trainer. Hook state is saved in every checkpoint, so runs with
hooks resume exactly.
"""

from __future__ import annotations


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


def build_clock(cfg):
    """The clock a run config asks for: RST when ``trainer.rst_table`` is set, wall time otherwise."""
    table = getattr(cfg.trainer, "rst_table", None)
    if not table:
        return WallClock()
    from leanformer.train.rst import RSTClock, RSTTable

    return RSTClock(RSTTable.load(table).check(cfg), optimizer=cfg.optim.name)


class TrainHook:
    """Base class of everything that joins the training loop; every method is a no-op by default.

    Call order per optimizer step: :meth:`on_step_begin` -> for each micro-batch :meth:`micro_batch` (may supply
    the batch, e.g. after selecting examples) then :meth:`after_micro_batch` -> optimizer step ->
    :meth:`on_step_end`. :meth:`setup` runs once after the model, optimizer, data and clock exist and before a
    checkpoint is restored; :meth:`state_dict` must be JSON-serialisable.
    """

    name = "hook"

    def setup(self, trainer) -> None:
        pass

    def on_step_begin(self, trainer, step: int, progress: float) -> None:
        pass

    def micro_batch(self, trainer, index: int) -> dict | None:
        """The training micro-batch ``index`` (``step * grad_accum + micro``), or None for the default one."""
        return None

    def after_micro_batch(self, trainer, index: int) -> None:
        pass

    def on_step_end(self, trainer, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
