"""Lion: EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

For each tensor with gradient ``g`` (defaults betas 0.9/0.99 as in the paper; "No Train No Gain" uses the same)::

    p <- p * (1 - lr * wd)                          decoupled weight decay
    p <- p - lr * sign(b1 * m + (1 - b1) * g)      the update interpolates momentum and gradient, then signs
    m <- b2 * m + (1 - b2) * g                      momentum is updated after, with the slower b2

Every coordinate moves by exactly ``lr`` (or 0), so Lion wants an LR 3-10x smaller and a weight decay 3-10x larger
than AdamW's (the paper's advice). One state tensor per parameter (AdamW keeps two).
"""

from __future__ import annotations

import torch

from leanformer.errors import ConfigError


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        if lr <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"Lion: lr={lr}, betas={tuple(betas)}, weight_decay={weight_decay}; "
                              "need lr > 0, betas in [0, 1), weight_decay >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, g = st["exp_avg"], p.grad
                if wd > 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(torch.lerp(g, m, b1).sign_(), alpha=-lr)  # lerp(g, m, b1) = b1 m + (1 - b1) g
                m.lerp_(g, 1.0 - b2)
        return loss
