"""The start of a decode step's attention in one launch: rotary on the new query and key, the key and value
written into the static cache, the lengths advanced — a Triton kernel and a plain-PyTorch reference with the same
signature.

``rope_append(q, k, v, cos, sin, kc, vc, lens, slot=None, starts=None, cap=None)``:

* ``q [B, H_q, D]``, ``k, v [B, H_kv, D]`` (the new token's projections, any strides with a unit last one),
  ``cos, sin [B, D]`` (Hugging Face's rotate-half convention);
* cache ``kc, vc [B, H_kv, C, D]`` (or a pool ``[B, 1, C, D]`` with ``starts [B, H_kv]``), ``lens [B, H_kv]`` int32;
* the new key/value go to slot ``slot [B, H_kv]`` (default: ``lens``), then ``lens`` becomes ``lens + 1``
  (``min(lens + 1, cap)`` with ``cap [B, 1]`` contiguous int32: a ring that stops growing);
* ``meta = (kmin, kmax, page)``: Quest's page summaries ``[B, H_kv, C / page, D]`` — the page the key lands in
  takes it into its element-wise min/max (a page's first key resets them).

Returns the rotated query ``[B, H_q, D]``. Six launches in eager PyTorch (two rotaries, a layout copy, two scatters,
the increment) become one: at batch 1 a decode step is a few hundred small kernels, and their count is its cost.
"""

from __future__ import annotations

import torch

from leanformer.nn.rotary import rotate_half
from leanformer.sparse.kernels.tile_attention import need_triton, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _rope_append(Q, K, V, COS, SIN, KC, VC, LENS, SLOT, STARTS, CAP, KMIN, KMAX, QO, sqb, sqh, skb, skh, svb,
                     svh, scb, skcb, skch, skct, svcb, svch, svct, slb, smb, smh, smp, HQ, HK,
                     HAS_SLOT: tl.constexpr, HAS_START: tl.constexpr, HAS_CAP: tl.constexpr, PAGE: tl.constexpr,
                     HALF: tl.constexpr):
        """Program ``(b, h)``: ``h < HQ`` rotates query head ``h``; ``h >= HQ`` rotates key head ``h - HQ``, writes
        it and its value into the cache and advances that head's length. ``PAGE > 0``: the element-wise min/max key
        of the page the key lands in is updated too (reset by a page's first key)."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        o = tl.arange(0, HALF)
        c1 = tl.load(COS + b * scb + o).to(tl.float32)
        c2 = tl.load(COS + b * scb + HALF + o).to(tl.float32)
        s1 = tl.load(SIN + b * scb + o).to(tl.float32)
        s2 = tl.load(SIN + b * scb + HALF + o).to(tl.float32)
        if h < HQ:
            base = Q + b * sqb + h * sqh
            x1 = tl.load(base + o).to(tl.float32)
            x2 = tl.load(base + HALF + o).to(tl.float32)
            out = QO + (b * HQ + h) * (2 * HALF)
            tl.store(out + o, (x1 * c1 - x2 * s1).to(QO.dtype.element_ty))
            tl.store(out + HALF + o, (x2 * c2 + x1 * s2).to(QO.dtype.element_ty))
        else:
            kh = h - HQ
            base = K + b * skb + kh * skh
            x1 = tl.load(base + o).to(tl.float32)
            x2 = tl.load(base + HALF + o).to(tl.float32)
            length = tl.load(LENS + b * slb + kh)
            if HAS_SLOT:
                slot = tl.load(SLOT + b * slb + kh)
            else:
                slot = length
            if HAS_START:
                slot += tl.load(STARTS + b * slb + kh)
                head = 0
            else:
                head = kh
            kdst = KC + b * skcb + head * skch + slot.to(tl.int64) * skct
            y1 = (x1 * c1 - x2 * s1).to(KC.dtype.element_ty)
            y2 = (x2 * c2 + x1 * s2).to(KC.dtype.element_ty)
            tl.store(kdst + o, y1)
            tl.store(kdst + HALF + o, y2)
            if PAGE > 0:
                first = slot % PAGE == 0
                meta = b * smb + kh * smh + (slot // PAGE).to(tl.int64) * smp
                lo1 = tl.load(KMIN + meta + o)
                lo2 = tl.load(KMIN + meta + HALF + o)
                hi1 = tl.load(KMAX + meta + o)
                hi2 = tl.load(KMAX + meta + HALF + o)
                tl.store(KMIN + meta + o, tl.where(first, y1, tl.minimum(lo1, y1)))
                tl.store(KMIN + meta + HALF + o, tl.where(first, y2, tl.minimum(lo2, y2)))
                tl.store(KMAX + meta + o, tl.where(first, y1, tl.maximum(hi1, y1)))
                tl.store(KMAX + meta + HALF + o, tl.where(first, y2, tl.maximum(hi2, y2)))
            vsrc = V + b * svb + kh * svh
            vdst = VC + b * svcb + head * svch + slot.to(tl.int64) * svct
            tl.store(vdst + o, tl.load(vsrc + o))
            tl.store(vdst + HALF + o, tl.load(vsrc + HALF + o))
            new = length + 1
            if HAS_CAP:
                new = tl.minimum(new, tl.load(CAP + b))
            tl.store(LENS + b * slb + kh, new)


def rope_append_reference(q, k, v, cos, sin, kc, vc, lens, slot=None, starts=None, cap=None, meta=None):
    """The same in PyTorch ops (rotary in the input dtype, as Hugging Face computes it)."""
    b, hk, d = k.shape
    q_rot = q * cos[:, None] + rotate_half(q) * sin[:, None]
    k_rot = k * cos[:, None] + rotate_half(k) * sin[:, None]
    at = lens if slot is None else slot
    if meta is not None:
        kmin, kmax, page = meta
        ix = torch.div(at.long(), page, rounding_mode="floor")[..., None, None].expand(b, hk, 1, d)
        first = (at % page == 0)[..., None, None]
        new = k_rot.to(kmin.dtype)[:, :, None]
        kmin.scatter_(2, ix, torch.where(first, new, torch.minimum(torch.gather(kmin, 2, ix), new)))
        kmax.scatter_(2, ix, torch.where(first, new, torch.maximum(torch.gather(kmax, 2, ix), new)))
    if starts is not None:
        ix = (starts + at).long().reshape(b, hk, 1).expand(b, hk, d)
        kc[:, 0].scatter_(1, ix, k_rot.to(kc.dtype))
        vc[:, 0].scatter_(1, ix, v.to(vc.dtype))
    else:
        ix = at.long()[..., None, None].expand(b, hk, 1, d)
        kc.scatter_(2, ix, k_rot.to(kc.dtype)[:, :, None])
        vc.scatter_(2, ix, v.to(vc.dtype)[:, :, None])
    lens.copy_(lens + 1 if cap is None else torch.minimum(lens + 1, cap))
    return q_rot.contiguous()


def rope_append_triton(q, k, v, cos, sin, kc, vc, lens, slot=None, starts=None, cap=None, meta=None):
    need_triton(q, "rope_append_triton", "rope_append_reference")
    b, hq, d = q.shape
    hk = k.shape[1]
    if d % 2 or d & (d - 1) or lens.stride(1) != 1 or cos.stride(-1) != 1 or cos.stride() != sin.stride():
        raise ValueError("rope_append_triton takes a power-of-two head dim, contiguous lens and matching cos/sin")
    out = torch.empty(b, hq, d, device=q.device, dtype=q.dtype)
    kmin, kmax, page = meta if meta is not None else (kc, kc, 0)
    _rope_append[(b, hq + hk)](
        q, k, v, cos, sin, kc, vc, lens, lens if slot is None else slot.contiguous(),
        lens if starts is None else starts, lens if cap is None else cap.contiguous(), kmin, kmax, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2), lens.stride(0),
        kmin.stride(0), kmin.stride(1), kmin.stride(2), hq, hk, HAS_SLOT=slot is not None,
        HAS_START=starts is not None, HAS_CAP=cap is not None, PAGE=page, HALF=d // 2, num_warps=1)
    return out


def rope_append(q, k, v, cos, sin, kc, vc, lens, slot=None, starts=None, cap=None, meta=None, impl: str = "auto"):
    """``impl``: ``"triton"``, ``"reference"``, or ``"auto"`` (Triton on CUDA, else the reference)."""
    if impl == "auto":
        impl = "triton" if (q.is_cuda and triton is not None) else "reference"
    fn = rope_append_triton if impl == "triton" else rope_append_reference
    return fn(q, k, v, cos, sin, kc, vc, lens, slot, starts, cap, meta)
