"""Scaling-law fits recover known coefficients from synthetic data; intervals cover; held-out validation works."""

import numpy as np
import pytest

from leanformer.analysis import scaling
from leanformer.errors import UserError

TRUE = {"intercept": 0.3, "ln N": 0.05, "ln L": -0.03, "ln CR": -0.08}


def grid():
    n, l, s = np.meshgrid([0.5e9, 1.5e9, 3e9, 7e9, 14e9], [4096, 8192, 16384, 32768], [0.0, 0.5, 0.8, 0.9, 0.95])
    return n.ravel(), l.ravel(), s.ravel()


def law(n, l, s, coef=TRUE, nc=0.0):
    cr = np.log(1 / (1 - s))
    return coef["intercept"] + coef["ln N"] * np.log(n) + coef["ln L"] * np.log(l) + coef["ln CR"] * cr + nc * np.log(
        n) * cr


def test_recovers_known_coefficients():
    rng = np.random.default_rng(42)
    n, l, s = grid()
    noise = rng.normal(0, 0.01, n.size)
    fit = scaling.fit_loglinear(n, l, s, law(n, l, s) + noise)
    for name, (c, lo, hi) in fit.as_dict().items():
        assert lo <= TRUE[name] <= hi, name
        assert c == pytest.approx(TRUE[name], abs=0.05 if name == "intercept" else 0.002)  # intercept: ln N ~ 21 away
    assert fit.r2 > 0.95
    assert fit.sigma == pytest.approx(noise.std(), rel=0.05)


def test_confidence_intervals_cover_at_nominal_rate():
    rng = np.random.default_rng(42)
    n, l, s = grid()
    covered = 0
    for _ in range(200):
        fit = scaling.fit_loglinear(n[::3], l[::3], s[::3], law(n[::3], l[::3], s[::3]) + rng.normal(0, 0.05, 34))
        covered += fit.ci_low[1] <= TRUE["ln N"] <= fit.ci_high[1]
    assert 0.9 <= covered / 200 <= 0.99


def test_interactions_and_group_intercepts():
    rng = np.random.default_rng(42)
    n, l, s = grid()
    group = np.array(["niah", "qa"] * (n.size // 2))
    y = law(n, l, s, nc=0.02) + np.where(group == "qa", -0.2, 0.0) + rng.normal(0, 0.005, n.size)
    fit = scaling.fit_loglinear(n, l, s, y, interactions=True, group=group)
    d = fit.as_dict()
    assert d["ln N x ln CR"][1] <= 0.02 <= d["ln N x ln CR"][2]
    assert d["group=qa"][0] == pytest.approx(-0.2, abs=0.01)
    assert d["ln L x ln CR"][1] <= 0.0 <= d["ln L x ln CR"][2]
    plain = scaling.fit_loglinear(n, l, s, y, group=group)
    assert fit.r2 > plain.r2


def test_holdout_extrapolates_the_true_law_and_exposes_a_wrong_one():
    rng = np.random.default_rng(42)
    n, l, s = grid()
    acc = law(n, l, s, nc=0.03) + rng.normal(0, 0.005, n.size)
    pts = {"model_params": n, "length": l, "sparsity": s, "accuracy": acc}
    good = scaling.holdout(pts, "model_params", interactions=True)
    bad = scaling.holdout(pts, "model_params", interactions=False)
    assert good["n_test"] == 20 and good["r2_test"] > 0.95
    assert bad["mae_test"] > 3 * good["mae_test"]
    assert scaling.holdout(pts, "length", interactions=True)["r2_test"] > 0.95
    with pytest.raises(UserError, match="two distinct"):
        scaling.holdout({**pts, "length": np.full(n.size, 4096)}, "length")


def test_targets_and_errors():
    assert np.allclose(scaling.transform([0.9, 1.0], "error"), [0.1, 0.0])
    assert scaling.transform([1.0], "log_error")[0] == pytest.approx(np.log(1e-3))
    with pytest.raises(UserError, match="log_error"):
        scaling.transform([0.5], "logit")
    with pytest.raises(UserError, match="more points"):
        scaling.fit_loglinear([1e9, 2e9], [10, 20], [0.0, 0.5], [0.5, 0.4])
    with pytest.raises(UserError, match="sparsity"):
        scaling.fit_loglinear([1e9] * 6, [10] * 6, [1.0] * 6, [0.5] * 6)


def test_min_budget_interpolates_and_flags_censoring():
    # L = 1000; budgets 500 (err 0), 100 (err 0.10), 50 (err 0.5). 5% is crossed halfway from 100 to 500 in ln.
    ladder = [(0.5, 0.8), (0.9, 0.72), (0.95, 0.4)]
    b, censored = scaling.min_budget(1000, 0.8, ladder, rel_error=0.05)
    assert b == pytest.approx(np.sqrt(100 * 500)) and not censored
    b, censored = scaling.min_budget(1000, 0.8, [(0.5, 0.8), (0.9, 0.8)])
    assert b == pytest.approx(100.0) and censored
    # A lucky pass below a failure does not count: the 50-token level passes but 100 fails.
    b, _ = scaling.min_budget(1000, 0.8, [(0.5, 0.8), (0.9, 0.6), (0.95, 0.8)])
    assert 100 < b < 500


def test_budget_growth_recovers_exponent():
    rng = np.random.default_rng(42)
    lengths = np.repeat([4096, 8192, 16384, 32768, 65536, 131072], 4)
    group = np.tile(["a", "b", "c", "d"], 6)
    offset = {"a": 0.0, "b": 0.5, "c": -0.3, "d": 1.0}
    budgets = 3.0 * lengths**0.7 * np.exp([offset[g] for g in group]) * np.exp(rng.normal(0, 0.05, lengths.size))
    out = scaling.fit_budget_growth(lengths, budgets, group=group)
    assert out["gamma_ci"][0] <= 0.7 <= out["gamma_ci"][1]
    assert out["gamma"] == pytest.approx(0.7, abs=0.03) and out["r2"] > 0.95
    with pytest.raises(UserError, match="two lengths"):
        scaling.fit_budget_growth([4096] * 3, [10, 20, 30])


def test_constant_predictors_are_left_out_not_fitted():
    """One model size and one length: ln N and ln L are collinear with the intercept and must not get slopes."""
    import numpy as np

    from leanformer.analysis import scaling

    rng = np.random.default_rng(42)
    sp = np.repeat([0.0, 0.5, 0.8, 0.9], 5)
    y = 0.7 - 0.1 * -np.log1p(-sp) + rng.normal(0, 0.01, sp.size)
    fit = scaling.fit_loglinear(np.full(sp.size, 1e6), np.full(sp.size, 1024), sp, y)
    d = fit.as_dict()
    assert np.isnan(d["ln N"][0]) and np.isnan(d["ln L"][0])
    assert abs(d["ln CR"][0] + 0.1) < 0.02 and d["ln CR"][1] < -0.1 < d["ln CR"][2]
    np.testing.assert_allclose(fit.predict(np.full(sp.size, 1e6), np.full(sp.size, 1024), sp), y, atol=0.05)
