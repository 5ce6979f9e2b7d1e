"""Typed dataclass configs: load YAML, apply ``key.sub=value`` overrides, validate, save beside every run.

Each component owns a small dataclass (``GPTConfig`` in ``models/gpt.py``, ``TrainerConfig`` below, ...). Fields
declare their allowed range with :func:`cfg`; :func:`from_dict` builds a dataclass from plain data and refuses
unknown keys (suggesting the closest valid one), wrong types and out-of-range values, naming the dotted key, the
bad value and what is allowed (both live in :mod:`leanformer.schema`, below the model registry, and are re-exported
here). YAML and ``key=value`` strings exist only at the edge (CLI, files); the rest of the code sees typed objects.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from leanformer.errors import ConfigError
from leanformer.models.registry import model_config_from_dict, model_config_to_dict
from leanformer.schema import cfg, from_dict, to_dict

__all__ = [
    "cfg",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_yaml",
    "save_yaml",
    "atomic_write_text",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "RunConfig",
    "load_run_config",
]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to nested plain data; values are parsed as YAML scalars/lists."""
    raw = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        path, text = item.split("=", 1)
        keys = [p for p in path.strip().split(".") if p]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() != "" else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict | list) and not text.lstrip().startswith(("[", "{")):
            value = text  # 'answer_prefix=Answer: ' means a string, not the YAML mapping {Answer: null}
        node = raw
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return raw


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder + fsync + rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


# ---- the run config: one section per component --------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class DataConfig:
    """Where text comes from, how it is tokenized and packed into ``[B, T]`` sequences."""

    source: str = cfg("shakespeare", help="'shakespeare', a local file/folder path, or 'hf:<dataset name>'")
    tokenizer: str = cfg("byte", help="'byte', or a Hugging Face tokenizer name/path prefixed with 'hf:'")
    seq_len: int = cfg(256, ge=1)
    text_field: str = cfg("text", help="column holding the text for Hugging Face datasets")
    hf_config: str | None = None
    val_fraction: float = cfg(0.05, gt=0.0, lt=0.5, help="split fraction for sources without a fixed split")
    max_tokens: int | None = cfg(None, ge=1, help="cap on tokens read per split (large HF datasets)")
    cache_dir: str | None = None


@dataclasses.dataclass(kw_only=True)
class OptimConfig:
    name: str = cfg("adamw", choices=("adamw", "adamwscale", "adafactor", "lion", "sophia"),
                    help="optimizer; adamwscale/adafactor: nanoT5; lion, sophia (Sophia-G): see train/optim")
    lr: float = cfg(3e-3, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = cfg(1e-8, gt=0.0)
    weight_decay: float = cfg(0.1, ge=0.0)
    grad_clip: float = cfg(1.0, ge=0.0, help="max global grad norm; 0 disables clipping")
    rho: float = cfg(0.04, gt=0.0, help="sophia: clipping scale of the Hessian-preconditioned step")
    hessian_every: int = cfg(10, ge=1, help="sophia: optimizer steps between Hessian estimates")

    def __post_init__(self):
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"optim.betas: {list(self.betas)} out of range; each must be in [0, 1)")


@dataclasses.dataclass(kw_only=True)
class ScheduleConfig:
    name: str = cfg("cosine", choices=("cosine", "linear", "constant", "inverse_sqrt"),
                    help="inverse_sqrt: T5's legacy min(1, sqrt(warmup/step)), linear to 0 over the last 10%")
    warmup_steps: int = cfg(50, ge=0)
    warmup_start: float = cfg(0.0, ge=0.0, le=1.0, help="warmup starts at this fraction of lr (nanoT5: 0.5)")
    final_lr_fraction: float = cfg(0.0, ge=0.0, le=1.0, help="LR at the end of the budget, as a fraction of lr")


LOGGERS = ("jsonl", "tensorboard")


@dataclasses.dataclass(kw_only=True)
class TrainerConfig:
    device: str = cfg("auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: str = cfg("auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool = False
    distributed: str = cfg("auto", choices=("auto", "none", "ddp", "fsdp2"), help="data parallelism under "
                           "torchrun (leanformer.train.distributed); auto: ddp on several ranks, none on one; "
                           "batch_size stays the global micro-batch")
    batch_size: int = cfg(16, ge=1, help="sequences per micro-batch")
    grad_accum: int = cfg(1, ge=1)
    max_steps: int | None = cfg(None, ge=1, help="stop after this many optimizer steps")
    max_tokens: int | None = cfg(None, ge=1, help="stop after this many training tokens")
    max_seconds: float | None = cfg(None, gt=0.0, help="stop after this much training time on the run's clock "
                                    "(wall time, or reference system time with rst_table)")
    rst_table: str | None = cfg(None, help="RST table from `leanformer rst calibrate`: the budget clock charges "
                                "each pass its reference time instead of wall time")
    eval_every: int = cfg(100, ge=1)
    eval_batches: int = cfg(20, ge=1)
    log_every: int = cfg(10, ge=1)
    ckpt_every: int = cfg(100, ge=1)
    keep_last: int = cfg(2, ge=1, help="checkpoints kept on disk")
    progress: bool = True
    loggers: list[str] = cfg(default_factory=lambda: ["jsonl"], help="where metrics go: jsonl (metrics.jsonl, "
                             "always) and optionally tensorboard (OUT/tensorboard/); see leanformer.train.loggers")

    def __post_init__(self):
        for name in self.loggers:
            if name not in LOGGERS:
                raise ConfigError(f"trainer.loggers: {name!r} is not allowed; choose from {', '.join(LOGGERS)}")
        if len(set(self.loggers)) != len(self.loggers) or "jsonl" not in self.loggers:
            raise ConfigError(f"trainer.loggers: {list(self.loggers)} must name each logger once and include "
                              "'jsonl' (metrics.jsonl is the run's record, read by resume and reports)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"trainer.device: {self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
        if self.max_steps is None and self.max_tokens is None and self.max_seconds is None:
            raise ConfigError("trainer: no budget set; give trainer.max_steps, trainer.max_tokens or max_seconds")


@dataclasses.dataclass(kw_only=True)
class RunConfig:
    """A whole training run. ``model`` is the family's own config class, chosen by ``model.name``."""

    model: Any
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=lambda: TrainerConfig(max_steps=1000))
    seed: int = cfg(0, ge=0)

    @classmethod
    def from_raw(cls, raw: dict) -> RunConfig:
        raw = dict(raw)
        if "model" not in raw:
            raise ConfigError("missing required config key 'model' (with at least 'model.name')")
        model = model_config_from_dict(raw.pop("model"))
        return from_dict(cls, {**raw, "model": model})

    def to_raw(self) -> dict:
        out = to_dict(self)
        out["model"] = model_config_to_dict(self.model)
        return out


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or nothing) + ``key=value`` overrides -> validated :class:`RunConfig`."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return RunConfig.from_raw(raw)
