"""The Sparse Frontier's five claims, answered from a results store: the report's "Findings" section.

Each answer comes from numbers the rest of the report computes, so a reader can trace it:

1. **Decoding tolerates more sparsity than prefilling.** Per (model, task, length) with both phases: the mean safe
   sparsity (accuracy preservation) over the decode methods against the prefill methods; the cells where decode is
   higher or lower, and an exact sign test over the untied ones (``scipy.stats.binomtest``).
2. **Longer inputs tolerate more sparsity.** The budget-vs-length exponent γ of each method (``ln B = c + γ ln L``):
   γ < 1 (its interval below 1) means the budget a method needs grows slower than the input.
3. **No method is best everywhere.** Per (model, task, length, phase, sparsity): the most accurate method, and the
   methods whose paired difference to it (by seed) has a 95% bootstrap interval reaching 0 ("as good"); a method is
   best everywhere only if it is as good in every such group.
4. **isoFLOPS: a larger sparse model beats a smaller dense one at equal cost.** The iso-cost verdicts, counted.
5. **The safe sparsity per task and length**: the largest over each phase's methods, with the methods that reach it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from leanformer.analysis import stats
from leanformer.analysis.markdown import md_table, num
from leanformer.analysis.store import paired_scores


def decode_vs_prefill(pres: list[dict]) -> dict:
    """Claim 1 from :func:`leanformer.analysis.report.preservation` rows."""
    by = defaultdict(lambda: defaultdict(list))
    for r in pres:
        by[(r["model"], r["task"], r["length"])][r["phase"]].append(r["safe"])
    pairs = [(np.mean(p["decode"]), np.mean(p["prefill"])) for p in by.values() if p["decode"] and p["prefill"]]
    if not pairs:
        return {"n": 0}
    dec, pre = (np.array(x) for x in zip(*pairs))
    higher, lower = int((dec > pre).sum()), int((dec < pre).sum())
    p = _binom(higher, higher + lower)
    return {"n": len(pairs), "decode_mean": float(dec.mean()), "prefill_mean": float(pre.mean()),
            "decode_higher": higher, "decode_lower": lower, "p": p}


def _binom(k: int, n: int) -> float:
    if n == 0:
        return float("nan")
    from scipy.stats import binomtest

    return float(binomtest(k, n, 0.5).pvalue)


def length_trend(fits: dict) -> list[dict]:
    """Claim 2 from the budget fits (method -> ``fit_budget_growth`` dict)."""
    return [{"method": m, "gamma": f["gamma"], "ci": tuple(f["gamma_ci"]), "sublinear": f["gamma_ci"][1] < 1,
             "superlinear": f["gamma_ci"][0] > 1} for m, f in sorted(fits.items())]


def best_methods(cells, n_boot: int = 2000) -> dict:
    """Claim 3: per phase, the groups (model, task, length, sparsity) with two or more methods, each method's wins
    (most accurate) and the groups where it is as good as the most accurate (95% paired-bootstrap interval of its
    difference reaching 0)."""
    groups = defaultdict(list)
    for c in cells:
        if c.phase in ("prefill", "decode"):
            groups[(c.phase, c.model, c.task, c.length, c.sparsity)].append(c)
    out = {}
    for phase in ("prefill", "decode"):
        gs = [g for k, g in groups.items() if k[0] == phase and len(g) > 1]
        if not gs:
            continue
        methods = sorted({c.method for g in gs for c in g})
        wins, good, present = (dict.fromkeys(methods, 0) for _ in range(3))
        for g in gs:
            best = max(g, key=lambda c: (c.accuracy, c.method))
            wins[best.method] += 1
            for c in g:
                present[c.method] += 1
                if c is best:
                    good[c.method] += 1
                    continue
                b, x = paired_scores(best, c)
                if stats.bootstrap_ci(x - b, n_boot=n_boot)[1] >= 0:
                    good[c.method] += 1
        everywhere = [m for m in methods if good[m] == present[m] == len(gs)]
        out[phase] = {"groups": len(gs), "wins": wins, "as_good": good, "present": present,
                      "best_everywhere": everywhere}
    return out


def iso_summary(iso_rows: list[dict]) -> tuple[dict, int]:
    """Claim 4: verdict counts per phase, and how many comparisons were set aside because either model's dense
    accuracy on that task and length is at the floor (a smaller model that cannot do the task at all makes "larger
    sparse better" a statement about the two models' training, not about sparsity; a larger one at the floor, the
    same the other way)."""
    out = defaultdict(lambda: defaultdict(int))
    aside = 0
    for r in iso_rows:
        if r.get("small_at_floor") or r.get("large_at_floor"):
            aside += 1
            continue
        out[r["phase"]][r["verdict"]] += 1
    return {p: dict(v) for p, v in out.items()}, aside


def safe_table(pres: list[dict]) -> list[dict]:
    """Claim 5: per (model, task, length, phase) the largest safe sparsity over the phase's methods and the methods
    that reach it."""
    best = {}
    for r in sorted(pres, key=lambda r: r["method"]):
        k = (r["model"], r["task"], r["length"], r["phase"])
        if k not in best or r["safe"] > best[k]["safe"]:
            best[k] = {"model": r["model"], "task": r["task"], "length": r["length"], "phase": r["phase"],
                       "safe": r["safe"], "methods": [r["method"]]}
        elif r["safe"] == best[k]["safe"]:
            best[k]["methods"].append(r["method"])
    return [best[k] for k in sorted(best)]


def section(cells, pres, iso_rows, fits, n_boot: int = 2000) -> list[str]:
    """The report's "Findings" lines (Markdown)."""
    md = ["## Findings against the Sparse Frontier", "",
          "Each claim of the paper, answered from this store (the sections below hold the numbers behind each).", ""]
    d = decode_vs_prefill(pres)
    if d["n"]:
        verdict = ("decoding tolerates more" if d["decode_higher"] > d["decode_lower"] and d["p"] < 0.05 else
                   "prefilling tolerates more" if d["decode_lower"] > d["decode_higher"] and d["p"] < 0.05 else
                   "no significant difference")
        md.append(f"1. **Decoding tolerates more sparsity than prefilling?** {verdict}: mean safe sparsity "
                  f"{d['decode_mean']:.3g} (decode methods) vs {d['prefill_mean']:.3g} (prefill methods) over "
                  f"{d['n']} (model, task, length) cells; decode higher in {d['decode_higher']}, lower in "
                  f"{d['decode_lower']} (sign test p = {num(d['p'])}).")
    else:
        md.append("1. **Decoding tolerates more sparsity than prefilling?** The store has no cell with both phases.")
    trend = length_trend(fits)
    if trend:
        sub = [t["method"] for t in trend if t["sublinear"]]
        md.append("2. **Longer inputs tolerate more sparsity?** Budget exponent γ per method (γ < 1: the budget "
                  "grows slower than the input): " + ", ".join(
                      f"{t['method']} {t['gamma']:.2f} [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" for t in trend)
                  + f"; interval below 1 for {len(sub)} of {len(trend)} methods.")
    else:
        md.append("2. **Longer inputs tolerate more sparsity?** No budget fit (one length, or every ladder censored).")
    best = best_methods(cells, n_boot)
    parts = []
    for phase, b in best.items():
        every = ", ".join(b["best_everywhere"]) or "none"
        wins = ", ".join(f"{m} {b['wins'][m]}" for m in sorted(b["wins"], key=lambda m: -b["wins"][m]))
        good = ", ".join(f"{m} {b['as_good'][m]}/{b['present'][m]}" for m in sorted(b["as_good"]))
        parts.append(f"{phase}: best everywhere: {every} (most accurate in {wins} of {b['groups']} groups; "
                     f"as good as the best: {good})")
    md.append("3. **Is any method best everywhere?** " + ("; ".join(parts) if parts else
                                                           "fewer than two methods per phase.") + ".")
    iso, aside = iso_summary(iso_rows)
    md.append("4. **Does a larger sparse model beat a smaller dense one at equal cost?** " + (
        "; ".join(f"{p}: " + ", ".join(f"{v} {n}" for v, n in sorted(c.items())) for p, c in sorted(iso.items()))
        if any(iso.values()) else "no iso-cost comparison (one model size, or no cell of a larger one)")
        + (f" ({aside} comparisons set aside: one of the two models is at the floor there; the iso-cost "
           "tables below list them)" if aside else "") + ".")
    rows = safe_table(pres)
    md += ["5. **Safe sparsity per task and length** (the largest over each phase's methods; 0: only dense "
           "passed):", ""]
    if rows:
        lengths = sorted({r["length"] for r in rows})
        keys = sorted({(r["model"], r["task"], r["phase"]) for r in rows})
        at = {(r["model"], r["task"], r["phase"], r["length"]): r for r in rows}

        def entry(key):
            r = at.get(key)
            return f"{r['safe']:g} ({', '.join(r['methods'])})" if r else "–"

        md.append(md_table(["model", "task", "phase", *(f"{n:,}" for n in lengths)],
                           [[*k, *(entry((*k, n)) for n in lengths)] for k in keys]))
    md.append("")
    return md
