"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"), as nanoT5
runs it: ``transformers.Adafactor(lr, relative_step=False)``, i.e. an external LR schedule, parameter scaling on.

For a matrix the second moment is factored into row and column means (``O(n + m)`` memory); vectors keep a full
second moment. With ``rho_t = 1 - t^decay_rate`` (decay_rate -0.8), ``eps1`` 1e-30 and ``eps2`` 1e-3::

    R = rho R + (1 - rho) mean_col(g^2 + eps1);  C = rho C + (1 - rho) mean_row(g^2 + eps1)
    u = g / sqrt(R C^T / mean(R));  u /= max(1, RMS(u) / clip_threshold)
    p -= lr * max(eps2, RMS(p)) * u            (and p -= lr * max(eps2, RMS(p)) * wd * p first, when wd > 0)

No first moment (``beta1=None``), as in T5's original setup. Shapes: ``[..., n, m]`` tensors factor their last two
dims. Matches ``transformers.Adafactor`` with the same settings to float precision (tested); that class lives in
the optional ``hf`` extra, and ``torch.optim.Adafactor`` always caps the step at ``1/sqrt(t)`` (a relative step).
"""

from __future__ import annotations

import torch

from leanformer.errors import ConfigError


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.norm(2) / (t.numel() ** 0.5)


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-2, eps: tuple[float, float] = (1e-30, 1e-3),
                 clip_threshold: float = 1.0, decay_rate: float = -0.8, weight_decay: float = 0.0,
                 scale_parameter: bool = True):
        if lr <= 0 or clip_threshold <= 0 or weight_decay < 0 or not -1.0 <= decay_rate < 0:
            raise ConfigError(f"Adafactor: lr={lr}, clip_threshold={clip_threshold}, decay_rate={decay_rate}, "
                              f"weight_decay={weight_decay}; need lr > 0, clip > 0, decay_rate in [-1, 0), wd >= 0")
        super().__init__(params, dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, decay_rate=decay_rate,
                                      weight_decay=weight_decay, scale_parameter=scale_parameter))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                factored = g.dim() >= 2
                if not st:
                    st["step"] = 0
                    if factored:
                        st["exp_avg_sq_row"] = torch.zeros(g.shape[:-1], device=g.device)
                        st["exp_avg_sq_col"] = torch.zeros(g.shape[:-2] + g.shape[-1:], device=g.device)
                    else:
                        st["exp_avg_sq"] = torch.zeros_like(g)
                st["step"] += 1
                rho = 1.0 - st["step"] ** group["decay_rate"]
                p32 = p.float()
                lr = group["lr"] * (torch.clamp(_rms(p32), min=eps2) if group["scale_parameter"] else 1.0)
                sq = g * g + eps1
                if factored:
                    row, col = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
                    row.mul_(rho).add_(sq.mean(dim=-1), alpha=1.0 - rho)
                    col.mul_(rho).add_(sq.mean(dim=-2), alpha=1.0 - rho)
                    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
                    u = r * col.unsqueeze(-2).rsqrt() * g
                else:
                    st["exp_avg_sq"].mul_(rho).add_(sq, alpha=1.0 - rho)
                    u = st["exp_avg_sq"].rsqrt() * g
                u = u / torch.clamp(_rms(u) / group["clip_threshold"], min=1.0)
                if group["weight_decay"] > 0:
                    p32 = p32 - group["weight_decay"] * lr * p32
                p.copy_(p32 - lr * u)
        return loss
