"""The unit every fine-tuning task yields (its own module, so task modules need not import the package's loader)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One source text and its reference outputs (training picks one; scoring takes the best)."""

    source: str
    references: tuple[str, ...]
