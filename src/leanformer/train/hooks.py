"""Training hooks: how an efficient-training method joins the trainer's loop without branches in the trainer.

A *hook* (:class:`TrainHook`) is how an efficient-training method (layer stacking, layer dropping, selective
backprop, RHO loss; :mod:`leanformer.train.methods`) or an optimizer that needs extra passes (Sophia's Hessian
estimate) joins the loop. Hook state is saved in every checkpoint, so runs with hooks resume exactly. This module
imports nothing from the trainer, so methods and optimizers can subclass it without importing the loop.
"""

from __future__ import annotations


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
