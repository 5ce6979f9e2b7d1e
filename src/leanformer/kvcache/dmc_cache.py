"""The DMC inference cache of one layer: paged, one variable-length slot list per (sequence, key/value head).

Dynamic Memory Compression (Nawrot et al., 2024) lets every head decide per token whether to append a slot or merge
the token into its last slot, so heads grow at different rates. Slots live in a pool of fixed-size pages
(``[N, P, D]`` keys and values); each head owns a list of page ids (``page_table [B, H, M]``) and a length
(``lengths [B, H]``), and the unnormalised sums of its last slot (``acc_k, acc_v [B, H, D]``, ``acc_w [B, H]``, fp32)
so that further merges stay exact. Memory is the pool, not ``B * H * max_len``: size it with ``n_pages`` for the
compression ratio you expect (:meth:`DMCCache.pages_for`); an exhausted pool is reported by :meth:`check`.

* :meth:`prefill` writes a whole prompt at once from the parallel (evaluation-mode) forward's partial states, with
  no per-token loop (the reference release prefills one token at a time);
* :meth:`update` appends or merges one token per head (Triton kernel on GPU, PyTorch reference elsewhere);
* :meth:`attend` runs one query token per head over the ragged caches.

Layouts: ``k, v [B, H, D]`` per step, ``q [B, H_q, D]`` (``H_q`` a multiple of ``H``).
"""

from __future__ import annotations

import math

import torch

from leanformer.errors import ConfigError
from leanformer.kvcache import dmc_kernels as K

IMPLS = ("auto", "triton", "reference")


class DMCCache:
    """Paged per-head variable-length cache of one layer (see the module docstring).

    ``max_len``: most tokens a head may hold (fixes the page-table width ``M = ceil(max_len / page_size)``);
    ``n_pages``: pool size (default: every head full, ``B * H * M``); ``window``: largest merge group (12 as in the
    paper); ``impl``: ``"auto"`` (Triton on CUDA when installed, else reference), ``"triton"`` or ``"reference"``;
    ``decode_block``: slots per tile of the Triton decode (``None``: autotuned on CUDA). Pages as small as 16 slots
    waste at most 15 slots per head and cost the decode nothing: its tiles span several pages.
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, max_len: int, *, page_size: int = 64,
                 n_pages: int | None = None, window: int = 12, dtype=torch.float32, device=None,
                 impl: str = "auto", decode_block: int | None = None):
        if impl not in IMPLS:
            raise ConfigError(f"DMC cache impl {impl!r} is not allowed; choose one of {', '.join(IMPLS)}")
        if page_size < 16 or page_size & (page_size - 1):
            raise ConfigError(f"DMC cache page_size={page_size} must be a power of two >= 16")
        m = math.ceil(max_len / page_size)
        n_pages = n_pages if n_pages is not None else batch * n_kv_heads * m
        z = dict(device=device)
        self.k_pages = torch.zeros(n_pages, page_size, head_dim, dtype=dtype, **z)
        self.v_pages = torch.zeros_like(self.k_pages)
        self.page_table = torch.zeros(batch, n_kv_heads, m, dtype=torch.int32, **z)
        self.lengths = torch.zeros(batch, n_kv_heads, dtype=torch.int32, **z)
        self.run = torch.zeros_like(self.lengths)
        self.acc_k = torch.zeros(batch, n_kv_heads, head_dim, dtype=torch.float32, **z)
        self.acc_v = torch.zeros_like(self.acc_k)
        self.acc_w = torch.zeros(batch, n_kv_heads, dtype=torch.float32, **z)
        self.next_page = torch.zeros(1, dtype=torch.int32, **z)
        self.window, self.page_size, self.max_len = window, page_size, m * page_size
        self.decode_block = decode_block
        use_triton = impl == "triton" or (impl == "auto" and K.triton is not None and self.k_pages.is_cuda)
        self.impl = "triton" if use_triton else "reference"

    @staticmethod
    def pages_for(batch: int, n_kv_heads: int, tokens: int, compression: float, page_size: int) -> int:
        """Pool size that holds ``tokens`` per head at compression ratio ``compression`` (+1 page per head)."""
        return batch * n_kv_heads * (math.ceil(tokens / compression / page_size) + 1)

    def _state(self):
        return (self.k_pages, self.v_pages, self.page_table, self.lengths, self.run, self.acc_k, self.acc_v,
                self.acc_w, self.next_page)

    def update(self, k: torch.Tensor, v: torch.Tensor, alpha_logit: torch.Tensor, omega: torch.Tensor):
        """Append or merge ``k, v [B, H, D]`` per head (merge iff ``alpha_logit > 0`` and the last slot holds
        fewer than ``window`` tokens); returns ``merged [B, H]`` bool. No host synchronisation."""
        fn = K.dmc_update_triton if self.impl == "triton" else K.dmc_update_reference
        return fn(*self._state(), k, v, alpha_logit, omega, self.window)

    def attend(self, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Attention of ``q [B, H_q, D]`` over each head's slots; returns ``[B, H_q, D]``."""
        if self.impl == "triton":
            return K.paged_decode_triton(q, self.k_pages, self.v_pages, self.page_table, self.lengths, scale,
                                         block_n=self.decode_block)
        return K.paged_decode_reference(q, self.k_pages, self.v_pages, self.page_table, self.lengths, scale)

    @torch.no_grad()
    def prefill(self, k_state, v_state, k_sum, v_sum, w_sum, merge: torch.Tensor) -> None:
        """Write a prompt into an empty cache in one pass.

        ``k_state, v_state [B, H, T, D]``: partial states of the parallel forward; ``k_sum, v_sum [B, H, T, D]``,
        ``w_sum [B, H, T]``: their unnormalised sums; ``merge [B, H, T]`` bool: the (capped) hard decisions. A
        state is a finished slot when the next token does not merge into it; the last token's state is the open
        slot, whose sums are kept for later merges.
        """
        if int(self.next_page) != 0:
            raise RuntimeError("DMCCache.prefill needs an empty cache (decode further tokens with update)")
        b, h, t, _ = k_state.shape
        keep = torch.ones_like(merge)
        keep[..., :-1] = ~merge[..., 1:]
        lengths = keep.sum(-1)
        if int(lengths.max()) > self.max_len:
            raise ValueError(f"prompt needs {int(lengths.max())} slots per head; the cache holds {self.max_len}")
        npages = (lengths + self.page_size - 1) // self.page_size
        start = npages.flatten().cumsum(0) - npages.flatten()
        col = torch.arange(self.page_table.shape[-1], device=merge.device)
        table = (start.view(b, h, 1) + col).to(torch.int32)
        self.page_table.copy_(torch.where(col < npages[..., None], table, 0))
        self.next_page.fill_(int(npages.sum()))
        self.check()
        bi, hi, ti = keep.nonzero(as_tuple=True)
        slot = (keep.cumsum(-1) - 1)[bi, hi, ti]
        pg = self.page_table[bi, hi, slot // self.page_size].long()
        self.k_pages[pg, slot % self.page_size] = k_state[bi, hi, ti].to(self.k_pages.dtype)
        self.v_pages[pg, slot % self.page_size] = v_state[bi, hi, ti].to(self.v_pages.dtype)
        self.lengths.copy_(lengths)
        pos = torch.arange(t, device=merge.device)
        last_append = torch.where(merge, -1, pos).amax(-1)
        self.run.copy_(t - last_append)
        self.acc_k.copy_(k_sum[..., -1, :])
        self.acc_v.copy_(v_sum[..., -1, :])
        self.acc_w.copy_(w_sum[..., -1])

    def check(self) -> None:
        """Raise if the page pool or a page table overflowed (synchronises with the device)."""
        used, n = int(self.next_page), self.k_pages.shape[0]
        if used > n:
            raise RuntimeError(f"DMC cache page pool exhausted: {used} pages needed, {n} allocated; "
                               "give a larger n_pages")
        if int(self.lengths.max()) > self.max_len:
            raise RuntimeError(f"a DMC cache head exceeded max_len={self.max_len} slots")

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k, v [B, H, L, D], lengths [B, H])`` with ``L`` the longest head, padded with zeros (tests, debugging)."""
        b, h, _ = self.page_table.shape
        n = max(1, math.ceil(int(self.lengths.max()) / self.page_size))
        pt = self.page_table[..., :n].long()
        d = self.k_pages.shape[-1]
        mask = (torch.arange(n * self.page_size, device=pt.device) < self.lengths[..., None])[..., None]
        k = self.k_pages[pt].reshape(b, h, -1, d) * mask
        v = self.v_pages[pt].reshape(b, h, -1, d) * mask
        return k, v, self.lengths.clone()

    def memory_bytes(self) -> int:
        """Bytes held by the page pool (keys + values)."""
        return 2 * self.k_pages.numel() * self.k_pages.element_size()
