"""FLOP and memory-traffic accounting for decoder-only Transformers: THE one cost module of leanformer.

Used by training (MFU), the sweep harness (the cost of each sample) and the analysis (isoFLOPS). Conventions:

- Forward FLOPs of matrix products only; a multiply-add counts as 2. Norms, rotary, softmax, activations and
  residual adds are O(T·d) or O(pairs) element-wise work and are left out, as in Kaplan et al. (2020) and
  Hoffmann et al. (2022).
- A decoder layer with ``H`` query heads, ``H_kv`` key/value heads, head dim ``D``, width ``d`` and SwiGLU hidden
  size ``f`` costs per token ``2·(d·H·D + 2·d·H_kv·D + H·D·d + 3·d·f)`` in its linear maps (``linear``), and the
  LM head ``2·d·V`` per token whose logits are computed (``lm_head``).
- Attention costs ``4·D`` per (query head, query, key) pair actually computed: ``2·D`` for ``q·k`` and ``2·D`` for
  the weighted sum of values. Causal prefill of ``T`` tokens computes ``T(T+1)/2`` pairs per head (the diagonal
  included); *sparsity* ``s`` is the fraction of those pairs skipped (The Sparse Frontier, Nawrot et al., 2025), so
  the sparse count is ``(1−s)·T(T+1)/2``. One decode step over a cache of ``C`` keys computes ``(1−s)·C`` pairs.
- Pattern estimation (the scoring that decides what a sparse method keeps) is reported as ``estimation`` and added
  to ``total``; each method's formula is in :mod:`leanformer.analysis.estimation`.
- Prefill computes logits for the last position only (what ``generate`` and vLLM do); pass ``all_logits=True`` to
  count all of them. Training counts (:func:`forward_flops_per_token`) count every position.

Any of these describes a model (see :func:`shape_of`): a preset name from :data:`PRESETS` (real shapes of
Qwen2.5 0.5B–72B and Llama 3.1 8B, so no download is needed), our ``leanformer.models.gpt.GPTConfig``, a
``transformers`` config (``LlamaConfig``, ``Qwen2Config``, ``MistralConfig``), a ``config.json`` dict or path, or a
:class:`ModelShape`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from leanformer.analysis.estimation import ESTIMATORS, estimation_flops
from leanformer.errors import UserError

__all__ = ["ModelShape", "PRESETS", "shape_of", "prefill_flops", "decode_flops", "sample_flops",
           "forward_flops_per_token", "train_flops_per_token", "decode_bytes", "ESTIMATORS"]


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The shape numbers that fix a Llama-family decoder's cost (GQA attention + SwiGLU MLP)."""

    d_model: int
    n_layers: int
    n_heads: int
    kv_heads: int
    head_dim: int
    ff_dim: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    name: str = ""

    @property
    def layer_params(self) -> int:
        d, q, kv = self.d_model, self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return d * q + 2 * d * kv + q * d + 3 * d * self.ff_dim + bias + 2 * d  # + two RMSNorm gains

    @property
    def non_embedding_params(self) -> int:
        """Parameters outside the token embedding and the LM head (the model-size axis of the analysis)."""
        return self.n_layers * self.layer_params + self.d_model  # + final norm

    @property
    def total_params(self) -> int:
        return self.non_embedding_params + self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    @property
    def linear_flops_per_token(self) -> int:
        d, q, kv = self.d_model, self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * self.n_layers * (d * q + 2 * d * kv + q * d + 3 * d * self.ff_dim)

    @property
    def lm_head_flops_per_token(self) -> int:
        return 2 * self.d_model * self.vocab_size

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of one (query, key) pair summed over all query heads and layers: q·k and the value sum."""
        return 4 * self.head_dim * self.n_heads * self.n_layers


def _qwen(name, d, layers, heads, kv, ff, vocab=152064, tie=False):
    return ModelShape(d_model=d, n_layers=layers, n_heads=heads, kv_heads=kv, head_dim=d // heads, ff_dim=ff,
                      vocab_size=vocab, tie_embeddings=tie, qkv_bias=True, name=name)


# Shapes from each model's config.json on the Hugging Face hub.
PRESETS: dict[str, ModelShape] = {
    "qwen2.5-0.5b": _qwen("qwen2.5-0.5b", 896, 24, 14, 2, 4864, vocab=151936, tie=True),
    "qwen2.5-1.5b": _qwen("qwen2.5-1.5b", 1536, 28, 12, 2, 8960, vocab=151936, tie=True),
    "qwen2.5-3b": _qwen("qwen2.5-3b", 2048, 36, 16, 2, 11008, vocab=151936, tie=True),
    "qwen2.5-7b": _qwen("qwen2.5-7b", 3584, 28, 28, 4, 18944),
    "qwen2.5-14b": _qwen("qwen2.5-14b", 5120, 48, 40, 8, 13824),
    "qwen2.5-32b": _qwen("qwen2.5-32b", 5120, 64, 40, 8, 27648),
    "qwen2.5-72b": _qwen("qwen2.5-72b", 8192, 80, 64, 8, 29568),
    "llama-3.1-8b": ModelShape(d_model=4096, n_layers=32, n_heads=32, kv_heads=8, head_dim=128, ff_dim=14336,
                               vocab_size=128256, name="llama-3.1-8b"),
}


def _preset_key(name: str) -> str:
    key = name.strip().lower().rsplit("/", 1)[-1]
    for suffix in ("-instruct", "-chat"):
        key = key.removesuffix(suffix)
    return key.replace("meta-", "")


def _from_hf(c: Any, name: str = "") -> ModelShape:
    get = c.get if isinstance(c, Mapping) else (lambda k, default=None: getattr(c, k, default))
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    model_type = get("model_type", "") or ""
    return ModelShape(d_model=get("hidden_size"), n_layers=get("num_hidden_layers"), n_heads=heads,
                      kv_heads=get("num_key_value_heads") or heads, head_dim=head_dim,
                      ff_dim=get("intermediate_size"), vocab_size=get("vocab_size"),
                      tie_embeddings=bool(get("tie_word_embeddings", False)),
                      qkv_bias=bool(get("attention_bias", False)) or model_type == "qwen2",
                      name=name or get("_name_or_path", "") or model_type)


def shape_of(config: Any) -> ModelShape:
    """Normalise a preset name, ``GPTConfig``, ``transformers`` config, ``config.json`` (dict or path) or
    :class:`ModelShape` to a :class:`ModelShape`; raise :class:`UserError` for anything else."""
    if isinstance(config, ModelShape):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        cfg_json = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if cfg_json.endswith(".json") and os.path.isfile(cfg_json):
            with open(cfg_json) as f:
                return shape_of(json.load(f))
        key = _preset_key(path)
        if key in PRESETS:
            return PRESETS[key]
        raise UserError(f"unknown model preset {path!r}; choose one of {', '.join(PRESETS)} "
                        "(or pass a config object, a config.json path or a model directory)")
    if isinstance(config, Mapping):
        if "hidden_size" in config:
            return _from_hf(config)
        if "d_model" in config:
            from leanformer.models.registry import model_config_from_dict

            return shape_of(model_config_from_dict({"name": "gpt", **config}))
    if hasattr(config, "hidden_size") and hasattr(config, "num_hidden_layers"):
        return _from_hf(config, name=type(config).__name__)
    if all(hasattr(config, a) for a in ("d_model", "n_layers", "n_heads", "kv_heads", "head_dim", "ff_dim")):
        return ModelShape(d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
                          kv_heads=config.kv_heads, head_dim=config.head_dim, ff_dim=config.ff_dim,
                          vocab_size=config.vocab_size, tie_embeddings=bool(getattr(config, "tie_embeddings", False)),
                          name=type(config).__name__)
    raise UserError(f"cannot read a model shape from {type(config).__name__}; pass a preset name "
                    f"({', '.join(PRESETS)}), a GPTConfig, a transformers config or a config.json path")


def _check(name: str, value: int, sparsity: float) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        if not (isinstance(value, float) and value.is_integer() and value >= 1):
            raise UserError(f"{name}={value!r}: must be a positive integer number of tokens")
    if not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"sparsity={sparsity!r}: must be in [0, 1) (the fraction of query-key pairs skipped)")


def prefill_flops(config_or_preset: Any, seq_len: int, sparsity: float = 0.0, method: str | None = None,
                  params: Mapping | None = None, all_logits: bool = False) -> dict[str, float]:
    """Forward FLOPs of processing a ``seq_len``-token prompt causally, skipping a ``sparsity`` fraction of
    query–key pairs with ``method`` (whose pattern estimation is added as ``estimation``; ``params`` override the
    method's defaults). Returns ``linear``, ``lm_head``, ``attention``, ``attention_dense``, ``estimation``,
    ``total`` (all FLOPs) and ``pairs`` (causal pairs per head per layer actually computed)."""
    _check("seq_len", seq_len, sparsity)
    s = shape_of(config_or_preset)
    t = int(seq_len)
    dense_pairs = t * (t + 1) / 2
    out = {
        "linear": float(t * s.linear_flops_per_token),
        "lm_head": float((t if all_logits else 1) * s.lm_head_flops_per_token),
        "attention_dense": float(s.attention_flops_per_pair * dense_pairs),
        "pairs": (1.0 - sparsity) * dense_pairs,
        "estimation": estimation_flops(s, method, "prefill", t, params),
    }
    out["attention"] = (1.0 - sparsity) * out["attention_dense"]
    out["total"] = out["linear"] + out["lm_head"] + out["attention"] + out["estimation"]
    return out


def decode_flops(config_or_preset: Any, context_len: int, sparsity: float = 0.0, method: str | None = None,
                 params: Mapping | None = None) -> dict[str, float]:
    """Forward FLOPs of one decode step (one new token) whose query attends to a cache of ``context_len`` keys
    (the new token's own key included), reading only a ``1 − sparsity`` fraction of them. Same keys as
    :func:`prefill_flops`; ``estimation`` is the method's per-step scoring (e.g. Quest's page scores)."""
    _check("context_len", context_len, sparsity)
    s = shape_of(config_or_preset)
    c = int(context_len)
    out = {
        "linear": float(s.linear_flops_per_token),
        "lm_head": float(s.lm_head_flops_per_token),
        "attention_dense": float(s.attention_flops_per_pair * c),
        "pairs": (1.0 - sparsity) * c,
        "estimation": estimation_flops(s, method, "decode", c, params),
    }
    out["attention"] = (1.0 - sparsity) * out["attention_dense"]
    out["total"] = out["linear"] + out["lm_head"] + out["attention"] + out["estimation"]
    return out


def sample_flops(config_or_preset: Any, prompt_tokens: int, output_tokens: int, prefill_method: str = "dense",
                 decode_method: str = "dense", prefill_sparsity: float = 0.0, decode_sparsity: float = 0.0,
                 params: Mapping | None = None, *, prefill_params: Mapping | None = None,
                 decode_params: Mapping | None = None) -> dict[str, float]:
    """FLOPs of one generated sample, as the harness stores them: ``{"prefill": ..., "decode": ...}``.

    Prefill covers the prompt (and the prefill-time scoring of a decode method such as SnapKV, which runs once
    after the prompt); it yields the first output token. Each further token is one decode step, step ``j``
    attending to ``prompt_tokens + j`` keys at the measured ``decode_sparsity``. ``prefill_params`` /
    ``decode_params`` give each method its own parameters (``params``: one dict for both).
    """
    s = shape_of(config_or_preset)
    pp = prefill_params if prefill_params is not None else params  # per-phase dicts win over one shared dict
    dp = decode_params if decode_params is not None else params
    pre = prefill_flops(s, prompt_tokens, prefill_sparsity, prefill_method, pp)["total"]
    pre += estimation_flops(s, decode_method, "prefill", int(prompt_tokens), dp)
    dec = 0.0
    for j in range(1, max(int(output_tokens), 1)):
        dec += decode_flops(s, int(prompt_tokens) + j, decode_sparsity, decode_method, dp)["total"]
    return {"prefill": pre, "decode": dec, "total": pre + dec}


def forward_flops_per_token(config: Any, seq_len: int) -> float:
    """Training forward FLOPs per token for sequences of ``seq_len`` tokens: linear + LM head at every position +
    dense causal attention (``(T+1)/2`` keys per query on average). A config with a ``forward_flops(seq_len)``
    method (models whose layers do not all run at full length: hourglass, dynamic pooling) counts itself, in the
    conventions above."""
    if callable(getattr(config, "forward_flops", None)):
        return float(config.forward_flops(int(seq_len))) / int(seq_len)
    return prefill_flops(config, seq_len, all_logits=True)["total"] / int(seq_len)


def train_flops_per_token(config: Any, seq_len: int) -> float:
    """Forward + backward FLOPs per token (backward = 2× forward), the numerator of MFU."""
    return 3.0 * forward_flops_per_token(config, seq_len)


def decode_bytes(config: Any, context_len: int, batch: int = 1, sparsity: float = 0.0,
                 dtype_bytes: float = 2) -> dict[str, float]:
    """Bytes read from memory by one decode step of ``batch`` sequences over ``context_len`` cached tokens:
    every weight once (non-embedding weights + the LM head; the embedding lookup reads one row per sequence) and,
    per sequence, the keys and values kept (``1 − sparsity`` of the cache) in every layer."""
    _check("context_len", context_len, sparsity)
    if int(batch) < 1:
        raise UserError(f"batch={batch!r}: must be a positive integer")
    s = shape_of(config)
    weights = (s.non_embedding_params + s.vocab_size * s.d_model + int(batch) * s.d_model) * dtype_bytes
    kv_dense = int(batch) * s.n_layers * 2 * s.kv_heads * s.head_dim * int(context_len) * dtype_bytes
    kv = (1.0 - sparsity) * kv_dense
    return {"weights": float(weights), "kv_cache": float(kv), "kv_cache_dense": float(kv_dense),
            "total": float(weights + kv)}
