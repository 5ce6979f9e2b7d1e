"""RHO loss (Mindermann et al., 2022, "Prioritized Training on Points that are Learnable, Worth Learning, and Not
Yet Learnt"; as run in "No Train No Gain", Kaddour et al., 2023): train on the examples whose loss is high but
reducible.

Rule: the last ``holdout`` fraction (20%, the paper's) of the training tokens is held out and an *irreducible loss*
(IL) model of the same architecture is trained on it for ``il_steps`` steps (saved as ``il_model/`` in the run
directory, reused on resume); the main model trains on the other 80%. For each micro-batch of ``B`` examples a
mega-batch of ``round(B / select)`` examples is drawn (``select`` = 0.5: 1,536 of 3,072 in the paper) and the
``B`` examples with the highest ``training loss - IL loss`` (both no-grad forward passes) are trained on. The main
model's selection forward is always charged to the budget clock; ``charge_il`` (default on) also charges the IL
model's forward passes and its training.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from leanformer.errors import ConfigError
from leanformer.train.hooks import TrainHook
from leanformer.train.methods.common import per_example_loss, take_examples, to_device

IL_DIR = "il_model"


class RhoLoss(TrainHook):
    name = "rho"

    def __init__(self, select: float = 0.5, holdout: float = 0.2, il_steps: int = 200, il_lr: float | None = None,
                 charge_il: bool = True):
        if not 0.0 < select <= 1.0 or not 0.0 < holdout < 1.0 or il_steps < 1:
            raise ConfigError(f"rho: select={select} must be in (0, 1], holdout={holdout} in (0, 1), "
                              f"il_steps={il_steps} >= 1")
        self.select, self.holdout, self.il_steps, self.il_lr = select, holdout, il_steps, il_lr
        self.charge_il, self.il_charged = charge_il, False

    def setup(self, trainer) -> None:
        cfg, t = trainer.cfg, trainer.cfg.trainer
        tokens = trainer.train_tokens
        cut = int(len(tokens) * (1.0 - self.holdout))
        trainer.train_tokens = tokens[:cut]
        trainer.batches = trainer.objective.batches(tokens[:cut], t.batch_size, cfg.seed)
        self.mega = trainer.objective.batches(tokens[:cut], math.ceil(t.batch_size / self.select), cfg.seed)
        self.il_model = self._il_model(trainer, tokens[cut:])

    def _il_model(self, trainer, holdout):
        from leanformer.models.registry import build_model
        from leanformer.train.optim import build_optimizer

        cfg = trainer.cfg
        model = build_model(cfg.model).to(trainer.device)
        path = Path(trainer.out) / IL_DIR / "model.safetensors"
        if path.is_file():
            model.load_weights(path)
            return model.eval()
        gen_state = torch.get_rng_state()
        torch.manual_seed(cfg.seed + 1)
        batches = trainer.objective.batches(holdout, cfg.trainer.batch_size, cfg.seed + 1)
        optim_cfg = dataclasses.replace(cfg.optim, lr=self.il_lr or cfg.optim.lr)
        if optim_cfg.name == "sophia":  # the IL model trains with AdamW: its Hessian hook belongs to the main run
            optim_cfg = dataclasses.replace(optim_cfg, name="adamw")
        opt = build_optimizer(model, optim_cfg)
        model.train()
        for i in range(self.il_steps):
            for g in opt.param_groups:
                g["lr"] = optim_cfg.lr * (1.0 - i / self.il_steps)
            batch = to_device(batches.batch(i), trainer.device)
            with trainer._autocast():
                loss, _ = model.compute_loss(batch)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.set_rng_state(gen_state)  # the main run's random stream does not depend on the IL model
        model.save_pretrained(path.parent)
        return model.eval()

    def scores(self, trainer, batch: dict) -> torch.Tensor:
        """Reducible loss ``training loss - IL loss`` per example ``[M]``, charging the clock."""
        with trainer._autocast():
            train_loss = per_example_loss(trainer.model, batch)
            il_loss = per_example_loss(self.il_model, batch)
        trainer.clock.forward(len(train_loss))
        if self.charge_il:
            trainer.clock.forward(len(il_loss), active_fraction=1.0)
        return train_loss - il_loss

    def on_step_begin(self, trainer, step: int, progress: float) -> None:
        if self.charge_il and not self.il_charged:
            for _ in range(self.il_steps):
                trainer.clock.micro_batch(trainer.cfg.trainer.batch_size)
                trainer.clock.optimizer_step()
            self.il_charged = True

    def micro_batch(self, trainer, index: int) -> dict:
        mega = to_device(self.mega.batch(index), trainer.device)
        top = torch.topk(self.scores(trainer, mega), trainer.cfg.trainer.batch_size).indices
        return take_examples(mega, top)

    def state_dict(self) -> dict:
        return {"il_charged": self.il_charged}

    def load_state_dict(self, state: dict) -> None:
        self.il_charged = bool(state.get("il_charged", False))
