"""Which torch device a run uses: the one rule shared by training, fine-tuning, RST calibration and evaluation."""

from __future__ import annotations

import torch

from leanformer.errors import UserError


def resolve_device(spec: str) -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` -> a ``torch.device``;
    a CUDA spec without a CUDA device is a one-line :class:`UserError`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={spec!r} but no CUDA device is available; use trainer.device=cpu")
    return torch.device(spec)
