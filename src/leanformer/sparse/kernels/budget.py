"""FlexPrefill's budget split across heads (water-filling): a plain-PyTorch reference (``water_fill_reference``)
and one Triton launch (``water_fill_triton``), same signature; ``water_fill`` picks the launch on CUDA tensors.

Semantics (both): needs ``[B, H]`` (clamped to at least 1) and totals ``[B]`` -> fp64 budgets ``min(cap, lam *
need)`` per head whose sum per row is the row's total, or ``cap`` for every head where the total reaches ``H *
cap`` (or no ``lam`` fits). With the heads sorted by need, capping the ``j`` neediest fixes ``lam = (total - j cap)
/ (the others' need)``, and the right ``j`` is the first whose ``lam`` caps exactly those ``j``.

The reference sorts and takes a suffix sum (a dozen small launches, each a few microseconds of GPU time in a CUDA
graph). The kernel holds one row per program and needs no sort: a head's place in the descending order is the count
of heads ahead of it (larger need, or equal need and a lower index), so every candidate ``j``'s remaining need is a
masked sum over an ``[H, H]`` tile in registers. Sums are fp64 in a different order than the reference's running
sum: budgets agree to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.sparse.kernels.tile_attention import need_triton, on_gpu, triton

MAX_HEADS = 128  # heads a row may have for the launch: the [H, H] tile sits in registers


def water_fill_reference(need: torch.Tensor, total: torch.Tensor, cap: float) -> torch.Tensor:
    """The reference: the heads sorted by need, the suffix sums of the sorted needs, the first consistent ``j``."""
    need = need.double().clamp_min(1.0)
    total = total.double()
    h = need.shape[-1]
    srt = torch.sort(need, -1, descending=True).values
    rest = srt.flip(-1).cumsum(-1).flip(-1)  # rest[j]: the need of heads j.. (sorted)
    j = torch.arange(h, device=need.device, dtype=torch.float64)  # fp64: j * cap exact (an int64 j gives fp32)
    lam = (total[:, None] - j * cap) / rest
    capped_ok = (j == 0) | (lam * F.pad(srt, (1, 0))[..., :-1] >= cap)
    valid = capped_ok & (lam * srt <= cap) & (lam >= 0)
    lam_star = torch.gather(lam, -1, valid.int().argmax(-1, keepdim=True))
    out = (need * lam_star).clamp(max=cap)
    return torch.where((valid.any(-1) & (total < h * cap))[:, None], out, cap)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _water_fill_fwd(NEED, TOTAL, OUT, H, cap_hi, cap_lo, HP: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        # float arguments arrive as fp32: the cap comes in two parts
        cap = tl.cast(cap_hi, tl.float64) + tl.cast(cap_lo, tl.float64)
        offs = tl.arange(0, HP)
        real = offs < H
        need = tl.maximum(tl.load(NEED + row * H + offs, mask=real, other=1.0).to(tl.float64), 1.0)
        total = tl.load(TOTAL + row).to(tl.float64)
        # rank[i]: heads ahead of head i in a stable descending sort (padding never ahead of a real head)
        ni, nk = need[:, None], need[None, :]
        ahead = ((nk > ni) | ((nk == ni) & (offs[None, :] < offs[:, None]))) & real[None, :]
        rank = tl.sum(ahead.to(tl.int32), 1)  # [HP] over i
        # candidate j (rows) against head i (columns): the sorted need at j - 1 and j, and the need from j on
        at = rank[None, :] == offs[:, None]
        before = rank[None, :] == offs[:, None] - 1
        mine = real[None, :]
        rest = tl.sum(tl.where((rank[None, :] >= offs[:, None]) & mine, nk, 0.0), 1)
        cur = tl.sum(tl.where(at & mine, nk, 0.0), 1)
        prev = tl.sum(tl.where(before & mine, nk, 0.0), 1)
        j = offs.to(tl.float64)
        lam = (total - j * cap) / tl.where(real, rest, 1.0)
        valid = real & ((offs == 0) | (lam * prev >= cap)) & (lam * cur <= cap) & (lam >= 0)
        first = tl.min(tl.where(valid, offs, HP), 0)
        lam_star = tl.sum(tl.where(offs == first, lam, 0.0), 0)
        fill = (first < HP) & (total < tl.cast(H, tl.float64) * cap)
        out = tl.where(fill, tl.minimum(need * lam_star, cap), cap)
        tl.store(OUT + row * H + offs, out, mask=real)


def water_fill_triton(need: torch.Tensor, total: torch.Tensor, cap: float) -> torch.Tensor:
    """The same budgets in one launch, one program per row (rows of up to :data:`MAX_HEADS` heads)."""
    need_triton(need, "water_fill_triton", "water_fill_reference")
    b, h = need.shape
    if h > MAX_HEADS:
        raise ValueError(f"rows of {h} heads are more than the kernel's {MAX_HEADS}; use water_fill_reference")
    need = need.double().contiguous()
    total = total.double().contiguous()
    out = torch.empty(b, h, dtype=torch.float64, device=need.device)
    if b and h:
        hp = max(16, 1 << (h - 1).bit_length())
        hi = float(torch.tensor(cap, dtype=torch.float32))  # exact for whole-number caps below 2**47
        _water_fill_fwd[(b,)](need, total, out, h, hi, float(cap) - hi, HP=hp, num_warps=4 if hp <= 64 else 8)
    return out


def water_fill(need: torch.Tensor, total: torch.Tensor, cap: float, impl: str = "auto") -> torch.Tensor:
    """:func:`water_fill_triton` on CUDA tensors (rows up to :data:`MAX_HEADS` heads), else
    :func:`water_fill_reference`; ``impl="reference"`` (the calling method's): the reference on any device."""
    if impl != "reference" and on_gpu(need) and need.shape[-1] <= MAX_HEADS:
        return water_fill_triton(need, total, cap)
    return water_fill_reference(need, total, cap)
