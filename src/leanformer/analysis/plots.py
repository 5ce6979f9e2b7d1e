"""PNG figures of the analysis (matplotlib, Agg backend; imported only when a report is written).

Every figure has axis labels with units, a title saying what is plotted at which length, and one legend.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from leanformer.analysis.isoflops import pareto, points  # noqa: E402

METHOD_COLORS = {"vertical_slash": "tab:blue", "flexprefill": "tab:cyan", "block_topk": "tab:purple",
                 "quest": "tab:red", "snapkv": "tab:orange", "ada_snapkv": "tab:brown", "streaming": "tab:gray"}
MARKERS = "osD^vP*X"


def _ncols(n: int) -> int:
    return 2 if n == 4 else min(n, 3)


def _color(method: str, i: int) -> str:
    return METHOD_COLORS.get(method, f"C{i % 10}")


def _size(n_params: float) -> str:
    return f"{n_params / 1e9:.2g}B" if n_params >= 1e8 else f"{n_params / 1e6:.3g}M"


def _grid(n_rows: int, n_cols: int, w: float = 3.6, h: float = 2.9):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(w * n_cols + 0.6, h * n_rows + 0.9), squeeze=False)
    return fig, axes


def _log_flops_axis(axis) -> None:
    """Log axis with ticks at 1, 2, 5 x 10^k labelled like ``2e14``."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 10 ** math.floor(math.log10(v)):.0f}e"
                                                        f"{math.floor(math.log10(v))}" if v > 0 else ""))
    axis.set_minor_formatter(NullFormatter())


def _finish(fig, path, handles, labels, title: str) -> None:
    fig.suptitle(title, fontsize=12)
    if handles:
        ncol = min(len(labels), max(1, int(fig.get_figwidth() / 2.3)))
        rows = math.ceil(len(labels) / ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    bottom = (0.25 + 0.22 * rows) / fig.get_figheight() if handles else 0
    fig.tight_layout(rect=(0, bottom, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_sparsity(cells, phase: str, length: int, path) -> None:
    """Rows = models, columns = tasks; one line per method (mean ± s.e.) and the dense accuracy dashed; x is the
    compression ratio 1/(1−s) on a log scale, labelled by sparsity."""
    sel = [c for c in cells if c.length == length and c.phase in ("dense", phase)]
    models = sorted({(c.model_params, c.model) for c in sel})
    tasks = sorted({c.task for c in sel})
    methods = sorted({c.method for c in sel if c.phase == phase})
    ladder = sorted({c.sparsity for c in sel if c.phase == phase})
    fig, axes = _grid(len(models), len(tasks))
    handles, labels = [], []
    for r, (_, model) in enumerate(models):
        for k, task in enumerate(tasks):
            ax = axes[r][k]
            dense = [c for c in sel if c.model == model and c.task == task and c.phase == "dense"]
            if dense:
                h = ax.axhline(dense[0].accuracy, color="black", ls="--", lw=1)
                if "dense" not in labels:
                    handles.append(h)
                    labels.append("dense")
            for i, m in enumerate(methods):
                cs = sorted((c for c in sel if c.model == model and c.task == task and c.method == m),
                            key=lambda c: c.sparsity)
                if not cs:
                    continue
                x = [1 / (1 - c.sparsity) for c in cs]
                y = [c.accuracy for c in cs]
                se = [np.std(list(c.scores.values())) / math.sqrt(max(c.n, 1)) for c in cs]
                h = ax.errorbar(x, y, yerr=se, color=_color(m, i), marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.4,
                                capsize=2)
                if m not in labels:
                    handles.append(h)
                    labels.append(m)
            ax.set_xscale("log")
            ax.set_xticks([1 / (1 - s) for s in ladder], [f"{s:g}" for s in ladder])
            ax.minorticks_off()
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(task)
            if r == len(models) - 1:
                ax.set_xlabel("sparsity (log compression axis)")
            if k == 0:
                ax.set_ylabel(f"{model}\n({_size(models[r][0])}) accuracy")
    _finish(fig, path, handles, labels, f"Accuracy vs {phase} sparsity at {length:,} tokens")


def iso_cost(cells, phase: str, length: int, path, cost: str = "phase") -> None:
    """One panel per task: accuracy against FLOPs per sample (log) for every (model, sparsity) of ``phase``;
    colour = model, stars = dense, black step line = Pareto frontier."""
    tasks = sorted({c.task for c in cells if c.length == length})
    models = sorted({(c.model_params, c.model) for c in cells if c.length == length})
    ncols = _ncols(len(tasks))
    fig, axes = _grid(math.ceil(len(tasks) / ncols), ncols, w=4.0, h=3.2)
    handles, labels = [], []
    for k, task in enumerate(tasks):
        ax = axes[k // ncols][k % ncols]
        pts = points(cells, task, length, phase, cost)
        for i, (n_params, model) in enumerate(models):
            mine = [p for p in pts if p.cell.model == model]
            sparse = [p for p in mine if p.cell.phase != "dense"]
            dense = [p for p in mine if p.cell.phase == "dense"]
            h = ax.scatter([p.cost for p in sparse], [p.accuracy for p in sparse], s=[14 + 40 * p.cell.sparsity
                           for p in sparse], color=f"C{i}", alpha=0.55, edgecolors="none")
            ax.scatter([p.cost for p in dense], [p.accuracy for p in dense], marker="*", s=160, color=f"C{i}",
                       edgecolors="black", linewidths=0.6, zorder=3)
            if f"{model} ({_size(n_params)})" not in labels:
                handles.append(h)
                labels.append(f"{model} ({_size(n_params)})")
        front = pareto(pts)
        if front:
            (h,) = ax.step([p.cost for p in front], [p.accuracy for p in front], where="post", color="black", lw=1.2)
            if "Pareto frontier" not in labels:
                handles.append(h)
                labels.append("Pareto frontier")
        ax.set_xscale("log")
        _log_flops_axis(ax.xaxis)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(task)
        ax.set_xlabel(f"{_cost_label(phase, cost)} FLOPs per sample")
        ax.set_ylabel("accuracy")
    for k in range(len(tasks), axes.size):
        axes.flat[k].axis("off")
    _finish(fig, path, handles, labels, f"Iso-cost: {phase} sparsity at {length:,} tokens "
                                        "(star = dense, dot size = sparsity)")


def _cost_label(phase: str, cost: str) -> str:
    return {"phase": phase if phase in ("prefill", "decode") else "total"}.get(cost, cost)


def safe_sparsity_bars(rows, phase: str, length: int, path) -> None:
    """``rows``: dicts with model, model_params, task, method, safe (from the preservation analysis); one panel per
    task, groups of bars per model, one bar per method."""
    rows = [r for r in rows if r["phase"] == phase and r["length"] == length]
    tasks = sorted({r["task"] for r in rows})
    models = sorted({(r["model_params"], r["model"]) for r in rows})
    methods = sorted({r["method"] for r in rows})
    ncols = _ncols(len(tasks))
    fig, axes = _grid(math.ceil(len(tasks) / ncols), ncols, w=4.0, h=3.0)
    width = 0.8 / max(len(methods), 1)
    handles, labels = [], []
    for k, task in enumerate(tasks):
        ax = axes[k // ncols][k % ncols]
        for i, m in enumerate(methods):
            ys = [next((r["safe"] for r in rows if r["task"] == task and r["model"] == mod and r["method"] == m),
                       np.nan) for _, mod in models]
            h = ax.bar(np.arange(len(models)) + (i - (len(methods) - 1) / 2) * width, ys, width,
                       color=_color(m, i))
            if m not in labels:
                handles.append(h)
                labels.append(m)
        ax.set_xticks(np.arange(len(models)), [_size(n) for n, _ in models])
        ax.set_ylim(0, 1)
        ax.set_xlabel("model size (non-embedding parameters)")
        ax.set_ylabel("largest safe sparsity")
        ax.set_title(task)
        ax.grid(alpha=0.3, axis="y")
    for k in range(len(tasks), axes.size):
        axes.flat[k].axis("off")
    _finish(fig, path, handles, labels, f"Safe {phase} sparsity at {length:,} tokens (0 = only dense is safe)")


def scaling_fit(results: dict, path, target: str) -> None:
    """``results``: method -> holdout dict from :func:`leanformer.analysis.scaling.holdout`; predicted vs observed,
    fitted points hollow, held-out (largest model) filled."""
    methods = list(results)
    ncols = _ncols(len(methods))
    fig, axes = _grid(math.ceil(len(methods) / ncols), ncols, w=3.8, h=3.5)
    handles, labels = [], []
    for k, m in enumerate(methods):
        ax = axes[k // ncols][k % ncols]
        res = results[m]
        y, pred, test = res["y"], res["pred"], res["test"]
        h1 = ax.scatter(y[~test], pred[~test], s=12, facecolors="none", edgecolors="tab:blue", lw=0.8)
        h2 = ax.scatter(y[test], pred[test], s=14, color="tab:red")
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        (h3,) = ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--")
        if not handles:
            handles, labels = [h1, h2, h3], ["fitted (smaller models)", "held out (largest model)", "y = x"]
        ax.set_title(f"{m}: R² fit {res['fit'].r2:.2f}, held-out {res['r2_test']:.2f}", fontsize=10)
        ax.set_xlabel(f"observed {target}")
        ax.set_ylabel(f"predicted {target}")
        ax.grid(alpha=0.3)
    for k in range(len(methods), axes.size):
        axes.flat[k].axis("off")
    _finish(fig, path, handles, labels,
            "Log-linear scaling law: predicted vs observed (one point per model, task, length, sparsity)")


def budget_growth(rows, fits: dict, path, rel_error: float) -> None:
    """``rows``: dicts with method, length, budget, censored; ``fits``: method -> budget-growth fit."""
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    methods = sorted({r["method"] for r in rows})
    for i, m in enumerate(methods):
        rs = [r for r in rows if r["method"] == m]
        lengths = np.array([r["length"] for r in rs], dtype=float)
        budgets = np.array([r["budget"] for r in rs], dtype=float)
        cens = np.array([r["censored"] for r in rs])
        jitter = np.exp(0.03 * (i - len(methods) / 2))
        ax.scatter(lengths[~cens] * jitter, budgets[~cens], s=14, color=_color(m, i), alpha=0.6)
        ax.scatter(lengths[cens] * jitter, budgets[cens], s=14, facecolors="none", edgecolors=_color(m, i))
        if m in fits:
            f = fits[m]
            grid = np.geomspace(lengths.min(), lengths.max(), 20)
            ax.plot(grid, np.exp(f["c_mean"]) * grid ** f["gamma"], color=_color(m, i), lw=1.6,
                    label=f"{m}: γ = {f['gamma']:.2f} [{f['gamma_ci'][0]:.2f}, {f['gamma_ci'][1]:.2f}]")
    grid = np.geomspace(min(r["length"] for r in rows), max(r["length"] for r in rows), 20)
    ax.plot(grid, grid, color="black", ls="--", lw=1, label="budget = length (dense)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({r["length"] for r in rows})
    ax.set_xticks(ticks, [f"{t / 1024:g}K" if t >= 1024 else str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"token budget for ≤{rel_error:.0%} relative error")
    ax.set_title("Budget needed vs length (hollow = censored: every level passed)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
