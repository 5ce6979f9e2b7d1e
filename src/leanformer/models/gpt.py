"""``gpt``: the decoder-only baseline, Llama-style (RMSNorm, rotary, SwiGLU, grouped-query attention).

Converts both ways with ``transformers.LlamaForCausalLM`` (:meth:`GPT.from_hf`, :meth:`GPT.to_hf`), so every
sparse-attention method attached to HF Llama models also runs on ours.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from leanformer.config import cfg
from leanformer.errors import ConfigError
from leanformer.models.base import LeanModel, decode_loop, lm_loss
from leanformer.nn import Attention, KVCache, RMSNorm, Rotary, SwiGLU


@dataclasses.dataclass(kw_only=True)
class DecoderBlockConfig:
    """The Llama-style decoder block shape shared by every family built from :class:`Block` (gpt, dmc, hourglass,
    dynamic_pooling): one set of fields, one validation, one place to add a block option."""

    vocab_size: int = cfg(260, ge=1)
    d_model: int = cfg(256, ge=1)
    n_heads: int = cfg(4, ge=1)
    n_kv_heads: int | None = cfg(None, ge=1, help="key/value heads (GQA); default: n_heads")
    d_ff: int | None = cfg(None, ge=1, help="SwiGLU hidden size; default: 8/3 d_model rounded up to 64")
    max_seq_len: int = cfg(2048, ge=1)
    rope_theta: float = cfg(10000.0, gt=0.0)
    norm_eps: float = cfg(1e-5, gt=0.0)
    tie_embeddings: bool = True
    dropout: float = cfg(0.0, ge=0.0, lt=1.0)
    init_std: float = cfg(0.02, gt=0.0)
    attn_backend: str = cfg("sdpa", choices=("sdpa", "cudnn", "flash", "efficient", "math"),
                            help="sdpa: PyTorch picks; cudnn/flash/efficient: force that GPU kernel; math: reference")

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.n_heads: {self.n_heads} does not divide model.d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model: head dim d_model/n_heads={self.d_model // self.n_heads} must be even (rotary)")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_kv_heads: {self.kv_heads} must divide model.n_heads={self.n_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        return 64 * math.ceil(8 * self.d_model / 3 / 64)

    def block_config(self, n_layers: int = 1) -> GPTConfig:
        """A :class:`GPTConfig` of this block shape with ``n_layers`` layers (at least 1)."""
        shape = {f.name: getattr(self, f.name) for f in dataclasses.fields(DecoderBlockConfig)}
        return GPTConfig(n_layers=max(1, n_layers), **shape)


@dataclasses.dataclass(kw_only=True)
class GPTConfig(DecoderBlockConfig):
    n_layers: int = cfg(4, ge=1)


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = Attention(c.d_model, c.n_heads, c.kv_heads, backend=c.attn_backend, dropout=c.dropout)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = SwiGLU(c.d_model, c.ff_dim, act="silu")
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, cache=None, pos=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache=cache, pos=pos))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPT(LeanModel):
    """``gpt(input_ids [B, T])`` -> logits ``[B, T, V]``; with ``targets`` -> ``(logits, loss)``."""

    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(c.head_dim, c.rope_theta)
        self.apply(self._init)
        # Scale residual-branch outputs so the residual stream's variance does not grow with depth (GPT-2).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down.weight")):
                nn.init.normal_(p, std=c.init_std / math.sqrt(2 * c.n_layers))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.config.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.init_std)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, pos: int = 0):
        b, t = input_ids.shape
        if pos + t > self.config.max_seq_len:
            raise ValueError(f"sequence of {pos + t} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        x = self.embed(input_ids)
        cos, sin = self.rotary(torch.arange(pos, pos + t, device=input_ids.device), dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache=caches[i] if caches is not None else None, pos=pos)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return logits, lm_loss(logits, targets)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = self.embed.weight
        c = self.config
        return [KVCache(batch, c.kv_heads, max_len, c.head_dim, dtype=p.dtype, device=p.device)
                for _ in range(c.n_layers)]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None) -> torch.Tensor:
        """Greedy (``temperature=0``) or sampled continuation with a KV cache; returns only the new tokens."""
        b, t = input_ids.shape
        caches = self.new_caches(b, t + max_new_tokens)
        first = self(input_ids, caches=caches, pos=0)[:, -1]
        return decode_loop(first, lambda nxt, i: self(nxt, caches=caches, pos=t + i)[:, -1], max_new_tokens,
                           temperature, generator, eos_id)

    # ---- Hugging Face Llama conversion ---------------------------------------------------------------------

    def to_hf(self):
        """A ``transformers.LlamaForCausalLM`` with the same weights (logits match to float precision)."""
        from transformers import LlamaConfig, LlamaForCausalLM

        c = self.config
        hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ff_dim,
                             num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                             num_key_value_heads=c.kv_heads, max_position_embeddings=c.max_seq_len,
                             rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
                             attention_bias=False, mlp_bias=False, head_dim=c.head_dim)
        hf = LlamaForCausalLM(hf_cfg)
        sd = {_OURS_TO_HF(k): v for k, v in self.state_dict().items()}
        if c.tie_embeddings:
            sd.pop("lm_head.weight", None)
        missing, unexpected = hf.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not (c.tie_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"GPT->Llama conversion mismatch: missing={missing} unexpected={unexpected}")
        return hf.to(self.embed.weight.dtype).eval()

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """Build a :class:`GPT` from a ``transformers.LlamaForCausalLM`` (or Llama-layout model)."""
        h = hf_model.config
        rope = getattr(h, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(h, "rope_theta", 10000.0))
        if rope.get("rope_type", "default") not in ("default", None):
            raise ConfigError(f"rope scaling type {rope.get('rope_type')!r} is not supported by gpt")
        if getattr(h, "attention_bias", False) or getattr(h, "mlp_bias", False):
            raise ConfigError("Llama models with attention/MLP biases are not supported by gpt")
        head_dim = getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads
        if head_dim * h.num_attention_heads != h.hidden_size:
            raise ConfigError("gpt needs head_dim * num_attention_heads == hidden_size")
        c = GPTConfig(vocab_size=h.vocab_size, d_model=h.hidden_size, n_layers=h.num_hidden_layers,
                      n_heads=h.num_attention_heads, n_kv_heads=h.num_key_value_heads, d_ff=h.intermediate_size,
                      max_seq_len=h.max_position_embeddings, rope_theta=float(theta), norm_eps=h.rms_norm_eps,
                      tie_embeddings=bool(getattr(h, "tie_word_embeddings", False)))
        model = cls(c)
        sd = {_HF_TO_OURS(k): v for k, v in hf_model.state_dict().items() if "rotary_emb" not in k}
        if c.tie_embeddings:
            sd.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not (c.tie_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"Llama->GPT conversion mismatch: missing={missing} unexpected={unexpected}")
        return model.to(next(hf_model.parameters()).dtype)


_PREFIX = [("embed.", "model.embed_tokens."), ("layers.", "model.layers."), ("norm.", "model.norm.")]
_INNER = [(".attn_norm.", ".input_layernorm."), (".mlp_norm.", ".post_attention_layernorm."),
          (".attn.", ".self_attn."), (".mlp.gate.", ".mlp.gate_proj."), (".mlp.up.", ".mlp.up_proj."),
          (".mlp.down.", ".mlp.down_proj.")]


def _OURS_TO_HF(k: str) -> str:
    for a, b in _PREFIX:
        if k.startswith(a):
            k = b + k[len(a):]
            break
    for a, b in _INNER:
        k = k.replace(a, b)
    return k


def _HF_TO_OURS(k: str) -> str:
    for a, b in _PREFIX:
        if k.startswith(b):
            k = a + k[len(b):]
            break
    for a, b in _INNER:
        k = k.replace(b, a)
    return k


def deepen_state(state: dict, n_layers: int, new_layers: int) -> dict:
    """A ``n_layers``-layer model's weights (``state``) for one ``new_layers = r * n_layers`` deep, every other shape
    equal: new layer ``j`` starts as a copy of layer ``j // r``, and every copy after the first of a layer has its
    residual outputs (``attn.o_proj``, ``mlp.down``) zeroed, so it adds nothing to the residual stream: the deeper
    model computes exactly what the shallower one does, and training moves the copies apart (depth up-scaling that
    preserves the function)."""
    if new_layers % n_layers:
        raise ConfigError(f"{new_layers} layers: depth growth needs a multiple of the {n_layers} layers it starts from")
    r = new_layers // n_layers
    return _relayer(state, [(j // r, j % r > 0) for j in range(new_layers)])


def _relayer(state: dict, plan: list[tuple[int, bool]]) -> dict:
    """``state`` with new layer ``j`` a copy of old layer ``plan[j][0]``, its residual outputs (``attn.o_proj``,
    ``mlp.down``) zeroed where ``plan[j][1]``; every weight outside the layers kept."""
    out, layers = {}, {}
    for k, v in state.items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            layers.setdefault(int(i), {})[rest] = v
        else:
            out[k] = v
    for j, (i, zero) in enumerate(plan):
        for rest, v in layers[i].items():
            silent = zero and rest in ("attn.o_proj.weight", "mlp.down.weight")
            out[f"layers.{j}.{rest}"] = torch.zeros_like(v) if silent else v.clone()
    return out


def shallow_layers(n_layers: int, new_layers: int) -> list[int]:
    """The ``new_layers`` of ``n_layers`` that :func:`shallow_state` keeps: evenly spaced in depth, the first and the
    last always among them (8 -> 4 keeps 0, 2, 5, 7)."""
    if not 1 <= new_layers <= n_layers:
        raise ConfigError(f"{new_layers} layers: a shallower model keeps between 1 and the {n_layers} layers it starts "
                          "from")
    if new_layers == 1:
        return [n_layers - 1]
    return [round(i * (n_layers - 1) / (new_layers - 1)) for i in range(new_layers)]


def shallow_state(state: dict, n_layers: int, new_layers: int) -> dict:
    """A ``n_layers``-layer model's weights (``state``) for one ``new_layers < n_layers`` deep, every other shape
    equal: layer ``j`` of the new model is layer ``shallow_layers(...)[j]`` of the old one (layer dropping), the
    embeddings, final norm and head kept. Unlike :func:`deepen_state` the function changes; training recovers it
    from a far better start than random weights (the smaller size of an isoFLOPS comparison)."""
    return _relayer(state, [(i, False) for i in shallow_layers(n_layers, new_layers)])
