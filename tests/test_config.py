import dataclasses

import pytest

from leanformer.config import RunConfig, apply_overrides, cfg, from_dict, load_run_config, load_yaml, save_yaml
from leanformer.errors import ConfigError
from leanformer.models.gpt import GPTConfig

BASE = {"model": {"name": "gpt", "d_model": 64, "n_heads": 4, "n_layers": 2}, "trainer": {"max_steps": 3}}


def test_unknown_key_names_it_and_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_step'.*did you mean 'trainer\.max_steps'"):
        RunConfig.from_raw(apply_overrides(BASE, ["trainer.max_step=5"]))
    with pytest.raises(ConfigError, match=r"model\.d_modle.*did you mean 'model\.d_model'"):
        RunConfig.from_raw(apply_overrides(BASE, ["model.d_modle=5"]))


def test_wrong_type_and_range_name_the_value():
    with pytest.raises(ConfigError, match=r"trainer\.batch_size: expected an integer, got 'many'"):
        RunConfig.from_raw(apply_overrides(BASE, ["trainer.batch_size=many"]))
    with pytest.raises(ConfigError, match=r"optim\.lr: -1\.0 is out of range; allowed: > 0\.0"):
        RunConfig.from_raw(apply_overrides(BASE, ["optim.lr=-1"]))
    with pytest.raises(ConfigError, match=r"schedule\.name: 'cosin' is not allowed; choose one of"):
        RunConfig.from_raw(apply_overrides(BASE, ["schedule.name=cosin"]))
    with pytest.raises(ConfigError, match=r"model\.name: unknown model family 'gtp'; choose one of .*gpt"):
        RunConfig.from_raw(apply_overrides(BASE, ["model.name=gtp"]))


def test_inconsistent_shapes_are_refused():
    with pytest.raises(ConfigError, match=r"n_heads: 5 does not divide model\.d_model=64"):
        RunConfig.from_raw(apply_overrides(BASE, ["model.n_heads=5"]))
    with pytest.raises(ConfigError, match=r"n_kv_heads: 3 must divide model\.n_heads=4"):
        RunConfig.from_raw(apply_overrides(BASE, ["model.n_kv_heads=3"]))


def test_overrides_parse_yaml_values_and_nested_keys():
    raw = apply_overrides(BASE, ["optim.betas=[0.8, 0.9]", "trainer.compile=true", "model.n_kv_heads=2"])
    c = RunConfig.from_raw(raw)
    assert c.optim.betas == (0.8, 0.9) and c.trainer.compile is True and c.model.kv_heads == 2
    assert BASE["trainer"] == {"max_steps": 3}  # the input is not mutated
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(BASE, ["trainer.max_steps"])


def test_roundtrip_through_yaml(tmp_path):
    c = RunConfig.from_raw(apply_overrides(BASE, ["seed=7", "data.seq_len=33"]))
    save_yaml(c.to_raw(), tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml")
    assert again == c
    assert load_yaml(tmp_path / "config.yaml")["model"]["name"] == "gpt"


def test_every_preset_loads_and_accepts_the_standard_overrides():
    import pathlib

    presets = sorted(pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert presets
    for p in presets:  # training presets; other schemas live in subfolders (frontier/, dmc/, finetune/, ...)
        c = load_run_config(p, ["trainer.max_steps=2", "trainer.device=cpu"])
        assert c.trainer.max_steps == 2 and c.trainer.device == "cpu"


def test_field_ranges_generic():
    @dataclasses.dataclass(kw_only=True)
    class C:
        x: int = cfg(1, ge=1, le=3)
        y: float | None = None

    assert from_dict(C, {"x": 3, "y": 2}).y == 2.0
    with pytest.raises(ConfigError, match=r"x: 4 is out of range; allowed: >= 1 and <= 3"):
        from_dict(C, {"x": 4})
    with pytest.raises(ConfigError, match=r"x: expected an integer, got True"):
        from_dict(C, {"x": True})
    assert GPTConfig().ff_dim % 64 == 0


def test_registry_names_match_their_config_classes():
    from leanformer.models.registry import MODELS

    for name, spec in MODELS.items():
        module, cfg_cls, model_cls = spec.split(":")
        assert module.endswith(name) or name in module, f"registry entry {name!r} points at {module}"
        assert cfg_cls.endswith("Config") and model_cls
