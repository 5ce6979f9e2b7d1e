"""``bert``: a masked-LM encoder in the spirit of crammed BERT (Geiping & Goldstein, 2023, "Cramming: Training a
Language Model on a Single GPU in One Day"), the encoder family of "No Train No Gain" (Kaddour et al., 2023).

Crammed-BERT choices kept: pre-norm blocks (LayerNorm before attention and feed-forward, a final LayerNorm), a
LayerNorm on the embeddings, a gated (GLU) feed-forward with GELU, no biases in the linear layers, sequences of 128,
the MLM loss only (no next-sentence prediction), a decoder tied to the token embedding. Simplified: learned
absolute positions (crammed BERT: scaled sinusoidal), dense prediction over all positions (crammed BERT: only the
masked ones; the loss is the same). Defaults are the paper's 16 layers x 768 with 12 heads.

Layout: ``input_ids [B, T]`` -> logits ``[B, T, V]``; attention is bidirectional over ``[B, H, T, D]`` heads;
``labels [B, T]`` hold -100 where nothing is predicted (see :mod:`leanformer.data.masked_lm`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from leanformer.config import cfg
from leanformer.data.masked_lm import MaskedLMConfig
from leanformer.errors import ConfigError
from leanformer.models.base import LeanModel, lm_loss
from leanformer.nn import LayerNorm, SwiGLU, attention


@dataclasses.dataclass(kw_only=True)
class BertConfig:
    vocab_size: int = cfg(32768, ge=2)
    d_model: int = cfg(768, ge=1)
    n_layers: int = cfg(16, ge=1)
    n_heads: int = cfg(12, ge=1)
    d_ff: int = cfg(2048, ge=1, help="GLU hidden size (gate and value each)")
    max_seq_len: int = cfg(128, ge=1)
    norm_eps: float = cfg(1e-12, gt=0.0)
    dropout: float = cfg(0.0, ge=0.0, lt=1.0)
    init_std: float = cfg(0.02, gt=0.0)
    mask_token_id: int | None = cfg(None, ge=0, help="default: vocab_size - 1")
    objective: MaskedLMConfig = dataclasses.field(default_factory=MaskedLMConfig)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.n_heads: {self.n_heads} does not divide model.d_model={self.d_model}")
        if self.mask_id >= self.vocab_size:
            raise ConfigError(f"model.mask_token_id={self.mask_token_id} must be < model.vocab_size="
                              f"{self.vocab_size}")

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1 if self.mask_token_id is None else self.mask_token_id

    def forward_flops(self, seq_len: int) -> float:
        """Forward FLOPs of one sequence (multiply-add = 2): projections and GLU at every position, full
        bidirectional attention (``T`` keys per query), the tied decoder at every position."""
        t, d, f = seq_len, self.d_model, self.d_ff
        return 2.0 * (self.n_layers * (t * (4 * d * d + 3 * d * f) + 2 * t * t * d) + t * d * self.vocab_size)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention, ``[B, T, d] -> [B, T, d]``; optional key mask ``[B, T]``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = key_mask.bool()[:, None, None, :] if key_mask is not None else None
        y = attention(q, k, v, causal=False, mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attn_norm = LayerNorm(c.d_model, c.norm_eps)
        self.attn = SelfAttention(c.d_model, c.n_heads, c.dropout)
        self.mlp_norm = LayerNorm(c.d_model, c.norm_eps)
        self.mlp = SwiGLU(c.d_model, c.d_ff, act="gelu_exact")
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, key_mask=None):
        x = x + self.drop(self.attn(self.attn_norm(x), key_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Bert(LeanModel):
    """``bert(input_ids [B, T])`` -> logits ``[B, T, V]``; with ``labels`` -> ``(logits, masked-LM loss)``."""

    family = "bert"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_seq_len, c.d_model)
        self.embed_norm = LayerNorm(c.d_model, c.norm_eps)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = LayerNorm(c.d_model, c.norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.drop = nn.Dropout(c.dropout)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=c.init_std)

    def objective(self, tokenizer, seq_len: int):
        from leanformer.data.masked_lm import MaskedLM

        return MaskedLM(tokenizer, seq_len, self.config.vocab_size, self.config.mask_id, self.config.objective)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        x = self.embed(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        x = self.drop(self.embed_norm(x))
        for layer in self.layers:
            x = layer(x, attention_mask)
        logits = self.norm(x) @ self.embed.weight.t() + self.decoder_bias
        if labels is None:
            return logits
        return logits, lm_loss(logits, labels)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``input_ids [B, T]`` (masked), ``labels [B, T]`` (-100 = not predicted)."""
        _, loss = self(batch["input_ids"], labels=batch["labels"], attention_mask=batch.get("attention_mask"))
        return loss, {}
