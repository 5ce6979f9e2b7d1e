"""Reliability and safety helpers every command shares (the faults tried are listed in ``docs/reliability.md``).

- **No pickle**: weights are read from safetensors. A pickled file (``.bin``, ``.pt``, ``.pth``, ``.ckpt``,
  ``.pkl``) can run arbitrary code when unpickled, so it is refused with a message naming the file unless the user
  passes ``--allow-pickle`` (any ``leanformer`` command) or sets ``LEANFORMER_ALLOW_PICKLE=1``; even then it is
  read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only.
  :func:`leanformer.models.hf.hf_from_pretrained` applies the same rule to Hugging Face ``from_pretrained``
  (``use_safetensors=True`` unless allowed, ``weights_only=True`` and never ``trust_remote_code``).
- **Fail before the work, not after an hour**: :func:`check_output_dir` creates the output directory, writes a
  probe file (read-only file systems and permission problems) and compares the free space
  (``shutil.disk_usage``) with an estimate of what the run will write (:func:`training_bytes`).
- **Crash points** (tests only): :func:`crash_point` SIGKILLs the process the ``n``-th time a named point is
  reached when ``LEANFORMER_CRASH_AT=<name>[@n]`` is set, so the crash harness (``tests/reliability``) can kill a
  checkpoint write between two of its files deterministically. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from leanformer.errors import CheckpointError, UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOW_PICKLE_ENV = "LEANFORMER_ALLOW_PICKLE"
CRASH_ENV = "LEANFORMER_CRASH_AT"
# Room kept free beyond the estimate: metrics, config, token caches, file-system slack.
MARGIN_BYTES = 64 << 20

_crash_counts: dict[str, int] = {}


# ---- pickle -------------------------------------------------------------------------------------------------------


def pickle_allowed(flag: bool | None = None) -> bool:
    """``flag`` when given, else whether ``--allow-pickle`` / ``LEANFORMER_ALLOW_PICKLE=1`` is in effect."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_allow_pickle(on: bool) -> None:
    """Process-wide switch (the CLI's ``--allow-pickle``); an environment variable so worker processes inherit it."""
    if on:
        os.environ[ALLOW_PICKLE_ENV] = "1"
    else:
        os.environ.pop(ALLOW_PICKLE_ENV, None)


def is_pickle(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_weight_files(directory: str | os.PathLike) -> list[Path]:
    """Pickled weight files directly inside ``directory`` (sorted); empty for a missing directory."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and is_pickle(p))


def refuse_pickle(path: str | os.PathLike, allow: bool | None = None) -> None:
    """Raise a one-line :class:`UserError` naming ``path`` unless pickled files are allowed."""
    if not pickle_allowed(allow):
        raise UserError(f"{path} is a pickled checkpoint, which can run arbitrary code when loaded; refusing it. "
                        "Convert it to safetensors, or pass --allow-pickle if you trust its source "
                        "(it is then read with torch.load(weights_only=True))")


def load_pickled_weights(path: str | os.PathLike, allow: bool | None = None) -> dict:
    """A state dict from a pickled file: refused unless allowed, then ``torch.load(weights_only=True)`` on CPU."""
    import torch

    refuse_pickle(path, allow)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, zipfile errors: all "bad file"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint file {path} cannot be read as weights only: {first[:300]}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"checkpoint file {path} does not hold a flat name -> tensor state dict")
    return sd


# ---- output directories ---------------------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def existing_ancestor(path: Path) -> Path:
    """The nearest folder at or above ``path`` that exists (what a new file there would be written into)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or would, once created)."""
    return shutil.disk_usage(existing_ancestor(Path(path))).free


def check_output_dir(path: str | os.PathLike, need_bytes: int = 0, what: str = "the output") -> Path:
    """Create ``path``, prove it writable with a probe file, and require ``need_bytes`` + a margin of free space.

    Raises a one-line :class:`UserError` naming the directory; meant to run before any long work starts."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable: {e.strerror or e}") from None
    need = int(need_bytes) + MARGIN_BYTES
    free = free_bytes(out)
    if free < need:
        raise UserError(f"output directory {out} has {format_bytes(free)} free, but {what} needs about "
                        f"{format_bytes(need)}; free some space or choose another directory")
    return out


@contextlib.contextmanager
def removed_if_left_empty(path: str | os.PathLike):
    """Run the block; if it fails, remove the folders it created for ``path`` that are still empty (innermost
    first), so a command refused before any work leaves no empty output folder behind. Never removes a file."""
    p = Path(path).absolute()
    created = []
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in created:
            try:
                d.rmdir()  # only ever succeeds on an empty folder
            except OSError:
                break
        raise


def training_bytes(model, keep_last: int, optimizer_states: int = 2) -> int:
    """Disk a training run may use at once: ``keep_last + 1`` checkpoints (one being written before the oldest is
    pruned), each holding the weights and ``optimizer_states`` tensors of the same size (AdamW: 2)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (keep_last + 1) * weights * (1 + optimizer_states)


# ---- crash points (tests) ---------------------------------------------------------------------------------------


def crash_point(name: str) -> None:
    """SIGKILL this process the ``n``-th time ``name`` is reached when ``LEANFORMER_CRASH_AT=name[@n]`` (n=1)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
