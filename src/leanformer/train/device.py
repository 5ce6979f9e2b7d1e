"""Which torch device a run uses: the one rule shared by training, fine-tuning, RST calibration and evaluation."""

from __future__ import annotations

import torch


def resolve_device(spec: str, origin: str = "trainer.device") -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` -> a ``torch.device``;
    a device this machine lacks is a one-line :class:`UserError` naming ``origin`` (the key or flag the user
    typed)."""
    from leanformer.devices import check_device

    if check_device(spec, origin) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
