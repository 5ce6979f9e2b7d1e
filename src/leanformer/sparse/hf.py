"""One attach point for Hugging Face causal LMs: ``with sparse.apply(model, prefill=..., decode=...)``.

Works with every ``transformers`` model whose attention goes through ``AttentionInterface`` (Llama, Qwen2, Mistral
and their relatives, transformers 5.x). ``apply`` registers a per-session attention function (and the SDPA mask
builder under the same name), switches the model to it with ``model.set_attn_implementation`` and switches back on
exit, also when the block raises. No class is monkey-patched.

Inside the session, each attention call is routed by shape (HF passes ``query [B, H_q, T_q, D]`` and the full cache
``key, value [B, H_kv, T_k, D]``):

* ``T_q == T_k`` (a prompt with no past): the prefill method (dense SDPA if none), then the decode method sees the
  prompt (``observe_prefill``: SnapKV scores, Quest page metadata);
* ``T_q == 1`` with a decode method: ``attend`` reads only the selected cache positions;
* anything else (chunked prefill after a past, several new tokens): dense causal attention.

Only unpadded batches are supported: a padding mask raises :class:`~leanformer.errors.UserError` (checked on the
2-D mask; no ``[T, T]`` mask is built at any length: the session's mask builder returns none, so 128K tokens fit
wherever dense attention fits). For rows of different lengths, :class:`leanformer.infer.Engine` runs the same methods
over a static cache with per-row lengths. Every call
appends its ``info`` (without the pattern) to ``session.stats`` with ``layer`` and ``phase`` added, so callers can
count the keys actually read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import torch
import torch.nn.functional as F

from leanformer.errors import UserError
from leanformer.nn.attention import attention
from leanformer.sparse.base import check_sparsity
from leanformer.sparse.registry import build_decode, build_prefill

_ids = itertools.count()


class SparseSession:
    """The attention function of one ``apply`` block and what it recorded (``stats``: list of info dicts)."""

    def __init__(self, prefill=None, decode=None, prefill_sparsity=0.0, decode_sparsity=0.0):
        self.prefill, self.decode = prefill, decode
        self.prefill_sparsity, self.decode_sparsity = prefill_sparsity, decode_sparsity
        self._stats: list[dict] = []
        self._pending: list[dict] = []

    @property
    def stats(self) -> list[dict]:
        """One info dict per sparse call, 0-d tensors read as floats. Calls record their info as it comes (tensors
        on the device) and it is read here, on access: a forward pass on a GPU is not stalled once per layer."""
        if self._pending:
            self._stats += [{k: float(v) if isinstance(v, torch.Tensor) and v.dim() == 0 else v for k, v in r.items()}
                            for r in self._pending]
            self._pending = []
        return self._stats

    def _record(self, info, layer, phase):
        if info is not None:
            self._pending.append({k: v for k, v in info.items() if k != "pattern"} | {"layer": layer, "phase": phase})

    def attention(self, module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, **kwargs):
        """The ``AttentionInterface`` function: returns ``(out [B, T_q, H_q, D], None)``."""
        layer = getattr(module, "layer_idx", 0)
        tq, tk = query.shape[2], key.shape[2]
        if attention_mask is not None:  # only a 4-D mask the caller built itself gets here (ours builds none)
            raise UserError(f"sparse attention takes no prepared attention mask (got shape "
                            f"{tuple(attention_mask.shape)}); pass a 2-D padding mask of ones, or none")
        info = None
        if tq == tk:
            def dense(q, k, v):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                      enable_gqa=q.shape[1] != k.shape[1])

            if self.prefill is not None:
                out, info = self.prefill.at_layer(layer, query, key, value, dense, self.prefill_sparsity, scaling)
            else:
                out = dense(query, key, value)
            if self.decode is not None:
                self.decode.observe_prefill(layer, query, key, value, scale=scaling)
            phase = "prefill"
        elif tq == 1 and self.decode is not None:
            out, info = self.decode.attend(layer, query, key, value, sparsity=self.decode_sparsity, scale=scaling)
            phase = "decode"
        else:
            out = attention(query, key, value, causal=True, scale=scaling)
            phase = "dense"
        self._record(info, layer, phase)
        return out.transpose(1, 2).contiguous(), None


def _unpadded_mask(batch_size=None, *args, attention_mask=None, **kwargs):
    """The session's mask builder: refuses a padding mask (O(B T): the 2-D mask, never a ``[T, T]`` one) and
    returns ``None``, so no 4-D mask is ever built and attention runs causal (bottom-right aligned)."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise UserError("sparse attention supports unpadded batches only (every row the same length); "
                        "generate one prompt at a time, group prompts of equal length, or use leanformer.infer.Engine "
                        "(rows of any length)")
    return None


def split_params(prefill, decode, params: dict):
    """Send each keyword to the method(s) whose parameters name it."""
    pre, dec = {}, {}
    fields = {}
    for kind, m, build in (("prefill", prefill, build_prefill), ("decode", decode, build_decode)):
        if isinstance(m, str):
            cls = build(m).__class__.Params
            fields[kind] = {f.name for f in dataclasses.fields(cls)}
    for key, val in params.items():
        hit = False
        if key in fields.get("prefill", ()):
            pre[key], hit = val, True
        if key in fields.get("decode", ()):
            dec[key], hit = val, True
        if not hit:
            allowed = sorted(fields.get("prefill", set()) | fields.get("decode", set()))
            raise UserError(f"parameter {key!r} belongs to neither prefill={prefill!r} nor decode={decode!r}; "
                            f"allowed: {allowed}")
    return pre, dec


@contextlib.contextmanager
def apply(model, prefill=None, decode=None, sparsity: float | None = 0.0, *, prefill_sparsity=..., decode_sparsity=...,
          prefill_params: dict | None = None, decode_params: dict | None = None, **params):
    """Run ``model`` (a ``transformers`` causal LM) with sparse attention inside the ``with`` block.

    ``prefill`` / ``decode``: a name from ``PREFILL_METHODS`` / ``DECODE_METHODS``, a method instance, or ``None``
    (dense). ``sparsity`` applies to both phases unless ``prefill_sparsity`` / ``decode_sparsity`` override it;
    ``None`` means the methods' native budgets. ``**params`` go to whichever method has a parameter of that name;
    ``prefill_params`` / ``decode_params`` go to one phase's method only (for names both share: window, sinks).
    Yields the :class:`SparseSession` (``session.stats`` holds one info dict per sparse call).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise UserError(f"sparse.apply needs a transformers PreTrainedModel; got {type(model).__name__}")
    pre_p, dec_p = split_params(prefill, decode, params)
    pre_p.update(prefill_params or {})  # per-phase parameters: for names both methods share (window, sinks, ...)
    dec_p.update(decode_params or {})
    ps = check_sparsity(sparsity if prefill_sparsity is ... else prefill_sparsity)
    ds = check_sparsity(sparsity if decode_sparsity is ... else decode_sparsity)
    session = SparseSession(None if prefill is None else build_prefill(prefill, **pre_p),
                            None if decode is None else build_decode(decode, **dec_p), ps, ds)
    n_layers = getattr(model.config, "num_hidden_layers", None)  # some configs nest it (multimodal text_config)
    if session.prefill is not None and n_layers is not None:
        session.prefill.check_layers(n_layers)
    if session.decode is not None:
        session.decode.reset()
    name = f"leanformer_sparse_{next(_ids)}"
    AttentionInterface.register(name, session.attention)
    AttentionMaskInterface.register(name, _unpadded_mask)
    old = model.config._attn_implementation
    try:
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:
            raise UserError(f"{type(model).__name__} refused the attention implementation {name!r}; sparse.apply needs "
                            "a model that dispatches attention through transformers.AttentionInterface")
        yield session
    finally:
        model.set_attn_implementation(old)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
