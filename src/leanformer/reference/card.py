"""The model card of a reference checkpoint, written from what the training script recorded (``training.json``,
``model.json``): architecture, tokenizer, data mixture, training budget, dense accuracy per task and length, and the
command that reproduces it.

    python -m leanformer.reference.card MODEL_DIR      # writes MODEL_DIR/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leanformer.errors import UserError
from leanformer.reference.mixture import TRAIN_SEED_BASE
from leanformer.tasks import TASKS, Task

CARD_NAME = "README.md"


def _chained_tasks(mix: dict) -> list[str]:
    """The mixture's tasks that have a chained answer form (:meth:`Task.chain_items`), sorted."""
    return sorted(n for n in mix.get("tasks", {}) if n in TASKS and TASKS[n].chain_items is not Task.chain_items)


def card_text(model_dir: str | Path) -> str:
    d = Path(model_dir)
    try:
        report = json.loads((d / "training.json").read_text())
        meta = json.loads((d / "model.json").read_text())
    except FileNotFoundError as e:
        raise UserError(f"{d} is not a reference-checkpoint folder: {e.filename} is missing") from None
    if not report.get("evaluation_complete", True):  # older records have no flag and were written whole
        cells = sum(len(per) for per in report.get("dense_accuracy", {}).values())
        raise UserError(f"{d / 'training.json'}: the evaluation is incomplete ({cells} task x length cells "
                        "measured); finish it with python -m leanformer.reference.train --skip-train "
                        f"--config CONFIG --out {d}")
    cfg = report.get("resolved_config", report["config"])
    info, acc = report.get("training", {}), report["dense_accuracy"]
    m = meta["config"]
    lengths = sorted({int(L) for per in acc.values() for L in per})
    rows = [f"| {task} | " + " | ".join(_cell(per[str(L)]) if str(L) in per else "—" for L in lengths) + " |"
            for task, per in acc.items()]
    n_eval = max((len(v["scores"]) for per in acc.values() for v in per.values()), default=0)
    mix = cfg.get("mixture", {})
    # a checkpoint continued from another (init_from) is reproduced by its whole chain of jobs, oldest first
    jobs = [*info.get("init_chain", []), {"config_file": report.get("config_file"),
                                          "overrides": report.get("overrides", [])}]
    commands = [_train_command(job, i, len(jobs)) for i, job in enumerate(jobs)]
    lines = [
        f"# leanformer reference checkpoint: {m.get('n_layers')} layers, d {m.get('d_model')}",
        "",
        f"A Llama-style `gpt` ({info.get('params', '?'):,} parameters, {info.get('non_embedding_params', '?'):,} "
        "without embeddings) with a byte-level BPE tokenizer trained on the same data, for the sparse-frontier demo "
        "(`leanformer demo`). Converts to `transformers.LlamaForCausalLM` with `to_hf()`.",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "| --- | --- |",
        *[f"| {k} | {'auto' if v is None else v} |" for k, v in m.items() if k != "name"],
        "",
        "## Training data",
        "",
        f"Mixture (`leanformer.reference.mixture`): Shakespeare training plays {mix.get('shakespeare_fraction')} of "
        f"batches, copy sequences {mix.get('copy_fraction', 0.0)} (all of the first "
        f"{mix.get('copy_warmup_steps', 0)} steps), associative recall {mix.get('recall_fraction', 0.0)}"
        + (f" ({mix['recall_reverse']} of its queries backwards)" if mix.get("recall_reverse") else "")
        + (f", assignment drills {mix['lookup_fraction']} (variable_tracking's statements, each variable asked by "
           "what it is assigned)" if mix.get("lookup_fraction") else "") + ", "
        f"the rest task-suite samples with weights "
        f"{mix.get('tasks', 'default')}; prompt lengths {mix.get('lengths')} tokens"
        + (f" after {mix.get('short_steps')} steps at {mix.get('short_lengths')}" if mix.get("short_steps") else "")
        + f"; answer-only loss on task samples: {mix.get('answer_only', False)}"
        + ("; keyed answers (niah and story_retrieval answered item by item as `QUERY: ANSWER`, "
           f"answer margin {mix.get('answer_margin')} tokens)" if mix.get("keyed_answers") else "")
        + (f"; chained answers ({' and '.join(mix.get('chain_tasks') or _chained_tasks(mix))} "
           "write out their lookups, `KEY: VALUE, VALUE: NEXT, ...`, before the answer)"
           if mix.get("chain_answers") else "")
        + (f"; training generators' parameters {mix['task_params']}" if mix.get("task_params") else "")
        + ". Task samples use seeds >= "
        f"{TRAIN_SEED_BASE:,}; evaluation uses seeds 0..{max(n_eval - 1, 0)} (a test checks they never meet).",
        "",
        "## Training budget",
        "",
        f"{info.get('steps', '?')} steps, {info.get('tokens', 0):,} trained tokens, "
        f"{info.get('train_seconds', 0):.0f} s on {info.get('device_name', 'one GPU')} "
        f"(peak LR {cfg.get('lr')}, warmup {cfg.get('warmup_steps')} steps, cosine to "
        f"{cfg.get('final_lr_fraction', 0.05)} of the peak)"
        + (f", continuing a checkpoint ({Path(info['init_from']).name}) trained for "
           f"{info.get('data_step_offset', 0)} steps before (its weights and data order; a fresh optimizer)."
           if info.get("init_from") else "."),
        "",
        f"## Dense accuracy ({n_eval} samples per cell, the harness's prompt encoding and scorers, greedy, "
        f"at most {cfg.get('eval_max_new_tokens', 128)} new tokens; mean ± the half-width of its 95% Student-t "
        "interval)",
        "",
        "| task | " + " | ".join(f"{L} tokens" for L in lengths) + " |",
        "| --- | " + " | ".join("---" for _ in lengths) + " |",
        *rows,
        "",
        "## Reproduce",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    return "\n".join(lines)


def _cell(result: dict) -> str:
    """``mean ± half-width`` of one task x length cell's scores (95% Student-t, the sweeps' summary interval)."""
    from leanformer.eval.store import mean_ci

    if not result.get("scores"):  # an older record with the mean alone
        return f"{result['mean']:.3f}"
    mean, half = mean_ci(result["scores"])
    return f"{mean:.3f} ± {half:.3f}"


def _train_command(job: dict, i: int, n: int) -> str:
    """Job ``i`` of ``n``: the last writes ``OUT``, earlier ones ``OUT1, OUT2, ...``, each continuing the one before."""
    out = "OUT" if i == n - 1 else f"OUT{i + 1}"
    # runs of spaces inside an override (a shell line continuation) mean nothing to YAML: one space reads better
    args = [f"init_from={'OUT' + str(i)}" if o.startswith("init_from=") else " ".join(o.split())
            for o in job.get("overrides") or []]
    quoted = " ".join(f"'{o}'" if any(c in o for c in " []{}") else o for o in args)
    return ("PYTHONPATH=src python3 -m leanformer.reference.train"
            + (f" --config {job['config_file']}" if job.get("config_file") else "") + f" --out {out} {quoted}").rstrip()


def write_card(model_dir: str | Path) -> Path:
    from leanformer.config import atomic_write_text

    path = Path(model_dir) / CARD_NAME
    atomic_write_text(path, card_text(model_dir))
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    try:
        print(write_card(ap.parse_args(argv).model_dir))
    except UserError as e:  # one line and status 2, as the leanformer CLI does
        print(f"leanformer: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
