"""``dmc``: our ``gpt`` with Dynamic Memory Compression attention (Nawrot et al., ICML 2024).

Every key/value head decides per token whether to append its key/value to the cache (``alpha = 0``) or merge it into
the last slot by an ``omega``-weighted average (``alpha = 1``), so the cache grows ~``1 / CR`` as fast. No new
parameters: the decision logit is one repurposed channel of each key head, ``alpha_logit = s * k[c] - alpha_offset``
(``s = decision_scale``, 1 in the paper; :mod:`leanformer.train.dmc_retrofit` says when it is larger), and
the importance is the same channel of the queries, ``omega = mean over the GQA group of sigmoid(q[c] + omega_offset)``
(offsets 5, so a fresh retrofit starts at "always append"). Both are read *before* rotary; the channel is then scaled
by ``1 - fade`` in ``q`` and ``k`` and rotary applied to the full head, so with ``fade = 1`` the channel adds nothing to
the dot product and the rotary pair it belongs to still rotates correctly (``(a, 0)`` rotated by RoPE stays a
rotation), and with ``fade = 0`` the model is exactly the base ``gpt``.

**Which channel.** The paper's text says the *first* channel; the released code (NVIDIA/Megatron-LM, branch ``dmc``)
uses the *last*, ``c = D - 1``. We default to the last (``dmc_channel="last"``) because the released code is what
produced the reported numbers; ``"first"`` is available. In the Llama rotary layout channel ``D-1`` is the partner of
channel ``D/2-1`` in the lowest-frequency pair and channel 0 the partner of ``D/2`` in the highest-frequency pair;
either way one pair loses half its width once faded.

**Stages** (``dmc_stage``, the retrofitting recipe of the paper): ``base`` (plain ``gpt``), ``zero_out`` (the channel
fades linearly ``0 -> 1`` over the stage, decisions off), ``retrofit`` (decisions on, target compression ratio ramps
``1 -> target_cr``), ``finetune`` (target fixed). The trainer reports progress through :meth:`DMC.on_train_step`.
Training uses Gumbel-sigmoid decisions at ``temperature`` 0.1 and the auxiliary loss
``aux_weight * relu((1 - 1/CR_target) - mean alpha)``; evaluation uses hard decisions ``alpha_logit > 0`` with merge
groups capped at ``window`` (12) tokens, which decoding with :class:`~leanformer.kvcache.dmc_cache.DMCCache`
reproduces exactly. Partial accumulations and the superseded-state bias live in :mod:`leanformer.models.dmc_ops`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from leanformer.config import cfg
from leanformer.kvcache.dmc_cache import DMCCache
from leanformer.models import dmc_ops as ops
from leanformer.models.gpt import GPT, GPTConfig
from leanformer.nn import Attention
from leanformer.nn.attention import attention
from leanformer.nn.rotary import apply_rotary
from leanformer.train.objectives import CausalLM

STAGES = ("base", "zero_out", "retrofit", "finetune")


@dataclasses.dataclass(kw_only=True)
class DMCConfig(GPTConfig):
    dmc_stage: str = cfg("finetune", choices=STAGES, help="retrofitting stage; see the module docstring")
    target_cr: float = cfg(4.0, ge=1.0, help="target compression ratio (tokens per cache slot)")
    window: int = cfg(12, ge=1, le=256, help="largest merge group; also the training accumulation window")
    temperature: float = cfg(0.1, gt=0.0, help="Gumbel-sigmoid temperature during training")
    alpha_offset: float = cfg(5.0, help="alpha logit = decision_scale * k[channel] - alpha_offset")
    decision_scale: float = cfg(1.0, gt=0.0, help="alpha logit = decision_scale * k[channel] - alpha_offset "
                                "(paper: 1; see leanformer.train.dmc_retrofit)")
    omega_offset: float = cfg(5.0, help="omega = sigmoid(q[channel] + omega_offset)")
    dmc_channel: str = cfg("last", choices=("last", "first"), help="repurposed head channel (code: last)")
    aux_weight: float = cfg(1.0, ge=0.0, help="weight of relu(target - mean alpha)")


class DMCAttention(Attention):
    """:class:`~leanformer.nn.Attention` whose cache appends or merges per head. ``x [B, T, d]`` -> ``[B, T, d]``.

    Runtime state (set by :class:`DMC`): ``decide`` (decisions on), ``fade`` (0..1), ``force_cr`` (when set,
    decisions ignore the model: token ``p`` appends iff ``p % force_cr == 0``; for throughput benchmarks).
    """

    def __init__(self, c: DMCConfig):
        super().__init__(c.d_model, c.n_heads, c.kv_heads, backend=c.attn_backend, dropout=c.dropout)
        self.c = c
        self.channel = self.head_dim - 1 if c.dmc_channel == "last" else 0
        self.decide, self.fade, self.force_cr = True, 1.0, None
        self.last_alpha: torch.Tensor | None = None
        self.register_buffer("appends", torch.zeros(self.n_kv_heads, dtype=torch.float64), persistent=False)
        self.register_buffer("tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    def signals(self, q, k, pos):
        """``alpha_logit, omega [B, H_kv, T]`` from the pre-rotary channel of ``q [B, H_q, T, D]``, ``k``."""
        b, _, t, _ = k.shape
        logit = self.c.decision_scale * k[..., self.channel].float() - self.c.alpha_offset
        omega = torch.sigmoid(q[..., self.channel].float() + self.c.omega_offset)
        omega = omega.view(b, self.n_kv_heads, -1, t).mean(2)
        if self.force_cr is not None:
            p = pos + torch.arange(t, device=k.device)  # pos: int, or a 0-d device tensor (CUDA graphs)
            logit = torch.where(p % self.force_cr == 0, -1.0, 1.0).expand_as(logit)
        elif not self.decide:
            logit = torch.full_like(logit, -1.0)
        return logit, omega

    def project(self, x, cos, sin, pos):
        """``q [B, H_q, T, D], k, v [B, H_kv, T, D]`` (faded, rotated) and the DMC signals."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        logit, omega = self.signals(q, k, pos)
        if self.fade:
            keep = torch.ones(self.head_dim, device=x.device, dtype=q.dtype)
            # fill_ with a Python scalar is a device-side kernel; `keep[c] = value` copies a CPU scalar tensor,
            # which CUDA-graph capture refuses (seen in the H200 decode benchmark).
            keep.narrow(0, self.channel % self.head_dim, 1).fill_(1.0 - self.fade)
            q, k = q * keep, k * keep
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v, logit, omega

    def forward(self, x, cos=None, sin=None, cache: DMCCache | None = None, pos=0, mask=None):
        b, t, _ = x.shape
        q, k, v, logit, omega = self.project(x, cos, sin, pos)
        if cache is not None and not (isinstance(pos, int) and pos == 0):
            y = self.decode(q, k, v, logit, omega, cache)
        elif not self.decide and self.force_cr is None and cache is None:
            y = attention(q, k, v, causal=True, mask=mask, backend=self.backend,
                          dropout_p=self.dropout if self.training else 0.0)
            self._count(torch.zeros_like(logit))
        else:
            y = self.parallel(q, k, v, logit, omega, cache)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))

    def parallel(self, q, k, v, logit, omega, cache):
        if self.training:
            if cache is not None:
                raise RuntimeError("DMC decoding with a cache needs eval mode (hard decisions)")
            alpha, log1m = ops.relaxed_decisions(logit, self.c.temperature)
            self.last_alpha = alpha
        else:
            merge = ops.cap_merges(logit > 0, self.c.window)
            alpha = merge.float()
            log1m = torch.zeros_like(alpha).masked_fill(merge, float("-inf"))
            self._count(alpha)
        states = ops.partial_states(k, v, alpha, omega, self.c.window)
        if cache is not None:
            cache.prefill(*states, merge)
        return ops.dmc_attention(q, states[0], states[1], ops.merge_bias(log1m),
                                 dropout_p=self.dropout if self.training else 0.0)

    def decode(self, q, k, v, logit, omega, cache: DMCCache):
        """Token by token through the cache: update (append or merge), then attend. ``q [B, H_q, T, D]``."""
        out = []
        for i in range(q.shape[2]):
            merged = cache.update(k[:, :, i], v[:, :, i], logit[..., i], omega[..., i])
            self._count(merged.float()[..., None])
            out.append(cache.attend(q[:, :, i]))
        return torch.stack(out, 2)

    @torch.no_grad()
    def _count(self, alpha):
        if not self.training:
            self.appends += (1.0 - alpha.double()).sum((0, 2))
            self.tokens += alpha.shape[0] * alpha.shape[2]


class DMCObjective(CausalLM):
    """Causal LM evaluation plus the compression ratio reached (overall, per layer, per head)."""

    log_keys = ("loss", "bits_per_byte", "compression_ratio")

    def evaluate(self, model, tokens, batch_size, max_batches, device, autocast_dtype=None) -> dict:
        model.reset_compression_stats()
        out = super().evaluate(model, tokens, batch_size, max_batches, device, autocast_dtype)
        return {**out, **model.compression_stats()}


class DMC(GPT):
    """``dmc(input_ids [B, T])`` -> logits ``[B, T, V]``: :class:`GPT` with :class:`DMCAttention` in every block."""

    family = "dmc"

    def __init__(self, config: DMCConfig):
        super().__init__(config)
        for layer in self.layers:
            new = DMCAttention(config)
            new.load_state_dict(layer.attn.state_dict())
            layer.attn = new
        self.target = config.target_cr
        self.on_train_step(0, 1.0)

    def attns(self) -> list[DMCAttention]:
        return [layer.attn for layer in self.layers]

    def on_train_step(self, step: int, progress: float) -> None:
        """Stage schedule: zero-out fades the channel over the stage; retrofit ramps the target ratio 1 -> goal."""
        c, stage = self.config, self.config.dmc_stage
        fade = 0.0 if stage == "base" else progress if stage == "zero_out" else 1.0
        self.target = 1.0 + (c.target_cr - 1.0) * progress if stage == "retrofit" else c.target_cr
        for a in self.attns():
            a.fade, a.decide = fade, stage in ("retrofit", "finetune")

    def clear_decision_channel(self) -> None:
        """Zero the repurposed channel's rows of every ``q_proj`` and ``k_proj``, as the released code does after
        the zero-out stage: every decision logit then starts at exactly ``-alpha_offset`` (always append) and every
        ``omega`` at ``sigmoid(omega_offset)``, whatever the base model kept in that channel."""
        with torch.no_grad():
            for a in self.attns():
                for proj in (a.q_proj, a.k_proj):
                    proj.weight.view(-1, a.head_dim, proj.weight.shape[-1])[:, a.channel] = 0.0

    def force_compression(self, cr: int | None) -> None:
        """Decisions by position (append every ``cr``-th token): an exact ratio for benchmarks; ``None`` undoes."""
        if cr is not None and not 1 <= cr <= self.config.window:
            raise ValueError(f"forced compression ratio {cr} must be in [1, window={self.config.window}]")
        for a in self.attns():
            a.force_cr = cr

    def compute_loss(self, batch):
        logits, lm = self(batch["input_ids"], targets=batch["labels"])
        alphas = [a.last_alpha for a in self.attns() if a.last_alpha is not None]
        if not (self.training and alphas and self.attns()[0].decide):
            return lm, {}
        mean_alpha = torch.stack([a.mean() for a in alphas]).mean()
        aux = F.relu((1.0 - 1.0 / self.target) - mean_alpha)
        for a in self.attns():
            a.last_alpha = None
        return lm + self.config.aux_weight * aux, {"lm_loss": lm.detach(), "aux_loss": aux.detach(),
                                                   "train_cr": 1.0 / (1.0 - mean_alpha.detach()),
                                                   "target_cr": self.target}

    def objective(self, tokenizer, seq_len: int):
        return DMCObjective(tokenizer, seq_len, self.config.vocab_size)

    def reset_compression_stats(self) -> None:
        for a in self.attns():
            a.appends.zero_()
            a.tokens.zero_()

    def compression_stats(self) -> dict:
        """Tokens per cache slot seen since the last reset: overall, per layer and per layer x key/value head."""
        appends = torch.stack([a.appends for a in self.attns()])  # (L, Hkv)
        tokens = torch.stack([a.tokens for a in self.attns()])
        if float(tokens.sum()) == 0:
            return {}
        per_head = tokens[:, None] / appends.clamp(min=1)
        return {"compression_ratio": float(tokens.sum() * appends.shape[1] / appends.sum()),
                "compression_ratio_per_layer": (tokens * appends.shape[1] / appends.sum(1)).tolist(),
                "compression_ratio_per_head": [[round(x, 4) for x in row] for row in per_head.tolist()]}

    def new_caches(self, batch: int, max_len: int, page_size: int = 16, n_pages: int | None = None,
                   impl: str = "auto") -> list[DMCCache]:
        p, c = self.embed.weight, self.config
        return [DMCCache(batch, c.kv_heads, c.head_dim, max_len, page_size=page_size, n_pages=n_pages,
                         window=c.window, dtype=p.dtype, device=p.device, impl=impl) for _ in range(c.n_layers)]

    @classmethod
    def from_gpt(cls, gpt: GPT, **dmc) -> DMC:
        """The same weights under DMC attention; ``dmc`` sets :class:`DMCConfig` fields (stage, target_cr, ...)."""
        config = DMCConfig(**{**dataclasses.asdict(gpt.config), **dmc})
        model = cls(config).to(gpt.embed.weight.device, gpt.embed.weight.dtype)
        model.load_state_dict(gpt.state_dict())
        return model

    @classmethod
    def from_hf(cls, hf_model, **dmc) -> DMC:
        """From a ``transformers.LlamaForCausalLM`` (through :meth:`GPT.from_hf`); ``to_hf`` exports the weights."""
        return cls.from_gpt(GPT.from_hf(hf_model), **dmc)
