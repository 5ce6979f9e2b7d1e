"""Scaling laws: log-linear fits of accuracy in model size, sequence length and compression, and of the budget a
fixed relative error needs as the sequence grows.

The Sparse Frontier (Nawrot et al., 2025, v1) fits accuracy with a log-linear model in model size ``N``
(non-embedding parameters), sequence length ``L`` and compression ratio ``CR = 1/(1 − sparsity)``::

    y = β0 + βN·ln N + βL·ln L + βC·ln CR  [+ βNC·ln N·ln CR + βLC·ln L·ln CR]  [+ one intercept per group]

``y`` is accuracy, error ``1 − accuracy`` or ``ln(error)``. Ordinary least squares by ``statsmodels`` (``OLS``):
standard errors ``σ̂²(XᵀX)⁻¹`` with ``σ̂² = SSE/(n − p)``, intervals from ``conf_int`` (Student's t). Held-out
validation fits on the smaller models (or shorter lengths) and predicts the largest. :func:`fit_budget_growth`
fits ``ln B* = c + γ·ln L`` for the smallest token budget ``B* = (1 − s)·L`` whose relative error stays within a
tolerance (γ < 1: the budget grows sublinearly).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from leanformer.errors import UserError

try:
    from statsmodels.regression.linear_model import OLS
    from statsmodels.tools.sm_exceptions import SingularMatrixWarning
except ImportError:
    raise UserError("scaling-law fits need statsmodels: pip install leanformer[analysis]") from None

TARGETS = ("accuracy", "error", "log_error")


def transform(accuracy, target: str = "accuracy", eps: float = 1e-3) -> np.ndarray:
    acc = np.asarray(accuracy, dtype=float)
    if target == "accuracy":
        return acc
    if target == "error":
        return 1.0 - acc
    if target == "log_error":
        return np.log(np.clip(1.0 - acc, eps, None))
    raise UserError(f"target={target!r}: choose one of {', '.join(TARGETS)}")


@dataclasses.dataclass
class Fit:
    """A fitted linear model: coefficients by name with standard errors and ``1 − alpha`` intervals."""

    names: list[str]
    coef: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    r2: float
    n: int
    sigma: float
    target: str
    interactions: bool
    groups: list[str]

    def predict(self, n_params, length, sparsity, group=None) -> np.ndarray:
        x, _ = design(n_params, length, sparsity, self.interactions, group, self.groups)
        return x @ np.nan_to_num(self.coef)  # terms left out of the fit (constant predictors) contribute 0

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        return {k: (float(c), float(lo), float(hi)) for k, c, lo, hi in zip(self.names, self.coef, self.ci_low,
                                                                           self.ci_high)}


def design(n_params, length, sparsity, interactions: bool = False, group=None, levels=None):
    """Design matrix ``[n, p]`` and column names; ``group`` values get dummy intercepts (the first level is the
    baseline) over ``levels`` (default: the sorted distinct values)."""
    n_params, length, sparsity = (np.asarray(a, dtype=float).ravel() for a in (n_params, length, sparsity))
    if np.any(n_params <= 0) or np.any(length <= 0) or np.any((sparsity < 0) | (sparsity >= 1)):
        raise UserError("scaling fit needs model_params > 0, length > 0 and sparsity in [0, 1)")
    ln_n, ln_l, ln_c = np.log(n_params), np.log(length), -np.log1p(-sparsity)
    cols, names = [np.ones_like(ln_n), ln_n, ln_l, ln_c], ["intercept", "ln N", "ln L", "ln CR"]
    if interactions:
        cols += [ln_n * ln_c, ln_l * ln_c]
        names += ["ln N x ln CR", "ln L x ln CR"]
    levels = list(levels) if levels is not None else (sorted(set(group)) if group is not None else [])
    if group is not None:
        group = np.asarray(group, dtype=object).ravel()
        for lv in levels[1:]:
            cols.append((group == lv).astype(float))
            names.append(f"group={lv}")
    return np.stack(cols, axis=1), names


def fit_loglinear(n_params, length, sparsity, y, interactions: bool = False, group=None, target: str = "accuracy",
                  alpha: float = 0.05) -> Fit:
    """Least-squares fit of ``y`` (already transformed to ``target``) on the log-linear design above."""
    x_all, names = design(n_params, length, sparsity, interactions, group)
    y = np.asarray(y, dtype=float).ravel()
    # A predictor that never varies (one model size, one length) is not identifiable: it is collinear with the
    # intercept. It is left out of the fit and reported as NaN, with slope 0 in predictions.
    keep = np.array([j == 0 or np.ptp(x_all[:, j]) > 0 for j in range(x_all.shape[1])])
    x = x_all[:, keep]
    n, p = x.shape
    if n <= p:
        raise UserError(f"scaling fit needs more points than coefficients ({n} points, {p} coefficients: "
                        f"{', '.join(n_ for n_, k in zip(names, keep) if k)})")
    res = OLS(y, x).fit()
    coef, se, lo, hi = (np.full(len(names), np.nan) for _ in range(4))
    coef[keep], se[keep] = res.params, res.bse
    lo[keep], hi[keep] = res.conf_int(alpha).T
    groups = sorted(set(np.asarray(group, dtype=object).ravel())) if group is not None else []
    return Fit(names, coef, se, lo, hi, _r2(res, y), n, math.sqrt(res.scale), target, interactions, groups)


def _r2(res, y) -> float:
    # statsmodels divides by a zero total sum of squares with a warning; a constant y has no R².
    return float(res.rsquared) if np.ptp(y) > 0 else float("nan")


def r2_score(y, pred) -> float:
    """R² of given predictions (out of sample: not a fitted model's, so not statsmodels' ``rsquared``)."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    sst = float(((y - y.mean()) ** 2).sum())
    return 1 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")


def holdout(points: dict, split: str = "model_params", interactions: bool = False, target: str = "accuracy") -> dict:
    """Fit on all points but those with the largest ``split`` value (``model_params`` or ``length``), predict
    those. ``points``: dict of equal-length arrays ``model_params``, ``length``, ``sparsity``, ``accuracy`` and
    optionally ``group``. Returns the fit, train/test masks, predictions and test R², MAE."""
    if split not in ("model_params", "length"):
        raise UserError(f"split={split!r}: choose model_params or length")
    key = np.asarray(points[split], dtype=float)
    test = key == key.max()
    if test.all():
        raise UserError(f"held-out validation by {split} needs at least two distinct values")
    y = transform(points["accuracy"], target)
    group = np.asarray(points["group"], dtype=object) if points.get("group") is not None else None

    def sub(a, m):
        return None if a is None else np.asarray(a)[m]

    with warnings.catch_warnings():
        # With one training length (or size) left, its interaction is collinear with ln CR; the pseudo-inverse
        # solution predicts the same as any other, and only predictions are used here.
        warnings.simplefilter("ignore", SingularMatrixWarning)
        fit = fit_loglinear(sub(points["model_params"], ~test), sub(points["length"], ~test),
                            sub(points["sparsity"], ~test), y[~test], interactions, sub(group, ~test), target)
    pred = fit.predict(points["model_params"], points["length"], points["sparsity"], group)
    return {"fit": fit, "test": test, "pred": pred, "y": y, "r2_test": r2_score(y[test], pred[test]),
            "mae_test": float(np.mean(np.abs(y[test] - pred[test]))), "n_test": int(test.sum()), "split": split}


def min_budget(length: int, dense_acc: float, ladder, rel_error: float = 0.05) -> tuple[float, bool]:
    """Smallest token budget ``(1 − s)·L`` whose relative error ``(dense − sparse)/dense`` is at most ``rel_error``
    for it and every larger budget of the ladder ``[(sparsity, accuracy), ...]``, interpolated in ln budget
    between the last failing and first passing level (the dense length ``L`` counts as a passing level). Returns
    ``(budget, censored)``; censored when every level passes (the true budget is smaller than the ladder's)."""
    pts = sorted(((1 - s) * length, (dense_acc - a) / dense_acc if dense_acc > 0 else 0.0) for s, a in ladder)
    pts.append((float(length), 0.0))  # dense: no error
    i = len(pts) - 1
    while i > 0 and pts[i - 1][1] <= rel_error:
        i -= 1
    if i == 0:
        return pts[0][0], True
    (bf, ef), (bp, ep) = pts[i - 1], pts[i]
    w = (ef - rel_error) / (ef - ep) if ef > ep else 1.0
    return float(math.exp(math.log(bf) + w * (math.log(bp) - math.log(bf)))), False


def fit_budget_growth(lengths, budgets, group=None, alpha: float = 0.05) -> dict:
    """Fit ``ln B* = c + γ·ln L`` (+ one intercept per group); returns ``gamma`` with its CI, ``c`` (baseline
    group), ``c_mean`` (the intercept of the average group, for plotting), ``r2`` and ``n``."""
    ln_l = np.log(np.asarray(lengths, dtype=float))
    ln_b = np.log(np.asarray(budgets, dtype=float))
    cols, names = [np.ones_like(ln_l), ln_l], ["c", "gamma"]
    if group is not None:
        group = np.asarray(group, dtype=object)
        for lv in sorted(set(group))[1:]:
            cols.append((group == lv).astype(float))
            names.append(f"group={lv}")
    x = np.stack(cols, axis=1)
    n, p = x.shape
    if n <= p or len(set(ln_l)) < 2:
        raise UserError(f"budget growth fit needs at least two lengths and more points than coefficients "
                        f"({n} points, {p} coefficients)")
    res = OLS(ln_b, x).fit()
    coef, ci = res.params, res.conf_int(alpha)
    return {"gamma": float(coef[1]), "gamma_ci": (float(ci[1, 0]), float(ci[1, 1])),
            "c": float(coef[0]), "c_mean": float(ln_b.mean() - coef[1] * ln_l.mean()), "r2": _r2(res, ln_b), "n": n}
