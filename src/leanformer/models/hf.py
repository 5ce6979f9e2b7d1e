"""Loading Hugging Face models: ``from_pretrained`` under the project's pickle policy.

Every Hugging Face model class that leanformer loads (causal LMs for the frontier harness, a base model for a DMC
retrofit, T5 checkpoints) goes through :func:`hf_from_pretrained`, so the rule of
:mod:`leanformer.reliability` holds everywhere: weights from safetensors unless pickled files are allowed
(``--allow-pickle`` / ``LEANFORMER_ALLOW_PICKLE=1``), and then only ``weights_only=True``; never remote code. A test
(``tests/reliability/test_pickle.py``) scans the sources for ``from_pretrained`` calls outside this function.
"""

from __future__ import annotations

import os
from pathlib import Path

from leanformer.errors import UserError
from leanformer.reliability import pickle_allowed, pickle_weight_files, refuse_pickle


def hf_from_pretrained(cls, spec: str | os.PathLike, allow_pickle: bool | None = None, what: str = "model",
                       **kwargs):
    """``cls.from_pretrained(spec, **kwargs)`` that never unpickles unless allowed, never runs remote code, and
    turns loading failures into one-line :class:`UserError`\\ s naming ``spec``."""
    allow = pickle_allowed(allow_pickle)
    local = Path(spec)
    if local.is_dir() and not any(local.glob("*.safetensors")) and not any(local.glob("*.safetensors.index.json")):
        pickled = pickle_weight_files(local)
        if pickled:
            refuse_pickle(pickled[0], allow)
    kwargs.setdefault("use_safetensors", None if allow else True)
    kwargs["weights_only"] = True
    kwargs["trust_remote_code"] = False
    try:
        return cls.from_pretrained(str(spec), **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if allow else " (only safetensors weights are read; pass --allow-pickle for .bin files you trust)"
        raise UserError(f"cannot load {what} {str(spec)!r}: {first[:300]}{hint}") from None
