"""``leanformer demo``: the main job on its embedded default.

With the reference checkpoint shipped in the package (``leanformer/assets/reference/model.safetensors``), the demo
is a sparse-frontier study on this machine: a sweep of every prefill and decode method over a ladder of sparsities
on the story tasks and niah / variable tracking at two lengths (``configs/frontier/demo.yaml``), the analysis report
with plots, and a summary table (dense accuracy, accuracy per method and sparsity, the safe sparsity per phase).
It resumes like every sweep. ``--full`` widens the grid; ``--device cuda`` runs it on a GPU; on the CPU two
one-thread processes share the grid (``--workers``), which decodes the small model 1.5x faster than one process.

``--long`` runs the long-context study instead (``configs/frontier/long.yaml``: every method at 4K-32K tokens and
sparsities 0.5-0.95, five tasks, 24 samples a cell, one engine batch per cell), a GPU job, on the long-context
reference (``leanformer:reference-long`` where the install ships it, else ``--model DIR``: the folder
``bash benchmarks/gpu.sh reference-long-continue`` writes); it resumes, so a run cut short is run again.

With ``--train`` (or in an install without the packaged checkpoint) the demo trains the default model
(``configs/gpt-shakespeare.yaml``) on the CPU instead and prints its test bits per byte next to the unigram entropy.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments, add_device_argument

    p = sub.add_parser(name, help="run the main job on its embedded default (a sparse-frontier study on the "
                                  "reference checkpoint; or train the default GPT)", description=__doc__)
    add_config_arguments(p, (), help="overrides of the frontier grid (e.g. samples=2) or, with --train, of the "
                                     "training config (e.g. trainer.max_steps=100), in any order among the flags")
    p.add_argument("--out", default=None, help="output directory (default: runs/demo, with --long runs/demo-long)")
    add_device_argument(p)
    p.add_argument("--full", action="store_true", help="a larger grid (more samples, lengths and sparsities)")
    p.add_argument("--train", action="store_true", help="train and evaluate the default GPT instead")
    p.add_argument("--long", action="store_true",
                   help="the long-context study (configs/frontier/long.yaml: 4K-32K tokens, every method, 24 samples "
                        "a cell) on the long-context reference: a GPU job")
    p.add_argument("--model", default=None, help="a checkpoint directory to study instead of the packaged one")
    p.add_argument("--workers", default="auto",
                   help="processes sharing the sweep (auto: 2 on a CPU with 2+ cores for the packaged model, whose "
                        "decoding is overhead-bound, else 1)")
    return p


def packaged(name: str):
    return resources.files("leanformer").joinpath(name)


REFERENCE = "leanformer:reference"  # the packaged checkpoint's name in sweeps (leanformer.eval.models.PACKAGED)
REFERENCE_LONG = "leanformer:reference-long"  # the long-context one (configs/reference/long.yaml), where shipped


def reference_dir() -> Path | None:
    """The packaged reference checkpoint, or None in an install without it."""
    from leanformer.eval.models import packaged_dir

    return packaged_dir(REFERENCE)


def run(args) -> int:
    from leanformer.cli_overrides import config_arguments

    _, args.overrides = config_arguments(args, ())
    if args.long:
        return run_long_demo(args)
    args.out = args.out or "runs/demo"
    if args.train or (args.model is None and reference_dir() is None):
        return run_training_demo(args)
    # the packaged checkpoint by its name, which stores and reports then carry instead of an install path
    return run_frontier_demo(args, args.model or REFERENCE)


# ---- the sparse-frontier study --------------------------------------------------------------------------------

FULL = {"samples": 10, "lengths": [1024, 2048, 4096], "sparsities": [0.5, 0.7, 0.8, 0.9, 0.95]}


def run_long_demo(args) -> int:
    """``--long``: the long-context study on the long reference, on a GPU unless ``--device cpu`` says otherwise."""
    import torch

    from leanformer.errors import UserError
    from leanformer.eval.models import packaged_dir

    if args.train or args.full:
        raise UserError(f"--long runs the long-context study; it takes no {'--train' if args.train else '--full'} "
                        "(its grid is configs/frontier/long.yaml; narrow it with overrides such as lengths=[4096])")
    if args.model is None and packaged_dir(REFERENCE_LONG) is None:
        raise UserError("--long: this install ships no long-context reference (leanformer/assets/reference-long); "
                        "train it with `bash benchmarks/gpu.sh reference-long` then `reference-long-continue` "
                        "(docs/study.md) and pass --model runs/gpu/reference-long-continue")
    if args.device == "auto" and not torch.cuda.is_available():
        raise UserError("--long: the long-context study prefills 4K-32K-token prompts ~16,000 times, hours of GPU "
                        "time and far more on a CPU; run it where there is a GPU, or say --device cpu to run it here")
    args.out = args.out or "runs/demo-long"
    return run_frontier_demo(args, args.model or REFERENCE_LONG, "configs/frontier-long.yaml",
                             "cuda" if args.device == "auto" else args.device)


def run_frontier_demo(args, model: str, grid: str = "configs/frontier-demo.yaml", device: str | None = None) -> int:
    """The sweep of ``grid`` (a packaged config) on ``model`` into ``--out``, its report and summary; ``device``:
    the sweep's (default: ``--device``, the CPU for ``auto``)."""
    import yaml

    from leanformer.analysis.report import ReportOptions, build_report
    from leanformer.config import apply_overrides
    from leanformer.eval import harness
    from leanformer.eval.store import StaleStoreError

    out = Path(args.out)
    raw = yaml.safe_load(packaged(grid).read_text())
    raw.update(models=[model], store=str(out / "results.db"),
               device=device or ("cpu" if args.device == "auto" else args.device))
    if args.full:
        raw.update(FULL)
    c = harness.load_config(apply_overrides(raw, list(args.overrides)))
    workers = demo_workers(args.workers, c.device, model)
    print(f"leanformer demo: sparse-frontier sweep of {model} ({grid.rsplit('/', 1)[-1]}) into {c.store}"
          + (f" ({workers} processes)" if workers > 1 else ""))
    try:  # the store's checkpoint check runs in the sweep's validation, before any sample
        harness.run_sweep_processes(c, workers)
    except StaleStoreError as e:  # the demo's own folder, from an older checkpoint: keep it aside, start afresh
        print(f"{e.path} holds results of an earlier checkpoint of {e.model}: moved to {e.move_aside()}")
        harness.run_sweep_processes(c, workers)
    report = build_report(c.store, out / "report", ReportOptions(length=max(c.lengths)))
    print(summarize(c.store))
    print(f"\nreport with plots: {report}")
    return 0


def demo_workers(value: str, device: str, model: str) -> int:
    """``--workers``: a positive integer, or ``auto``."""
    import os

    from leanformer.errors import UserError

    if value == "auto":
        return 2 if device == "cpu" and (os.cpu_count() or 1) >= 2 and model == REFERENCE else 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--workers {value!r}: give a positive number of processes or 'auto'")
    return n


def summarize(store: str | Path) -> str:
    """Dense accuracy per task and length, accuracy per method and sparsity, and the safe sparsity per phase."""
    from collections import defaultdict

    from leanformer.analysis.report import ReportOptions, preservation
    from leanformer.analysis.store import group_cells, load_rows

    cells = group_cells(load_rows(store))
    lines = ["", "dense accuracy (task x length):"]
    for c in sorted((c for c in cells if c.phase == "dense"), key=lambda c: (c.task, c.length)):
        lines.append(f"  {c.task:18s} {c.length:6d}  {c.accuracy:.3f}  (n={c.n})")
    by = defaultdict(list)
    for c in cells:
        if c.phase != "dense":
            by[(c.phase, c.method, c.sparsity)].append(c.accuracy)
    sparsities = sorted({k[2] for k in by})
    lines += ["", "mean accuracy over tasks and lengths, per method and requested sparsity:",
              "  " + f"{'phase':8s} {'method':15s}" + "".join(f"{s:>8g}" for s in sparsities)]
    for phase, method in sorted({(p, m) for p, m, _ in by}):
        row = [sum(v) / len(v) if (v := by.get((phase, method, s))) else float("nan") for s in sparsities]
        lines.append("  " + f"{phase:8s} {method:15s}" + "".join(f"{x:8.3f}" for x in row))
    safe = defaultdict(list)
    for r in preservation(cells, ReportOptions()):
        safe[(r["phase"], r["method"])].append(r["safe"] or 0.0)
    lines += ["", "safe sparsity (largest level not significantly worse than dense on every task and length):"]
    best = defaultdict(float)
    for (phase, method), v in sorted(safe.items()):
        lines.append(f"  {phase:8s} {method:15s} {min(v):.2f}")
        best[phase] = max(best[phase], min(v))
    lines += [f"  -> {phase}: {s:.2f}" for phase, s in sorted(best.items())]
    return "\n".join(lines)


# ---- --train: train the default model ----------------------------------------------------------------------------


def run_training_demo(args) -> int:
    from leanformer.data import ByteTokenizer, load_source, token_stream
    from leanformer.eval.cli import evaluate_run
    from leanformer.eval.lm import token_byte_lengths, unigram_entropy_bits_per_byte
    from leanformer.train.cli import run_config
    from leanformer.train.trainer import Trainer

    out = Path(args.out)
    overrides = [f"trainer.device={args.device}", *args.overrides]
    with resources.as_file(packaged("configs/gpt-shakespeare.yaml")) as preset:
        cfg = run_config(out, preset, overrides)
    print(f"leanformer demo: training {cfg.model.n_layers}-layer GPT (d={cfg.model.d_model}) on Shakespeare, "
          f"byte level, into {out}")
    Trainer(cfg, out).fit()
    result = evaluate_run(out, "test", device=args.device)
    test = token_stream(load_source("shakespeare").documents("test"), ByteTokenizer())
    unigram = unigram_entropy_bits_per_byte(test, token_byte_lengths(ByteTokenizer(), 260))
    summary = {"run_dir": str(out), "test_bits_per_byte": round(result["bits_per_byte"], 4),
               "test_perplexity_per_byte": round(result["perplexity"], 3),
               "unigram_entropy_bits_per_byte": round(unigram, 4), "test_bytes": result["bytes"]}
    print(json.dumps(summary))
    return 0
