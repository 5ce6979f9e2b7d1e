"""What the harness needs to know about a model, behind one small interface for both kinds of model:

- Hugging Face causal LMs: a local directory with ``config.json`` or a hub name (``AutoModelForCausalLM``);
- our checkpoints (a run or checkpoint directory with ``model.json``): ``leanformer.load(dir).to_hf()``, so sparse
  methods attach to the same ``LlamaForCausalLM`` code path; ``leanformer:reference`` names the reference checkpoint
  shipped in the package (what ``leanformer demo`` studies), so results stores and reports carry that name rather than
  an install path.

Also: the sparse-method adapter (:func:`method_names`, :func:`attach`, :func:`measured_sparsity` over
:mod:`leanformer.sparse`) and the FLOP adapter over :func:`leanformer.analysis.flops.sample_flops`. Either module
missing means only dense methods / NULL FLOP columns, never a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import re
from pathlib import Path

from leanformer.errors import UserError

PACKAGED = {"leanformer:reference": "assets/reference", "leanformer:reference-long": "assets/reference-long"}


def packaged_dir(name: str) -> Path | None:
    """The directory of the packaged checkpoint ``name`` (a key of :data:`PACKAGED`), None if it has no weights."""
    from importlib import resources

    path = Path(str(resources.files("leanformer").joinpath(PACKAGED[name])))
    return path if (path / "model.safetensors").is_file() else None


def resolve_spec(spec: str) -> str:
    """A packaged checkpoint's name (:data:`PACKAGED`) -> its directory; any other spec unchanged."""
    if spec not in PACKAGED:
        return spec
    path = packaged_dir(spec)
    if path is None:
        raise UserError(f"model {spec!r}: this install of leanformer ships no weights "
                        f"(leanformer/{PACKAGED[spec]}/model.safetensors)")
    return str(path)


# A Hugging Face hub name: ``name`` or ``org/name`` of letters, digits, '-', '_', '.' (no '--' or '..').
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")


def check_model_spec(spec: str) -> None:
    """One line, before any work, for a model that cannot be found: a path that does not exist ("path not found"),
    or a hub name while the hub cannot be reached and the model is not in the local cache."""
    if spec in PACKAGED or Path(spec).expanduser().exists():
        return
    if not _HUB_NAME.fullmatch(spec) or "--" in spec or ".." in spec or len(spec) > 96:
        raise UserError(f"model {spec!r}: path not found (and not a Hugging Face hub name such as org/name)")
    if hub_offline() and not _in_hub_cache(spec):
        raise UserError(f"model {spec!r}: no such local path, and the Hugging Face hub cannot be reached from this "
                        "machine (offline) to fetch it; give a local model directory, or run where the hub is "
                        "reachable once (it is then cached)")


@functools.cache
def hub_offline() -> bool:
    """Whether the Hugging Face hub is out of reach: ``HF_HUB_OFFLINE=1``, or one connection attempt (3 s) to it
    (or to the HTTPS proxy) fails. Then this process (and the workers it starts) goes offline, so that every later
    hub lookup answers from the cache at once instead of retrying for about half a minute."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
        return False
    except (OSError, TypeError):
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
        return True


def _in_hub_cache(spec: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def _is_ours(spec: str) -> bool:
    p = Path(spec)
    if not p.is_dir() or (p / "config.json").is_file():
        return False
    return (p / "model.json").is_file() or any(p.glob("*/model.json")) or any(p.glob("checkpoints/*/model.json"))


def _our_checkpoint(spec: str):
    """The checkpoint directory behind one of our model specs (a run folder resolves to its checkpoint); None for a
    Hugging Face directory or a hub name."""
    if not _is_ours(spec):
        return None
    from leanformer.train.checkpoint import resolve_checkpoint

    return resolve_checkpoint(spec)


def context_length(spec: str) -> int | None:
    """Maximum positions of the model (from its config, without loading weights); None when unknown."""
    spec = resolve_spec(spec)
    ours = _our_checkpoint(spec)
    if ours is not None:
        from leanformer.train.checkpoint import read_model_meta

        return read_model_meta(ours)["config"].get("max_seq_len")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of model {spec!r}: {str(e).splitlines()[0]}") from None
    return getattr(config, "max_position_embeddings", None)


# files that decide a model's outputs: weights, configs, tokenizer (not a card, not a training report)
_IDENTITY_SUFFIXES = {".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".tiktoken"}
_IDENTITY_SKIP = {"training.json", "trainer_state.json"}
_FULL_HASH_BYTES = 256 << 20
_SAMPLE_BYTES = 16 << 20


def model_fingerprint(spec: str) -> str:
    """The identity of a model's files, so that a results store never mixes two checkpoints under one name.

    A directory (ours, resolved to its checkpoint, or a Hugging Face one): SHA-256 over the names, sizes and
    contents of its weight, config and tokenizer files (files over 256 MiB: their size and first and last 16 MiB).
    A hub name that is not a local directory is its own identity (``name:<spec>``): pin a revision in the name if the
    hub copy may change."""
    path = resolve_spec(spec)
    root = Path(_our_checkpoint(path) or path)
    if not root.is_dir():
        return f"name:{spec}"
    h = hashlib.sha256()
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.suffix not in _IDENTITY_SUFFIXES or f.name in _IDENTITY_SKIP:
            continue
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= _FULL_HASH_BYTES:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(_SAMPLE_BYTES))
                fh.seek(size - _SAMPLE_BYTES)
                h.update(fh.read(_SAMPLE_BYTES))
    return "sha256:" + h.hexdigest()


def open_tokenizer(spec: str, override: str | None = None):
    """``override`` ('byte', 'hf:<name>', a path) if given; else the checkpoint's tokenizer or the HF one."""
    from leanformer.data.tokenizers import HFTokenizer, get_tokenizer

    spec = resolve_spec(spec)
    if override:
        return get_tokenizer(override)
    if _is_ours(spec):
        from leanformer.train.checkpoint import load_tokenizer

        return load_tokenizer(spec)
    return HFTokenizer.from_pretrained(spec)


def _device(name: str):
    import os

    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def load_model(spec: str, device: str = "auto", dtype: str = "auto", device_map: str | None = None):
    """An eval-mode Hugging Face causal LM on ``device`` (bf16 on GPU and fp32 on CPU for ``dtype='auto'``).

    ``device_map`` (e.g. ``'auto'``) spreads a Hugging Face model too large for one GPU over the visible GPUs
    (Accelerate's big-model loading) instead; under ``torchrun`` give each rank its own GPUs
    (``CUDA_VISIBLE_DEVICES``) or run one process."""
    import torch

    spec = resolve_spec(spec)
    dev = _device(device)
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dt = names[dtype] if dtype != "auto" else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if _is_ours(spec):
        import leanformer

        model = leanformer.load(spec).to_hf()
    else:
        from transformers import AutoModelForCausalLM

        from leanformer.models.hf import hf_from_pretrained

        # safetensors only unless --allow-pickle; never remote code
        if device_map is not None:
            import importlib.util

            from leanformer.errors import UserError

            if importlib.util.find_spec("accelerate") is None:
                raise UserError(f"device_map={device_map!r} needs the 'accelerate' package (pip install "
                                "accelerate); or leave device_map unset to load the model on one device")
            return hf_from_pretrained(AutoModelForCausalLM, spec, dtype=dt, device_map=device_map).eval()
        model = hf_from_pretrained(AutoModelForCausalLM, spec, dtype=dt)
    return model.to(device=dev, dtype=dt).eval()


def set_rope_theta(model, theta: float) -> int:
    """Re-base every rotary embedding of a Hugging Face ``model`` to ``theta`` in place (``inv_freq[i] = theta **
    (-2i / d)``, recomputed in float64); returns how many rotary modules changed. Plain RoPE only: a module whose
    frequencies are not that series for some base (YaRN, Llama 3, linear or dynamic scaling) is refused, as is a
    model with none. Evaluating at a larger base than trained is NTK-aware scaling without training."""
    import torch

    changed = 0
    for name, mod in model.named_modules():
        inv = getattr(mod, "inv_freq", None)
        if not isinstance(inv, torch.Tensor) or inv.ndim != 1:
            continue
        kind = getattr(mod, "rope_type", "default")
        dim = 2 * inv.numel()
        exps = torch.arange(0, dim, 2, dtype=torch.float64) / dim
        inv64 = inv.detach().double().cpu()
        base = float(inv64[1] ** (-dim / 2)) if inv.numel() > 1 else math.nan
        plain = kind == "default" and math.isfinite(base) and torch.allclose(inv64, base ** -exps, rtol=1e-4)
        if not plain:
            raise UserError(f"rope base {theta:g}: {name or 'the model'}'s rotary embedding is not plain RoPE "
                            f"(rope_type {kind!r}); a base can only be set on plain RoPE")
        new = (float(theta) ** -exps).to(inv.dtype)
        inv.copy_(new)
        if isinstance(getattr(mod, "original_inv_freq", None), torch.Tensor):
            mod.original_inv_freq.copy_(new)
        changed += 1
    if not changed:
        raise UserError(f"rope base {theta:g}: the model has no rotary embedding (no module with an inv_freq buffer)")
    params = getattr(model.config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        params["rope_theta"] = float(theta)
    elif hasattr(model.config, "rope_theta"):
        model.config.rope_theta = float(theta)
    return changed


def non_embedding_params(model) -> int:
    """Parameters minus the input embedding and an untied output embedding (Kaplan et al., 2020)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    total -= emb.numel()
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        total -= out.weight.numel()
    return int(total)


# ---- sparse methods ---------------------------------------------------------------------------------------------


def _sparse():
    try:
        from leanformer import sparse

        return sparse if hasattr(sparse, "apply") else None
    except ImportError:
        return None


def method_names() -> tuple[list[str], list[str]]:
    """Valid prefill and decode method names ('dense' always included)."""
    sp = _sparse()
    pre = list(getattr(sp, "PREFILL_METHODS", {})) if sp else []
    dec = list(getattr(sp, "DECODE_METHODS", {})) if sp else []
    return list(dict.fromkeys(["dense", *pre])), list(dict.fromkeys(["dense", *dec]))


def method_param_names(phase: str, method: str) -> set[str] | None:
    """Parameter names a sparse method accepts (None when the sparse package is absent)."""
    try:
        from leanformer.sparse.registry import param_names
    except ImportError:
        return None
    return param_names(phase, method)


@contextlib.contextmanager
def attach(model, prefill: str, decode: str, sparsity: float, params: dict):
    """Attach the methods for the duration of the block (``sparse.apply``; 'dense' is passed as None so that phase
    stays on the model's own attention); dense/dense leaves the model untouched and yields None."""
    if prefill == "dense" and decode == "dense":
        yield None
        return
    with _sparse().apply(model, prefill=None if prefill == "dense" else prefill,
                         decode=None if decode == "dense" else decode, sparsity=sparsity,
                         prefill_params=params.get("prefill"), decode_params=params.get("decode")) as session:
        yield session


def _phase_sparsity(stats: list[dict], phase: str) -> float | None:
    """1 - kept / total over every recorded call of ``phase`` (pair-weighted), or the mean of the calls' own
    ``sparsity`` when counts are missing; None when the phase recorded nothing."""
    rows = [r for r in stats if r.get("phase") == phase]
    if not rows:
        return None
    if all(r.get("kept_pairs") is not None and r.get("causal_pairs") for r in rows):
        return 1.0 - sum(float(r["kept_pairs"]) for r in rows) / sum(float(r["causal_pairs"]) for r in rows)
    return sum(float(r["sparsity"]) for r in rows) / len(rows)


def measured_sparsity(session, prefill: str, decode: str) -> tuple[float | None, float | None]:
    """(prefill, decode) sparsity measured in ``session.stats``: the fraction of causal query-key pairs skipped in
    prefill, and of cache keys not read over all decode steps; 0 for a dense phase."""
    stats = list(getattr(session, "stats", None) or [])
    pre = 0.0 if prefill == "dense" else _phase_sparsity(stats, "prefill")
    dec = 0.0 if decode == "dense" else _phase_sparsity(stats, "decode")
    return pre, dec


def sample_flops(model, prompt_tokens: int, output_tokens: int, cell: dict, pre_s, dec_s):
    """(prefill FLOPs, decode FLOPs) from :func:`leanformer.analysis.flops.sample_flops`; (None, None) without it."""
    try:
        from leanformer.analysis.flops import sample_flops as flops
    except ImportError:
        return None, None
    pre = pre_s if pre_s is not None else cell["sparsity"]
    dec = dec_s if dec_s is not None else cell["sparsity"]
    try:
        out = flops(model.config, prompt_tokens, output_tokens, cell["prefill_method"], cell["decode_method"],
                    pre, dec, prefill_params=cell["params"]["prefill"], decode_params=cell["params"]["decode"])
    except (UserError, KeyError, ValueError):
        return None, None
    return out["prefill"], out["decode"]
