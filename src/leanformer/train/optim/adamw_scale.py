"""AdamWScale: AdamW whose step for each parameter tensor is scaled by that tensor's RMS (nanoT5, Nawrot, 2023).

nanoT5 found plain AdamW unstable for T5 pretraining at LR 2e-2 and borrowed Adafactor's relative step size
(Shazeer & Stern, 2018): the Adam update of tensor ``p`` is multiplied by ``max(1e-3, RMS(p))`` with
``RMS(p) = ||p||_2 / sqrt(numel(p))``, so the LR is relative to the parameter's scale. Defaults are nanoT5's
(betas 0.9/0.999, eps 1e-6, bias correction on, decoupled weight decay ``p -= lr * wd * p`` after the step).

For each tensor with gradient ``g`` at step ``t``::

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p)) * m / (sqrt(v) + eps)

``foreach=True`` (default) updates all tensors of a group with ``torch._foreach_*`` kernels and no host syncs;
``foreach=False`` is the per-tensor loop of nanoT5's code, kept as the reference the tests compare against.
"""

from __future__ import annotations

import math

import torch

from leanformer.errors import ConfigError


class AdamWScale(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, foreach: bool = True):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"AdamWScale: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}; "
                              "need lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach))
        self._root_numel: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
            (self._foreach_group if group["foreach"] else self._loop_group)(group, params)
        return loss

    def _step_size(self, group: dict, step: int) -> float:
        b1, b2 = group["betas"]
        return group["lr"] * math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)

    def _loop_group(self, group: dict, params: list[torch.Tensor]) -> None:
        b1, b2 = group["betas"]
        for p in params:
            st = self.state[p]
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            rms = p.norm(2) / math.sqrt(p.numel())
            step = self._step_size(group, st["step"]) * torch.clamp(rms, min=1e-3)
            p.sub_(step * m / (v.sqrt() + group["eps"]))
            if group["weight_decay"] > 0:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])

    def _rms_scales(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``max(1e-3, RMS(p))`` per tensor: three kernels for plain tensors (not two per tensor: T5-base has ~200);
        per tensor for sharded (FSDP2 DTensor) parameters, whose norms are DTensors."""
        norms = torch._foreach_norm(params)
        if any(type(n) is not torch.Tensor for n in norms):
            return [torch.clamp(n / math.sqrt(p.numel()), min=1e-3) for n, p in zip(norms, params)]
        key = tuple(id(p) for p in params)
        if key not in self._root_numel:  # built once: no host-to-device copy per step (CUDA graphs stay possible)
            self._root_numel[key] = torch.tensor([math.sqrt(p.numel()) for p in params], device=params[0].device)
        return list((torch.stack(norms) / self._root_numel[key]).clamp_(min=1e-3).unbind())

    def foreach_direction(self, group: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Update the moments of ``params`` from their gradients and return each tensor's step direction
        ``max(1e-3, RMS(p)) * m / (sqrt(v) + eps)``, before the bias-corrected LR: foreach kernels, no host sync, no
        Python step counter (so a caller can put it inside ``torch.compile`` with the step size as a tensor)."""
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        ms = [self.state[p]["exp_avg"] for p in params]
        vs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
        upd = torch._foreach_sqrt(vs)
        torch._foreach_add_(upd, group["eps"])
        upd = torch._foreach_div(ms, upd)
        torch._foreach_mul_(upd, self._rms_scales(params))
        return upd

    def _foreach_group(self, group: dict, params: list[torch.Tensor]) -> None:
        steps = {self.state[p]["step"] for p in params}
        upd = self.foreach_direction(group, params)
        if len(steps) == 1:
            torch._foreach_add_(params, upd, alpha=-self._step_size(group, steps.pop()))
        else:  # tensors joined at different steps (rare): per-tensor bias correction
            for p, u in zip(params, upd):
                p.add_(u, alpha=-self._step_size(group, self.state[p]["step"]))
        if group["weight_decay"] > 0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
