"""``t5``: the T5 v1.1 encoder–decoder (Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer"; v1.1 as released by Google), the model nanoT5 pretrains (Nawrot, 2023).

v1.1 differs from the original T5: gated-GELU feed-forward (tanh GELU, Hugging Face's ``gelu_new``), no biases
anywhere, RMS norm without mean or bias (pre-norm), an untied LM head, no 1/sqrt(d) in attention (folded into the
init). Positions are learned scalar biases per head over log-spaced relative-distance buckets (bidirectional in the
encoder, causal in the decoder), computed once per stack and shared by its layers; cross-attention has none.

Two attention implementations (``T5Config.attn_impl``) compute the same function. ``"sdpa"`` builds the bias as a
dense ``[1, H, T_q, T_k]`` tensor and passes it to ``F.scaled_dot_product_attention`` as ``attn_mask`` (only the
memory-efficient kernel takes one, and the bias gradient is formed at ``[B, H, T_q, T_k]`` before it is summed).
``"sdpa_split"`` hands SDPA the same bias detached, so cuDNN's fused kernel runs, and computes the bias gradient
beside it (:mod:`leanformer.models.bias_grad`: Triton kernels on CUDA); no attention dropout.
``"flex"`` runs self-attention through FlexAttention (:class:`FlexBias`): a ``score_mod`` adds the bias from a
``[H, T_q + T_k - 1]`` table over relative distance, causality and key padding are a ``BlockMask``, and the bias
gradient is accumulated straight into that table; cross-attention stays plain SDPA (flash-eligible without padding).
FlexAttention has no backward on CPU in PyTorch, and no attention dropout; the decoder of cached generation
(:meth:`T5.generate`) takes the dense path under either implementation.

Initialisation follows the Mesh-TensorFlow / Hugging Face rules with one fix: the untied LM head gets std
``d_model^-0.5``, not 1 (nanoT5 issue #25: std 1 gives the logits 768x too much variance at T5-base).

Layout: ``input_ids [B, S]``, ``decoder_input_ids [B, T]``, hidden ``[B, T, d_model]``, attention heads
``[B, H, T, d_kv]``; ``attention_mask [B, S]`` is True (or 1) for real tokens. Conversion to and from
``transformers.T5ForConditionalGeneration`` (:meth:`T5.to_hf`, :meth:`T5.from_hf`) uses the name and config mapping
in :mod:`leanformer.models.t5_convert`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from leanformer.config import cfg
from leanformer.data.span_corruption import SpanCorruptionConfig
from leanformer.errors import ConfigError
from leanformer.models import t5_convert
from leanformer.models.base import LeanModel, lm_loss
from leanformer.models.bias_grad import attention_with_bias
from leanformer.nn import KVCache, RMSNorm, SwiGLU

ATTN_IMPLS = ("sdpa", "sdpa_split", "flex")


@dataclasses.dataclass(kw_only=True)
class T5Config:
    """Defaults are T5 v1.1 base (247.6M parameters) with nanoT5's pretraining dropout of 0."""

    vocab_size: int = cfg(32128, ge=1)
    d_model: int = cfg(768, ge=1)
    d_kv: int = cfg(64, ge=1, help="per-head width of queries, keys and values")
    d_ff: int = cfg(2048, ge=1)
    n_layers: int = cfg(12, ge=1, help="encoder layers")
    n_decoder_layers: int | None = cfg(None, ge=1, help="decoder layers; default: n_layers")
    n_heads: int = cfg(12, ge=1)
    rel_buckets: int = cfg(32, ge=2, help="relative-position buckets")
    rel_max_distance: int = cfg(128, ge=2, help="distance at which buckets stop growing")
    dropout: float = cfg(0.0, ge=0.0, lt=1.0, help="nanoT5: 0 for pretraining, 0.1 for fine-tuning")
    norm_eps: float = cfg(1e-6, gt=0.0)
    ff_act: str = cfg("gelu", choices=("gelu", "gelu_exact", "silu", "relu"), help="gate activation; gelu = tanh")
    pad_token_id: int = cfg(0, ge=0)
    decoder_start_token_id: int = cfg(0, ge=0)
    init_factor: float = cfg(1.0, gt=0.0, help="scales every init std (Hugging Face initializer_factor)")
    attn_impl: str = cfg("sdpa", choices=ATTN_IMPLS, help="sdpa: bias as a dense attn_mask; sdpa_split: the same, "
                         "the bias gradient computed beside SDPA so cuDNN can run (no attention dropout); flex: "
                         "FlexAttention score_mod + BlockMask (training needs CUDA; no attention dropout)")
    objective: SpanCorruptionConfig = dataclasses.field(default_factory=SpanCorruptionConfig)

    def __post_init__(self):
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"model.attn_impl: {self.attn_impl!r} is not allowed; choose one of "
                              f"{', '.join(map(repr, ATTN_IMPLS))}")

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    def forward_flops(self, seq_len: int) -> float:
        """Forward FLOPs (matmuls, multiply-add = 2; the conventions of :mod:`leanformer.analysis.flops`) of one
        span-corruption example with ``seq_len`` inputs and its targets: encoder over ``S`` tokens with full
        attention, decoder over ``T`` targets with causal self-attention and cross-attention to ``S`` keys."""
        from leanformer.data.span_corruption import compute_input_and_target_lengths

        s = seq_len
        t = compute_input_and_target_lengths(s, self.objective.noise_density, self.objective.mean_noise_span_length)[1]
        d, inner, f = self.d_model, self.n_heads * self.d_kv, self.d_ff
        attn_linear, ff = 4 * d * inner, 3 * d * f
        pair = 4 * inner  # q.k and p.v over all heads
        enc = self.n_layers * (s * (attn_linear + ff) + s * s * pair)
        cross = s * 2 * d * inner + t * 2 * d * inner + t * s * pair  # k, v over S; q, o over T
        dec = self.decoder_layers * (t * (attn_linear + ff) + t * (t + 1) / 2 * pair + cross)
        return 2.0 * (enc + dec + t * d * self.vocab_size)


def relative_position_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bucket of ``rel = key_pos - query_pos``: exact for small distances, log-spaced up to ``max_distance``;
    bidirectional halves the buckets between past and future; causal maps the future to bucket 0. The same map as
    transformers' private ``T5Attention._relative_position_bucket``, which the optional ``hf`` extra alone has."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class RelativeBias(nn.Module):
    """Learned ``[buckets, H]`` table -> additive attention bias ``[1, H, T_q, T_k]``."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, t_q: int, t_k: int, q_offset: int = 0) -> torch.Tensor:
        dev = self.embedding.weight.device
        rel = torch.arange(t_k, device=dev)[None, :] - torch.arange(q_offset, q_offset + t_q, device=dev)[:, None]
        b = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        # contiguous: SDPA's fused GPU kernels need a unit-stride mask, and the permuted view is the likely reason
        # the encoder's self-attention ran on the math path in an H200 profile (fp32 under autocast, ~40 ms of a
        # 181 ms T5-base step; benchmarks/results/t5_profile-20261129T052029Z.txt)
        return self.embedding(b).permute(2, 0, 1).unsqueeze(0).contiguous()

    def by_distance(self, t_q: int, t_k: int) -> torch.Tensor:
        """``[H, t_q + t_k - 1]``: column ``q - k + t_k - 1`` holds the bias of query ``q`` and key ``k``
        (``key - query`` runs from ``t_k - 1`` down to ``-(t_q - 1)``), what :class:`FlexBias` indexes."""
        rel = torch.arange(t_k - 1, -t_q, -1, device=self.embedding.weight.device)
        b = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(b).t().contiguous()


def _flex_api():
    """``torch.nn.attention.flex_attention``, or a clear error on a torch without it."""
    try:
        import torch.nn.attention.flex_attention as api
    except ImportError as e:
        raise RuntimeError(f"attn_impl='flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this is "
                           f"torch {torch.__version__}: use attn_impl='sdpa'") from e
    return api


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(_flex_api().flex_attention, dynamic=False)


def check_flex_head_dim(d_kv: int, device_type: str) -> None:
    """FlexAttention's GPU kernels multiply with ``tl.dot``, which needs every dimension >= 16."""
    if device_type != "cpu" and d_kv < 16:
        raise ConfigError(f"attn_impl='flex' on {device_type} needs d_kv >= 16 (FlexAttention's Triton kernels); "
                          f"got d_kv={d_kv}: use attn_impl='sdpa' or a larger d_kv")


def flex_attention(q, k, v, bias: FlexBias) -> torch.Tensor:
    """``q [B, H, T_q, D]``, ``k, v [B, H, T_k, D]`` -> ``[B, H, T_q, D]`` under ``bias``, unscaled. Eagerly this
    calls ``flex_attention`` compiled once, as PyTorch advises (uncompiled it materialises the scores); inside a
    ``torch.compile`` region it calls the plain function, which the enclosing compile lowers to the fused kernel."""
    check_flex_head_dim(q.shape[-1], q.device.type)
    if q.device.type == "cpu":
        # Inductor's CPU flex template reads q, k, v as 4-D buffers: a transposed view fails to lower (torch 2.13)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    fn = _flex_api().flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    return fn(q, k, v, score_mod=bias.score_mod(), block_mask=bias.block_mask, scale=1.0)


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@dataclasses.dataclass(frozen=True)
class FlexBias:
    """What the flex path hands every self-attention layer of a stack instead of a dense bias: the relative-position
    ``table [H, T_q + T_k - 1]`` (:meth:`RelativeBias.by_distance`), added to score ``(q, k)`` from column
    ``q - k + T_k - 1`` by :meth:`score_mod`, and a ``BlockMask`` (None: every query sees every key). Gradients
    reach the table (and so the bucket embedding) through FlexAttention's gradients of captured tensors."""

    table: torch.Tensor
    t_k: int
    block_mask: object | None = None

    @classmethod
    def build(cls, rel: RelativeBias, t_q: int, t_k: int, causal: bool = False,
              attention_mask: torch.Tensor | None = None) -> FlexBias:
        """``attention_mask [B, T_k]`` (True / 1 = real key) masks keys per batch row; ``causal`` masks k > q."""
        create_block_mask = _flex_api().create_block_mask
        table = rel.by_distance(t_q, t_k)
        if attention_mask is None:
            mask = create_block_mask(_causal, None, None, t_q, t_k, device=table.device) if causal else None
            return cls(table, t_k, mask)
        # compared inside the mask_mod, not turned bool outside: the captured tensor stays the caller's (Inductor's
        # CPU flex template rejects a computed one, torch 2.13)
        keep = attention_mask

        def keep_keys(b, h, q_idx, kv_idx):
            return (keep[b, kv_idx] != 0) & (kv_idx <= q_idx) if causal else keep[b, kv_idx] != 0

        return cls(table, t_k, create_block_mask(keep_keys, keep.shape[0], None, t_q, t_k, device=table.device))

    def score_mod(self):
        table, off = self.table, self.t_k - 1

        def add_bias(score, b, h, q_idx, kv_idx):
            return score + table[h, q_idx - kv_idx + off]

        return add_bias


class T5Attention(nn.Module):
    """Multi-head attention without the 1/sqrt(d) scale; ``bias`` is added to the scores (``[B|1, H, T_q, T_k]``,
    or a :class:`FlexBias` for the FlexAttention path).
    ``kv`` is the key/value source (cross-attention) or a precomputed ``(k, v)`` pair; default: ``x`` itself."""

    def __init__(self, d_model: int, n_heads: int, d_kv: int, dropout: float = 0.0, split_bias_grad: bool = False):
        super().__init__()
        self.n_heads, self.d_kv, self.dropout, self.split_bias_grad = n_heads, d_kv, dropout, split_bias_grad
        inner = n_heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H*D] -> [B, H, T, D]
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(src)), self.heads(self.v(src))

    def forward(self, x, bias=None, kv=None, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.heads(self.q(x))
        k, v = kv if isinstance(kv, tuple) else self.project_kv(x if kv is None else kv)
        if cache is not None:
            k, v = cache.update(pos, k, v)
        flex = isinstance(bias, FlexBias)
        split = (not flex and self.split_bias_grad and bias is not None and bias.requires_grad
                 and torch.is_grad_enabled())
        if (flex or split) and self.training and self.dropout > 0:
            raise ValueError(f"attn_impl={'flex' if flex else 'sdpa_split'!r} has no attention dropout: train with "
                             "dropout > 0 under attn_impl='sdpa', or call .eval()")
        if flex:
            y = flex_attention(q, k, v, bias)
        elif split:
            y = attention_with_bias(q, k, v, bias, scale=1.0)
        else:
            mask = bias.to(q.dtype) if bias is not None else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class EncoderLayer(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = T5Attention(c.d_model, c.n_heads, c.d_kv, c.dropout, c.attn_impl == "sdpa_split")
        self.ff_norm = RMSNorm(c.d_model, c.norm_eps)
        self.ff = SwiGLU(c.d_model, c.d_ff, act=c.ff_act, dropout=c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, bias):
        x = x + self.drop(self.attn(self.attn_norm(x), bias))
        return x + self.drop(self.ff(self.ff_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.self_norm = RMSNorm(c.d_model, c.norm_eps)
        self.self_attn = T5Attention(c.d_model, c.n_heads, c.d_kv, c.dropout, c.attn_impl == "sdpa_split")
        self.cross_norm = RMSNorm(c.d_model, c.norm_eps)
        self.cross_attn = T5Attention(c.d_model, c.n_heads, c.d_kv, c.dropout)
        self.ff_norm = RMSNorm(c.d_model, c.norm_eps)
        self.ff = SwiGLU(c.d_model, c.d_ff, act=c.ff_act, dropout=c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, self_bias, memory, cross_bias, cache=None, pos=0):
        x = x + self.drop(self.self_attn(self.self_norm(x), self_bias, cache=cache, pos=pos))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), cross_bias, kv=memory))
        return x + self.drop(self.ff(self.ff_norm(x)))


def padding_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, S]`` keep-mask -> additive ``[B, 1, 1, S]`` bias (0 keep, -inf drop), or None."""
    if attention_mask is None:
        return None
    return torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device).masked_fill(
        ~attention_mask.bool(), float("-inf"))[:, None, None, :]


class T5(LeanModel):
    """``t5(input_ids, decoder_input_ids=...)`` -> logits ``[B, T, V]``; with ``labels`` (``-100`` = ignore)
    the decoder inputs default to the labels shifted right and the result is ``(logits, loss)``."""

    family = "t5"

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        if c.attn_impl == "flex":
            _flex_api()
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.enc_bias = RelativeBias(c.n_heads, c.rel_buckets, c.rel_max_distance, bidirectional=True)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_layers))
        self.enc_norm = RMSNorm(c.d_model, c.norm_eps)
        self.dec_bias = RelativeBias(c.n_heads, c.rel_buckets, c.rel_max_distance, bidirectional=False)
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.dec_norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.drop = nn.Dropout(c.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c, f = self.config, self.config.init_factor
        inner = c.n_heads * c.d_kv
        nn.init.normal_(self.shared.weight, std=f)
        nn.init.normal_(self.lm_head.weight, std=f * c.d_model ** -0.5)
        for rb in (self.enc_bias, self.dec_bias):
            nn.init.normal_(rb.embedding.weight, std=f * c.d_model ** -0.5)
        for m in self.modules():
            if isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(m.k.weight, std=f * c.d_model ** -0.5)
                nn.init.normal_(m.v.weight, std=f * c.d_model ** -0.5)
                nn.init.normal_(m.o.weight, std=f * inner ** -0.5)
            elif isinstance(m, SwiGLU):
                nn.init.normal_(m.gate.weight, std=f * c.d_model ** -0.5)
                nn.init.normal_(m.up.weight, std=f * c.d_model ** -0.5)
                nn.init.normal_(m.down.weight, std=f * c.d_ff ** -0.5)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def objective(self, tokenizer, seq_len: int):
        from leanformer.data.span_corruption import SpanCorruption

        return SpanCorruption(tokenizer, seq_len, self.config.vocab_size, self.config.objective)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: start token first, ``-100`` replaced by the pad id."""
        out = torch.full_like(labels, self.config.decoder_start_token_id)
        out[:, 1:] = labels[:, :-1]
        return out.masked_fill(out == -100, self.config.pad_token_id)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S]`` -> encoder output ``[B, S, d_model]``."""
        s = input_ids.shape[1]
        if self.config.attn_impl == "flex":
            bias = FlexBias.build(self.enc_bias, s, s, attention_mask=attention_mask)
        else:
            bias = self.enc_bias(s, s)
            pad = padding_bias(attention_mask)
            if pad is not None:
                bias = bias + pad
        x = self.drop(self.shared(input_ids))
        for layer in self.encoder:
            x = layer(x, bias)
        return self.drop(self.enc_norm(x))

    def decode(self, decoder_input_ids, memory, attention_mask=None, caches=None, pos: int = 0) -> torch.Tensor:
        """Logits ``[B, T, V]`` for decoder inputs at positions ``pos..pos+T-1``. ``memory`` is the encoder output
        ``[B, S, d]`` or, with ``caches``, one precomputed cross ``(k, v)`` per layer (see :meth:`generate`)."""
        t = decoder_input_ids.shape[1]
        k_len = pos + t
        if self.config.attn_impl == "flex" and caches is None:
            self_bias = FlexBias.build(self.dec_bias, t, t, causal=True)
        else:
            self_bias = self.dec_bias(t, k_len, q_offset=pos)
            future = torch.ones(t, k_len, dtype=torch.bool, device=self_bias.device).triu(pos + 1)
            self_bias = self_bias.masked_fill(future, float("-inf"))
        cross_bias = padding_bias(attention_mask)
        x = self.drop(self.shared(decoder_input_ids))
        for i, layer in enumerate(self.decoder):
            mem = memory[i] if isinstance(memory, list) else memory
            x = layer(x, self_bias, mem, cross_bias, cache=caches[i] if caches else None, pos=pos)
        return self.lm_head(self.drop(self.dec_norm(x)))

    def forward(self, input_ids, decoder_input_ids=None, labels=None, attention_mask=None):
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("t5 needs decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        logits = self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)
        if labels is None:
            return logits
        return logits, lm_loss(logits, labels)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``input_ids [B, S]``, ``labels [B, T]`` (-100 = ignore), optional ``attention_mask [B, S]``."""
        _, loss = self(batch["input_ids"], labels=batch["labels"], attention_mask=batch.get("attention_mask"))
        return loss, {}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with a self-attention KV cache and cross keys/values computed once. Returns
        ``[B, <= max_new_tokens]`` new tokens (start token excluded); rows that finished hold the pad id."""
        c, b = self.config, input_ids.shape[0]
        memory = self.encode(input_ids, attention_mask)
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder]
        caches = [KVCache(b, c.n_heads, max_new_tokens, c.d_kv, dtype=memory.dtype, device=memory.device)
                  for _ in self.decoder]
        tok = torch.full((b, 1), c.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        out = []
        for step in range(max_new_tokens):
            logits = self.decode(tok, cross, attention_mask, caches=caches, pos=step)
            tok = logits[:, -1].argmax(-1, keepdim=True).masked_fill(done[:, None], c.pad_token_id)
            out.append(tok)
            if eos_id is not None:
                done |= tok[:, 0] == eos_id
                if bool(done.all()):
                    break
        return torch.cat(out, dim=1)

    @classmethod
    def from_hf(cls, hf_model) -> T5:
        """Build from a ``transformers.T5ForConditionalGeneration`` (gated, untied: T5 v1.1, Flan-T5, nanoT5)."""
        model = cls(T5Config(**t5_convert.config_from_hf(hf_model.config)))
        model.load_state_dict(t5_convert.state_dict_from_hf(hf_model.state_dict(), model.state_dict()), strict=True)
        return model.to(next(hf_model.parameters()).dtype)

    @classmethod
    def from_pretrained_hf(cls, name_or_path: str) -> T5:
        """Load a Hugging Face T5 checkpoint by local path or hub name (``google/t5-v1_1-base``): safetensors only
        unless pickled weights are allowed (``--allow-pickle``), never remote code."""
        from transformers import T5ForConditionalGeneration

        from leanformer.models.hf import hf_from_pretrained

        hf = hf_from_pretrained(T5ForConditionalGeneration, name_or_path, what="Hugging Face T5", dtype=torch.float32)
        return cls.from_hf(hf)

    def to_hf(self):
        """A ``transformers.T5ForConditionalGeneration`` with the same weights (logits match to float precision)."""
        return t5_convert.to_hf(self)
