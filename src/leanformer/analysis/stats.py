"""Accuracy-preservation tests: the largest sparsity at which a method is statistically not worse than dense.

Inputs are per-sample paired scores (same seed = same input) of the dense run and a sparse run; ``d = sparse −
dense``. Two framings of the one-sided question, both with a non-inferiority ``margin`` δ ≥ 0:

- ``"degradation"`` (default): H0 ``E[d] ≥ −δ`` (no drop beyond the margin) against H1 ``E[d] < −δ``. A rejection
  *finds* a drop; under no drop the test rejects at most at the nominal rate α. A sparsity level is safe while no
  drop is found, so the answer is optimistic for small samples — read it with the sample size.
- ``"noninferiority"``: H0 ``E[d] ≤ −δ`` against H1 ``E[d] > −δ`` (the classical non-inferiority test, e.g.
  Wellek, *Testing Statistical Hypotheses of Equivalence and Noninferiority*, 2010). A rejection *proves* the drop
  is smaller than δ; needs δ > 0 and enough samples to declare anything safe.

Tests (``TESTS``): ``bootstrap`` (paired bootstrap of the mean difference, shifted to the null; Efron & Tibshirani
1993, §16.4; resampled by ``scipy.stats.bootstrap``), ``permutation`` (sign-flip test of ``d + δ`` by
``scipy.stats.permutation_test``: exact while every flip fits the resample budget, Monte Carlo beyond) and ``sign``
(exact binomial test of the signs of ``d + δ``, ``scipy.stats.binomtest``). Across the sparsity ladder of one
(model, task, phase, method) the family-wise error is controlled by Holm (1979; statsmodels' ``multipletests``) or
by the fixed-sequence procedure (test in order of increasing sparsity at level α, stop at the first failure).
Needs the ``analysis`` extra (scipy, statsmodels).
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np

from leanformer.errors import UserError

try:
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests
except ImportError:
    raise UserError("accuracy-preservation tests need scipy and statsmodels: pip install leanformer[analysis]") \
        from None

FRAMINGS = ("degradation", "noninferiority")
CORRECTIONS = ("holm", "fixed_sequence", "none")


def _diffs(dense, sparse, margin: float) -> np.ndarray:
    dense, sparse = np.asarray(dense, dtype=float), np.asarray(sparse, dtype=float)
    if dense.shape != sparse.shape or dense.ndim != 1 or dense.size == 0:
        raise UserError(f"paired scores must be two equal-length non-empty 1-D arrays, got shapes "
                        f"{dense.shape} and {sparse.shape}")
    if margin < 0:
        raise UserError(f"margin={margin!r}: must be >= 0 (the tolerated drop in score)")
    return sparse - dense + margin  # shifted so that the null boundary is 0


def _check_framing(framing: str) -> None:
    if framing not in FRAMINGS:
        raise UserError(f"framing={framing!r}: choose one of {', '.join(FRAMINGS)}")


def _bootstrap(d: np.ndarray, n_boot: int, seed: int, confidence: float = 0.9):
    return sps.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                         vectorized=True, rng=np.random.default_rng(seed))


def bootstrap_means(d: np.ndarray, n_boot: int = 2000, seed: int = 42) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``mean(d)`` (``d``: ``[n]`` paired differences, resampled with
    replacement by ``scipy.stats.bootstrap``)."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:  # scipy refuses one observation; its only resample is itself
        return np.full(n_boot, d.mean() if d.size else np.nan)
    return _bootstrap(d, n_boot, seed).bootstrap_distribution


def bootstrap_ci(d, confidence: float = 0.95, n_boot: int = 2000, seed: int = 42) -> tuple[float, float]:
    """Two-sided percentile bootstrap interval of ``mean(d)`` at ``confidence`` (``d``: ``[n]`` paired differences);
    percentile rather than scipy's default BCa, whose acceleration is undefined when every difference is equal."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return (float(d.mean()),) * 2 if d.size else (float("nan"),) * 2
    ci = _bootstrap(d, n_boot, seed, confidence).confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap_pvalue(dense, sparse, margin: float = 0.0, framing: str = "degradation", n_boot: int = 2000,
                     seed: int = 42, **_) -> float:
    """One-sided paired bootstrap p-value: the replicates of ``mean(x)``, ``x = d + δ``, are re-centred on the
    null boundary 0 and compared with the observed mean."""
    _check_framing(framing)
    x = _diffs(dense, sparse, margin)
    m = x.mean()
    null = bootstrap_means(x, n_boot, seed) - m
    hits = np.sum(null <= m + 1e-12) if framing == "degradation" else np.sum(null >= m - 1e-12)
    return float((1 + hits) / (n_boot + 1))


def _sum(x, axis=-1):
    return np.sum(x, axis=axis)


def permutation_pvalue(dense, sparse, margin: float = 0.0, framing: str = "degradation", n_perm: int = 4000,
                       seed: int = 42, **_) -> float:
    """One-sided sign-flip permutation p-value of ``sum(d + δ)`` (null: ``d + δ`` symmetric about 0). With one
    sample, ``permutation_type="samples"`` flips the sign of each observation; the test is exact when the
    ``2^n`` flips of the ``n`` non-zero differences number at most ``n_perm`` (scipy's rule), Monte Carlo with
    ``n_perm`` flips (counting the observed one) beyond."""
    _check_framing(framing)
    x = _diffs(dense, sparse, margin)
    x = x[np.abs(x) > 1e-12]  # a zero keeps its value under a flip; dropping it keeps the exact case exact
    if x.size == 0:
        return 1.0
    res = sps.permutation_test((x,), _sum, permutation_type="samples", vectorized=True,
                               n_resamples=n_perm,
                               alternative="less" if framing == "degradation" else "greater",
                               rng=np.random.default_rng(seed))
    return float(res.pvalue)


def sign_pvalue(dense, sparse, margin: float = 0.0, framing: str = "degradation", **_) -> float:
    """Exact one-sided binomial test on the signs of ``d + δ`` (ties dropped)."""
    _check_framing(framing)
    x = _diffs(dense, sparse, margin)
    neg, pos = int(np.sum(x < -1e-12)), int(np.sum(x > 1e-12))
    if neg + pos == 0:
        return 1.0
    k = neg if framing == "degradation" else pos
    return float(sps.binomtest(k, neg + pos, 0.5, alternative="greater").pvalue)


TESTS = {"bootstrap": bootstrap_pvalue, "permutation": permutation_pvalue, "sign": sign_pvalue}


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (reject where ``adjusted <= alpha``)."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p
    # statsmodels' Holm branch runs a full gc.collect() per call (~0.1 s in a process holding torch; statsmodels
    # PR 8671 was closed unmerged); frozen objects are skipped by the collector, so the call stays microseconds.
    # A heap the caller froze itself stays frozen.
    thaw = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        return multipletests(p, method="holm")[1]
    finally:
        if thaw:
            gc.unfreeze()


@dataclasses.dataclass
class LevelResult:
    sparsity: float
    n: int
    dense_mean: float
    sparse_mean: float
    delta: float  # mean(sparse - dense)
    ci_low: float  # two-sided (1 - 2 alpha) bootstrap interval of delta
    ci_high: float
    p: float
    p_adj: float
    rejected: bool


@dataclasses.dataclass
class SafeSparsity:
    """The answer for one ladder: ``safe`` is the largest sparsity such that it and every lower level pass."""

    safe: float
    levels: list[LevelResult]
    framing: str
    test: str
    correction: str
    alpha: float
    margin: float


def safe_sparsity(ladder, alpha: float = 0.05, margin: float = 0.0, test: str = "bootstrap",
                  correction: str = "holm", framing: str = "degradation", n_boot: int = 2000,
                  seed: int = 42) -> SafeSparsity:
    """``ladder``: iterable of ``(sparsity, dense_scores, sparse_scores)`` (paired arrays). A level *passes* when
    no drop is found (``degradation``) or non-inferiority is proven (``noninferiority``). Returns
    :class:`SafeSparsity` with ``safe = 0.0`` when the lowest level already fails."""
    if test not in TESTS:
        raise UserError(f"test={test!r}: choose one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise UserError(f"correction={correction!r}: choose one of {', '.join(CORRECTIONS)}")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha={alpha!r}: must be in (0, 1)")
    _check_framing(framing)
    ladder = sorted(ladder, key=lambda t: t[0])
    pvals, levels = [], []
    for i, (s, dense, sparse) in enumerate(ladder):
        dense, sparse = np.asarray(dense, dtype=float), np.asarray(sparse, dtype=float)
        p = TESTS[test](dense, sparse, margin=margin, framing=framing, n_boot=n_boot, n_perm=n_boot, seed=seed + i)
        d = sparse - dense
        lo, hi = bootstrap_ci(d, 1 - 2 * alpha, n_boot, seed + i)
        pvals.append(p)
        levels.append(LevelResult(float(s), int(d.size), float(dense.mean()), float(sparse.mean()), float(d.mean()),
                                  float(lo), float(hi), p, p, False))
    if correction == "holm":
        adj = holm(pvals)
    elif correction == "fixed_sequence":
        # Each hypothesis at full alpha, in order, as long as every earlier one "continued" the sequence; a level
        # after the sequence stops is not tested (adjusted p = 1). statsmodels has no fixed-sequence procedure.
        adj, going = [], True
        for p in pvals:
            adj.append(p if going else 1.0)
            going = going and ((p <= alpha) == (framing == "noninferiority"))
    else:
        adj = pvals
    safe = 0.0
    for lv, pa in zip(levels, adj):
        lv.p_adj = float(pa)
        lv.rejected = bool(pa <= alpha)
    for lv in levels:
        passes = lv.rejected if framing == "noninferiority" else not lv.rejected
        if not passes:
            break
        safe = lv.sparsity
    return SafeSparsity(safe, levels, framing, test, correction, alpha, margin)
