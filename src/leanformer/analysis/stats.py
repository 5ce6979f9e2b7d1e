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
1993, §16.4), ``permutation`` (sign-flip test of ``d + δ``, exact up to 2^16 flips, Monte Carlo beyond) and
``sign`` (exact binomial test of the signs of ``d + δ``). Across the sparsity ladder of one (model, task, phase,
method) the family-wise error is controlled by Holm (1979) or by the fixed-sequence procedure (test in order of
increasing sparsity at level α, stop at the first failure). Only numpy and the standard library are needed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from leanformer.errors import UserError

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


def bootstrap_means(d: np.ndarray, n_boot: int = 2000, seed: int = 42) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``mean(d)`` (resampling pairs with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    return d[idx].mean(axis=1)


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


def permutation_pvalue(dense, sparse, margin: float = 0.0, framing: str = "degradation", n_perm: int = 4000,
                       seed: int = 42, **_) -> float:
    """One-sided sign-flip permutation p-value of ``sum(d + δ)`` (null: ``d + δ`` symmetric about 0)."""
    _check_framing(framing)
    x = _diffs(dense, sparse, margin)
    x = x[np.abs(x) > 1e-12]
    if x.size == 0:
        return 1.0
    obs = x.sum()
    if x.size <= 16:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=x.size)))
        null, extra, total = signs @ x, 0, len(signs)
    else:
        rng = np.random.default_rng(seed)
        null = rng.choice((-1.0, 1.0), size=(n_perm, x.size)) @ x
        extra, total = 1, n_perm + 1  # count the observed labelling itself
    hits = np.sum(null <= obs + 1e-9) if framing == "degradation" else np.sum(null >= obs - 1e-9)
    return float((hits + extra) / total)


def sign_pvalue(dense, sparse, margin: float = 0.0, framing: str = "degradation", **_) -> float:
    """Exact one-sided binomial test on the signs of ``d + δ`` (ties dropped)."""
    _check_framing(framing)
    x = _diffs(dense, sparse, margin)
    neg, pos = int(np.sum(x < -1e-12)), int(np.sum(x > 1e-12))
    n = neg + pos
    if n == 0:
        return 1.0
    k = neg if framing == "degradation" else pos
    return float(min(1.0, sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n))


TESTS = {"bootstrap": bootstrap_pvalue, "permutation": permutation_pvalue, "sign": sign_pvalue}


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (reject where ``adjusted <= alpha``)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


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
        boots = bootstrap_means(d, n_boot, seed + i)
        lo, hi = np.quantile(boots, [alpha, 1 - alpha])
        pvals.append(p)
        levels.append(LevelResult(float(s), int(d.size), float(dense.mean()), float(sparse.mean()), float(d.mean()),
                                  float(lo), float(hi), p, p, False))
    if correction == "holm":
        adj = holm(pvals) if pvals else []
    elif correction == "fixed_sequence":
        # Each hypothesis at full alpha, in order, as long as every earlier one "continued" the sequence; a level
        # after the sequence stops is not tested (adjusted p = 1).
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
