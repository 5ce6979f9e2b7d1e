"""``hourglass``: the hierarchical shortened LM of "Hierarchical Transformers Are More Efficient Language Models"
(Nawrot et al., 2022; reference: google/trax ``trax/models/research/hourglass.py``), with cached generation.

A hierarchy such as ``"2@1 8@3 2@1"`` lists ``layers@cumulative shortening factor``; factors are palindromic and
each divides the next towards the middle (nested levels: ``"2@1 2@2 8@6 2@2 2@1"``). Every level keeps a copy of its
input, shifts it right by ``k - 1`` (k = the factor relative to the level above), shortens it (``downsampling``:
avg / linear / attention), runs the inner level, upsamples (``upsampling``: repeat / linear / attention over
``upsampling_base``), normalises and adds the copy (:mod:`leanformer.nn.shortening` fixes the causality argument).
Rotary positions in a level of cumulative factor K are ``i·K``: original-token units.

Generation with caches (which trax lacks): every level keeps KV caches for its layers and a short token is computed
only when its k inputs are complete, so one new byte costs one token of work per level it reaches
(:meth:`Hourglass.forward` takes ``state`` and ``pos``; chunked prefill and one-token steps share that one path).
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from leanformer.config import cfg
from leanformer.errors import ConfigError
from leanformer.models.base import LeanModel, decode_loop, lm_loss
from leanformer.models.gpt import Block, DecoderBlockConfig
from leanformer.nn import KVCache, RMSNorm, Rotary
from leanformer.nn.shortening import DOWNSAMPLERS, UPSAMPLERS, AttentionResample, AvgPool, fixed_groups

_ITEM = re.compile(r"^(\d+)@(\d+)$")


def parse_hierarchy(spec: str) -> list[tuple[int, int, int]]:
    """``"2@1 8@3 2@1"`` -> levels ``[(pre_layers, cumulative_factor, post_layers), ...]`` from the outside in; the
    last level has no post layers (its layers are the valley floor). A first factor above 1 adds a ``0@1`` level."""
    items = spec.split()
    bad = [it for it in items if not _ITEM.match(it)]
    if not items or bad:
        raise ConfigError(f"model.hierarchy: {spec!r} is not a list of 'layers@factor' items like '2@1 8@3 2@1'"
                          + (f" (bad item {bad[0]!r})" if bad else ""))
    pairs = [tuple(int(v) for v in it.split("@")) for it in items]
    n, factors = len(pairs), [f for _, f in pairs]
    if n % 2 == 0 or factors != factors[::-1]:
        raise ConfigError(f"model.hierarchy: {spec!r} must be palindromic in its factors with an odd number of "
                          f"items (e.g. '2@1 8@3 2@1'); got factors {factors}")
    half = factors[: n // 2 + 1]
    if half[0] < 1 or any(b <= a or b % a for a, b in zip(half, half[1:])):
        raise ConfigError(f"model.hierarchy: {spec!r}: factors must grow towards the middle, each a multiple of the "
                          f"one before (e.g. 1, 2, 6); got {half}")
    if pairs[n // 2][0] < 1:
        raise ConfigError(f"model.hierarchy: {spec!r}: the middle (most shortened) level needs at least one layer")
    levels = [(pairs[i][0], half[i], pairs[n - 1 - i][0]) for i in range(n // 2)] + [(pairs[n // 2][0], half[-1], 0)]
    return ([(0, 1, 0)] if half[0] > 1 else []) + levels


@dataclasses.dataclass(kw_only=True)
class HourglassConfig(DecoderBlockConfig):
    hierarchy: str = cfg("2@1 8@3 2@1", help="layers@cumulative shortening factor, palindromic")
    downsampling: str = cfg("linear", choices=("avg", "linear", "attention"))
    upsampling: str = cfg("linear", choices=("repeat", "linear", "attention"))
    upsampling_base: str = cfg("linear", choices=("repeat", "linear"), help="base of attention upsampling")

    def __post_init__(self):
        super().__post_init__()
        parse_hierarchy(self.hierarchy)

    @property
    def levels(self) -> list[tuple[int, int, int]]:
        return parse_hierarchy(self.hierarchy)

    @property
    def n_layers(self) -> int:
        return sum(a + b for a, _, b in self.levels)

    def forward_flops(self, seq_len: int) -> float:
        """Forward FLOPs of one ``seq_len`` sequence (all logits), in :mod:`leanformer.analysis.flops` conventions;
        resampling layers are counted as their linear maps plus attention pairs."""
        from leanformer.analysis.flops import prefill_flops

        d, levels = self.d_model, self.levels
        total = 2.0 * seq_len * d * self.vocab_size
        for i, (pre, unit, post) in enumerate(levels):
            t = math.ceil(seq_len / unit)
            if pre + post:
                f = prefill_flops(self.block_config(pre + post), t)
                total += f["linear"] + f["attention"]
            if i + 1 < len(levels):
                k = levels[i + 1][1] // unit
                s = math.ceil(t / k)
                ff = 3 * d * self.ff_dim
                total += 2 * s * k * d * d * (self.downsampling == "linear")
                total += 2 * s * k * d * d * (self.upsampling == "linear" or (
                    self.upsampling == "attention" and self.upsampling_base == "linear"))
                if self.downsampling == "attention":  # q, o, ff per short token; k, v per full token; pairs
                    total += 2 * s * (2 * d * d + ff) + 4 * t * d * d + 4 * d * s * (t + k) / 2
                if self.upsampling == "attention":
                    total += 2 * t * (2 * d * d + ff) + 4 * s * d * d + 4 * d * t * (s + 1) / 2
        return total


class CachedGeneration:
    """``generate`` for models whose ``forward(ids, state=..., pos=...)`` continues from ``new_state(batch, len)``:
    the same greedy / sampling semantics as :meth:`leanformer.models.gpt.GPT.generate`; ``use_cache=False`` reruns
    the full forward pass for every token (the reference implementations' only way, kept for comparison)."""

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Greedy (``temperature=0``) or sampled continuation; returns only the new tokens ``[B, n]``."""
        b, t = input_ids.shape
        state = self.new_state(b, t + max_new_tokens) if use_cache else None
        seq = [input_ids]

        def step(nxt, i):
            if use_cache:
                return self(nxt, state=state, pos=t + i)[:, -1]
            seq.append(nxt)
            return self(torch.cat(seq, 1))[:, -1]

        first = self(input_ids, state=state, pos=0)[:, -1]
        return decode_loop(first, step, max_new_tokens, temperature, generator, eos_id)


class _LevelState:
    """Caches of one level for incremental decoding (``max_len`` positions at this level's resolution)."""

    def __init__(self, level: HourglassLevel, batch: int, max_len: int, like: torch.Tensor):
        c = level.c

        def cache(n):
            return KVCache(batch, c.kv_heads, n, c.head_dim, dtype=like.dtype, device=like.device)

        def kv_cache(n):  # resampling attention has n_heads key heads
            return KVCache(batch, c.n_heads, n, c.head_dim, dtype=like.dtype, device=like.device)

        self.pre = [cache(max_len) for _ in level.pre]
        self.post = [cache(max_len) for _ in level.post]
        self.inner = None
        if level.inner is not None:
            k, n_short = level.k, -(-max_len // level.k)
            self.hist = like.new_zeros(batch, max_len, c.d_model)
            self.up = like.new_zeros(batch, n_short * k, c.d_model)
            self.pool_cache = kv_cache(max_len) if level.attn_down is not None else None
            self.up_cache = kv_cache(n_short) if level.attn_up is not None else None
            self.inner = _LevelState(level.inner, batch, n_short, like)


class HourglassLevel(nn.Module):
    """Layers at cumulative factor ``levels[0][1]`` around an optional shortened inner level."""

    def __init__(self, c: HourglassConfig, levels: list[tuple[int, int, int]]):
        super().__init__()
        (n_pre, self.unit, n_post), self.c = levels[0], c.block_config()
        self.pre = nn.ModuleList(Block(self.c) for _ in range(n_pre))
        self.post = nn.ModuleList(Block(self.c) for _ in range(n_post))
        self.inner = self.attn_down = self.attn_up = None
        if len(levels) > 1:
            d, self.k = c.d_model, levels[1][1] // self.unit
            self.inner = HourglassLevel(c, levels[1:])
            attn = dict(n_heads=c.n_heads, d_ff=self.c.ff_dim, rope_theta=c.rope_theta, norm_eps=c.norm_eps,
                        backend=c.attn_backend)
            if c.downsampling == "attention":
                self.down, self.attn_down = AvgPool(d, self.k), AttentionResample(d, **attn)
            else:
                self.down = DOWNSAMPLERS[c.downsampling](d, self.k)
            base = c.upsampling_base if c.upsampling == "attention" else c.upsampling
            self.up = UPSAMPLERS[base](d, self.k)
            if c.upsampling == "attention":
                self.attn_up = AttentionResample(d, **attn)
            self.up_norm = RMSNorm(d, c.norm_eps)

    def forward(self, x: torch.Tensor, rotary: Rotary, pos: int = 0, state: _LevelState | None = None):
        """``x [B, n, D]`` at level positions ``pos .. pos+n-1`` -> ``[B, n, D]``."""
        n, u = x.shape[1], self.unit
        positions = torch.arange(pos, pos + n, device=x.device)
        cos, sin = rotary(positions * u, dtype=x.dtype)
        for i, blk in enumerate(self.pre):
            x = blk(x, cos, sin, cache=state.pre[i] if state else None, pos=pos)
        if self.inner is not None:
            x = x + self.up_norm(self._valley(x, rotary, pos, state, positions))
        for i, blk in enumerate(self.post):
            x = blk(x, cos, sin, cache=state.post[i] if state else None, pos=pos)
        return x

    def _valley(self, x, rotary, pos, state, positions):
        n, k, u = x.shape[1], self.k, self.unit
        if state is None and pos:
            raise ValueError("a chunk that does not start at position 0 needs the decoding state")
        hist = x
        if state is not None:
            state.hist[:, pos:pos + n] = x
            hist = state.hist[:, :pos + n]
        j0, j1 = -(-pos // k), (pos + n - 1) // k  # short tokens whose k inputs complete in this chunk
        all_pos = torch.arange(pos + n, device=x.device) * u
        if self.attn_down is not None:  # keys: every full-resolution position so far
            kd, vd = self.attn_down.source_kv(x, positions * u, state.pool_cache if state else None, pos)
        short_pos = torch.arange(j1 + 1, device=x.device) * (k * u)
        if j1 >= j0:
            short = self.down(fixed_groups(hist, j0, j1, k))
            if self.attn_down is not None:
                short = self.attn_down(short, short_pos[j0:], kd, vd, all_pos)
            out = self.inner(short, rotary, j0, state.inner if state else None)
            up = self.up(out)  # base upsampling of groups j0..j1: positions j0*k .. (j1+1)*k - 1
            if state is not None:
                state.up[:, j0 * k:(j1 + 1) * k] = up
        up = state.up[:, pos:pos + n] if state is not None else up[:, :n]
        if self.attn_up is None:
            return up
        cache = state.up_cache if state else None
        if j1 >= j0:
            ku, vu = self.attn_up.source_kv(out, short_pos[j0:], cache, j0)
        else:
            ku, vu = cache.k[:, :, :j1 + 1], cache.v[:, :, :j1 + 1]
        return self.attn_up(up, positions * u, ku, vu, short_pos)


class Hourglass(CachedGeneration, LeanModel):
    """``hourglass(input_ids [B, T])`` -> logits ``[B, T, V]``; with ``targets`` -> ``(logits, loss)``."""

    family = "hourglass"

    def __init__(self, config: HourglassConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.body = HourglassLevel(c, c.levels)
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(c.d_model // c.n_heads, c.rope_theta)
        init_weights(self, c.init_std, c.n_layers)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, state=None, pos: int = 0):
        t = input_ids.shape[1]
        if pos + t > self.config.max_seq_len:
            raise ValueError(f"sequence of {pos + t} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        x = self.body(self.embed(input_ids), self.rotary, pos, state)
        logits = self.lm_head(self.norm(x))
        return logits if targets is None else (logits, lm_loss(logits, targets))

    def new_state(self, batch: int, max_len: int) -> _LevelState:
        return _LevelState(self.body, batch, max_len, self.embed.weight)


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2 init: normal(std) for linear maps and embeddings, residual outputs scaled by 1/sqrt(2·layers)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down.weight")):
            nn.init.normal_(p, std=std / math.sqrt(2 * max(1, n_layers)))
