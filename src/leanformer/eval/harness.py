"""The sparse-frontier sweep harness: run a grid of (model x method x sparsity x task x length x sample) and write
one row per finished sample to the results store (:mod:`leanformer.eval.store`).

The grid (:func:`build_grid`) is fixed by a :class:`FrontierConfig`: for each model, task, length, method pair
(prefill, decode) and sparsity, one *cell* of ``samples`` samples. Method pairs are the dense baseline, each listed
prefill method with dense decode, each listed decode method with dense prefill, and any explicit ``methods`` pairs
(``"vertical_slash/quest"``); the dense pair runs at sparsity 0 only. Sample ``i`` of a (task, length) uses seed
``seed + i``, the same for every model and method, so rows pair by (model, task, length, seed).

Order of work: everything is validated first (:func:`validate`: task and method names, task parameters, sparsity in
[0, 1), lengths against each model's context, the store); then each rank takes the cells with ``index % world_size
== rank``, skips the samples already in the store, and commits each sample as soon as its batch is scored. Samples
of one cell are batched through :class:`leanformer.infer.Engine` (``engine``): prompts prefilled together
right-padded (attention on each row's own tokens), all decoded together over a static cache — a sample's tokens
equal its batch-1 tokens, and each sample gets its own measured sparsity (pair-weighted over layers and steps). With
``engine: off`` (or a model the engine does not run) transformers' ``generate`` does it: dense cells left-padded,
sparse cells in groups of prompts of equal length sharing the group's measured sparsity. The wall time of a batch is
shared equally by its samples.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from leanformer.config import cfg, from_dict
from leanformer.errors import ConfigError, UserError
from leanformer.eval.store import ResultsStore, canonical_json, cell_key, summary_table
from leanformer.reliability import check_output_dir, crash_point, existing_ancestor
from leanformer.tasks import TASKS


@dataclasses.dataclass(kw_only=True)
class FrontierConfig:
    """One sweep. Lists are grid axes; ``task_params`` / ``method_params`` are keyed by task / method name."""

    models: list[str] = cfg(default_factory=list, help="our checkpoint dirs, HF model dirs or hub names")
    tasks: list[str] = cfg(default_factory=list)
    lengths: list[int] = cfg(default_factory=list, help="prompt lengths in tokens")
    prefill: list[str] = cfg(default_factory=list, help="prefill methods (each runs with dense decode)")
    decode: list[str] = cfg(default_factory=list, help="decode methods (each runs with dense prefill)")
    methods: list[str] = cfg(default_factory=list, help="explicit 'prefill/decode' pairs")
    sparsities: list[float] = cfg(default_factory=lambda: [0.5])
    samples: int = cfg(10, ge=1, help="samples per cell")
    seed: int = cfg(0, ge=0)
    batch_size: int = cfg(1, ge=1)
    max_new_tokens: int = cfg(64, ge=1)
    task_params: dict = cfg(default_factory=dict)
    method_params: dict = cfg(default_factory=dict)
    store: str = "runs/frontier/results.db"
    device: str = cfg("auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' (auto: cuda:LOCAL_RANK when available)")
    dtype: str = cfg("auto", choices=("auto", "fp32", "bf16", "fp16"))
    device_map: str | None = cfg(None, help="Hugging Face device_map for a model too large for one GPU (e.g. "
                                 "'auto': layers spread over the visible GPUs; needs accelerate); overrides device")
    tokenizer: str | None = cfg(None, help="override: 'byte', 'hf:<name>' or a path")
    chat_template: str = cfg("auto", choices=("auto", "on", "off"))
    answer_prefix: str = "<answer>"
    engine: str = cfg("auto", choices=("auto", "on", "off"),
                      help="generate with leanformer.infer.Engine (static cache, rows of any length batched, "
                           "evicting methods keep only their budget): 'auto' where the model is a Llama-family one, "
                           "'off' for transformers' generate (sparse cells then batch only prompts of equal length)")
    prefill_tokens: int | None = cfg(None, ge=1, help="the engine prefills a batch's prompts together while count x "
                                     "longest prompt stays within this many tokens (default: as many as keep one "
                                     "[tokens, d_ff] activation within 1 GiB; 1: each prompt alone)")
    prompt_workers: int = cfg(0, ge=0, help="processes that make the prompts ahead of the model (0: this process "
                                           "does); a 32K-token prompt takes ~1-2 s of CPU to fit its length")
    progress: bool = True


def load_config(raw: dict) -> FrontierConfig:
    cfg_ = from_dict(FrontierConfig, raw)
    for axis in ("models", "tasks", "lengths"):
        if not getattr(cfg_, axis):
            raise ConfigError(f"frontier: no {axis} given (set '{axis}' in the YAML file or pass --{axis})")
    return cfg_


# ---- grid -------------------------------------------------------------------------------------------------------


def method_pairs(c: FrontierConfig) -> list[tuple[str, str]]:
    pairs = [("dense", "dense")] + [(p, "dense") for p in c.prefill] + [("dense", d) for d in c.decode]
    for m in c.methods:
        if m.count("/") != 1:
            raise ConfigError(f"frontier.methods: {m!r} is not of the form 'prefill/decode' (e.g. 'dense/quest')")
        pairs.append(tuple(m.split("/")))
    return list(dict.fromkeys(pairs))


def cell_params(c: FrontierConfig, prefill: str, decode: str) -> dict:
    """Method parameters of a cell, per phase: ``{"prefill": {...}, "decode": {...}}``.

    ``method_params[NAME]`` applies to method NAME in whichever phase it runs; ``method_params["prefill:NAME"]`` /
    ``["decode:NAME"]`` to one phase only (``streaming`` exists in both, with different parameters)."""
    out: dict = {"prefill": {}, "decode": {}}
    for phase, m in (("prefill", prefill), ("decode", decode)):
        if m != "dense":
            out[phase].update(c.method_params.get(m, {}))
            out[phase].update(c.method_params.get(f"{phase}:{m}", {}))
    return out


def build_grid(c: FrontierConfig) -> list[dict]:
    """Every cell in a fixed order (model, task, length, method pair, sparsity), with its key."""
    cells = []
    for model in c.models:
        for task in c.tasks:
            for length in c.lengths:
                for prefill, decode in method_pairs(c):
                    dense = prefill == decode == "dense"
                    for s in [0.0] if dense else c.sparsities:
                        cell = {"model": model, "prefill_method": prefill, "decode_method": decode,
                                "sparsity": float(s), "task": task, "length": int(length),
                                "params": cell_params(c, prefill, decode),
                                "task_params": TASKS[task](**c.task_params.get(task, {})).params(),
                                "seed": c.seed, "max_new_tokens": c.max_new_tokens, "tokenizer": c.tokenizer,
                                "chat_template": c.chat_template, "answer_prefix": c.answer_prefix}
                        cells.append({**cell, "key": cell_key(cell)})
    return cells


# ---- validation (nothing heavy runs before it passes) -------------------------------------------------------------


def validate(c: FrontierConfig, dry_run: bool = False) -> list[dict]:
    """Check every input before any work; returns the grid. Raises :class:`UserError` naming the bad value.
    ``dry_run``: create nothing (no store, no folder); an existing store is checked without being written."""
    from leanformer.devices import check_device
    from leanformer.eval.models import check_model_spec, context_length, method_names, open_tokenizer

    if c.device_map is None:
        check_device(c.device, "device")
    for t in c.tasks:
        if t not in TASKS:
            raise UserError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    for t in c.task_params:
        if t not in c.tasks:
            raise UserError(f"task_params given for {t!r}, which is not in the grid's tasks {c.tasks}")
    for t in c.tasks:
        try:
            TASKS[t](**c.task_params.get(t, {}))
        except TypeError as e:
            raise UserError(f"task_params.{t}: {e}") from None
    prefill_ok, decode_ok = method_names()
    pairs = method_pairs(c)
    for p, d in pairs:
        if p not in prefill_ok:
            raise UserError(f"unknown prefill method {p!r}; choose from {', '.join(prefill_ok)}")
        if d not in decode_ok:
            raise UserError(f"unknown decode method {d!r}; choose from {', '.join(decode_ok)}")
    for m in c.method_params:
        phase, _, name = m.rpartition(":")
        known = {"prefill": prefill_ok, "decode": decode_ok}.get(phase, prefill_ok + decode_ok)
        if phase not in ("", "prefill", "decode") or name not in known:
            raise UserError(f"method_params given for unknown method {m!r}; use a method name, or "
                            f"'prefill:NAME' / 'decode:NAME' for one phase")
    _check_method_params(c, pairs)
    for s in c.sparsities:
        if not 0.0 <= s < 1.0:
            raise UserError(f"sparsity {s!r} is outside [0, 1) (the fraction of query-key pairs skipped)")
    for L in c.lengths:
        if L < 1:
            raise UserError(f"length {L!r} must be a positive number of tokens")
    for model in c.models:
        check_model_spec(model)
    for model in c.models:
        ctx = context_length(model)
        tok = open_tokenizer(model, c.tokenizer)
        from leanformer.eval.generation import PromptEncoder

        try:
            extra = PromptEncoder(tok, c.chat_template, c.answer_prefix).overhead()
        except ValueError as e:
            raise UserError(f"model {model!r}: {e}") from None
        need = max(c.lengths) + extra + c.max_new_tokens
        if ctx is not None and need > ctx:
            raise UserError(f"length {max(c.lengths)} is beyond the context of model {model!r}: prompt + template "
                            f"({extra}) + max_new_tokens ({c.max_new_tokens}) = {need} > {ctx} positions")
        # A length too short for a task (its prompt without filler does not fit) must fail now, not mid-sweep.
        for t in c.tasks:
            task = TASKS[t](**c.task_params.get(t, {}))
            for L in c.lengths:
                task.generate(tok, L, c.seed)
    grid = build_grid(c)
    store_dir = Path(c.store).absolute().parent
    if dry_run:
        nearest = existing_ancestor(store_dir)
        if not os.access(nearest, os.W_OK):
            raise UserError(f"results store {c.store}: {nearest} is not writable")
        if not Path(c.store).exists():
            return grid
    else:
        # A read-only or full disk must fail now, not after hours of generation (about 4 KiB per result row).
        check_output_dir(store_dir, 4096 * len(grid) * c.samples, "the results store")
    # a model name must mean one checkpoint in a store: an updated checkpoint never resumes on the old one's rows
    from leanformer.eval.models import model_fingerprint

    with ResultsStore(c.store) as store:
        for model in c.models:
            store.check_model(model, model_fingerprint(model), record=not dry_run)
    return grid


def _check_method_params(c: FrontierConfig, pairs) -> None:
    """Every cell's parameters must be accepted by its methods: fail now, not hours into the sweep."""
    from leanformer.eval.models import method_param_names

    for p, d in pairs:
        params = cell_params(c, p, d)
        for phase, m in (("prefill", p), ("decode", d)):
            if m == "dense":
                continue
            allowed = method_param_names(phase, m)
            for key in params[phase]:
                if allowed is not None and key not in allowed:
                    raise UserError(f"method_params: {phase} method {m!r} has no parameter {key!r} (allowed: "
                                    f"{', '.join(sorted(allowed))}); use 'prefill:{m}' / 'decode:{m}' to give "
                                    f"parameters to one phase only")


# ---- the sweep ------------------------------------------------------------------------------------------------


def shard(cells: list[dict], rank: int, world: int) -> list[dict]:
    if not 0 <= rank < world:
        raise UserError(f"rank {rank} is outside [0, world_size={world})")
    return [cell for i, cell in enumerate(cells) if i % world == rank]


def run_sweep(c: FrontierConfig, rank: int = 0, world: int = 1, log=print, grid: list[dict] | None = None
              ) -> dict[str, Any]:
    """Validate, then run this rank's shard of the grid. Returns counts: ``cells``, ``done_before``, ``added``.
    ``grid``: what :func:`validate` returned for ``c`` already (processes started by :func:`run_sweep_processes`)."""
    from tqdm.auto import tqdm

    cells = shard(validate(c) if grid is None else grid, rank, world)
    store = ResultsStore(c.store)
    todo = {cell["key"]: [i for i in range(c.samples) if i not in store.done(cell["key"])] for cell in cells}
    total, pending = len(cells) * c.samples, sum(len(v) for v in todo.values())
    stats = {"cells": len(cells), "done_before": total - pending, "added": 0}
    bar = tqdm(total=total, initial=total - pending, desc=f"frontier[{rank}/{world}]", disable=not c.progress,
               unit="sample", dynamic_ncols=True, position=rank if world > 1 else None)
    try:
        for model_name in dict.fromkeys(cell["model"] for cell in cells):
            mine = [cell for cell in cells if cell["model"] == model_name and todo[cell["key"]]]
            if mine:
                stats["added"] += _run_model(c, model_name, mine, todo, store, bar)
    finally:
        bar.close()
        store.close()
    return stats


def _sweep_worker(c: FrontierConfig, rank: int, world: int, threads: int, grid: list[dict]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return run_sweep(c, rank, world, log=lambda *a: None, grid=grid)


def run_sweep_processes(c: FrontierConfig, workers: int) -> dict[str, Any]:
    """:func:`run_sweep` over ``workers`` local processes, rank ``r`` taking shard ``r`` of the grid with
    ``cpu_count // workers`` threads, all writing one store (each sample is its own transaction). On the CPU a small
    model's decoding is bound by per-operator overhead, which threads do not share out but processes do (the demo's
    grid on 2 cores: 5.0 minutes in two one-thread processes, 7.5 in one two-thread process; the same rows).
    Returns the summed counts; a failing worker's error is raised here after the others finish."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers={workers!r}: must be a positive integer")
    if workers == 1:
        return run_sweep(c, log=lambda *a: None)
    grid = validate(c)  # once, here: errors surface before any process starts, and the workers reuse the grid
    threads = max(1, (os.cpu_count() or workers) // workers)
    quiet = dataclasses.replace(c, progress=False)  # one bar, drawn here: workers' bars would interleave in logs
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_sweep_worker, quiet, r, workers, threads, grid) for r in range(workers)]
        _watch(futures, c, grid)
        errors, stats = [], {"cells": 0, "done_before": 0, "added": 0}
        for f in futures:
            try:
                for k, v in f.result().items():
                    stats[k] += v
            except Exception as e:  # noqa: BLE001 - every worker's failure is reported, the first one raised
                errors.append(e)
    if errors:
        raise errors[0]
    return stats


def _watch(futures, c: FrontierConfig, grid: list[dict], every_s: float = 2.0) -> None:
    """One progress bar for a sweep run by worker processes, counting the grid's rows in the store until they end."""
    import sqlite3
    from concurrent.futures import FIRST_EXCEPTION, wait

    from tqdm.auto import tqdm

    keys = {cell["key"] for cell in grid}

    def done() -> int:  # a plain reader beside the workers' writes (WAL)
        conn = sqlite3.connect(c.store, timeout=30)
        try:
            return sum(1 for (k,) in conn.execute("SELECT cell_key FROM results") if k in keys)
        finally:
            conn.close()

    with tqdm(total=len(grid) * c.samples, initial=done(), desc="frontier", unit="sample", disable=not c.progress,
              dynamic_ncols=True) as bar:
        while wait(futures, timeout=every_s, return_when=FIRST_EXCEPTION).not_done:
            bar.update(done() - bar.n)
        bar.update(done() - bar.n)


def _run_model(c: FrontierConfig, model_name: str, cells: list[dict], todo: dict, store: ResultsStore, bar) -> int:
    from leanformer.eval.generation import PromptEncoder, made_prompts
    from leanformer.eval.models import load_model, non_embedding_params, open_tokenizer
    from leanformer.eval.models import sample_flops as flops_of

    model = load_model(model_name, c.device, c.dtype, c.device_map)
    tok = open_tokenizer(model_name, c.tokenizer)
    encoder = PromptEncoder(tok, c.chat_template, c.answer_prefix)
    n_params = non_embedding_params(model)
    use_engine = c.engine == "on" or (c.engine == "auto" and _engine_runs(model))
    samples: dict[tuple, Any] = {}  # (task, length, seed) -> (sample, prompt ids), shared by the model's cells
    # every sample the cells still need, in the order they are first needed (made ahead by c.prompt_workers)
    jobs = {}
    for cell in cells:
        for i in todo[cell["key"]]:
            jobs.setdefault((cell["task"], cell["length"], c.seed + i),
                            (cell["task"], c.task_params.get(cell["task"], {}), cell["length"], c.seed + i))
    made = made_prompts(jobs.values(), model_name, c.tokenizer, c.chat_template, c.answer_prefix, c.prompt_workers,
                        encoder)
    added = 0
    for cell in cells:
        task = TASKS[cell["task"]](**c.task_params.get(cell["task"], {}))
        pending = todo[cell["key"]]
        engine = _engine(model, cell, c.prefill_tokens) if use_engine else None  # one per cell: its methods warn once
        for start in range(0, len(pending), c.batch_size):
            idx = pending[start:start + c.batch_size]
            keys = [(cell["task"], cell["length"], c.seed + i) for i in idx]
            for key in keys:
                if key not in samples:
                    got, sample, prompt_ids = next(made)
                    if got != key:
                        raise RuntimeError(f"prompts made for {got} where {key} was needed")
                    samples[key] = sample, prompt_ids
            batch, ids = [samples[k][0] for k in keys], [samples[k][1] for k in keys]
            t0 = time.perf_counter()
            if use_engine:
                outs, measured = _engine_batch(engine, encoder, cell, ids, c.max_new_tokens)
            else:
                outs, measured = _hf_batch(model, encoder, cell, ids, c.max_new_tokens)
            seconds = (time.perf_counter() - t0) / len(batch)
            for i, s, x, out, (pre_s, dec_s) in zip(idx, batch, ids, outs, measured):
                fl = flops_of(model, len(x), out.output_tokens, cell, pre_s, dec_s)
                row = {"cell_key": cell["key"], "sample": i, "model": model_name, "model_params": n_params,
                       "prefill_method": cell["prefill_method"], "decode_method": cell["decode_method"],
                       "sparsity": cell["sparsity"], "prefill_sparsity": pre_s, "decode_sparsity": dec_s,
                       "task": cell["task"], "length": cell["length"], "seed": s.seed, "prompt_tokens": len(x),
                       "output_tokens": out.output_tokens, "output": out.text, "answer": s.answer_text,
                       "score": float(task.score(out.text, s)), "prefill_flops": fl[0], "decode_flops": fl[1],
                       "time_s": seconds, "params": canonical_json(cell["params"])}
                added += int(store.add(row))
                crash_point("sweep.sample")
                bar.update(1)
    made.close()
    del model
    return added


def _engine_runs(model) -> bool:
    """A Llama-family model on one device (one spread by ``device_map`` keeps transformers' generate)."""
    from leanformer.infer.layers import SUPPORTED

    kind = getattr(getattr(model, "config", None), "model_type", None)
    return kind in SUPPORTED and not getattr(model, "hf_device_map", None)


def _engine(model, cell: dict, prefill_tokens: int | None = None):
    """The cell's methods on the engine (reused by the cell's batches)."""
    from leanformer.infer import Engine

    p, d = cell["prefill_method"], cell["decode_method"]
    return Engine(model, prefill=None if p == "dense" else p, decode=None if d == "dense" else d,
                  sparsity=cell["sparsity"], prefill_params=cell["params"].get("prefill"),
                  decode_params=cell["params"].get("decode"), prefill_tokens=prefill_tokens)


def _engine_batch(eng, encoder, cell: dict, ids: list[list[int]], max_new_tokens: int):
    """One batch through the engine: rows of any length together, per-row measured sparsity."""
    from leanformer.eval.generation import generate_engine

    p, d = cell["prefill_method"], cell["decode_method"]
    outs, measured = generate_engine(eng, encoder, ids, max_new_tokens)
    return outs, [(0.0 if p == "dense" else pre, 0.0 if d == "dense" else dec) for pre, dec in measured]


def _hf_batch(model, encoder, cell: dict, ids: list[list[int]], max_new_tokens: int):
    """One batch through transformers' generate: dense cells left-padded, sparse cells (whose methods need
    unpadded batches) in groups of prompts of equal length, each group's measured sparsity given to its rows."""
    from leanformer.eval.generation import generate_batch
    from leanformer.eval.models import attach, measured_sparsity

    dense = cell["prefill_method"] == cell["decode_method"] == "dense"
    groups: dict[int, list[int]] = {}
    for j, x in enumerate(ids):
        groups.setdefault(0 if dense else len(x), []).append(j)
    outs, measured = [None] * len(ids), [None] * len(ids)
    for group in groups.values():
        with attach(model, cell["prefill_method"], cell["decode_method"], cell["sparsity"],
                    cell["params"]) as session:
            gen = generate_batch(model, encoder, [ids[j] for j in group], max_new_tokens)
        m = measured_sparsity(session, cell["prefill_method"], cell["decode_method"])
        for j, g in zip(group, gen):
            outs[j], measured[j] = g, m
    return outs, measured


def summarize(c: FrontierConfig) -> str:
    """The summary table of this config's cells (whatever the store holds for them)."""
    keys = [cell["key"] for cell in build_grid(c)]
    with ResultsStore(c.store) as store:
        return summary_table(store, keys)


def rank_and_world() -> tuple[int, int]:
    """``RANK`` / ``WORLD_SIZE`` from the environment (``torchrun`` sets them); 0 / 1 otherwise."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise UserError("RANK and WORLD_SIZE must be integers") from None

