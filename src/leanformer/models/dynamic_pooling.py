"""``dynamic_pooling``: "Efficient Transformers with Dynamic Token Pooling" (Nawrot et al., 2023; reference:
PiotrNawrot/dynamic-pooling), on the Hourglass shortening mechanism (:mod:`leanformer.nn.shortening`).

``n_pre`` layers at full resolution -> boundaries ``b [B, T]`` (:mod:`leanformer.models.boundaries`: gumbel, entropy,
unigram, whitespace, fixed, none) -> each completed segment is the mean of its characters (scatter, O(T) memory) ->
``[null, seg_1, ..., seg_S]`` through ``n_short`` layers (rotary position of a segment = the index of its last
character, the null vector at -1) -> position ``t`` gets the output of the latest segment ended at or before ``t``
(``cumsum(b)[t]``, so positions before the first boundary get the null vector's) -> added to the pre-layer states ->
``n_post`` layers. ``none`` runs the ``n_short`` layers at full resolution (the vanilla model of the same depth).

Generation with caches: a new segment runs through the shortened layers (each row its own KV cache, since rows
close segments at different times) only when its boundary arrives; otherwise a byte costs only the full-resolution
layers. Same greedy semantics as ``GPT.generate``, tested equal to full recomputation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from leanformer.config import cfg
from leanformer.errors import ConfigError
from leanformer.models import boundaries as B
from leanformer.models.base import LeanModel, lm_loss
from leanformer.models.gpt import Block, DecoderBlockConfig
from leanformer.models.hourglass import CachedGeneration, init_weights
from leanformer.nn import KVCache, RMSNorm, Rotary
from leanformer.nn.shortening import segment_gather, segment_mean


@dataclasses.dataclass(kw_only=True)
class DynamicPoolingConfig(DecoderBlockConfig):
    n_pre: int = cfg(2, ge=0, help="full-resolution layers before pooling")
    n_short: int = cfg(8, ge=1, help="layers over segments")
    n_post: int = cfg(2, ge=0, help="full-resolution layers after upsampling")
    boundaries: str = cfg("whitespace", choices=B.SOURCES)
    fixed_k: int = cfg(3, ge=1, help="segment length for boundaries=fixed")
    prior: float = cfg(0.2, gt=0.0, lt=1.0, help="target boundary rate of the gumbel prior loss")
    temperature: float = cfg(0.5, gt=0.0, help="relaxed-Bernoulli temperature (gumbel)")
    boundary_loss_weight: float = cfg(1.0, ge=0.0)
    predictor_hidden: int | None = cfg(None, ge=1, help="boundary MLP width; default d_model")
    unigram_vocab: str | None = cfg(None, help="JSON of unigram pieces (UnigramSegmenter.save), boundaries=unigram")

    def __post_init__(self):
        super().__post_init__()
        if self.boundaries == "unigram" and not self.unigram_vocab:
            raise ConfigError("model.unigram_vocab: boundaries='unigram' needs the path of a unigram vocabulary "
                              "(UnigramSegmenter.train(text).save(path))")

    @property
    def n_layers(self) -> int:
        return self.n_pre + self.n_short + self.n_post

    def forward_flops(self, seq_len: int, shortening: float | None = None) -> float:
        """Forward FLOPs of a ``seq_len`` sequence at an average ``shortening`` factor (default: ``fixed_k``,
        ``1/prior`` for gumbel, 1 for none, 5 otherwise — about one boundary per English word); the boundary MLP is
        counted, segment means and gathers are not (O(T·D))."""
        from leanformer.analysis.flops import prefill_flops

        if shortening is None:
            shortening = {"fixed": self.fixed_k, "gumbel": 1 / self.prior, "none": 1.0}.get(self.boundaries, 5.0)
        total = 2.0 * seq_len * self.d_model * self.vocab_size
        if self.n_pre + self.n_post:
            f = prefill_flops(self.block_config(self.n_pre + self.n_post), seq_len)
            total += f["linear"] + f["attention"]
        s = max(1, round(seq_len / shortening)) + (self.boundaries != "none")
        f = prefill_flops(self.block_config(self.n_short), s)
        total += f["linear"] + f["attention"]
        if self.boundaries in B.PREDICTED:
            total += 2 * seq_len * (self.d_model + 1) * (self.predictor_hidden or self.d_model)
        return total


class _State:
    def __init__(self, m: DynamicPooling, batch: int, max_len: int, like: torch.Tensor):
        c = m.config.block_config()

        def caches(n, length, b=batch):
            return [KVCache(b, c.kv_heads, length, c.head_dim, dtype=like.dtype, device=like.device)
                    for _ in range(n)]

        self.pre, self.post = caches(m.config.n_pre, max_len), caches(m.config.n_post, max_len)
        if m.config.boundaries == "none":
            self.short = caches(m.config.n_short, max_len)
            return
        self.rows = [caches(m.config.n_short, max_len + 1, 1) for _ in range(batch)]  # per-row segment caches
        self.hist = like.new_zeros(batch, max_len, m.config.d_model)
        self.out = like.new_zeros(batch, max_len + 1, m.config.d_model)  # shortened outputs, index 0 = null
        self.ends = [[] for _ in range(batch)]  # positions of each row's boundaries


class DynamicPooling(CachedGeneration, LeanModel):
    """``model(input_ids [B, T])`` -> logits ``[B, T, V]``; with ``targets`` -> ``(logits, LM + boundary loss)``.
    ``last_boundaries`` holds the hard boundaries of the latest forward (for the shortening-factor metric)."""

    family = "dynamic_pooling"

    def __init__(self, config: DynamicPoolingConfig):
        super().__init__()
        self.config = c = config
        bc = c.block_config()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pre = nn.ModuleList(Block(bc) for _ in range(c.n_pre))
        self.short = nn.ModuleList(Block(bc) for _ in range(c.n_short))
        self.post = nn.ModuleList(Block(bc) for _ in range(c.n_post))
        self.null = nn.Parameter(torch.zeros(c.d_model))
        self.predictor = B.BoundaryPredictor(c.d_model, c.predictor_hidden or c.d_model) \
            if c.boundaries in B.PREDICTED else None
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(bc.head_dim, c.rope_theta)
        init_weights(self, c.init_std, c.n_layers)
        nn.init.normal_(self.null, std=c.init_std)
        self.segmenter = B.UnigramSegmenter.load(c.unigram_vocab) if c.boundaries == "unigram" else None
        self.last_boundaries = None

    def boundaries(self, ids, h, pos: int):
        """Hard boundaries ``[B, T]`` (straight-through for gumbel in training) and the predictor's logits."""
        c = self.config
        logits = self.predictor(h) if self.predictor is not None else None
        if c.boundaries == "gumbel":
            return B.gumbel_boundaries(logits, c.temperature, self.training), logits
        if c.boundaries in ("entropy", "unigram"):
            return (logits > 0).to(h.dtype), logits
        if c.boundaries == "whitespace":
            return B.whitespace_boundaries(ids).to(h.dtype), None
        return B.fixed_boundaries(ids, c.fixed_k, pos).to(h.dtype), None

    def _run(self, ids: torch.Tensor, state: _State | None = None, pos: int = 0):
        n = ids.shape[1]
        if pos + n > self.config.max_seq_len:
            raise ValueError(f"sequence of {pos + n} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        if state is None and pos:
            raise ValueError("a chunk that does not start at position 0 needs the decoding state")
        x = self.embed(ids)
        positions = torch.arange(pos, pos + n, device=ids.device)
        cos, sin = self.rotary(positions, dtype=x.dtype)
        for i, blk in enumerate(self.pre):
            x = blk(x, cos, sin, cache=state.pre[i] if state else None, pos=pos)
        b = logits_b = None
        if self.config.boundaries == "none":
            for i, blk in enumerate(self.short):
                x = blk(x, cos, sin, cache=state.short[i] if state else None, pos=pos)
        else:
            b, logits_b = self.boundaries(ids, x, pos)
            up = self._pool_cached(x, b, pos, state) if state is not None else self._pool(x, b)
            x = x + up
        for i, blk in enumerate(self.post):
            x = blk(x, cos, sin, cache=state.post[i] if state else None, pos=pos)
        self.last_boundaries = b.detach() if b is not None else None
        return self.lm_head(self.norm(x)), b, logits_b

    def _pool(self, h, b):
        bsz, t, d = h.shape
        segs = segment_mean(h, b)  # (B, S, D)
        hard = b.detach().round()
        ends = [torch.nonzero(r).flatten().float() for r in hard]
        s = segs.shape[1]
        pos = torch.stack([torch.cat([e, torch.arange(t, t + s - len(e), device=h.device, dtype=torch.float32)])
                           for e in ends]) if s else h.new_zeros(bsz, 0)
        pos = torch.cat([pos.new_full((bsz, 1), -1.0), pos], 1)  # (B, S+1), null at -1
        short = torch.cat([self.null.to(h.dtype).expand(bsz, 1, d), segs], 1)
        cos, sin = self.rotary(pos, dtype=h.dtype)
        for blk in self.short:
            short = blk(short, cos, sin)
        return segment_gather(short, b)

    def _pool_cached(self, h, b, pos, state: _State):
        n = h.shape[1]
        state.hist[:, pos:pos + n] = h
        hard = b.detach().round()
        for r in range(h.shape[0]):
            ends, new = state.ends[r], [pos + int(i) for i in torch.nonzero(hard[r]).flatten()]
            starts = [(ends + new)[i - 1] + 1 if i else 0 for i in range(len(ends), len(ends) + len(new))]
            vecs = [state.hist[r, s:e + 1].mean(0) for s, e in zip(starts, new)]
            seg_pos = [float(e) for e in new]
            if pos == 0:
                vecs, seg_pos = [self.null.to(h.dtype)] + vecs, [-1.0] + seg_pos
            if vecs:
                at = len(ends) + (pos > 0)  # cache index of the first new vector (index 0 is the null)
                x = torch.stack(vecs)[None]
                cos, sin = self.rotary(torch.tensor(seg_pos, device=h.device), dtype=h.dtype)
                for i, blk in enumerate(self.short):
                    x = blk(x, cos, sin, cache=state.rows[r][i], pos=at)
                state.out[r, at:at + x.shape[1]] = x[0]
            ends.extend(new)
        idx = torch.tensor([len(e) for e in state.ends], device=h.device)[:, None] - hard.flip(1).cumsum(1).flip(1)
        idx = idx + hard  # cumsum(b)[t] over the whole sequence so far
        return torch.gather(state.out, 1, idx.long()[..., None].expand(-1, -1, h.shape[-1]))

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, state=None, pos: int = 0):
        logits, b, logits_b = self._run(input_ids, state, pos)
        if targets is None:
            return logits
        return logits, lm_loss(logits, targets) + self.config.boundary_loss_weight * self.boundary_loss(
            input_ids, logits, b, logits_b)

    def boundary_loss(self, ids, logits, b, logits_b, targets=None) -> torch.Tensor:
        """The boundary source's auxiliary loss; ``targets`` are precomputed unigram targets of ``ids`` (e.g. a
        window of :meth:`UnigramSegmenter.stream_targets`), else they are segmented here."""
        c = self.config
        if c.boundaries == "gumbel":
            return B.binomial_prior_loss(b, c.prior)
        if c.boundaries == "entropy":
            return B.bce_loss(logits_b, B.entropy_targets(logits))
        if c.boundaries == "unigram":
            if targets is None:
                targets = self.segmenter.targets(ids)
            elif targets.shape != ids.shape:
                raise ValueError(f"boundary_targets of shape {tuple(targets.shape)} for input_ids of shape "
                                 f"{tuple(ids.shape)}; they must match")
            return B.bce_loss(logits_b, targets)
        return logits.new_zeros(())

    def compute_loss(self, batch):
        """``input_ids``, ``labels`` and, for unigram boundaries, optional precomputed ``boundary_targets``."""
        logits, b, logits_b = self._run(batch["input_ids"])
        lm = lm_loss(logits, batch["labels"])
        bl = self.boundary_loss(batch["input_ids"], logits, b, logits_b, batch.get("boundary_targets"))
        rate = float(b.detach().float().mean()) if b is not None else 1.0
        return lm + self.config.boundary_loss_weight * bl, {"lm_loss": float(lm.detach()),
                                                            "boundary_loss": float(bl.detach()),
                                                            "shortening": 1.0 / max(rate, 1e-9)}

    def objective(self, tokenizer, seq_len: int):
        """Unigram boundaries: batches carry their slice of the training stream's targets, labelled once
        (:meth:`UnigramSegmenter.stream_targets`) instead of segmented every step."""
        if self.segmenter is None:
            return super().objective(tokenizer, seq_len)
        from leanformer.train.objectives import AlignedTargetsLM

        return AlignedTargetsLM(tokenizer, seq_len, self.config.vocab_size,
                                lambda tokens: {"boundary_targets": self.segmenter.stream_targets(tokens)})

    def new_state(self, batch: int, max_len: int) -> _State:
        return _State(self, batch, max_len, self.embed.weight)
