"""A Llama-family decoder run layer by layer over a Hugging Face model's own modules, with its attention handed to
a callback.

What the inference engine (:mod:`leanformer.infer.engine`) needs from a model, and nothing else: the embedding,
the rotary module, per layer the norms, the q/k/v/o projections and the MLP's three projections, the final norm and
the LM head, all used as the model holds them (``nn.Linear`` modules, so GEMMs are the model's own). What it does
differently from the model's ``forward``: no attention mask is built (the attention callback knows each row's
lengths), q/k/v leave the rotary step already in the ``[B, H, T, D]`` layout the attention methods take, the
elementwise steps (RMSNorm with its residual add, rotary, SiLU x up) are one fused pass each when compiled, and the
LM head runs on the positions asked for only (the last one at prefill).

Supported: ``transformers`` Llama, Qwen2, Qwen3 (its per-head q/k norms) and Mistral models, and our ``gpt`` via
``to_hf()``; a sliding window, where a model has one, bounds the lengths it may run (checked by the engine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leanformer.errors import UserError
from leanformer.nn.rotary import rotate_half

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's RMSNorm: statistics in fp32, the gain applied in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """``residual + x`` and its RMSNorm, in one pass when compiled: returns ``(normed, new_residual)``."""
    h = residual + x
    return rms_norm(h, weight, eps), h


def rope_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on ``x [B, T, H, D]`` with ``cos, sin [B, T, D]`` (Hugging Face's rotate-half convention), returned
    as a contiguous ``[B, H, T, D]`` (the layout change rides on the rotary pass)."""
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (x * c + rotate_half(x) * s).transpose(1, 2).contiguous()


def to_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, D]`` -> contiguous ``[B, H, T, D]``."""
    return x.transpose(1, 2).contiguous()


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, the product written over the SiLU's output (eager: no third ``[B, T, d_ff]`` tensor)."""
    return F.silu(gate).mul_(up)


class Fused:
    """The elementwise steps, eager or compiled by ``torch.compile`` (pure tensor functions: one compilation per
    shape family serves every layer, since weights come in as arguments). Compiled, a prefill's rotary and layout
    change of q / k / v run as one Triton kernel where it takes the tensors (:mod:`leanformer.infer.rope_layout`:
    whole rows read and written; compiled as one elementwise expression they ran at a tenth of the bandwidth)."""

    def __init__(self, compile: bool = False):
        fns = {"rms_norm": rms_norm, "add_rms_norm": add_rms_norm, "rope_heads": rope_heads, "to_heads": to_heads,
               "silu_mul": silu_mul}
        for name, fn in fns.items():
            setattr(self, name, torch.compile(fn, dynamic=True) if compile else fn)
        self.compiled = compile
        if compile:
            from leanformer.infer import rope_layout

            rope_c, heads_c = self.rope_heads, self.to_heads

            def rope_fast(x, cos, sin):
                return rope_layout.rope_heads_triton(x, cos, sin) if rope_layout.supported(x) else rope_c(x, cos, sin)

            def heads_fast(x):
                return rope_layout.rope_heads_triton(x) if rope_layout.supported(x) else heads_c(x)

            self.rope_heads, self.to_heads = rope_fast, heads_fast


QKV, GATE_UP = "_leanformer_qkv", "_leanformer_gate_up"  # the packed matrices, kept on the attention / MLP module


def _pointers(mods) -> tuple:
    return tuple((m.weight.data_ptr(), 0 if m.bias is None else m.bias.data_ptr()) for m in mods)


def _pack(mods) -> tuple | None:
    """One weight matrix (and bias) holding ``mods``' rows one after another, each module's parameters made views
    of it, so the model keeps its memory and computes what it did: ``(weight, bias, sizes, pointers)``, the last the
    views' addresses. ``None`` where the modules are not plain ``nn.Linear`` of one dtype and device with all or no
    biases."""
    ws = [m.weight for m in mods]
    if (any(type(m) is not nn.Linear for m in mods) or len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1
            or len({m.bias is None for m in mods}) != 1):
        return None
    sizes = [w.shape[0] for w in ws]
    with torch.no_grad():
        weight = torch.cat([w.detach() for w in ws])
        bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
        start = 0
        for m, n in zip(mods, sizes):
            m.weight = nn.Parameter(weight[start:start + n], requires_grad=m.weight.requires_grad)
            if bias is not None:
                m.bias = nn.Parameter(bias[start:start + n], requires_grad=m.bias.requires_grad)
            start += n
    return weight, bias, sizes, _pointers(mods)


def _packed(mods, owner, name: str) -> tuple | None:
    """``owner``'s packed matrices (attribute ``name``) if ``mods``' parameters are still the views :func:`_pack`
    made (the same addresses: the packed matrices hold that memory, so no other tensor can take it); where they are
    not (the model was moved or converted, or its weights replaced since), the stale copy is dropped. A comparison of
    integers: it runs for every layer of every forward."""
    packed = getattr(owner, name, None)
    if packed is not None and _pointers(mods) != packed[3]:
        setattr(owner, name, None)
        return None
    return packed


def pack_projections(model) -> int:
    """Pack each layer's q / k / v projections into one weight matrix, and the MLP's gate and up projections into
    another, in place: the modules' weights become views of the packed matrices (no memory added; the model's own
    forward is unchanged), and :class:`DecoderStack` then runs one matrix product where there were three (q / k / v)
    and, in decode steps, one where there were two (gate / up; a prompt runs them apart, :meth:`DecoderStack._mlp`).
    At batch 1 a decode step's matrix products are reads of the weights, and small ones (a GQA model's k and v: 3.7 MB
    each at Qwen2.5-7B's shape) run far under the memory bandwidth. Returns the number of layers packed
    (idempotent: packed layers are left as they are; a model moved or converted since is packed again). Saving the
    model afterwards sees parameters that share memory: save a copy, or load it again."""
    n = 0
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        qkv = (a.q_proj, a.k_proj, a.v_proj)
        gu = (m.gate_proj, m.up_proj)
        if _packed(qkv, a, QKV) is None:
            setattr(a, QKV, _pack(qkv))
        if _packed(gu, m, GATE_UP) is None:
            setattr(m, GATE_UP, _pack(gu))
        n += getattr(a, QKV) is not None and getattr(m, GATE_UP) is not None
    return n


def _sliding_window(config) -> int | None:
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None:
        return window if any(t == "sliding_attention" for t in types) else None
    return window if config.model_type == "mistral" else None


class DecoderStack:
    """The modules of a Hugging Face Llama-family causal LM, run one layer at a time.

    ``forward(ids [B, T], positions [B, T], attend, logits_at)``: ``attend(layer, q, k, v)`` gets ``q [B, H_q, T, D]``
    and ``k, v [B, H_kv, T, D]`` (contiguous, rotary applied) and returns ``[B, H_q, T, D]``; ``logits_at`` picks
    the hidden positions that reach the LM head (``slice(-1, None)`` at prefill, or one index per row ``[B]``: then
    ``T' = 1``). Returns fp32 logits
    ``[B, T', V]``."""

    def __init__(self, model, fused: Fused | None = None):
        config = getattr(model, "config", None)
        kind = getattr(config, "model_type", None)
        if kind not in SUPPORTED or not hasattr(model, "model") or not hasattr(model, "lm_head"):
            raise UserError(f"the inference engine runs Llama-family causal LMs ({', '.join(SUPPORTED)}); got "
                            f"{type(model).__name__} (model_type {kind!r})")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise UserError(f"the inference engine's MLP is SiLU x up; model has hidden_act {act!r}")
        self.model, self.config = model, config
        self.inner = model.model
        self.layers = list(self.inner.layers[: config.num_hidden_layers])
        self.n_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.scale = self.layers[0].self_attn.scaling
        self.eps = config.rms_norm_eps
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.sliding_window = _sliding_window(config)
        self.fused = fused or Fused(False)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take in a dense cache, all layers."""
        return 2 * self.n_layers * self.kv_heads * self.head_dim * self.dtype.itemsize

    def _proj(self, layer, x):
        """q, k, v projections of ``x [B, T, d]`` as ``[B, T, H, D]`` views (Qwen3's per-head norms applied): one
        matrix product where :func:`pack_projections` packed them."""
        a = layer.self_attn
        b, t, _ = x.shape
        packed = _packed((a.q_proj, a.k_proj, a.v_proj), a, QKV)
        if packed is not None:
            weight, bias, sizes, _ = packed
            q, k, v = (y.view(b, t, -1, self.head_dim) for y in F.linear(x, weight, bias).split(sizes, -1))
        else:
            q = a.q_proj(x).view(b, t, -1, self.head_dim)
            k = a.k_proj(x).view(b, t, -1, self.head_dim)
            v = a.v_proj(x).view(b, t, -1, self.head_dim)
        if hasattr(a, "q_norm"):  # Qwen3: RMSNorm over each head's channels before rotary
            q = self.fused.rms_norm(q, a.q_norm.weight, a.q_norm.variance_epsilon)
            k = self.fused.rms_norm(k, a.k_norm.weight, a.k_norm.variance_epsilon)
        return q, k, v

    # The two blocks are functions so that their intermediates (q / k / v, the MLP's [B, T, d_ff] gate and up) are
    # freed on return: held in the layer loop's variables, one layer's stayed alive through the next layer's matrix
    # products, about one [B, T, d_ff] tensor more at the prefill's peak (43.6 against 38.8 GB at 128K tokens of
    # Qwen2.5-7B's shape, one H100; tests/infer/test_no_quadratic.py watches it on the CPU).
    def _attention(self, i, layer, x, cos, sin, attend, step) -> torch.Tensor:
        f = self.fused
        b, t, _ = x.shape
        q, k, v = self._proj(layer, x)
        if step is not None:
            y = step(i, q[:, 0], k[:, 0], v[:, 0], cos[:, 0], sin[:, 0]).reshape(b, t, -1)
        else:
            y = attend(i, f.rope_heads(q, cos, sin), f.rope_heads(k, cos, sin), f.to_heads(v))  # (B, Hq, T, D)
            y = y.transpose(1, 2).reshape(b, t, -1)
        return layer.self_attn.o_proj(y)

    def _mlp(self, layer, x) -> torch.Tensor:
        """The MLP. Its packed gate/up matrix serves decode steps (``T == 1``: one read of the weights where there
        were two); a prompt takes the two products apart, so that SiLU x up reads contiguous tensors: on the halves
        of the packed product the compiled kernel ran 1.5x slower (279 against 187 ms of a 128K-token prefill of
        Qwen2.5-7B's shape, against ~17 ms the packed product saves; one H100,
        ``benchmarks/results/profile_inference-20261206T204411Z.json`` and ``-20261206T204454Z.json``)."""
        m = layer.mlp
        packed = _packed((m.gate_proj, m.up_proj), m, GATE_UP) if x.shape[1] == 1 else None
        if packed is not None:
            gate, up = F.linear(x, packed[0], packed[1]).split(packed[2], -1)
        else:
            gate, up = m.gate_proj(x), m.up_proj(x)
        return m.down_proj(self.fused.silu_mul(gate, up))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, attend=None, logits_at=slice(None),
                step=None) -> torch.Tensor:
        """Prefill form: ``attend(layer, q, k, v)`` takes rotated contiguous ``[B, H, T, D]`` tensors and returns
        ``[B, H_q, T, D]``. Decode form (``T == 1``): ``step(layer, q, k, v, cos, sin)`` takes the new token's raw
        projections ``[B, H, D]`` and ``cos, sin [B, D]`` (rotary, cache writes and attention are its own) and
        returns ``[B, H_q, D]``."""
        f = self.fused
        h = self.inner.embed_tokens(ids)  # (B, T, d)
        cos, sin = self.inner.rotary_emb(h, positions)  # (B, T, D)
        x = f.rms_norm(h, self.layers[0].input_layernorm.weight, self.eps)
        for i, layer in enumerate(self.layers):
            y = self._attention(i, layer, x, cos, sin, attend, step)
            x, h = f.add_rms_norm(y, h, layer.post_attention_layernorm.weight, self.eps)
            y = self._mlp(layer, x)
            if i + 1 < len(self.layers):
                x, h = f.add_rms_norm(y, h, self.layers[i + 1].input_layernorm.weight, self.eps)
        # the final norm and the LM head only where logits are asked for (the last position at prefill; a
        # position per row, ``[B]``, for right-padded rows)
        at = (torch.arange(h.shape[0], device=h.device), logits_at) if torch.is_tensor(logits_at) else \
            (slice(None), logits_at)
        x = f.rms_norm((h[at] + y[at]).view(h.shape[0], -1, h.shape[-1]), self.inner.norm.weight, self.eps)
        return self.model.lm_head(x).float()
