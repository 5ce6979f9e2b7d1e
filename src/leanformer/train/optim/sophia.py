"""Sophia-G (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training"): momentum divided by an EMA of a diagonal Hessian estimate, clipped per coordinate.

Update for each tensor (the released ``SophiaG`` code; defaults betas 0.965/0.99, rho 0.04 as "No Train No Gain"
uses for BERT, 0.01 for T5)::

    p <- p * (1 - lr * wd)
    m <- b1 * m + (1 - b1) * g
    p <- p - lr * sign(m) * min(|m| / (rho * bs * h + 1e-15), 1)

and every ``hessian_every`` steps (:class:`SophiaHessianHook`, after the optimizer step) the Gauss-Newton-Bartlett
estimate: labels ``y_hat`` are *sampled* from the model's own output distribution, ``g_hat`` is the gradient of the
mean cross entropy against ``y_hat`` on one micro-batch, and ``h <- b2 * h + (1 - b2) * g_hat * g_hat``. ``bs`` is
the number of tokens per optimizer step (the GNB estimate is ``bs * g_hat^2``; the code folds ``bs`` into the
denominator). Until the first estimate ``h = 0`` and the step is ``lr * sign(m)``. The estimate's forward and
backward pass is charged to the budget clock.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from leanformer.errors import ConfigError
from leanformer.train.hooks import TrainHook


class SophiaG(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 0.0, bs: int = 1, hessian_every: int = 10):
        if lr <= 0 or rho <= 0 or weight_decay < 0 or bs < 1 or hessian_every < 1 or \
                not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"SophiaG: lr={lr}, betas={tuple(betas)}, rho={rho}, weight_decay={weight_decay}, "
                              f"bs={bs}, hessian_every={hessian_every}; need lr, rho > 0, betas in [0, 1), "
                              "weight_decay >= 0, bs and hessian_every >= 1")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, bs=bs))
        self.hessian_every = hessian_every

    def _state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def update_hessian(self) -> None:
        """``h <- b2 h + (1 - b2) g^2`` from the gradients now in ``p.grad`` (of the sampled-label loss)."""
        for group in self.param_groups:
            b2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["hessian"].mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1 = group["betas"][0]
            lr, wd, scale = group["lr"], group["weight_decay"], group["rho"] * group["bs"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self._state(p)
                m = st["exp_avg"]
                if wd > 0:
                    p.mul_(1.0 - lr * wd)
                m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
                ratio = (m.abs() / (scale * st["hessian"] + 1e-15)).clamp_(max=1.0)
                p.addcmul_(m.sign(), ratio, value=-lr)
        return loss

    def trainer_hooks(self) -> list[TrainHook]:
        return [SophiaHessianHook(self)]


def sampled_label_loss(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean cross entropy of ``logits [B, T, V]`` against labels sampled from ``softmax(logits)`` at the
    positions where ``labels != -100`` (the Gauss-Newton-Bartlett estimator's loss)."""
    probs = torch.softmax(logits.detach().float(), -1).reshape(-1, logits.shape[-1])
    y = torch.multinomial(probs, 1, generator=generator).view(labels.shape)
    y = y.masked_fill(labels == -100, -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)


class SophiaHessianHook(TrainHook):
    """Every ``hessian_every`` optimizer steps: one sampled-label forward + backward on micro-batch
    ``step * grad_accum`` and :meth:`SophiaG.update_hessian`; sampling is seeded by ``(seed, step)``."""

    name = "sophia_hessian"

    def __init__(self, optimizer: SophiaG):
        self.opt = optimizer

    def setup(self, trainer) -> None:
        for g in self.opt.param_groups:
            g["bs"] = trainer.tokens_per_step

    def on_step_end(self, trainer, step: int) -> None:
        if step % self.opt.hessian_every != self.opt.hessian_every - 1:
            return
        from leanformer.train.methods.common import logits_and_labels, to_device

        batch = to_device(trainer.batches.batch(step * trainer.cfg.trainer.grad_accum), trainer.device)
        seed = int(np.random.default_rng([trainer.cfg.seed, step, 7]).integers(2**62))
        gen = torch.Generator(device=trainer.device).manual_seed(seed)
        with trainer._autocast():
            logits, labels = logits_and_labels(trainer.model, batch)
            loss = sampled_label_loss(logits, labels, gen)
        loss.backward()
        trainer.clock.micro_batch(int(batch["input_ids"].shape[0]))
        self.opt.update_hessian()
        trainer.optimizer.zero_grad(set_to_none=True)
