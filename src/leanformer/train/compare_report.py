"""The report of ``leanformer compare``: final validation loss per method (mean ± std over seeds), the difference
from the baseline with a significance flag (Welch's t-test, two-sided, p < 0.05), and validation loss against
reference system time for every run.

Reads only the run directories (``<out>/<method>/seed<k>/metrics.jsonl`` and ``result.json``), so the report can be
rebuilt anywhere the directories are copied to.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

ALPHA = 0.05


def eval_curve(run_dir: Path) -> list[tuple[float, float]]:
    """``(clock seconds, val loss)`` of every evaluation of a run, in order."""
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return []
    events = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [(e["clock_s"], e["val_loss"]) for e in events if e.get("event") == "eval" and "clock_s" in e]


def collect(out: Path, methods: list[str]) -> dict[str, list[dict]]:
    """Finished runs per method: ``result.json`` plus the eval curve."""
    runs: dict[str, list[dict]] = {}
    for m in methods:
        for d in sorted((out / m).glob("seed*")):
            if (d / "result.json").is_file():
                r = json.loads((d / "result.json").read_text())
                r["curve"] = eval_curve(d)
                runs.setdefault(m, []).append(r)
    return runs


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test, or None with fewer than 2 values per side (or without scipy)."""
    if len(a) < 2 or len(b) < 2:
        return None
    try:  # scipy is the analysis extra's; `leanformer compare` runs without it and leaves the column empty
        from scipy import stats
    except ImportError:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 0.0 if statistics.mean(a) != statistics.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def summarize(runs: dict[str, list[dict]], baseline: str = "baseline") -> list[dict]:
    base = [r["val_loss"] for r in runs.get(baseline, [])]
    rows = []
    for m, rs in runs.items():
        losses = [r["val_loss"] for r in rs]
        mean = statistics.mean(losses)
        row = {"method": m, "seeds": len(losses), "val_loss": losses, "mean": mean,
               "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
               "steps": statistics.mean(r["step"] for r in rs), "clock_s": statistics.mean(r["clock_s"] for r in rs)}
        if base and m != baseline:
            p = welch_p(losses, base)
            row["diff"] = mean - statistics.mean(base)
            row["p"] = p
            row["significant"] = None if p is None else p < ALPHA
        rows.append(row)
    return rows


def markdown(rows: list[dict], budget_s: float) -> str:
    lines = [f"RST budget {budget_s:g} s; final validation loss, mean ± std over seeds; Δ = method − baseline "
             f"(negative is better); significant: Welch's t-test p < {ALPHA}.", "",
             "| method | seeds | steps | val loss | Δ vs baseline | p | significant |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diff = f"{r['diff']:+.4f}" if "diff" in r else "—"
        p = "—" if r.get("p") is None else f"{r['p']:.3g}"
        sig = "—" if "diff" not in r else ("n/a" if r["significant"] is None else
                                           ("yes, " + ("better" if r["diff"] < 0 else "worse")) if r["significant"]
                                           else "no")
        lines.append(f"| {r['method']} | {r['seeds']} | {r['steps']:.0f} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{diff} | {p} | {sig} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict]], path: Path, title: str = "") -> Path | None:
    """Validation loss against RST, one colour per method, one line per seed; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (m, rs) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for j, r in enumerate(rs):
            if r["curve"]:
                x, y = zip(*r["curve"])
                ax.plot(x, y, color=color, alpha=0.8, lw=1.2, marker="o", ms=2.5, label=m if j == 0 else None)
    finite = [y for rs in runs.values() for r in rs for _, y in r["curve"] if math.isfinite(y)]
    if finite:  # the first evaluations of a run sit far above the rest; keep the interesting range
        lo = min(finite)
        ax.set_ylim(lo - 0.02 * abs(lo), sorted(finite)[int(0.9 * (len(finite) - 1))] + 0.05 * abs(lo))
    ax.set_xlabel("reference system time (s)")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, methods: list[str], budget_s: float, title: str = "") -> dict:
    """Write ``compare.md``, ``compare_summary.json`` and ``compare.png`` into ``out``; return the summary."""
    runs = collect(out, methods)
    rows = summarize(runs)
    md = markdown(rows, budget_s)
    (out / "compare.md").write_text(md)
    png = plot(runs, out / "compare.png", title)
    summary = {"budget_s": budget_s, "rows": rows,
               "curves": {m: [r["curve"] for r in rs] for m, rs in runs.items()},
               "plot": str(png) if png else None, "table": md}
    (out / "compare_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
