"""Optimizers. ``build_optimizer(model, cfg)`` applies weight decay to matrices only (not norms, biases, gains).

``adamwscale`` (AdamW with RMS-scaled steps) and ``adafactor`` are nanoT5's (Nawrot, 2023); ``lion`` (Chen et al.,
2023) and ``sophia`` (Sophia-G, Liu et al., 2023) are the optimizers "No Train No Gain" compares; see their modules.
"""

from __future__ import annotations

import torch

from leanformer.config import OptimConfig
from leanformer.errors import ConfigError

OPTIMIZERS = ("adamw", "adamwscale", "adafactor", "lion", "sophia")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adamwscale":
        from leanformer.train.optim.adamw_scale import AdamWScale

        return AdamWScale(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adafactor":  # its own eps pair (1e-30, 1e-3); betas/eps of the config do not apply
        from leanformer.train.optim.adafactor import Adafactor

        return Adafactor(groups, lr=cfg.lr)
    if cfg.name == "lion":  # eps does not apply
        from leanformer.train.optim.lion import Lion

        return Lion(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "sophia":  # Sophia-G; its Hessian estimate joins the trainer through trainer_hooks()
        from leanformer.train.optim.sophia import SophiaG

        return SophiaG(groups, lr=cfg.lr, betas=tuple(cfg.betas), rho=cfg.rho, hessian_every=cfg.hessian_every)
    raise ConfigError(f"optim.name: unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")
