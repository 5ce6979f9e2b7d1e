"""``leanformer analyze``: from a results store to PNG figures, CSV tables and a Markdown report embedding both.

Sections: the grid in the store; the paper's five claims answered (:mod:`leanformer.analysis.findings`); cost
accounting (measured cells and the Qwen2.5 presets at 128K); accuracy vs sparsity; iso-cost frontiers and the
larger-sparse-vs-smaller-dense comparison; accuracy-preservation (safe sparsity); scaling-law fits with held-out
validation; budget growth with length. Full tables go to CSV beside
``report.md``; the Markdown shows the slice at one length (default: the longest).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from leanformer.analysis import findings, flops, isoflops, scaling, stats
from leanformer.analysis.markdown import md_table
from leanformer.analysis.markdown import num as _g
from leanformer.analysis.store import PHASES, dense_baselines, group_cells, load_rows, paired_scores
from leanformer.config import atomic_write_text
from leanformer.errors import UserError


@dataclasses.dataclass(kw_only=True)
class ReportOptions:
    length: int | None = None  # the length shown in figures and Markdown tables; default the longest
    alpha: float = 0.05
    margin: float = 0.0
    test: str = "bootstrap"
    correction: str = "holm"
    framing: str = "degradation"
    n_boot: int = 2000
    target: str = "accuracy"
    interactions: bool = False
    cost: str = "phase"
    slack: float = 1.0
    rel_error: float = 0.05
    min_dense: float = 0.1  # (model, task, length) groups whose dense accuracy is below this are at the floor
    methods: tuple[str, ...] | None = None  # analyse only these methods (as the report names them) and dense
    models: tuple[str, ...] | None = None  # analyse only these models (as the store names them)


def select(cells, names, of, option: str, always=lambda c: False) -> list:
    """The cells whose ``of(cell)`` is one of ``names``, and those ``always`` keeps; ``None``: every cell. A name the
    store does not have is refused (``option`` names the flag), with the names it has."""
    if names is None:
        return cells
    have = sorted({of(c) for c in cells if not always(c)})
    unknown = [n for n in names if n not in have]
    if unknown:
        raise UserError(f"{option} {' '.join(unknown)}: not in the store; it has {', '.join(have)}")
    return [c for c in cells if always(c) or of(c) in names]


def select_cells(cells, o: ReportOptions) -> list:
    """The cells of ``o.models`` (as the store names them) and of ``o.methods`` with dense (as the report names
    them, a variant with its settings: ``vertical_slash`` leaves ``vertical_slash[dense_layers=[0]]`` out)."""
    cells = select(cells, o.methods, lambda c: c.method, "--methods", always=lambda c: c.phase == "dense")
    return select(cells, o.models, lambda c: c.model, "--models")


def floor_groups(base: dict, min_dense: float) -> dict[tuple, float]:
    """(model, task, length) -> dense accuracy, for the groups of ``base`` (:func:`dense_baselines`) whose dense
    accuracy is below ``min_dense``. There no drop can show, so every sparsity would pass the preservation test and
    look safe: such groups are left out of the findings, the preservation tables, the scaling fits and the budget
    fits."""
    return {k: c.accuracy for k, c in base.items() if c.accuracy < min_dense}


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def cell_rows(cells, floor: dict) -> list[dict]:
    """The store's summary, one row per cell: mean score with the half-width of its 95% Student-t interval, the
    measured sparsity, mean FLOPs per sample, and whether the cell's group is at the floor."""
    from scipy.stats import t as student_t

    rows = []
    for c in sorted(cells, key=lambda c: (c.model_params, c.model, c.task, c.length, c.phase, c.method, c.sparsity)):
        x = np.array(list(c.scores.values()))
        half = float(student_t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else None
        rows.append({"model": c.model, "model_params": c.model_params, "task": c.task, "length": c.length,
                     "phase": c.phase, "method": c.method, "sparsity": c.sparsity,
                     "measured_sparsity": round(c.measured_sparsity, 4), "n": c.n, "accuracy": round(c.accuracy, 4),
                     "ci95_half_width": None if half is None else round(half, 4),
                     "prefill_flops": c.prefill_flops, "decode_flops": c.decode_flops,
                     "dense_at_floor": (c.model, c.task, c.length) in floor})
    return rows


def preservation(cells, o: ReportOptions) -> list[dict]:
    """One row per (model, task, length, phase, method): the safe sparsity and the first level that fails."""
    base = dense_baselines(cells)
    ladders = defaultdict(list)
    for c in cells:
        if c.phase != "dense" and (c.model, c.task, c.length) in base:
            ladders[(c.model, c.task, c.length, c.phase, c.method)].append(c)
    rows = []
    for (model, task, length, phase, method), cs in sorted(ladders.items()):
        dense = base[(model, task, length)]
        ladder = [(c.sparsity, *paired_scores(dense, c)) for c in cs]
        res = stats.safe_sparsity(ladder, o.alpha, o.margin, o.test, o.correction, o.framing, o.n_boot)
        fail = next((lv for lv in res.levels if lv.sparsity > res.safe), None)
        rows.append({"model": model, "model_params": cs[0].model_params, "task": task, "length": length,
                     "phase": phase, "method": method, "n": min(lv.n for lv in res.levels), "safe": res.safe,
                     "dense_acc": dense.accuracy, "fail_sparsity": fail.sparsity if fail else None,
                     "fail_delta": fail.delta if fail else None, "fail_ci_low": fail.ci_low if fail else None,
                     "fail_p_adj": fail.p_adj if fail else None})
    return rows


def scaling_points(cells, method: str) -> dict:
    cs = [c for c in cells if (c.phase == "dense" or c.method == method) and c.model_params == c.model_params]
    return {"model_params": np.array([c.model_params for c in cs]), "length": np.array([c.length for c in cs]),
            "sparsity": np.array([c.sparsity for c in cs]), "accuracy": np.array([c.accuracy for c in cs]),
            "group": np.array([c.task for c in cs], dtype=object)}


def scaling_results(cells, o: ReportOptions) -> tuple[dict, list[str]]:
    """method -> {"fit", "by_model", "by_length"} (held-out dicts or None), plus notes for methods skipped."""
    out, notes = {}, []
    for method in sorted({c.method for c in cells if c.phase != "dense"}):
        pts = scaling_points(cells, method)
        group = pts["group"] if len(set(pts["group"])) > 1 else None
        try:
            fit = scaling.fit_loglinear(pts["model_params"], pts["length"], pts["sparsity"],
                                        scaling.transform(pts["accuracy"], o.target), o.interactions, group,
                                        o.target, o.alpha)
        except UserError as e:
            notes.append(f"{method}: {e}")
            continue
        res = {"fit": fit}
        for split in ("model_params", "length"):
            try:
                res[split] = scaling.holdout({**pts, "group": group}, split, o.interactions, o.target)
            except UserError as e:
                res[split] = None
                notes.append(f"{method}, held out by {split}: {e}")
        out[method] = res
    return out, notes


def sparsity_gaps(cells, tol: float = 0.02) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """``(phase, method) -> [(requested, mean measured), ...]`` for the methods whose measured sparsity, averaged
    over the cells of a requested level, is more than ``tol`` from the request at some level (a method that leaves
    layers dense, a tile that cannot reach the request): the findings compare methods at requested sparsity."""
    by = defaultdict(list)
    for c in cells:
        if c.phase != "dense" and not np.isnan(c.measured_sparsity):  # NaN: not measured
            by[(c.phase, c.method, c.sparsity)].append(c.measured_sparsity)
    levels = defaultdict(list)
    for (phase, method, req), ms in sorted(by.items()):
        levels[(phase, method)].append((req, float(np.mean(ms))))
    return {k: v for k, v in levels.items() if any(abs(req - m) > tol for req, m in v)}


def budgets(cells, o: ReportOptions) -> tuple[list[dict], dict]:
    base = dense_baselines(cells)
    ladders = defaultdict(list)
    for c in cells:
        if c.phase in ("prefill", "decode") and (c.model, c.task, c.length) in base:
            ladders[(c.model, c.task, c.length, c.method)].append((c.sparsity, c.accuracy))
    rows = []
    for (model, task, length, method), ladder in sorted(ladders.items()):
        dense = base[(model, task, length)].accuracy
        if dense <= 0:
            continue
        b, censored = scaling.min_budget(length, dense, ladder, o.rel_error)
        rows.append({"model": model, "task": task, "length": length, "method": method, "budget": b,
                     "censored": censored})
    fits = {}
    for method in sorted({r["method"] for r in rows}):
        # Censored budgets (every ladder level passed) are only upper bounds; fitting them would bias gamma.
        rs = [r for r in rows if r["method"] == method and not r["censored"]]
        try:
            fits[method] = scaling.fit_budget_growth([r["length"] for r in rs], [r["budget"] for r in rs],
                                                     group=[f"{r['model']}/{r['task']}" for r in rs], alpha=o.alpha)
        except UserError:
            pass
    return rows, fits


def preset_costs(length: int = 131072, sparsity: float = 0.95) -> str:
    rows = []
    for name in ("qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"):
        d = flops.prefill_flops(name, length)
        s = flops.prefill_flops(name, length, sparsity, method="vertical_slash")
        dec, dec_s = flops.decode_flops(name, length), flops.decode_flops(name, length, sparsity, method="quest")
        mem, mem_s = flops.decode_bytes(name, length), flops.decode_bytes(name, length, sparsity=sparsity)
        rows.append([name, f"{flops.PRESETS[name].non_embedding_params / 1e9:.1f}B", _g(d["total"]),
                     f"{d['attention'] / d['total']:.0%}", _g(s["total"]), f"{d['total'] / s['total']:.2f}×",
                     _g(dec["total"]), _g(dec_s["total"]), f"{mem['total'] / 1e9:.1f}", f"{mem_s['total'] / 1e9:.1f}"])
    return md_table(["model", "params", "prefill FLOPs", "attention share", f"prefill @{sparsity} (VS)",
                     "saving", "decode FLOPs/token", f"decode @{sparsity} (Quest)", "decode GB read/step",
                     f"GB @{sparsity}"], rows)


def build_report(store, out, options: ReportOptions | None = None) -> Path:
    """Read ``store``, write figures, CSV tables and ``report.md`` into ``out``; return the report's path."""
    from leanformer.analysis import plots  # matplotlib only when a report is written

    o = options or ReportOptions()
    cells = select_cells(group_cells(load_rows(store)), o)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = sorted({c.length for c in cells})
    length = o.length or lengths[-1]
    if length not in lengths:
        raise UserError(f"--length {length}: the store has lengths {', '.join(map(str, lengths))}")
    phases = [p for p in PHASES[1:] if any(c.phase == p for c in cells)]
    models = sorted({(c.model_params, c.model) for c in cells})
    base = dense_baselines(cells)
    floor = floor_groups(base, o.min_dense)
    kept = [c for c in cells if (c.model, c.task, c.length) not in floor]
    _csv(out / "cells.csv", cell_rows(cells, floor))
    md = [f"# Sparse-attention analysis of `{Path(store).name}`", "",
          f"{sum(c.n for c in cells)} samples in {len(cells)} cells: {len(models)} models "
          f"({', '.join(m for _, m in models)}), tasks {', '.join(sorted({c.task for c in cells}))}, lengths "
          f"{', '.join(map(str, lengths))}, phases {', '.join(phases)}, methods "
          f"{', '.join(sorted({c.method for c in cells if c.phase != 'dense'}))}, sparsities "
          f"{', '.join(f'{s:g}' for s in sorted({c.sparsity for c in cells if c.phase != 'dense'}))}.",
          f"Figures and Markdown tables show length **{length:,}**; the CSV files hold every length (`cells.csv`: "
          "every cell's accuracy with its 95% interval).", ""]
    if floor:
        groups = defaultdict(list)
        for (model, task, n), acc in sorted(floor.items()):
            groups[(model, task)].append(f"{n:,} ({acc:.3f})")
        md += [f"**At the floor**: {len(floor)} of {len(base)} (model, task, length) groups have a "
               f"dense accuracy below {o.min_dense:g}, where no drop can show and every sparsity would look safe. "
               "They are left out of the findings, accuracy preservation, scaling laws and budget fits (the "
               "accuracy plots keep them; `--min-dense 0` keeps them everywhere): "
               + "; ".join(f"{task} of {model} at {', '.join(v)}" for (model, task), v in groups.items()) + ".", ""]
    gaps = sparsity_gaps(cells)
    if gaps:
        md += ["**Requested and measured sparsity differ** for these methods (mean measured sparsity of each "
               "requested level, every length): the findings and tables compare methods at the requested level, "
               "so read theirs at the measured one: "
               + "; ".join(f"{method} ({phase}) " + ", ".join(f"{req:g} → {m:.2f}" for req, m in v)
                           for (phase, method), v in gaps.items()) + ".", ""]
    md += ["## Cost accounting", "",
          "Mean forward FLOPs per sample of the dense runs in the store (multiply-add = 2; from "
          "`leanformer.analysis.flops`):", ""]
    dense = sorted((c for c in cells if c.phase == "dense"), key=lambda c: (c.model_params, c.task, c.length))
    md.append(md_table(["model", "task", "length", "prefill FLOPs", "decode FLOPs", "accuracy"],
                       [[c.model, c.task, c.length, _g(c.prefill_flops), _g(c.decode_flops), f"{c.accuracy:.3f}"]
                        for c in dense if c.length == length]))
    md += ["", "Reference: Qwen2.5 presets at 131,072 tokens, dense vs 0.95 sparsity (pattern estimation included; "
           "decode memory = bf16 weights + KV cache read per step, batch 1):", "", preset_costs(), ""]

    md += ["## Accuracy vs sparsity", ""]
    for phase in phases:
        name = f"accuracy_{phase}.png"
        plots.accuracy_vs_sparsity(cells, phase, length, out / name)
        md += [f"![accuracy vs {phase} sparsity]({name})", ""]

    md += ["## Iso-cost frontiers", "",
           f"Cost = mean {o.cost} FLOPs per sample. For each smaller model's dense point, the most accurate sparse "
           f"point of each larger model costing at most {o.slack:g}× as much; Δ = accuracy(larger sparse) − "
           "accuracy(smaller dense) with a 95% paired-bootstrap interval (paired by seed).", ""]
    iso_rows = []
    for phase in phases:
        name = f"isocost_{phase}.png"
        plots.iso_cost(cells, phase, length, out / name, o.cost)
        md += [f"![iso-cost {phase}]({name})", ""]
        comps = isoflops.iso_cost(cells, phase, o.cost, o.slack, o.n_boot)
        # per comparison: is (small, large)'s dense group at the floor
        floored = {id(r): ((r.small.model, r.task, r.length) in floor, (r.large_model, r.task, r.length) in floor)
                   for r in comps}
        iso_rows += [{"phase": phase, "task": r.task, "length": r.length, "small_model": r.small.model,
                      "small_cost": r.small_cost, "small_acc": r.small.accuracy,
                      "large_model": r.large_model, "large_sparsity": r.large.sparsity if r.large
                      else None, "large_cost": r.large_cost, "large_acc": r.large.accuracy if r.large else None,
                      "delta": r.delta, "ci_low": r.ci_low, "ci_high": r.ci_high, "verdict": r.verdict,
                      "small_at_floor": floored[id(r)][0], "large_at_floor": floored[id(r)][1]} for r in comps]
        shown = [r for r in comps if r.length == length]
        counts = defaultdict(int)
        for r in comps:
            counts[r.verdict] += 1
        md += [f"**{phase}** (all lengths): " + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())), "",
               md_table(["task", "smaller dense", "its FLOPs", "acc", "larger sparse (sparsity)", "its FLOPs", "acc",
                         "Δ [95% CI]", "verdict"],
                        [[r.task, r.small.model, _g(r.small_cost), f"{r.small.accuracy:.3f}",
                          f"{r.large_model} ({r.large.sparsity:g})" if r.large else r.large_model, _g(r.large_cost),
                          f"{r.large.accuracy:.3f}" if r.large else "–",
                          f"{r.delta:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if r.large else "–",
                          r.verdict + (" (a model at the floor)" if any(floored[id(r)]) else "")]
                         for r in shown]), ""]
    _csv(out / "isocost.csv", iso_rows)

    pres = preservation(kept, o)
    _csv(out / "safe_sparsity.csv", pres)
    test_desc = (f"{o.test} test, framing `{o.framing}`, α = {o.alpha:g}, margin = {o.margin:g}, "
                 f"{o.correction} correction across the sparsity ladder")
    md += ["## Accuracy preservation", "",
           f"Largest sparsity such that it and every lower level are not statistically worse than dense ({test_desc}; "
           "per-sample scores paired by seed). 0 means only dense passed. See `safe_sparsity.csv` for the first "
           "failing level, its Δ and adjusted p-value.", ""]
    for phase in phases:
        name = f"safe_{phase}.png"
        rows = [r for r in pres if r["phase"] == phase and r["length"] == length]
        if not rows:  # every group of this phase and length is at the floor (or has no dense baseline)
            md += [f"**{phase}**: no group to test at this length.", ""]
            continue
        plots.safe_sparsity_bars(pres, phase, length, out / name)
        keys = sorted({(r["task"], r["method"]) for r in rows})
        table = [[t, m] + [next((f"{r['safe']:g}" for r in rows if r["task"] == t and r["method"] == m
                                 and r["model"] == mod), "–") for _, mod in models] for t, m in keys]
        md += [f"![safe {phase} sparsity]({name})", "", md_table(["task", "method"] + [m for _, m in models], table),
               ""]

    results, notes = scaling_results(kept, o)
    terms = "ln N + ln L + ln CR" + (" + ln N·ln CR + ln L·ln CR" if o.interactions else "")
    md += ["## Scaling laws", "",
           f"Per method: {o.target} = β0 + {terms} (+ one intercept per task), least squares over cells (dense "
           f"cells at CR = 1 included), {1 - o.alpha:.0%} t intervals. Held-out R²: fit without the largest model "
           "(or the longest length), predict it.", ""]
    rows = []
    for method, res in results.items():
        d = res["fit"].as_dict()
        cols = [f"{d[k][0]:+.3f} [{d[k][1]:+.3f}, {d[k][2]:+.3f}]" if d[k][0] == d[k][0] else "– (constant)"
                for k in ("ln N", "ln L", "ln CR")]
        held = [f"{res[s]['r2_test']:.2f}" if res[s] else "–" for s in ("model_params", "length")]
        rows.append([method] + cols + [f"{res['fit'].r2:.2f}", res["fit"].n] + held)
    md.append(md_table(["method", "β ln N", "β ln L", "β ln CR", "R²", "cells", "held-out R² (largest model)",
                        "held-out R² (longest length)"], rows))
    md += [""] + [f"- {n}" for n in notes] + [""]
    shown = {m: r["model_params"] for m, r in results.items() if r.get("model_params")}
    if shown:
        plots.scaling_fit(shown, out / "scaling_fit.png", o.target)
        md += ["![scaling-law fit vs observed](scaling_fit.png)", ""]

    brows, bfits = budgets(kept, o)
    _csv(out / "budgets.csv", brows)
    md += ["## Budget vs length", "",
           f"Smallest token budget (1 − s)·L whose relative accuracy loss is at most {o.rel_error:.0%} (interpolated "
           "on the sparsity ladder), fitted as ln B = c + γ ln L with one intercept per (model, task); γ < 1 "
           "means the budget grows sublinearly with length. Cells where every ladder level passed are censored "
           f"(the budget is below the ladder) and left out of the fit: {sum(r['censored'] for r in brows)} of "
           f"{len(brows)}.", ""]
    md.append(md_table(["method", "γ", f"{1 - o.alpha:.0%} CI", "R²", "points"],
                       [[m, f"{f['gamma']:.2f}", f"[{f['gamma_ci'][0]:.2f}, {f['gamma_ci'][1]:.2f}]", f"{f['r2']:.2f}",
                         f["n"]] for m, f in bfits.items()]))
    if brows and len({r["length"] for r in brows}) > 1:
        plots.budget_growth(brows, bfits, out / "budget_growth.png", o.rel_error)
        md += ["", "![budget vs length](budget_growth.png)"]
    at = md.index("## Cost accounting")  # the answers first, the numbers behind them after
    md[at:at] = findings.section(kept, pres, iso_rows, bfits, o.n_boot)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path
