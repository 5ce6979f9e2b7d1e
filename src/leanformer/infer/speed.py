"""Model-level speed and memory of the sparse methods: time to first token, decode tokens/s at a batch (or the
largest batch that fits), peak GPU memory and cache bytes per sequence, each beside two dense baselines measured
in the same run — Hugging Face's own SDPA path (``model(...)`` with its cache) and the engine's dense path (cuDNN
prefill, graph-captured decode) — with speedups against the faster of the two.

Measurement rules:

* Prompts are random token ids (speed does not depend on them); models may have random weights
  (``arch:qwen2.5-7b``), which is enough for speed and memory and is said in the output.
* Before anything is timed, the engine's dense prefill logits are checked against the model's own forward on a
  short prompt (:func:`check_engine`); a mismatch stops the run.
* TTFT = prefill of one prompt + its first token (the LM head on the last position, argmax), the median of
  ``repeat`` runs after one warm-up (compilation, autotuning). A batch's rows are prefilled one after another.
* Decode: ``new_tokens`` greedy steps after two warm-up steps (the first captures the CUDA graph), timed with
  device events; tokens/s = batch / seconds per step.
* ``max`` batch: the largest batch whose caches fit beside the weights and one prefill's working memory (held as a
  reserve while decoding), found by doubling then bisection, out-of-memory caught. Its rows' caches are copies of
  one prefilled prompt (what is read per step is the same as for distinct prompts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
import types

import torch

from leanformer.errors import UserError
from leanformer.infer.engine import Engine
from leanformer.infer.layers import DecoderStack


@dataclasses.dataclass
class Row:
    """One measurement (``kind`` 'prefill' or 'decode'; ``method`` 'hf' or 'dense' for the baselines)."""

    length: int
    kind: str
    method: str
    sparsity: float
    batch: int
    batch_spec: str
    ttft_s: float | None = None
    ms_per_token: float | None = None
    tokens_per_s: float | None = None
    peak_gb: float | None = None
    cache_mb_per_seq: float | None = None
    measured_sparsity: float | None = None
    status: str = "ok"

    def key(self) -> tuple:
        return (self.length, self.kind, self.method, self.sparsity, self.batch_spec)


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device):
    if _cuda(device):
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if _cuda(device):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if _cuda(device) else None


def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median_time(fn, device, repeat: int) -> float:
    _timed(fn, device)  # warm-up
    return statistics.median(_timed(fn, device) for _ in range(max(1, repeat)))


def check_engine(model, vocab: int, device, length: int = 256, tol: float = 0.05):
    """Refuse to time an engine that does not compute the model: its dense prefill's last-position logits against
    the model's own forward (relative L2 error, bf16 tolerance)."""
    ids = torch.randint(0, vocab, (min(length, 256),), device=device)
    with torch.no_grad():
        ref = model(ids[None], logits_to_keep=1).logits[0, -1].float()
        eng = Engine(model, compile=False, cuda_graph=False)
        out = eng.stack.forward(ids[None], torch.arange(ids.shape[0], device=device)[None],
                                lambda i, q, k, v: eng._dense(q, k, v, eng.stack.scale), slice(-1, None))[0, -1]
    err = float((out - ref).norm() / ref.norm().clamp(min=1e-12))
    if not err < tol:
        raise UserError(f"the engine's logits differ from the model's own forward (relative error {err:.3g} > {tol});"
                        " not timing an engine that computes something else")
    return err


class SpeedRun:
    """Measures one model. ``measure_*`` return :class:`Row` s; nothing here writes files (see ``speed_cli``)."""

    def __init__(self, model, device, repeat: int = 3, new_tokens: int = 64, params: dict | None = None):
        self.model, self.device, self.repeat, self.new_tokens = model, torch.device(device), repeat, new_tokens
        self.vocab = model.config.vocab_size
        self.kv_bytes = DecoderStack(model).kv_bytes_per_token()  # a dense cache's bytes per token, all layers
        self.params = params or {}
        self.engines: dict = {}
        self._templates: dict = {}

    def prompt(self, length: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + length)
        return torch.randint(0, self.vocab, (length,), generator=g).to(self.device)

    def engine(self, prefill=None, decode=None, sparsity=0.0) -> Engine:
        key = (prefill, decode, sparsity)
        if key not in self.engines:
            from leanformer.sparse.registry import param_names

            pre_p = {k: v for k, v in self.params.items() if prefill and k in param_names("prefill", prefill)}
            dec_p = {k: v for k, v in self.params.items() if decode and k in param_names("decode", decode)}
            self.engines[key] = Engine(self.model, prefill=prefill, decode=decode, sparsity=sparsity,
                                       prefill_params=pre_p, decode_params=dec_p)
        return self.engines[key]

    # ---- prefill ----------------------------------------------------------------------------------------------

    def hf_prefill(self, length: int) -> Row:
        """Hugging Face's own path: ``model(ids, use_cache=True, logits_to_keep=1)`` with SDPA attention."""
        row = Row(length, "prefill", "hf", 0.0, 1, "1")
        ids = self.prompt(length)[None]

        def run():
            with torch.no_grad():
                self.model(ids, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)

        with _out_of_memory(row, self.device), _hf_sdpa(self.model):
            _reset_peak(self.device)
            row.ttft_s = _median_time(run, self.device, self.repeat)
            row.peak_gb = _peak_gb(self.device)
        return row

    def prefill(self, length: int, method: str, sparsity: float) -> Row:
        """TTFT of the engine with ``method`` ('dense' included) at batch 1."""
        name = None if method == "dense" else method
        row = Row(length, "prefill", method, sparsity if name else 0.0, 1, "1")
        eng = self.engine(prefill=name, sparsity=sparsity)
        ids = self.prompt(length)
        last = {}

        def run():
            last["batch"] = eng.batch([length], 1)
            last["batch"].prefill(0, ids)

        with _out_of_memory(row, self.device):
            _reset_peak(self.device)
            row.ttft_s = _median_time(run, self.device, self.repeat)
            row.peak_gb = _peak_gb(self.device)
            if name is not None:
                row.measured_sparsity = last["batch"].prefill_sparsity()
        return row

    # ---- decode -----------------------------------------------------------------------------------------------

    def hf_decode(self, length: int) -> Row:
        """Hugging Face's own eager decode: ``model(token, past_key_values=cache)`` per step, batch 1."""
        row = Row(length, "decode", "hf", 0.0, 1, "1")
        ids = self.prompt(length)[None]
        with _out_of_memory(row, self.device), _hf_sdpa(self.model), torch.no_grad():
            _reset_peak(self.device)
            out = self.model(ids, use_cache=True, logits_to_keep=1)
            cache, tok = _out_cache(out), out.logits[:, -1:].argmax(-1)
            kw = _cache_kwarg(self.model)

            def one():
                nonlocal cache, tok
                o = self.model(tok, use_cache=True, **{kw: cache})
                cache, tok = _out_cache(o), o.logits[:, -1:].argmax(-1)

            for _ in range(2):
                one()
            dt = _timed(lambda: [one() for _ in range(self.new_tokens)], self.device)
            row.ms_per_token = 1e3 * dt / self.new_tokens
            row.tokens_per_s = 1e3 / row.ms_per_token
            row.peak_gb = _peak_gb(self.device)
            row.cache_mb_per_seq = (length + self.new_tokens + 2) * self.kv_bytes / 2**20
        return row

    def template(self, eng: Engine, length: int) -> dict:
        """One prompt prefilled by ``eng`` into a batch of one: its row state (on the host), the prefill's time
        (TTFT, selection included) and working memory (peak less what it leaves behind), cached per engine and
        length so that batches of any size are filled without prefilling again."""
        key = (id(eng), length)
        if key not in self._templates:
            _reset_peak(self.device)
            before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
            b = eng.batch([length], self.new_tokens + 2)
            ttft = _timed(lambda: b.prefill(0, self.prompt(length)), self.device)
            reserve = 0
            if self.device.type == "cuda":
                reserve = max(0, torch.cuda.max_memory_allocated(self.device) - before - b.nbytes())
            self._templates[key] = {"state": b.row_state(0), "ttft": ttft, "reserve": reserve}
            del b
        return self._templates[key]

    def _filled(self, eng: Engine, length: int, batch: int, reserve_bytes: int = 0):
        """A batch of ``batch`` rows, each a copy of the template prompt; ``(batch_obj, reserve)`` where the reserve
        holds ``reserve_bytes`` of GPU memory (one prefill's working memory, kept free for a new request)."""
        reserve = None
        if reserve_bytes > 0 and self.device.type == "cuda":
            reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=self.device)
        b = eng.batch([length] * batch, self.new_tokens + 2)
        b.load_row(0, self.template(eng, length)["state"])
        b.copy_row(0, slice(1, None))  # every other row at once (a broadcast copy per buffer)
        return b, reserve

    def decode(self, length: int, method: str, sparsity: float, batch: int, spec: str,
               reserve_bytes: int = 0) -> Row:
        name = None if method == "dense" else method
        row = Row(length, "decode", method, sparsity if name else 0.0, batch, spec)
        eng = self.engine(decode=name, sparsity=sparsity)
        with _out_of_memory(row, self.device):
            row.ttft_s = self.template(eng, length)["ttft"]
            _reset_peak(self.device)
            b, reserve = self._filled(eng, length, batch, reserve_bytes)
            b.step()
            b.step()  # eager warm-up, then the captured step
            dt = _steps_time(b, self.new_tokens, self.device)
            row.ms_per_token = 1e3 * dt / self.new_tokens
            row.tokens_per_s = batch / (dt / self.new_tokens)
            row.peak_gb = _peak_gb(self.device)
            row.cache_mb_per_seq = b.nbytes() / batch / 2**20
            row.measured_sparsity = b.decode_sparsity() if batch <= 8 else None
            del b, reserve
        return row

    def fits(self, eng: Engine, length: int, batch: int, reserve_bytes: int) -> bool:
        """Whether ``batch`` rows' caches, two decode steps (one captured) and the reserve fit in GPU memory."""
        result = types.SimpleNamespace(status="ok")
        with _out_of_memory(result, self.device):
            b, reserve = self._filled(eng, length, batch, reserve_bytes)
            b.step()
            b.step()
            torch.cuda.synchronize(self.device)
            del b, reserve
        return result.status == "ok"

    def max_batch(self, length: int, method: str, sparsity: float, limit: int = 4096) -> tuple[int, int]:
        """``(largest batch that fits, reserve bytes)`` for decoding ``length``-token prompts with ``method``:
        doubling, then bisection to within 2%."""
        if self.device.type != "cuda":
            raise UserError("--batch max needs a CUDA device (it searches for the largest batch that fits in GPU "
                            "memory)")
        name = None if method == "dense" else method
        eng = self.engine(decode=name, sparsity=sparsity)
        reserve = self.template(eng, length)["reserve"]
        if not self.fits(eng, length, 1, reserve):
            return 0, reserve
        lo, hi = 1, 2
        while hi <= limit and self.fits(eng, length, hi, reserve):
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1 and (hi - lo) / lo > 0.02:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.fits(eng, length, mid, reserve) else (lo, mid)
        return lo, reserve


def _steps_time(b, n: int, device) -> float:
    """Seconds for ``n`` decode steps of batch ``b``: device events on a GPU (replays queue back to back)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            b.step()
        return time.perf_counter() - t0
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        b.step()
    stop.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(stop) / 1e3


@contextlib.contextmanager
def _out_of_memory(row, device=None):
    """Turns an out-of-memory error inside the block into ``row.status = "oom"`` (other errors pass through),
    then frees what the block left behind."""
    try:
        yield
    except RuntimeError as e:
        if not _oom(e):
            raise
        row.status = "oom"
    finally:
        gc.collect()
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _hf_sdpa(model):
    """The model on Hugging Face's own SDPA attention for the block, its implementation restored after."""
    old = model.config._attn_implementation
    try:
        model.set_attn_implementation("sdpa")
        yield
    finally:
        model.set_attn_implementation(old)


def _out_cache(out):
    """The cache a Hugging Face forward returned (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def batch_specs(specs: list[str]) -> list[str]:
    out = []
    for s in specs:
        s = str(s).strip().lower()
        if s != "max" and not (s.isdigit() and int(s) >= 1):
            raise UserError(f"--batch takes positive integers or 'max'; got {s!r}")
        out.append(s)
    return out
