"""Optimizers. ``build_optimizer(model, cfg)`` applies weight decay to matrices only (not norms, biases, gains)."""

from __future__ import annotations

import torch

from leanformer.config import OptimConfig
from leanformer.errors import ConfigError

OPTIMIZERS = ("adamw",)


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
    raise ConfigError(f"optim.name: unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")
