"""What ``leanformer speed`` writes from its rows: speedups against the faster dense baseline, Markdown tables and
the speedup-against-length plot."""

from __future__ import annotations

import dataclasses

from leanformer.infer.speed import Row


def speedups(rows: list[Row]) -> list[dict]:
    """Each sparse row's speedup over the faster dense baseline of its length (and batch spec): TTFT for prefill
    rows, tokens/s for decode rows (at ``max``: against dense at its own ``max`` batch)."""
    out = []
    for r in rows:
        d = dataclasses.asdict(r)
        base = [x for x in rows if x.status == "ok" and x.length == r.length and x.kind == r.kind
                and x.method in ("hf", "dense") and (r.kind == "prefill" or x.batch_spec == r.batch_spec)]
        if r.status == "ok" and base:
            if r.kind == "prefill":
                best = min(x.ttft_s for x in base)
                d["speedup"] = best / r.ttft_s
            else:
                best = max(x.tokens_per_s for x in base)
                d["speedup"] = r.tokens_per_s / best
        out.append(d)
    return out


def fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def markdown(rows: list[dict], meta: dict) -> str:
    """The results as one Markdown table per phase."""
    lines = [f"# Model-level speed: {meta['model']}", "",
             f"{meta['device']}; {meta['dtype']}; {'random weights; ' if meta.get('random_weights') else ''}"
             f"torch {meta['torch']}, transformers {meta['transformers']}; commit {meta['commit']}.", "",
             "Speedups are against the faster dense baseline of the same length (and batch): Hugging Face's SDPA path "
             "(`hf`) or the engine's dense path (`dense`: cuDNN prefill, graph-captured decode)."
             + (" Each layer's q/k/v and gate/up projections are packed into one matrix each (every path, the "
                "model's own included)." if meta.get("settings", {}).get("packed_projections") else ""), ""]
    for kind, cols in (("prefill", ["length", "method", "sparsity", "measured_sparsity", "ttft_s", "speedup",
                                    "peak_gb"]),
                       ("decode", ["length", "batch_spec", "batch", "method", "sparsity", "ms_per_token",
                                   "tokens_per_s", "speedup", "cache_mb_per_seq", "peak_gb"])):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        lines += [f"## {'Time to first token' if kind == 'prefill' else 'Decode'}", "",
                  "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in sel:
            cells = [fmt(r.get(c)) if r["status"] == "ok" or c in ("length", "method", "batch_spec") else r["status"]
                     for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path, title: str):
    """Speedup against length per method: TTFT (left), decode tokens/s at batch 1 and at ``max`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("prefill", "decode")):
        series: dict = {}
        for r in rows:
            if r["kind"] == kind and r.get("speedup") and r["method"] not in ("hf", "dense"):
                label = f"{r['method']} {r['sparsity']:g}" + (f" (batch {r['batch_spec']})" if kind == "decode" else "")
                series.setdefault(label, []).append((r["length"], r["speedup"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("speedup over the faster dense baseline (x)")
        ax.set_title("time to first token" if kind == "prefill" else "decode tokens/s")
        if series:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
