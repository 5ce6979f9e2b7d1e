import math

import pytest
import torch

from leanformer.config import OptimConfig, ScheduleConfig
from leanformer.train.optim import build_optimizer
from leanformer.train.optim.adafactor import Adafactor
from leanformer.train.optim.adamw_scale import AdamWScale
from leanformer.train.schedules import lr_multiplier


def params(seed=42):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 13, generator=g) * s) for s in (1.0, 1e-5)] + \
        [torch.nn.Parameter(torch.randn(13, generator=g))]


def run(opt_cls, ps, steps=4, **kw):
    opt = opt_cls(ps, **kw)
    for i in range(steps):
        for j, p in enumerate(ps):
            p.grad = torch.sin(p.detach() * (i + 1) + j)
        opt.step()
    return ps


def test_adamw_scale_foreach_matches_reference_loop():
    a = run(AdamWScale, params(), lr=2e-2, weight_decay=0.01, foreach=True)
    b = run(AdamWScale, params(), lr=2e-2, weight_decay=0.01, foreach=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_adamw_scale_first_step_is_rms_scaled():
    p = params()
    before = [x.detach().clone() for x in p]
    run(AdamWScale, p, steps=1, lr=1e-2)
    for x, x0 in zip(p, before):
        # first Adam step is ~sign(g) * lr, scaled by max(1e-3, RMS(p))
        rms = max(1e-3, float(x0.norm() / math.sqrt(x0.numel())))
        assert abs(float((x.detach() - x0).abs().max()) / (1e-2 * rms) - 1) < 1e-3


def test_adafactor_matches_transformers():
    from transformers.optimization import Adafactor as HFAdafactor

    a = run(Adafactor, params(), lr=1e-2)
    b = run(HFAdafactor, params(), lr=1e-2, relative_step=False, scale_parameter=True, warmup_init=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["adamwscale", "adafactor"])
def test_build_optimizer_names(name):
    opt = build_optimizer(torch.nn.Linear(3, 2), OptimConfig(name=name, lr=1e-2, weight_decay=0.0))
    assert type(opt).__name__.lower() == name


def test_cosine_warmup_from_half_and_legacy_inverse_sqrt():
    s = ScheduleConfig(name="cosine", warmup_steps=10, warmup_start=0.5, final_lr_fraction=5e-4)
    assert lr_multiplier(s, 0, 0.0) == pytest.approx(0.55)
    assert lr_multiplier(s, 9, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(s, 999, 1.0) == pytest.approx(5e-4)
    legacy = ScheduleConfig(name="inverse_sqrt", warmup_steps=10_000)
    # with lr 1e-2: min(1e-2, 1/sqrt(step)), then linear to 0 over the last 10% of 65,536 steps
    for step in (1, 9_999, 40_000, 58_982):
        assert 1e-2 * lr_multiplier(legacy, step, step / 65_536) == pytest.approx(min(1e-2, step ** -0.5), rel=1e-4)
    end = 1e-2 * lr_multiplier(legacy, 62_259, 62_259 / 65_536)
    assert end == pytest.approx(58_982.4 ** -0.5 * 0.5, rel=1e-3)
    assert lr_multiplier(legacy, 65_536, 1.0) == 0.0
