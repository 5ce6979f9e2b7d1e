"""``leanformer depth MODEL --lengths ...``: needle-in-a-haystack accuracy by where each needle sits.

Each ``niah`` sample hides six key-value needles at random depths and asks for four; here every queried needle is
scored on its own and placed by its token position in the prompt, so the table (and ``depth.png``, the heatmap of
Kamradt's needle test and RULER's NIAH) gives the accuracy per prompt length and depth bin (0 = the prompt's start,
farthest from the question; 1 = its end). Where a model fails at its longest prompts this tells distance from length:
needles far before the question lost and near ones found, or every depth alike.

``--rope-theta`` evaluates at another rotary base than the model's (plain RoPE only): raising it at inference
(NTK-aware scaling) maps longer distances onto the angles the model was trained on, a training-free probe of whether
positions are what fail.

Writes under ``--out``: ``needles.jsonl`` (one line per sample, appended as each batch finishes: a stopped run resumes
without repeating or losing a sample; a half-written last line is dropped), ``depth.json`` (settings, machine, the
table), ``depth.md`` and ``depth.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from leanformer.cli_overrides import add_device_argument

EXAMPLE = """example (the long reference at 8K-32K, 16 samples a length, on a GPU):
  leanformer depth leanformer:reference-long --lengths 8192 16384 32768 --samples 16 --out runs/depth"""

SETTINGS = ("model", "rope_theta", "max_new_tokens", "n_needles", "n_queries")  # a resumed run must match these


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="needle-in-a-haystack accuracy by needle depth and prompt length (heatmap)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run/checkpoint dir, leanformer:NAME, or a Hugging Face dir or hub name")
    p.add_argument("--lengths", type=int, nargs="+", required=True, help="prompt lengths in tokens")
    p.add_argument("--samples", type=int, default=16, help="samples per length (seeds 0..N-1; 4 needles each)")
    p.add_argument("--bins", type=int, default=10, help="depth bins of the table and heatmap")
    p.add_argument("--rope-theta", type=float, default=None,
                   help="evaluate at this rotary base instead of the model's (plain RoPE models only)")
    p.add_argument("--batch-size", type=int, default=8, help="samples prefilled and decoded together")
    p.add_argument("--max-new-tokens", type=int, default=128)
    add_device_argument(p)
    p.add_argument("--out", default="runs/depth")
    return p


# ---- one sample's needles ---------------------------------------------------------------------------------------


def needle_depths(sample, tokenizer) -> list[tuple[int, int]]:
    """``(token position, prompt tokens)`` of each queried needle of a ``niah`` sample, in the question's order: where
    the needle's value starts in ``sample.prompt`` by ``tokenizer`` (the prompt's text alone, before any template or
    answer prefix; ``sample.prompt_tokens`` counts it in the same tokenizer, the one the sample was made with). Each
    value (a random 7-digit number) occurs once in the prompt; anything else is an error."""
    from leanformer.errors import UserError

    total = sample.prompt_tokens
    out = []
    for value in sample.answer:
        found = [m.start() for m in re.finditer(rf"(?<!\d){re.escape(value)}(?!\d)", sample.prompt)]
        if len(found) != 1:
            raise UserError(f"niah sample seed {sample.seed}: value {value!r} occurs {len(found)} times in the "
                            "prompt; exactly once is needed to place it")
        out.append((len(tokenizer.encode(sample.prompt[:found[0]])), total))
    return out


def sample_record(sample, output: str, tokenizer, task) -> dict:
    """One line of ``needles.jsonl``: the sample's key, the output and each queried needle's position and score."""
    hits = task.item_scores(output, sample)
    needles = [{"position": pos, "depth": pos / max(1, total), "before_end": total - pos, "correct": ok}
               for (pos, total), ok in zip(needle_depths(sample, tokenizer), hits)]
    return {"length": sample.length, "seed": sample.seed, "prompt_tokens": sample.prompt_tokens, "output": output,
            "needles": needles}


# ---- the table ----------------------------------------------------------------------------------------------------


def table(records: list[dict], bins: int) -> dict:
    """``{length: {"bins": [[correct, needles] per depth bin], "accuracy": all needles, "ci95": its half-width}}``
    over ``records``. The needles of one prompt are not independent draws, so the interval treats each sample as
    one: the ratio estimator's standard error over samples (Student-t), which is the plain interval of the samples'
    shares found where every sample asks the same number of needles."""
    from leanformer.eval.store import mean_ci

    out: dict = {}
    counts: dict[str, list[tuple[int, int]]] = {}
    for r in sorted(records, key=lambda r: (r["length"], r["seed"])):
        row = out.setdefault(str(r["length"]), {"bins": [[0, 0] for _ in range(bins)], "samples": 0})
        row["samples"] += 1
        for n in r["needles"]:
            b = row["bins"][min(bins - 1, int(n["depth"] * bins))]
            b[0] += int(n["correct"])
            b[1] += 1
        if r["needles"]:
            counts.setdefault(str(r["length"]), []).append((sum(int(n["correct"]) for n in r["needles"]),
                                                            len(r["needles"])))
    for length, row in out.items():
        per = counts.get(length, [])
        hit, seen = sum(h for h, _ in per), sum(n for _, n in per)
        row["accuracy"] = hit / seen if seen else None
        row["ci95"] = mean_ci([(h - hit / seen * n) / (seen / len(per)) for h, n in per])[1] if per else None
    return out


def markdown(tab: dict, meta: dict) -> str:
    bins = len(next(iter(tab.values()))["bins"]) if tab else 0
    theta = meta["settings"]["rope_theta"]
    base = "the model's own" if theta is None else f"{theta:g}"
    lines = [f"# Needle accuracy by depth: {meta['settings']['model']}", "",
             f"{meta['device']}; rotary base {base}; "
             "each cell: queried needles found / asked (depth 0 = the prompt's start, 1 = the question)", "",
             "| length | all (± 95% interval over samples) | "
             + " | ".join(f"{i / bins:.1f}-{(i + 1) / bins:.1f}" for i in range(bins)) + " |",
             "| --- | --- |" + " --- |" * bins]
    for length, row in tab.items():
        cells = [f"{c / n:.2f} ({n})" if n else "–" for c, n in row["bins"]]
        ci = "" if row.get("ci95") is None else f" ± {row['ci95']:.3f}"
        lines.append(f"| {length} | {row['accuracy']:.3f}{ci} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(tab: dict, path: Path, title: str) -> Path | None:
    """Heatmap: prompt length (rows; the keys of :func:`table`'s result, or any row names) by depth bin (columns),
    colour = needles found; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lengths = list(tab)
    bins = len(tab[lengths[0]]["bins"])
    grid = [[c / n if n else math.nan for c, n in tab[L]["bins"]] for L in lengths]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * bins, 1.4 + 0.5 * len(lengths)))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(bins), [f"{(j + 0.5) / bins:.2f}" for j in range(bins)], fontsize=8)
    ax.set_yticks(range(len(lengths)), [f"{int(L) // 1024}K" if L.isdigit() and int(L) % 1024 == 0 else L
                                        for L in lengths])  # a row named other than by its length keeps its name
    ax.set_xlabel("needle depth in the prompt (0 = start, 1 = next to the question)")
    ax.set_ylabel("prompt length (tokens)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="needles found")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the run ------------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    """The complete lines of ``needles.jsonl``; a half-written last line (a run stopped mid-write) is cut off the
    file so the next append starts on a line of its own."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:good].decode().splitlines() if line.strip()]
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def _check(args) -> None:
    from leanformer.errors import UserError

    for flag, value, low in (("--samples", args.samples, 1), ("--bins", args.bins, 1),
                             ("--batch-size", args.batch_size, 1), ("--max-new-tokens", args.max_new_tokens, 1)):
        if value < low:
            raise UserError(f"{flag} {value} must be at least {low}")
    bad = [L for L in args.lengths if L < 256]
    if bad:
        raise UserError(f"--lengths {bad[0]} is too short: niah needs at least 256 tokens")
    if args.rope_theta is not None and not (math.isfinite(args.rope_theta) and args.rope_theta > 1.0):
        raise UserError(f"--rope-theta {args.rope_theta} must be a finite base above 1")


def _meta(args, settings: dict) -> dict:
    import torch

    from leanformer import __version__
    from leanformer.eval.models import _device
    from leanformer.provenance import commit, device_name

    return {"device": device_name(_device(args.device)), "torch": torch.__version__, "leanformer": __version__,
            "commit": commit(),
            "command": " ".join(["leanformer", *sys.argv[1:]]) if sys.argv else "", "settings": settings}


def _write(out: Path, meta: dict, records: list[dict], bins: int) -> dict:
    from leanformer.config import atomic_write_text

    tab = table(records, bins)
    atomic_write_text(out / "depth.json", json.dumps({"meta": meta, "table": tab}, indent=1))
    atomic_write_text(out / "depth.md", markdown(tab, meta))
    return tab


def run(args) -> int:
    from leanformer.errors import UserError
    from leanformer.tasks import TASKS

    _check(args)
    out = Path(args.out)
    task = TASKS["niah"]()
    settings = {"model": args.model, "rope_theta": args.rope_theta, "max_new_tokens": args.max_new_tokens,
                "n_needles": task.n_needles, "n_queries": task.n_queries}
    if (out / "depth.json").exists():
        before = json.loads((out / "depth.json").read_text())["meta"]["settings"]
        diff = [f"{k}={before.get(k)!r} (now {settings[k]!r})" for k in SETTINGS if before.get(k) != settings[k]]
        if diff:
            raise UserError(f"--out {out} holds a depth run with other settings: {', '.join(diff)}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    records = read_records(out / "needles.jsonl")
    done = {(r["length"], r["seed"]) for r in records}
    todo = [(L, s) for L in args.lengths for s in range(args.samples) if (L, s) not in done]
    meta = _meta(args, settings)
    if todo:
        records += _measure(args, task, todo, out / "needles.jsonl")
    wanted = set(args.lengths)
    tab = _write(out, meta, [r for r in records if r["length"] in wanted and r["seed"] < args.samples], args.bins)
    print(markdown(tab, meta), end="")
    theta = "its own base" if args.rope_theta is None else f"rope base {args.rope_theta:g}"
    if plot(tab, out / "depth.png", f"{Path(args.model).name}: needles found by depth ({theta})"):
        print(f"wrote {out / 'depth.png'}")
    return 0


def _measure(args, task, todo: list[tuple[int, int]], path: Path) -> list[dict]:
    from tqdm.auto import tqdm

    from leanformer.eval.generation import PromptEncoder, generate_engine, made_prompts
    from leanformer.eval.models import load_model, open_tokenizer, set_rope_theta
    from leanformer.infer import Engine

    model = load_model(args.model, args.device, "auto")
    if args.rope_theta is not None:
        set_rope_theta(model, args.rope_theta)
    engine = Engine(model)
    tok = open_tokenizer(args.model)
    enc = PromptEncoder(tok, "off", "<answer>")
    # prompts made ahead by the cores the model leaves (fitting a 32K prompt takes ~1.5 s of CPU, a GPU's sample less)
    made = made_prompts((("niah", {}, L, s) for L, s in todo), args.model,
                        workers=max(0, (os.cpu_count() or 2) - 2))
    new: list[dict] = []
    with tqdm(total=len(todo), desc="depth", unit="sample", disable=not sys.stderr.isatty()) as bar, \
            open(path, "a") as f:
        while len(new) < len(todo):
            chunk = [next(made) for _ in range(min(args.batch_size, len(todo) - len(new)))]
            gens, _ = generate_engine(engine, enc, [ids for _, _, ids in chunk], args.max_new_tokens)
            for (_, sample, _), g in zip(chunk, gens):
                rec = sample_record(sample, g.text, tok, task)
                f.write(json.dumps(rec) + "\n")
                new.append(rec)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    made.close()
    return new
