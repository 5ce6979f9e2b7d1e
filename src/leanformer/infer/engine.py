"""The inference loop behind ``leanformer speed`` and the sweep: sparse prefill, then decode steps over a static
cache that the decode method owns, each step one CUDA graph on a GPU.

A Hugging Face Llama-family model's weights and layers are used as they are (:class:`~.layers.DecoderStack`);
what the engine replaces is ``generate``'s per-step Python and cache bookkeeping:

* **Prefill**, rows in groups up to a token budget (``prefill_tokens``): a group's prompts are right-padded to its
  longest, so its projections and MLPs run as one batch; its attention runs on each row's own tokens — dense as
  one causal call (the padding comes after every real token, so no real query sees it), a sparse method once per
  prompt length (rows of one length in one call) — so each row's pattern, cache and measured sparsity equal its
  own prefill's (no mask, nothing of size ``T x T``). The decode method's cache policy (:mod:`~.cache`) then
  stores what it keeps of each row's keys and values — SnapKV's cache is its budget from the first layer on. Only
  each row's last position reaches the LM head. A prompt longer than the budget runs alone.
* **Decode**, all rows together: a step embeds each row's last token at its own position, appends its key/value
  to every layer's cache and attends through the policy (:func:`~.kernels.cache_decode`: lengths read on the
  device), and writes the greedy next token in place. On CUDA the step is captured once and replayed.

``Engine(model, prefill=..., decode=..., sparsity=...)`` takes the arguments of :func:`leanformer.sparse.apply`.
``engine.generate(prompts, max_new_tokens)`` returns each row's greedy tokens; :class:`Batch` exposes the steps
for timing.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from leanformer.errors import UserError
from leanformer.infer.cache import policy_for
from leanformer.infer.layers import DecoderStack, Fused
from leanformer.sparse.base import check_sparsity
from leanformer.sparse.hf import split_params
from leanformer.sparse.registry import build_decode, build_prefill


class Engine:
    """Greedy generation over a Hugging Face Llama-family causal LM with sparse prefill / decode methods.

    ``compile``: fuse the elementwise steps with ``torch.compile`` (``"auto"``: on CUDA). ``cuda_graph``: capture a
    decode step once and replay it (``"auto"``: on CUDA). ``dense_backend``: dense prefill's SDPA kernel
    (``"auto"``: cuDNN where it runs, else PyTorch's choice). ``pack_projections``: pack the model's q/k/v and
    gate/up projections into one matrix each, in place (:func:`leanformer.infer.layers.pack_projections`; fewer,
    larger matrix products: a batch-1 decode step reads the weights faster); a model packed before is used packed
    either way. ``prefill_tokens``: :meth:`generate` prefills rows together while the group's padded tokens stay
    within it (``None``: as many as keep one ``[tokens, d_ff]`` activation within 1 GiB; 1: each row alone)."""

    def __init__(self, model, prefill=None, decode=None, sparsity: float | None = 0.0, *, prefill_sparsity=...,
                 decode_sparsity=..., prefill_params: dict | None = None, decode_params: dict | None = None,
                 compile="auto", cuda_graph="auto", dense_backend: str = "auto", pack_projections: bool = False,
                 prefill_tokens: int | None = None, **params):
        cuda = next(model.parameters()).is_cuda
        if pack_projections:
            from leanformer.infer.layers import pack_projections as pack

            pack(model)
        self.stack = DecoderStack(model, Fused(cuda if compile == "auto" else bool(compile)))
        pre_p, dec_p = split_params(prefill, decode, params)
        pre_p.update(prefill_params or {})
        dec_p.update(decode_params or {})
        self.prefill_sparsity = check_sparsity(sparsity if prefill_sparsity is ... else prefill_sparsity)
        self.decode_sparsity = check_sparsity(sparsity if decode_sparsity is ... else decode_sparsity)
        # a dense method (by name or instance) is the engine's own dense path; building it still checks its params
        pre = None if prefill is None else build_prefill(prefill, **pre_p)
        dec = None if decode is None else build_decode(decode, **dec_p)
        self.prefill_method = None if pre is None or pre.name == "dense" else pre
        if self.prefill_method is not None:
            self.prefill_method.check_layers(self.stack.n_layers)
        self.decode_method = None if dec is None or dec.name == "dense" else dec
        self.policy = policy_for(self.decode_method, self.decode_sparsity)
        self.cuda_graph = cuda if cuda_graph == "auto" else bool(cuda_graph)
        if self.cuda_graph and not cuda:
            raise UserError("cuda_graph=True needs the model on a CUDA device")
        self.dense_backend = dense_backend
        if prefill_tokens is not None and (not isinstance(prefill_tokens, int) or prefill_tokens < 1):
            raise UserError(f"prefill_tokens={prefill_tokens!r} must be a positive integer (or None: from the "
                            "model's MLP width)")
        d_ff = getattr(self.stack.config, "intermediate_size", None) or 4 * self.stack.config.hidden_size
        self.prefill_tokens = prefill_tokens or max(1, 2**30 // (d_ff * self.stack.dtype.itemsize))

    # ---- dense prefill attention ------------------------------------------------------------------------------

    def _dense(self, q, k, v, scale):
        """Causal attention, ``[B, H, T, D]``: cuDNN on a GPU where it takes the shapes, else PyTorch's choice."""
        gqa = q.shape[1] != k.shape[1]
        if q.is_cuda and self.dense_backend in ("auto", "cudnn"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            try:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    if gqa:  # cuDNN's SDPA takes equal head counts
                        g = q.shape[1] // k.shape[1]
                        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            except RuntimeError:
                if self.dense_backend == "cudnn":
                    raise
                self.dense_backend = "sdpa"  # not on this GPU / build: remember, and take PyTorch's choice
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)

    # ---- batches ----------------------------------------------------------------------------------------------

    def check_lengths(self, prompt_lens: list[int], new_tokens: int):
        """Refuse, before any work, prompts the model cannot run: longer than its position limit (generated tokens
        may run past it, with a warning) or than a sliding window it has."""
        s = self.stack
        longest = max(prompt_lens) + new_tokens
        if min(prompt_lens) < 1:
            raise UserError("every prompt needs at least one token")
        if s.max_positions and max(prompt_lens) > s.max_positions:
            raise UserError(f"prompt length {max(prompt_lens)} exceeds the model's position limit "
                            f"max_position_embeddings={s.max_positions}")
        if s.max_positions and longest > s.max_positions:
            warnings.warn(f"generating {new_tokens} tokens after a {max(prompt_lens)}-token prompt runs past the "
                          f"model's position limit ({s.max_positions})", stacklevel=2)
        if s.sliding_window and longest > s.sliding_window:
            raise UserError(f"length {longest} exceeds the model's sliding window ({s.sliding_window}); the engine "
                            "runs full attention only")

    def batch(self, prompt_lens: list[int], new_tokens: int) -> Batch:
        self.check_lengths(prompt_lens, new_tokens)
        return Batch(self, prompt_lens, new_tokens)

    def prefill_groups(self, prompt_lens: list[int]) -> list[list[int]]:
        """Consecutive rows whose count times longest prompt stays within ``prefill_tokens`` (a longer prompt
        alone)."""
        groups, longest = [], 0
        for r, t in enumerate(prompt_lens):
            if groups and (len(groups[-1]) + 1) * max(longest, t) <= self.prefill_tokens:
                groups[-1].append(r)
                longest = max(longest, t)
            else:
                groups.append([r])
                longest = t
        return groups

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop=None, check_every: int = 8):
        """Greedy tokens ``[B][max_new_tokens]`` for token lists ``prompts`` (any lengths). ``stop(tokens)``, given
        the tokens so far ``[B][n]``, may end generation early (checked every ``check_every`` steps)."""
        b = self.batch([len(p) for p in prompts], max_new_tokens)
        for rows in self.prefill_groups([len(p) for p in prompts]):
            b.prefill_rows(rows, [torch.tensor(prompts[r], dtype=torch.long, device=self.stack.device)
                                  for r in rows])
        out = [b.tokens.clone()]
        for n in range(1, max_new_tokens):
            out.append(b.step().clone())
            if stop is not None and n % check_every == 0 and stop(torch.stack(out, 1).tolist()):
                break
        self.last_batch = b
        return torch.stack(out, 1).tolist()


class Batch:
    """One batch's caches and decode state: ``prefill(row, ids)`` then ``step()`` (greedy; returns the new tokens
    ``[B]``, on the device). ``pos [B]`` is each row's next position, ``tokens [B]`` its last token."""

    def __init__(self, engine: Engine, prompt_lens: list[int], new_tokens: int):
        self.engine, self.prompt_lens, self.new_tokens = engine, list(prompt_lens), new_tokens
        s = engine.stack
        bsz = len(prompt_lens)
        self.caches = [engine.policy.new_cache(bsz, s.kv_heads, self.prompt_lens, new_tokens, s.head_dim, s.dtype,
                                               s.device) for _ in range(s.n_layers)]
        self.pos = torch.zeros(bsz, dtype=torch.long, device=s.device)
        self.tokens = torch.zeros(bsz, dtype=torch.long, device=s.device)
        self.steps = 0
        self.graph = None
        self.prefill_pairs: dict[int, list] = {}  # row -> [(kept pairs, causal pairs)] per layer (device tensors)
        self._reads, self._reads_at = [], None  # decode_sparsity's per-row counts, and the step they are for

    def nbytes(self) -> int:
        """Bytes the caches hold (all layers, all rows): what the decode method keeps."""
        return sum(c.nbytes() for c in self.caches)

    def prefill(self, row: int, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``ids [T]`` of ``row`` through every layer; its first generated token (device, 0-d)."""
        return self.prefill_rows([row], [ids])[0]

    @torch.no_grad()
    def prefill_rows(self, rows: list[int], prompts: list[torch.Tensor]) -> torch.Tensor:
        """Prefill ``rows`` together, each from its prompt ``[T_r]``: right-padded to the longest, the projections
        and MLPs run once for all; attention sees each row's own tokens only (dense: one causal call, the padding
        after every real token; a sparse method: once per prompt length), so a row's cache, first token and
        measured sparsity are those of its prefill alone. Returns the rows' first generated tokens ``[len(rows)]``
        (device)."""
        e, s = self.engine, self.engine.stack
        lens = [int(ids.shape[0]) for ids in prompts]
        for row, t in zip(rows, lens):
            if t != self.prompt_lens[row]:
                raise ValueError(f"row {row} was sized for {self.prompt_lens[row]} prompt tokens; got {t}")
        method, sparsity, pol = e.prefill_method, e.prefill_sparsity, e.policy
        longest, ragged = max(lens), min(lens) != max(lens)

        def dense(q, k, v):
            return e._dense(q, k, v, s.scale)

        def own(x, j):  # row j's real tokens of a [B, H, T, D] tensor, [1, H, T_j, D]
            return x[j:j + 1, :, :lens[j]] if ragged else x[j:j + 1]

        # a sparse method runs once per prompt length: rows of one length are one call (each (row, head) has its
        # own pattern, so a row's result is its own); their positions in the group, on the device, made once here
        by_len: dict[int, list[int]] = {}
        for j, t in enumerate(lens):
            by_len.setdefault(t, []).append(j)
        index = ({t: torch.tensor(js, device=s.device) for t, js in by_len.items()}
                 if method is not None and len(by_len) > 1 else {})

        def sparse(i, t, q, k, v):  # the rows of length t; a layer in dense_layers takes ``dense``
            js = by_len[t]
            pick = (lambda x: x[:, :, :t]) if not index else (lambda x: x.index_select(0, index[t])[:, :, :t])
            out, info = method.at_layer(i, *(pick(x).contiguous() for x in (q, k, v)), dense, sparsity, s.scale)
            if info is not None:
                n, per_head = len(js), info.get("per_head_sparsity")
                total = info["causal_pairs"] / n  # per row
                # one row: the call's own count; several: each row's from the per-head shares, in one reduction (a
                # dense layer has none and keeps every pair)
                kept = ([info["kept_pairs"] / n] * n if n == 1 or per_head is None
                        else ((1 - per_head.double()) * (total / per_head.shape[1])).sum(-1))
                for r, j in enumerate(js):
                    self.prefill_pairs.setdefault(rows[j], []).append((kept[r], total))
            return out

        def attend(i, q, k, v):
            if method is None:
                out = dense(q, k, v)
            elif not index:  # one length (a prompt alone included): the method's own output, no copy
                out = sparse(i, longest, q, k, v)
            else:  # zeros at the padding keep its (unused) hidden states finite
                out = q.new_zeros(q.shape)
                for t in by_len:
                    out[index[t], :, :t] = sparse(i, t, q, k, v)
            for j, row in enumerate(rows):
                pol.prefill(self.caches[i], row, own(q, j), own(k, j), own(v, j), s.scale)
            return out

        ids = torch.stack([F.pad(x, (0, longest - x.shape[0])) for x in prompts])
        positions = torch.arange(longest, device=s.device)[None]
        last = slice(-1, None) if not ragged else torch.tensor([t - 1 for t in lens], device=s.device)
        first = s.forward(ids, positions, attend, logits_at=last)[:, -1].argmax(-1)
        for j, (row, t) in enumerate(zip(rows, lens)):
            self.tokens[row] = first[j]
            self.pos[row].fill_(t)  # a fill launch: assigning a Python int copies it from the host and syncs
        return first

    def copy_row(self, src: int, dst: int | slice):
        """Make row(s) ``dst`` copies of row ``src`` (caches, position and last token), e.g. to fill a large batch
        for decode timing from one prefilled prompt (``dst=slice(1, None)``: every other row, one copy a buffer)."""
        for c in self.caches:
            c.copy_row(src, dst)
        self.pos[dst], self.tokens[dst] = self.pos[src], self.tokens[src]

    def row_state(self, row: int, device="cpu") -> dict:
        """One row's caches and decode state, copied to ``device`` (for :meth:`load_row` into another batch of
        the same engine and sizes)."""
        return {"caches": [c.row_state(row, device) for c in self.caches], "pos": int(self.pos[row]),
                "token": int(self.tokens[row])}

    def load_row(self, row: int, state: dict):
        for c, st in zip(self.caches, state["caches"]):
            c.load_row(row, st)
        self.pos[row], self.tokens[row] = state["pos"], state["token"]

    def _step(self):
        e, s = self.engine, self.engine.stack
        pol = e.policy

        def step(i, q, k, v, cos, sin):  # the new token's q [B, Hq, D], k, v [B, Hkv, D]
            c = self.caches[i]
            q = pol.rope_append(c, q, k, v, cos, sin, self.pos)
            return pol.attend(c, q, s.scale)

        logits = s.forward(self.tokens[:, None], self.pos[:, None], logits_at=slice(-1, None), step=step)
        self.tokens.copy_(logits[:, -1].argmax(-1))
        self.pos += 1

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One greedy decode step for every row; the new tokens ``[B]`` (a buffer that the next step overwrites)."""
        if self.steps >= self.new_tokens:
            raise UserError(f"this batch was sized for {self.new_tokens} new tokens")
        self.steps += 1
        if not self.engine.cuda_graph:
            self._step()
        elif self.graph is None:
            # the first step runs eagerly on a side stream (lazy initialisation: kernels compile, handles are made),
            # then the second one is captured; capture records without running, so replaying it is that step
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
        else:
            self.graph.replay()
        return self.tokens

    def _decode_reads(self) -> list[tuple[int, int]]:
        """Per row, ``(keys read, cache keys)`` over the decode steps so far, summed over key heads and layers
        (each layer's lengths read from the device once; cached until the next step)."""
        if self._reads_at == self.steps:
            return self._reads
        pol = self.engine.policy
        out = [[0, 0] for _ in self.prompt_lens]
        for c in self.caches:
            for r, (t, heads) in enumerate(zip(self.prompt_lens, c.lens.tolist())):
                for length in heads:
                    k0 = length - self.steps  # what prefill kept, before the generated tokens
                    for step in range(self.steps):
                        out[r][0] += pol.reads(c, t, k0, step)
                        out[r][1] += t + step + 1
        self._reads, self._reads_at = [tuple(x) for x in out], self.steps
        return self._reads

    def decode_sparsity(self, row: int | None = None) -> float:
        """Fraction of cache keys the decode steps so far did not read (``1 - read / cache length``, summed over
        key heads, layers and steps, and over rows unless ``row`` is given); 0 for dense decode."""
        reads = self._decode_reads()
        read, total = map(sum, zip(*(reads if row is None else [reads[row]])))
        return 1.0 - read / max(total, 1)

    def prefill_sparsity(self, row: int | None = None) -> float:
        """Pair-weighted measured sparsity of this batch's prefills (one row's, or all, over layers); 0 for dense
        prefill."""
        pairs = [p for r, ps in self.prefill_pairs.items() if row is None or r == row for p in ps]
        if not pairs:
            return 0.0
        kept = sum(float(k) for k, _ in pairs)
        total = sum(float(t) for _, t in pairs)
        return 1.0 - kept / max(total, 1.0)
