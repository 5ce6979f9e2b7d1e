"""What the efficient-training methods share, written once and independent of the model family.

- **Layer stacks**: ``model.layer_stacks()`` when a model defines it, else the model's direct-child
  ``nn.ModuleList`` attributes (``gpt.layers``; ``t5.encoder`` and ``t5.decoder``; ``bert.layers``).
- **Skipping a layer**: every residual block of our models maps its first argument ``x [B, T, d]`` to
  ``x + f(x)``, so a skipped block is the identity on its first argument. :func:`set_skipped` overrides the
  block's ``forward`` on the instance (no wrapper module, so parameter names and checkpoints are unchanged).
  Not compatible with ``trainer.compile=true``.
- **Logits aligned with labels**: :func:`logits_and_labels` calls ``model(input_ids, targets=labels)`` (decoders)
  or ``model(input_ids, labels=labels, ...)`` (T5, BERT); both return ``(logits [B, T, V], loss)`` with
  ``logits[:, t]`` predicting ``labels[:, t]`` (-100 = ignore). :func:`per_example_loss` and Sophia's sampled-label
  loss build on it.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The model's stacks of residual blocks (see the module docstring); raises when it has none."""
    if callable(getattr(model, "layer_stacks", None)):
        stacks = list(model.layer_stacks())
    else:
        stacks = [m for m in model.children() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no layer stack (an nn.ModuleList child or layer_stacks())")
    return stacks


def _identity(x, *args, **kwargs):
    return x


def set_skipped(layer: nn.Module, skipped: bool) -> None:
    """Make ``layer`` the identity on its first argument (``skipped``) or restore its own ``forward``."""
    if skipped:
        layer.__dict__["forward"] = _identity
    else:
        layer.__dict__.pop("forward", None)


def is_skipped(layer: nn.Module) -> bool:
    return "forward" in layer.__dict__


def set_depth(model: nn.Module, fraction: float) -> list[int]:
    """Run only the first ``round(fraction * len(stack))`` blocks of every stack; returns the active counts."""
    counts = []
    for stack in layer_stacks(model):
        n = round(fraction * len(stack))
        for i, layer in enumerate(stack):
            set_skipped(layer, i >= n)
        counts.append(n)
    return counts


def active_fraction(model: nn.Module) -> float:
    """Fraction of all blocks (over every stack) that currently run."""
    layers = [layer for stack in layer_stacks(model) for layer in stack]
    return sum(not is_skipped(layer) for layer in layers) / len(layers)


def _forward_kwargs(model: nn.Module, batch: dict) -> dict:
    params = inspect.signature(model.forward).parameters
    if "targets" in params:
        return {"targets": batch["labels"]}
    kw = {"labels": batch["labels"]}
    if "attention_mask" in params and batch.get("attention_mask") is not None:
        kw["attention_mask"] = batch["attention_mask"]
    return kw


def logits_and_labels(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, T, V], labels [B, T])`` with ``logits[:, t]`` predicting ``labels[:, t]``."""
    out = model(batch["input_ids"], **_forward_kwargs(model, batch))
    logits = out[0] if isinstance(out, tuple) else out
    return logits, batch["labels"]


def token_losses_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean cross entropy ``[B]`` over positions whose label is not -100 (0 for rows with none)."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    valid = (labels != -100).sum(1).clamp(min=1)
    return nll.sum(1) / valid


@torch.no_grad()
def per_example_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """No-grad per-example training loss ``[B]`` in fp32 (the model's mode is left unchanged)."""
    logits, labels = logits_and_labels(model, batch)
    return token_losses_mean(logits, labels)


def take_examples(batch: dict, index: torch.Tensor) -> dict:
    """Rows ``index`` of every ``[B, ...]`` tensor of ``batch``."""
    return {k: v[index.to(v.device)] for k, v in batch.items()}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
