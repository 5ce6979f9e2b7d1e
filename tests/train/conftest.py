"""Shared by the No-Train-No-Gain tests (fixture ``ntng``; importlib mode cannot import conftest): tiny run configs
for gpt / t5 / bert and a synthetic RST table."""

import types
from pathlib import Path

import pytest

from leanformer.config import load_run_config, load_yaml
from leanformer.models.registry import model_config_to_dict
from leanformer.train.optim import OPTIMIZERS
from leanformer.train.rst import RSTTable

ROOT = Path(__file__).parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
RUN = ["data.seq_len=24", "trainer.batch_size=3", "trainer.eval_batches=1", "trainer.log_every=1",
       "trainer.progress=false", "trainer.device=cpu", "schedule.warmup_steps=1", "data.max_tokens=30000"]
MODEL = {"gpt": ["model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1"],
         "t5": ["model.d_model=32", "model.n_heads=2", "model.d_kv=16", "model.d_ff=64", "model.n_layers=4"],
         "bert": ["model.d_model=32", "model.n_heads=2", "model.d_ff=64"]}
TINY = MODEL["gpt"] + RUN


def tiny_cfg(*over, preset=PRESET):
    family = load_yaml(preset)["model"]["name"]
    return load_run_config(preset, MODEL[family] + RUN + list(over))


def synthetic_table(cfg, per_layer=0.1, base=0.05, fwd_ratio=1 / 3, step=0.01) -> RSTTable:
    """``fwd_bwd[k] = base + per_layer k`` seconds per micro-batch; forward-only a third of it."""
    n = cfg.model.n_layers
    fb = [base + per_layer * k for k in range(n + 1)]
    return RSTTable(model=model_config_to_dict(cfg.model), seq_len=cfg.data.seq_len,
                    batch_size=cfg.trainer.batch_size, layers=n, fwd_bwd=fb, forward=[x * fwd_ratio for x in fb],
                    optimizer_step={name: step for name in OPTIMIZERS})


@pytest.fixture
def ntng():
    return types.SimpleNamespace(ROOT=ROOT, PRESET=PRESET, RUN=RUN, MODEL=MODEL, TINY=TINY, tiny_cfg=tiny_cfg,
                                 synthetic_table=synthetic_table)
