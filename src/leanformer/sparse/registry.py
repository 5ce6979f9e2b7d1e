"""Plain-dict registries of the sparse attention methods, keyed by the names used everywhere (CLI, sweeps, HF)."""

from __future__ import annotations

from leanformer.errors import UserError
from leanformer.sparse.decode.ada_snapkv import AdaSnapKV
from leanformer.sparse.decode.dense import DenseDecode
from leanformer.sparse.decode.quest import Quest
from leanformer.sparse.decode.snapkv import SnapKV
from leanformer.sparse.decode.streaming import StreamingDecode
from leanformer.sparse.prefill.block_topk import BlockTopK
from leanformer.sparse.prefill.dense import Dense
from leanformer.sparse.prefill.flexprefill import FlexPrefill
from leanformer.sparse.prefill.streaming import StreamingPrefill
from leanformer.sparse.prefill.vertical_slash import VerticalSlash

PREFILL_METHODS = {
    "dense": Dense,
    "block_topk": BlockTopK,
    "vertical_slash": VerticalSlash,
    "flexprefill": FlexPrefill,
    "streaming": StreamingPrefill,
}

DECODE_METHODS = {
    "dense": DenseDecode,
    "quest": Quest,
    "snapkv": SnapKV,
    "ada_snapkv": AdaSnapKV,
    "streaming": StreamingDecode,
}


def _build(registry: dict, kind: str, method, params: dict):
    if not isinstance(method, str):
        if params:
            raise UserError(f"parameters {sorted(params)} given with an already-built {kind} method {method!r}")
        return method
    if method not in registry:
        raise UserError(f"unknown {kind} method {method!r}; choose one of {sorted(registry)}")
    return registry[method](**params)  # the method's Params refuse unknown names (base.make_params)


def param_names(kind: str, method: str) -> set[str]:
    """Names of the parameters a ``kind`` ('prefill' or 'decode') method accepts."""
    import dataclasses

    registry = PREFILL_METHODS if kind == "prefill" else DECODE_METHODS
    if method not in registry:
        raise UserError(f"unknown {kind} method {method!r}; choose one of {sorted(registry)}")
    return {f.name for f in dataclasses.fields(registry[method].Params)}


def build_prefill(method, **params):
    """A prefill method instance from its name (or pass an instance through)."""
    return _build(PREFILL_METHODS, "prefill", method, params)


def build_decode(method, **params):
    """A decode method instance from its name (or pass an instance through)."""
    return _build(DECODE_METHODS, "decode", method, params)
