"""Checkpoints: safetensors for every tensor, JSON for everything else, written atomically, verified on load.

Layout of a run directory::

    run/config.yaml                the RunConfig (saved before training starts)
    run/metrics.jsonl              one JSON object per log/eval event
    run/checkpoints/step_00000100/ model.safetensors, model.json (family + config + tokenizer),
                                   trainer.safetensors (optimizer tensors, RNG states), state.json

A checkpoint is written into ``.tmp-step_N`` and renamed to ``step_N`` only when complete (a directory rename is
atomic), so a crash leaves either the whole checkpoint or none. Pruning keeps the newest ``keep_last`` checkpoints
that verify; a damaged one never counts among them. ``state.json`` holds a format version and the
SHA-256 of every file; :func:`latest_checkpoint` skips (and reports) a checkpoint whose files do not match, using
the previous one. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from leanformer.config import atomic_write_text
from leanformer.errors import CheckpointError, ConfigError
from leanformer.reliability import crash_point

FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer: torch.optim.Optimizer | None,
                    state: dict, tokenizer_spec: str = "byte", keep_last: int = 2) -> Path:
    """Atomically write checkpoint ``step`` under ``run_dir/checkpoints`` and keep only the newest ``keep_last``.

    Refuses (CheckpointError) to write non-finite weights, so the last checkpoint on disk stays a good one; a write
    that fails (disk full) removes its temp folder and names the checkpoint still intact."""
    bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())), None)
    if bad is not None:
        raise CheckpointError(f"parameter {bad!r} holds NaN/inf at step {step}; not writing a checkpoint. The last "
                              f"good checkpoint is kept in {Path(run_dir) / CKPT_DIR}")
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    for stale in root.glob(".tmp-step_*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".del-step_*"):  # left by a process killed mid-prune
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _write(tmp, step, model, optimizer, state, tokenizer_spec)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e}; {kept}") from None
    crash_point("ckpt.before_rename")
    if final.exists():  # re-saving a step: move the old copy aside atomically, never leave a half-deleted one
        os.replace(final, root / f".del-{final.name}")
    os.replace(tmp, final)
    _fsync_dir(root)
    crash_point("ckpt.renamed")
    for old in _beyond_newest_valid(run_dir, final, keep_last):
        # Renamed first (atomic), so a crash mid-delete never leaves a half-deleted ``step_*`` behind.
        trash = root / f".del-{old.name}"
        os.replace(old, trash)
        crash_point("ckpt.pruning")
        shutil.rmtree(trash, ignore_errors=True)
    return final


def _beyond_newest_valid(run_dir, written: Path, keep_last: int) -> list[Path]:
    """Checkpoints older than the newest ``keep_last`` that verify (``written`` counts as one): what pruning removes.
    A damaged checkpoint never counts as one of those kept, so pruning can never leave only damaged ones."""
    kept, prune = 0, []
    for ckpt in reversed(list_checkpoints(run_dir)):
        if kept >= keep_last:
            prune.append(ckpt)
        elif ckpt == written or _still_valid(ckpt):
            kept += 1
    return prune


_VALID: dict[Path, tuple] = {}  # checkpoint -> (name, size, mtime) of its files when it last verified


def _still_valid(ckpt: Path) -> bool:
    """Whether ``ckpt`` verifies; a checkpoint whose files are unchanged since it verified in this process is not
    hashed again (pruning runs at every save)."""
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(ckpt.iterdir()))
    if _VALID.get(ckpt) == stamp:
        return True
    try:
        verify_checkpoint(ckpt)
    except CheckpointError:
        return False
    _VALID[ckpt] = stamp
    return True


def _write(tmp: Path, step: int, model, optimizer, state: dict, tokenizer_spec: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    crash_point("ckpt.weights")
    meta = json.loads((tmp / "model.json").read_text())
    meta["tokenizer"] = tokenizer_spec
    atomic_write_text(tmp / "model.json", json.dumps(meta, indent=2))
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    save_file(tensors, str(tmp / "trainer.safetensors"))
    crash_point("ckpt.trainer")
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    full_state = {"format_version": FORMAT_VERSION, "step": step, "files": files, "optimizer": opt_meta, **state}
    atomic_write_text(tmp / "state.json", json.dumps(full_state, indent=2))
    _fsync_dir(tmp)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def verify_checkpoint(ckpt: str | os.PathLike) -> dict:
    """Return the checkpoint's ``state.json`` after checking version and checksums; raise CheckpointError."""
    ckpt = Path(ckpt)
    state_path = ckpt / "state.json"
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no state.json (incomplete or not a checkpoint)")
    state = _read_json(state_path)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt} has format version {state.get('format_version')!r}; "
                              f"this leanformer reads version {FORMAT_VERSION}")
    files = state.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files or "model.json" not in files:
        raise CheckpointError(f"checkpoint file {state_path} is corrupted (no checksums for model.safetensors and "
                              "model.json)")
    for name, digest in files.items():
        p = ckpt / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint file {p} is corrupted (checksum mismatch)")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint that verifies; corrupted ones are reported on stderr and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt)
            return ckpt
        except CheckpointError as e:
            print(f"leanformer: warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
    return None


def load_trainer_state(ckpt: str | os.PathLike, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore optimizer tensors and RNG states from a verified checkpoint; return its ``state.json``."""
    ckpt = Path(ckpt)
    state = verify_checkpoint(ckpt)
    tensors = load_file(str(ckpt / "trainer.safetensors"))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if optimizer is not None and state.get("optimizer") is not None:
        _restore_optimizer(optimizer, tensors, state["optimizer"])
    return state


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint file {path} is corrupted (not valid JSON)") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {path} is corrupted (expected a JSON object)")
    return data


def read_model_meta(ckpt: str | os.PathLike) -> dict:
    """``model.json`` of a checkpoint directory (family + config + tokenizer), checked for shape."""
    path = Path(ckpt) / "model.json"
    meta = _read_json(path)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint file {path} is corrupted (no 'config' object)")
    return meta


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a run directory (newest valid), a checkpoint directory itself, or a weights file
    inside one (``model.safetensors``, or a pickled file that :func:`load_model` refuses unless allowed)."""
    p = Path(path)
    if p.is_file() and (p.parent / "model.json").is_file():
        p = p.parent
    if (p / "model.json").is_file():
        if (p / "state.json").is_file():
            verify_checkpoint(p)
        return p
    if p.is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is not None:
            return ckpt
        raise CheckpointError(f"no valid checkpoint found in {p}")
    if p.is_file():
        raise CheckpointError(f"{p} has no model.json beside it; give a leanformer run or checkpoint directory")
    raise CheckpointError(f"checkpoint path {p} does not exist")


def load_model(path: str | os.PathLike, device: str = "cpu", allow_pickle: bool | None = None):
    """Rebuild the model recorded in ``model.json`` and load its safetensors weights; eval mode.

    Without ``model.safetensors``, a pickled weights file beside ``model.json`` (``.bin``/``.pt``/``.pth``) is
    refused unless ``allow_pickle`` (or ``--allow-pickle``), and then read with ``torch.load(weights_only=True)``."""
    from safetensors import SafetensorError

    from leanformer.models.registry import build_model, model_config_from_dict
    from leanformer.reliability import is_pickle, load_pickled_weights, pickle_weight_files

    ckpt = resolve_checkpoint(path)
    meta = read_model_meta(ckpt)
    try:
        model = build_model(model_config_from_dict(meta["config"]))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint file {ckpt / 'model.json'} holds an invalid config: {e}") from None
    weights = ckpt / "model.safetensors"
    named = Path(path)
    pickled = [named] if named.is_file() and is_pickle(named) else []
    if not pickled and not weights.is_file():
        pickled = pickle_weight_files(ckpt)
    if pickled:
        sd = load_pickled_weights(pickled[0], allow_pickle)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {pickled[0]} do not match model.json: {str(e).splitlines()[0]}") \
                from None
        return model.to(device).eval()
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file {weights} is missing")
    try:
        model.load_weights(weights)
    except (OSError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"cannot load weights from {weights}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer a checkpoint was trained with (``tokenizer`` in model.json; files beside it when saved)."""
    from leanformer.data.tokenizers import HFTokenizer, get_tokenizer

    ckpt = resolve_checkpoint(path)
    if (ckpt / "tokenizer.json").is_file():
        return HFTokenizer.from_pretrained(ckpt)
    meta = read_model_meta(ckpt)
    return get_tokenizer(meta.get("tokenizer", "byte"))
