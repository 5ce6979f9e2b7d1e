"""What a run directory allows before training starts: resume, refuse, or start over.

- **Resume** from the newest checkpoint that verifies (a newer damaged one is reported and skipped).
- **Refuse** a folder that holds checkpoints of which none verifies: starting from step 0 there would, at the first
  pruning, delete what may be the only copy of the run. The error names every damaged file; nothing is changed.
- **Refuse** a config that differs from the run's saved ``config.yaml`` in what a resumed run cannot change
  (:func:`is_fixed`): the model, the data and tokenizer, the optimizer's type. The budget, the evaluation / log /
  checkpoint cadence, the learning rate and schedule and where the run executes may change; the saved config then
  takes the new values.
- **Start over** (``restart=True``, the CLI's ``--restart``): the run's files move to ``OUT/previous-N/`` (never
  deleted) and training starts from step 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from leanformer.errors import CheckpointError, ConfigError

# What a resumed run cannot change: the weights' shapes (model), the token stream it trains on (data, tokenizer,
# packing) and the optimizer state's layout (optim.name). The budget, the cadence of evaluation, logging and
# checkpoints, the learning rate and schedule (e.g. a lower LR after a NaN) and where it runs may change.
FIXED_SECTIONS = ("model", "data")
FIXED_KEYS = frozenset({"optim.name"})


def is_fixed(key: str) -> bool:
    return key.split(".", 1)[0] in FIXED_SECTIONS or key in FIXED_KEYS


# Files and folders that make up a run (what --restart moves aside).
RUN_FILES = ("checkpoints", "config.yaml", "metrics.jsonl", "metrics.replaced.jsonl", "tensorboard")


def flatten(raw, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, saved value, new value)`` for every field that differs, sorted by key."""
    a, b = flatten(saved), flatten(new)
    order = {name: i for i, name in enumerate(("model", "data", "optim", "schedule", "trainer"))}
    keys = sorted(set(a) | set(b), key=lambda k: (order.get(k.split(".")[0], len(order)), k != "model.name", k))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def check_resume_config(out: Path, cfg) -> None:
    """Raise :class:`ConfigError` (one line) when ``cfg`` changes a field of the run in ``out`` that a resumed run
    may not change; list each such field with its saved and new value."""
    from leanformer.config import RunConfig, load_yaml

    path = Path(out) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = RunConfig.from_raw(load_yaml(path)).to_raw()
    except ConfigError as e:
        raise ConfigError(f"the saved config of the run in {out} ({path}) is not valid: {e}") from None
    fixed = [c for c in config_changes(saved, cfg.to_raw()) if is_fixed(c[0])]
    if not fixed:
        return
    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in fixed[:4])
    more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
    raise ConfigError(
        f"{out} holds a run whose saved config.yaml differs in {shown}{more}; a resumed run keeps its model, data, "
        "tokenizer and optimizer type, while its budget (trainer.max_steps, max_tokens, max_seconds), eval / log / "
        "checkpoint cadence, learning rate and schedule, and trainer settings may change. Drop those changes "
        "(without CONFIG the saved config is used), choose another --out, or pass --restart to start over")


def set_aside(out: Path) -> Path | None:
    """Move the run files of ``out`` into a new ``out/previous-N/``; returns it (None when there was nothing)."""
    out = Path(out)
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    n = 1
    while (dest := out / f"previous-{n}").exists():
        n += 1
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)  # a rename within one folder: atomic, nothing copied or deleted
    return dest


def resume_point(out: Path, restart: bool = False) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), after ``restart`` has set the old run aside.

    Raises :class:`CheckpointError` naming each damaged file when ``out`` holds checkpoints and none verifies."""
    from leanformer.train.checkpoint import list_checkpoints, verify_checkpoint

    if restart:
        kept = set_aside(out)
        if kept is not None:
            print(f"leanformer: starting over in {out}; the previous run is kept in {kept}", file=sys.stderr)
        return None
    errors = []
    for ckpt in reversed(list_checkpoints(out)):
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        for e in errors:
            print(f"leanformer: warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
        return ckpt
    if errors:
        raise CheckpointError(f"{out} holds {len(errors)} checkpoint(s) and none is usable: " + "; ".join(errors)
                              + ". Nothing was changed; pass --restart to start over (the old files are kept in "
                              f"{out}/previous-N/), or use another --out")
    return None
