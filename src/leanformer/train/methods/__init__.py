"""Efficient-training methods of "No Train No Gain" (Kaddour et al., 2023), one file each, as trainer hooks.

``METHODS`` maps a method name to ``module:HookClass``; :func:`build_method` makes the hook with keyword
arguments. ``leanformer compare`` adds the optimizer methods (``lion``, ``sophia``), which change the run config
instead of adding a hook.
"""

from __future__ import annotations

import importlib

from leanformer.errors import ConfigError

METHODS: dict[str, str] = {
    "stacking": "leanformer.train.methods.stacking:LayerStacking",
    "layerdrop": "leanformer.train.methods.layerdrop:ProgressiveLayerDrop",
    "selective_backprop": "leanformer.train.methods.selective_backprop:SelectiveBackprop",
    "rho": "leanformer.train.methods.rho_loss:RhoLoss",
}


def build_method(name: str, **kwargs):
    """The hook for method ``name`` with its keyword arguments; ConfigError naming bad names or arguments."""
    if name not in METHODS:
        raise ConfigError(f"unknown training method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    mod, cls = METHODS[name].split(":")
    hook_cls = getattr(importlib.import_module(mod), cls)
    try:
        return hook_cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"method {name}: {e}") from None
