"""Accuracy-preservation tests: exact small cases, and simulations of size (type-I rate) and power."""

import math

import numpy as np
import pytest

from leanformer.analysis import stats
from leanformer.errors import UserError


def paired_binary(rng, n, p_dense, p_sparse, coupling=0.8):
    """Binary paired scores: a shared uniform per sample (re-drawn with prob 1 - coupling for the sparse run)."""
    u = rng.random(n)
    v = np.where(rng.random(n) < coupling, u, rng.random(n))
    return (u < p_dense).astype(float), (v < p_sparse).astype(float)


def rejection_rate(test, p_sparse, sims=300, n=100, margin=0.0, framing="degradation", p_dense=0.7):
    rng = np.random.default_rng(42)
    rejections = 0
    for i in range(sims):
        dense, sparse = paired_binary(rng, n, p_dense, p_sparse, coupling=0.5)
        kw = {"n_boot": 500} if test == "bootstrap" else {"n_perm": 500} if test == "permutation" else {}
        rejections += stats.TESTS[test](dense, sparse, margin=margin, framing=framing, seed=i, **kw) <= 0.05
    return rejections / sims


@pytest.mark.parametrize("test", ["bootstrap", "permutation", "sign"])
def test_size_under_no_degradation_is_near_nominal(test):
    # 300 simulations: the standard error of a 5% rate is 1.3 points. Discrete tests may be conservative.
    rate = rejection_rate(test, p_sparse=0.7)
    assert 0.02 <= rate <= 0.09, rate


@pytest.mark.parametrize("test", ["bootstrap", "permutation", "sign"])
def test_power_under_a_real_drop(test):
    assert rejection_rate(test, p_sparse=0.5, sims=100) >= 0.9


def test_noninferiority_framing_size_at_margin_and_power_when_equal():
    # True drop exactly at the margin (0.1): the null boundary, so rejections ~ alpha.
    assert rejection_rate("bootstrap", p_sparse=0.6, margin=0.1, framing="noninferiority") <= 0.09
    # No drop at all with n = 300: non-inferiority within 0.1 is proven most of the time.
    assert rejection_rate("bootstrap", p_sparse=0.7, margin=0.1, framing="noninferiority", sims=60, n=300) >= 0.8


def test_sign_test_exact_value():
    # 2 discordant pairs against sparse, 0 for: P(Binom(2, 1/2) >= 2) = 1/4.
    dense, sparse = np.array([1, 1, 0, 1.0]), np.array([0, 0, 0, 1.0])
    assert stats.sign_pvalue(dense, sparse) == 0.25
    assert stats.sign_pvalue(dense, sparse, framing="noninferiority") == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    d = np.array([1.0] * 9 + [0.0] * 11 + [0.0] * 30)
    s = np.array([0.0] * 9 + [1.0] * 3 + [0.0] * 8 + [0.0] * 30)
    assert stats.sign_pvalue(d, s) == pytest.approx(scipy_stats.binomtest(9, 12, 0.5, alternative="greater").pvalue)


def test_permutation_exact_enumeration():
    # d = (-1, -0.5, 0.25): of the 8 sign patterns, sums <= -1.25 are (-,-,+) = -1.25 and (-,-,-) = -1.75.
    dense, sparse = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.5, 0.25])
    assert stats.permutation_pvalue(dense, sparse) == 2 / 8


def test_bootstrap_degenerate_cases():
    ones = np.ones(30)
    assert stats.bootstrap_pvalue(ones, ones) == 1.0  # identical: no evidence of a drop
    assert stats.bootstrap_pvalue(ones, np.zeros(30)) < 0.01
    with pytest.raises(UserError, match="equal-length"):
        stats.bootstrap_pvalue(ones, np.ones(29))
    with pytest.raises(UserError, match="margin"):
        stats.bootstrap_pvalue(ones, ones, margin=-0.1)


def test_holm_adjusted_pvalues():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_controls_familywise_error_over_a_null_ladder():
    rng = np.random.default_rng(42)
    fwer = {"holm": 0, "none": 0}
    sims = 200
    for i in range(sims):
        ladder = [(s, *paired_binary(rng, 80, 0.6, 0.6)) for s in (0.5, 0.8, 0.9, 0.95)]
        for corr in fwer:
            res = stats.safe_sparsity(ladder, test="sign", correction=corr, n_boot=500, seed=i)
            fwer[corr] += any(lv.rejected for lv in res.levels)
    assert fwer["holm"] / sims <= 0.08
    assert fwer["none"] > fwer["holm"]


def test_safe_sparsity_finds_the_breaking_point():
    rng = np.random.default_rng(42)
    found = []
    for i in range(40):
        ladder = [(0.5, *paired_binary(rng, 100, 0.8, 0.8)), (0.8, *paired_binary(rng, 100, 0.8, 0.79)),
                  (0.9, *paired_binary(rng, 100, 0.8, 0.5)), (0.95, *paired_binary(rng, 100, 0.8, 0.3))]
        found.append(stats.safe_sparsity(ladder, n_boot=500, seed=i).safe)
    assert np.mean(np.array(found) == 0.8) >= 0.8
    assert max(found) <= 0.8 + 1e-9 or np.mean(np.array(found) > 0.8) <= 0.1


def test_fixed_sequence_stops_at_first_failure_and_reports_levels():
    dense = np.ones(40)
    ladder = [(0.9, dense, np.zeros(40)), (0.5, dense, dense), (0.8, dense, dense)]
    res = stats.safe_sparsity(ladder, correction="fixed_sequence")
    assert [lv.sparsity for lv in res.levels] == [0.5, 0.8, 0.9]
    assert res.safe == 0.8 and res.levels[2].rejected and res.levels[2].delta == -1.0
    ni = stats.safe_sparsity(ladder, margin=0.05, framing="noninferiority", correction="fixed_sequence")
    assert ni.safe == 0.8
    assert stats.safe_sparsity([(0.5, dense, np.zeros(40))]).safe == 0.0
    for bad in ({"test": "t"}, {"correction": "bonf"}, {"framing": "x"}, {"alpha": 1.5}):
        with pytest.raises(UserError):
            stats.safe_sparsity(ladder, **bad)
    assert not math.isnan(res.levels[0].ci_low)


def test_bootstrap_ci_is_scipys_percentile_interval():
    scipy_stats = pytest.importorskip("scipy.stats")
    d = np.random.default_rng(42).normal(0.1, 1.0, 50)
    ref = scipy_stats.bootstrap((d,), np.mean, n_resamples=1000, confidence_level=0.9, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval
    assert stats.bootstrap_ci(d, 0.9, 1000, seed=3) == pytest.approx((ref.low, ref.high))
    # Equal differences (BCa is undefined there) and one pair (scipy needs two) still give an interval.
    assert stats.bootstrap_ci(np.zeros(20)) == (0.0, 0.0) and stats.bootstrap_ci([0.5]) == (0.5, 0.5)
    assert np.all(stats.bootstrap_means(np.array([0.5]), 10) == 0.5)


@pytest.mark.parametrize("module, dependency", [("stats", "scipy"), ("stats", "statsmodels.stats.multitest"),
                                                ("scaling", "statsmodels.regression.linear_model")])
def test_a_missing_analysis_dependency_is_a_user_error(module, dependency, monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, dependency, None)  # makes the import fail
    monkeypatch.delitem(sys.modules, f"leanformer.analysis.{module}", raising=False)
    with pytest.raises(UserError, match=r"pip install leanformer\[analysis\]"):
        importlib.import_module(f"leanformer.analysis.{module}")
