"""Model registry: family name -> (config class, model class). One plain dict, in one place."""

from __future__ import annotations

import dataclasses
import importlib

from leanformer.errors import ConfigError
from leanformer.schema import from_dict, to_dict

# name -> "module:ConfigClass:ModelClass"; imported lazily so optional families cost nothing at start-up.
MODELS: dict[str, str] = {
    "gpt": "leanformer.models.gpt:GPTConfig:GPT",
    "hourglass": "leanformer.models.hourglass:HourglassConfig:Hourglass",
    "dynamic_pooling": "leanformer.models.dynamic_pooling:DynamicPoolingConfig:DynamicPooling",
    "t5": "leanformer.models.t5:T5Config:T5",
    "dmc": "leanformer.models.dmc:DMCConfig:DMC",
    "bert": "leanformer.models.bert:BertConfig:Bert",
}


def get_family(name: str):
    """Return ``(ConfigClass, ModelClass)`` for a family name, or raise a ConfigError listing valid names."""
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"model.name: unknown model family {name!r}; choose one of {', '.join(sorted(MODELS))}")
    mod, cfg_cls, model_cls = MODELS[name].split(":")
    try:
        m = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
        raise ConfigError(f"model.name: family {name!r} is registered but not implemented yet ({mod})") from None
    return getattr(m, cfg_cls), getattr(m, model_cls)


def model_config_from_dict(raw: dict):
    if not isinstance(raw, dict):
        raise ConfigError(f"model: expected a mapping with a 'name' key, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("name", None)
    if name is None:
        raise ConfigError(f"model.name is required; choose one of {', '.join(sorted(MODELS))}")
    cfg_cls, _ = get_family(name)
    return from_dict(cfg_cls, raw, prefix="model")


def model_config_to_dict(config) -> dict:
    out = {"name": family_of(config)}
    out.update(to_dict(config))
    return out


def family_of(config) -> str:
    for name, spec in MODELS.items():
        mod, cfg_cls, _ = spec.split(":")
        if type(config).__name__ == cfg_cls and type(config).__module__ == mod:
            return name
    raise ConfigError(f"config of type {type(config).__name__} is not a registered model config")


def build_model(config):
    _, model_cls = get_family(family_of(config))
    return model_cls(config)


def config_replace(config, **changes):
    return dataclasses.replace(config, **changes)
