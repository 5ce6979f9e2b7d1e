"""Where a result came from: the source commit and the device's name, as the commands that write results record them.

The ``benchmarks/`` scripts keep their own full record (``benchmarks/common.py``: machine, versions, dirty tree); the
library's commands (``leanformer speed``, ``leanformer depth``) put these two beside their settings.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def commit() -> str:
    """The short hash of the checkout this package runs from; ``$LEANFORMER_COMMIT`` where the tree travels without
    ``.git``; ``"unknown"`` for an installed copy."""
    if os.environ.get("LEANFORMER_COMMIT"):
        return os.environ["LEANFORMER_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device) -> str:
    """The GPU's name for a CUDA ``torch.device``; the CPU's architecture and core count otherwise."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
