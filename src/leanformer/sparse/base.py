"""Shared pieces of every sparse-attention method: input checks, the sparsity <-> budget arithmetic, and the two
interfaces (prefill, decode).

Layout: ``q`` is ``[B, H_q, T, D]``, ``k, v`` are ``[B, H_kv, T, D]`` with ``H_q`` a multiple of ``H_kv`` (GQA).
Causal alignment is bottom-right (query ``i`` of ``T_q`` sees keys ``j <= i + T_k - T_q``).

*Sparsity* is the fraction of causal query-key pairs **not** computed: 0.95 means a 1/20 budget. Prefill methods
count pairs inside the ``T x T`` causal triangle; decode methods count cache keys not read in one step. Every call
returns ``(out, info)`` where ``info`` holds at least ``sparsity`` (measured), ``requested_sparsity``, ``kept_pairs``
(or ``keys_read``) and ``estimation_pairs`` (the query-key scores computed to decide what to keep, reported apart);
prefill methods add ``per_head_sparsity`` ``[B, H_q]`` and ``pattern``. Counts stay tensors on the inputs' device
(reading them is the caller's sync, not the method's: block top-k's call has none, so calls queue back to back).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import torch

from leanformer.errors import UserError

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class SparsityWarning(UserWarning):
    """A requested sparsity that a method cannot reach on this input (too short a prompt for its block size, forced
    lines or blocks): the call still runs, ``info["sparsity"]`` reports what was computed."""


# every method instance warns once (``warn_once``); a second instance (a new ``sparse.apply`` session) with the same
# message must warn again, which Python's default once-per-location registry would swallow. Appended, so a filter
# the user sets (``ignore``, ``error``) still wins.
warnings.filterwarnings("always", category=SparsityWarning, append=True)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_length: bool = True) -> tuple[int, int]:
    """Validate ``[B, H, T, D]`` inputs; return ``(group, T)`` where ``group = H_q // H_kv``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        shapes = f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        raise UserError(f"q, k, v must be [B, H, T, D]; got shapes {shapes}")
    if k.shape != v.shape:
        raise UserError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise UserError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head dim")
    if q.shape[1] % k.shape[1]:
        raise UserError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if same_length and q.shape[2] != k.shape[2]:
        raise UserError(f"prefill needs T_q == T_k; got {q.shape[2]} and {k.shape[2]}")
    if q.dtype not in DTYPES:
        raise UserError(f"dtype {q.dtype} not supported; use one of {DTYPES}")
    return q.shape[1] // k.shape[1], k.shape[2]


def check_sparsity(sparsity: float | None) -> float | None:
    """``None`` (use the method's native budget) or a float in ``[0, 1)``."""
    if sparsity is None:
        return None
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise UserError(f"sparsity must be a number in [0, 1) (0.95 = keep 1/20 of the causal pairs); got "
                        f"{sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise UserError(f"sparsity must be in [0, 1) (0.95 = keep 1/20 of the causal pairs); got {sparsity!r}")
    return s


def causal_pairs(t: int) -> int:
    """Number of causal query-key pairs of a length-``t`` prompt: ``t (t + 1) / 2``."""
    return t * (t + 1) // 2


def make_params(cls, params: dict):
    """Build the dataclass ``cls`` from ``params``, naming any unknown key and the allowed ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(params) - fields)
    if bad:
        raise UserError(f"unknown parameter(s) {bad} for {cls.__name__}; allowed: {sorted(fields)}")
    return cls(**params)


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def pick_impl(impl: str, x: torch.Tensor, fast: tuple[str, ...]) -> str:
    """Resolve ``impl``: ``"auto"`` is the first fast path on CUDA, else ``"reference"``."""
    allowed = ("auto", "reference", *fast)
    if impl not in allowed:
        raise UserError(f"unknown impl {impl!r}; choose one of {allowed}")
    if impl == "auto":
        return fast[0] if (x.is_cuda and fast) else "reference"
    # under the Triton interpreter (TRITON_INTERPRET=1, CPU tests) the Triton paths run on CPU tensors
    if impl != "reference" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"impl {impl!r} needs a CUDA tensor; got device {x.device}")
    return impl


@dataclasses.dataclass(kw_only=True, slots=True)
class SparsePrefillParams:
    """What every sparse prefill method's parameters hold beside its own."""

    # layers whose prompts run dense attention, the rest sparse (applied by the caller: ``sparse.apply``, the engine)
    dense_layers: tuple[int, ...] = ()


class PrefillMethod:
    """A prefill method maps ``(q, k, v)`` of one layer to the causal attention output.

    Subclasses set ``name`` and ``Params`` (a dataclass with the method's native budget parameters, ``block_size``
    and ``impl``) and implement ``__call__(q, k, v, sparsity=None, scale=None) -> (out [B, H_q, T, D], info)``.
    ``sparsity=None`` uses the native parameters; a float converts it to the method's own budget.
    """

    name: str = ""
    Params: type = None

    def __init__(self, **params):
        self.params = make_params(self.Params, params)
        self._warned = False
        if isinstance(self.params, SparsePrefillParams):
            layers = self.params.dense_layers
            if isinstance(layers, (int, str)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise UserError(f"{self.name}: dense_layers={layers!r}: give a list of layer indices (integers >= 0), "
                                "e.g. [0]")
            self.params.dense_layers = tuple(sorted(set(layers)))

    def __call__(self, q, k, v, sparsity=None, scale=None):
        raise NotImplementedError

    @property
    def dense_layers(self) -> tuple[int, ...]:
        """The layers whose prompts this method leaves dense (sorted, unique; ``()`` for every layer sparse)."""
        return self.params.dense_layers if isinstance(self.params, SparsePrefillParams) else ()

    def at_layer(self, layer: int, q, k, v, dense, sparsity=None, scale=None):
        """The call for ``layer`` of a model: the method, or ``dense(q, k, v)`` (the caller's dense attention) where
        ``dense_layers`` lists the layer, with an ``info`` of every pair kept so the measured sparsity counts it."""
        if layer in self.dense_layers:
            total = causal_pairs(q.shape[2]) * q.shape[0] * q.shape[1]
            return dense(q, k, v), info_dict("dense", sparsity, total, total, 0, "sdpa", dense_layer=True)
        return self(q, k, v, sparsity=sparsity, scale=scale)

    def check_layers(self, n_layers: int) -> None:
        """Refuse ``dense_layers`` a model of ``n_layers`` layers does not have, before any work."""
        layers = self.dense_layers
        if layers and layers[-1] >= n_layers:
            raise UserError(f"{self.name}: dense_layers={list(layers)}: the model has {n_layers} layers "
                            f"(0-{n_layers - 1})")

    def warn_once(self, message: str) -> None:
        """Issue ``message`` as a :class:`SparsityWarning` the first time this instance has something to say."""
        warn_once(self, message)


class DecodeMethod:
    """A decode method attends one generation step to a subset of the KV cache.

    ``observe_prefill(layer, q, k, v, scale)`` sees the whole prompt of a layer (SnapKV scores from it, Quest builds
    page metadata); ``attend(layer, q, k, v, sparsity, scale)`` takes ``q [B, H_q, 1, D]`` and the full cache
    ``k, v [B, H_kv, L, D]`` and returns ``(out [B, H_q, 1, D], info)``, reading only the selected keys.
    ``info["keys_read"]`` counts (head, position) reads of keys per step over ``info["keys_total"]``; ``sparsity`` is
    the fraction not read. State is kept per layer and dropped by ``reset()``.
    """

    name: str = ""
    Params: type = None

    def __init__(self, **params):
        self.params = make_params(self.Params, params)
        self.state: dict[int, dict] = {}
        self._warned = False

    def warn_once(self, message: str) -> None:
        """Issue ``message`` as a :class:`SparsityWarning` the first time this instance has something to say."""
        warn_once(self, message)

    def reset(self):
        self.state = {}

    def observe_prefill(self, layer, q, k, v, scale=None):
        self.state[layer] = {"prompt_len": k.shape[2]}

    def attend(self, layer, q, k, v, sparsity=None, scale=None):
        raise NotImplementedError


def warn_once(method, message: str) -> None:
    """One :class:`SparsityWarning` per method instance (one ``sparse.apply`` session builds one instance): a model
    calls its method once per layer, and the first layer's message says all."""
    if getattr(method, "_warned", False):
        return
    method._warned = True
    warnings.warn(message, SparsityWarning, stacklevel=4)


def unreachable_message(method: str, requested: float, seq_len: int, reachable: float, why: str) -> str:
    """The one line a method warns with when ``requested`` is above the most it can skip (``reachable``)."""
    # rounded down, so the bound shown is never the request it refuses (0.8998 reads 0.899, not 0.900)
    shown = math.floor(max(reachable, 0.0) * 1000) / 1000
    return (f"{method}: requested sparsity {requested:g} is out of reach at {seq_len} tokens ({why}); reachable "
            f"here: [0, {shown:.3f}]; the call computes the densest pattern it must and info['sparsity'] "
            "reports the measured value")


class DeferredWarning:
    """A warning whose condition is a 0-d bool on the GPU: copied to pinned host memory without waiting, read at a
    later call once an event says the copy is done (a prefill must not stall on it). CPU flags read at once."""

    def __init__(self, flag: torch.Tensor, message: str):
        self.message = message
        if flag.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag, self.event = flag, None

    def ready(self) -> bool:
        return self.event is None or self.event.query()


def defer_warning(method, flag: torch.Tensor | None, message: str | None = None) -> None:
    """Check a pending :class:`DeferredWarning` of ``method`` (warn once if it is due), then queue ``flag``'s."""
    pending = getattr(method, "_pending", None)
    if pending is not None and pending.ready():
        method._pending = None
        if bool(pending.flag):
            warn_once(method, pending.message)
    if flag is not None and not getattr(method, "_warned", False) and getattr(method, "_pending", None) is None:
        method._pending = DeferredWarning(flag, message)
        if method._pending.event is None:
            defer_warning(method, None)


def info_dict(method: str, requested, kept, total, estimation, impl, **extra) -> dict:
    """The ``info`` every call returns; ``kept``/``total`` are pair (or key-read) counts. A tensor ``kept`` stays a
    0-d tensor (no host sync, so decode steps can be captured in CUDA graphs); ``float()`` it to read it."""
    kept_f = kept.double() if isinstance(kept, torch.Tensor) else float(kept)
    out = {
        "method": method,
        "requested_sparsity": requested,
        "sparsity": 1.0 - kept_f / max(float(total), 1.0),
        "kept_pairs": kept_f,
        "causal_pairs": float(total),
        "estimation_pairs": float(estimation),
        "impl": impl,
    }
    out.update(extra)
    return out
