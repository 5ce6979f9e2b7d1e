"""Device names as users give them (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked before any work.

One check for every way a device is named: a config field (``trainer.device=cuda``) or a flag (``--device cuda``);
the error names what the user typed, so the fix can be copied from it.
"""

from __future__ import annotations

import re

from leanformer.errors import UserError

_CUDA = re.compile(r"cuda(?::(\d+))?")


def check_device(spec: str, origin: str = "trainer.device") -> str:
    """``spec`` if it names a device of this machine (``auto`` always does), else a :class:`UserError` naming
    ``origin`` (a flag such as ``--device`` or a config key such as ``trainer.device``) and ``spec``."""
    flag = origin.startswith("-")
    said = f"{origin} {spec}" if flag else f"{origin}={spec}"
    use = f"{origin} cpu" if flag else f"{origin}=cpu"
    if spec in ("auto", "cpu"):
        return spec
    m = _CUDA.fullmatch(str(spec))
    if m is None:
        raise UserError(f"{said}: not a device; choose auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{said}: no CUDA device is available on this machine; use {use}")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise UserError(f"{said}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return spec
