"""What the DMC-vs-GQA study's finished stages say (:mod:`leanformer.train.dmc_study`): rows with intervals, a
Markdown table and a plot of test bits per byte against the compression ratio reached.

Intervals are a hierarchical bootstrap: each replicate draws ``n_blocks`` blocks of consecutive test windows with
replacement (neighbouring windows share a scene, so single windows are not independent), then the seeds with
replacement, and averages bits per byte over the drawn seeds. Every group uses the same block draws, so differences
(DMC minus GQA at one ratio, anything minus the base) are paired over the test text.
"""

from __future__ import annotations

import math

import numpy as np


def hierarchical_bootstrap(bits: np.ndarray, nbytes: np.ndarray, n_boot: int = 2000, block: int = 16,
                           seed: int = 42) -> np.ndarray:
    """``n_boot`` replicates of the seed-averaged bits per byte of ``bits [S, W]`` (bits per test window, one row
    per seed) over ``nbytes [W]`` (bytes per window)."""
    rng = np.random.default_rng(seed)
    s, w = bits.shape
    n_blocks = math.ceil(w / block)
    pad = n_blocks * block - w
    b = np.pad(bits, ((0, 0), (0, pad))).reshape(s, n_blocks, block).sum(-1)
    y = np.pad(nbytes, (0, pad)).reshape(n_blocks, block).sum(-1)
    blocks = rng.integers(0, n_blocks, size=(n_boot, n_blocks))  # drawn first: the same for every group
    seeds = rng.integers(0, s, size=(n_boot, s))
    num = b[seeds[:, :, None], blocks[:, None, :]].sum(-1)  # [n_boot, S]
    return (num / y[blocks].sum(-1)[:, None]).mean(1)


def _ci(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(x, [2.5, 97.5])]


def summarize(evals: dict[str, dict], crs, n_boot: int = 2000) -> list[dict]:
    """``evals``: stage name -> its ``test_eval.json``. Rows (method, target CR) with the mean bits per byte over
    seeds, its 95% interval, per-seed values, the compression ratio reached, the difference to the base, and for
    DMC the paired difference to GQA at the same ratio with the share of replicates where DMC is better."""
    if not evals:
        return []
    nbytes = np.array(next(iter(evals.values()))["bytes"], dtype=np.float64)
    keys = [("base", 1, "base")] + [(m, cr, f"{m}-cr{cr}-s") for cr in crs for m in ("dmc", "gqa")]
    keys.append(("control", 1, "control-s"))
    rows, draws = [], {}
    for method, cr, prefix in keys:
        names = sorted(n for n in evals if n.startswith(prefix))
        if not names:
            continue
        bits = np.array([evals[n]["bits"] for n in names], dtype=np.float64)
        draws[method, cr] = hierarchical_bootstrap(bits, nbytes, n_boot)
        per_seed = bits.sum(1) / nbytes.sum()
        reached = [float(evals[n].get("compression_ratio", cr if method == "gqa" else 1.0)) for n in names]
        rows.append({"method": method, "target_cr": cr, "runs": names, "bits_per_byte": float(per_seed.mean()),
                     "ci95": _ci(draws[method, cr]), "per_seed": [float(x) for x in per_seed],
                     "cr_reached": float(np.mean(reached)), "cr_reached_per_seed": reached})
    base = next((r for r in rows if r["method"] == "base"), None)
    for r in rows:
        reps = draws[r["method"], r["target_cr"]]
        if base is not None and r is not base:
            r["vs_base"] = r["bits_per_byte"] - base["bits_per_byte"]
            r["vs_base_ci95"] = _ci(reps - draws["base", 1])
        if r["method"] == "dmc" and ("gqa", r["target_cr"]) in draws:
            d = reps - draws["gqa", r["target_cr"]]
            r["dmc_minus_gqa"] = float(d.mean())
            r["dmc_minus_gqa_ci95"] = _ci(d)
            r["p_dmc_better"] = float((d < 0).mean())
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| method | target CR | CR reached | test bits/byte (95% CI) | per seed | vs base | DMC - GQA (95% CI) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["ci95"]
        vs = f"{r['vs_base']:+.4f}" if "vs_base" in r else ""
        diff = ""
        if "dmc_minus_gqa" in r:
            dlo, dhi = r["dmc_minus_gqa_ci95"]
            diff = f"{r['dmc_minus_gqa']:+.4f} ({dlo:+.4f}, {dhi:+.4f})"
        seeds = ", ".join(f"{x:.4f}" for x in r["per_seed"])
        lines.append(f"| {r['method']} | {r['target_cr']} | {r['cr_reached']:.2f} | {r['bits_per_byte']:.4f} "
                     f"({lo:.4f}, {hi:.4f}) | {seeds} | {vs} | {diff} |")
    return "\n".join(lines)


def plot(rows: list[dict], path, title: str) -> None:
    """Left: test bits per byte against the compression ratio reached, DMC and GQA, with 95% intervals, the base
    and the control (same budget, no compression) as horizontal lines. Right: the same as differences to the base,
    with paired intervals (the test text's own variation cancels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    styles = {"dmc": ("tab:red", "o", "DMC retrofit"), "gqa": ("tab:blue", "s", "GQA uptraining"),
              "control": ("gray", "^", "base + same budget")}
    base = next((r for r in rows if r["method"] == "base"), None)
    for ax, key, ci in ((axes[0], "bits_per_byte", "ci95"), (axes[1], "vs_base", "vs_base_ci95")):
        for method, (color, marker, label) in styles.items():
            pts = sorted((r["cr_reached"], r[key], *r[ci]) for r in rows if r["method"] == method and key in r)
            if pts:
                x, y, lo, hi = map(np.array, zip(*pts))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], color=color, marker=marker, capsize=3, label=label)
        for r in rows:  # DMC may stop short of its target: say which target each point had
            if r["method"] == "dmc" and key in r:
                ax.annotate(f"target {r['target_cr']}", (r["cr_reached"], r[key]), fontsize=7, color="tab:red",
                            xytext=(4, -10), textcoords="offset points")
        if base is not None:
            ref = base["bits_per_byte"] if key == "bits_per_byte" else 0.0
            ax.axhline(ref, color="black", linestyle="--", linewidth=0.8, label="base")
            if key == "bits_per_byte":
                ax.axhspan(*base["ci95"], color="gray", alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator([1, 2, 4, 8, 16]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("KV cache compression ratio reached (x)")
    axes[0].set_ylabel("test bits per byte (lower is better)")
    axes[1].set_ylabel("difference to the base (paired 95% CI)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
