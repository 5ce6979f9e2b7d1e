"""A synthetic results store with known structure, for tests and for the example report before a real sweep.

Rows follow the harness schema (:data:`leanformer.analysis.store.SCHEMA`) and look like a Sparse Frontier grid:
several model sizes (Qwen2.5 presets, real FLOP counts from :mod:`leanformer.analysis.flops`), prefill and decode
methods over a sparsity ladder, several tasks and lengths, paired samples by seed. Accuracy follows a known
log-linear law on the logit scale::

    logit p = a_task + b_N·ln(N/1e9) − b_L·ln(L/4096) − drop_{task,method}·max(0, ln CR − tol_method)

with compression ratio ``CR = 1/(1 − sparsity)``; a sample is ``k`` sub-queries (score = fraction right) whose
uniform draws are shared between the dense and the sparse run of a seed (so scores are positively paired),
each re-drawn independently with probability ``1 − coupling``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3

import numpy as np

from leanformer.analysis import flops
from leanformer.analysis.store import SCHEMA

# task -> (intercept a_task, degradation slope, sub-queries per sample, output tokens)
TASKS = {"niah": (2.0, 1.2, 4, 24), "qa": (0.8, 0.5, 1, 16), "vt": (1.0, 1.6, 4, 40), "cwe": (0.2, 2.2, 1, 60)}
# method -> (phase, tolerance: ln CR below which nothing is lost)
METHODS = {"vertical_slash": ("prefill", 1.6), "block_topk": ("prefill", 1.0), "flexprefill": ("prefill", 1.4),
           "quest": ("decode", 2.2), "snapkv": ("decode", 1.2), "ada_snapkv": ("decode", 1.5)}
B_N, B_L = 0.8, 0.35


def true_logit(task: str, n_params: float, length: int, method: str = "dense", sparsity: float = 0.0) -> float:
    a, slope, _, _ = TASKS[task]
    z = a + B_N * math.log(n_params / 1e9) - B_L * math.log(length / 4096)
    if method != "dense":
        tol = METHODS[method][1] + 0.15 * math.log(length / 4096)  # longer inputs tolerate more (sublinear budget)
        z -= slope * max(0.0, math.log(1.0 / (1.0 - sparsity)) - tol)
    return z


def write_synthetic_store(path: str | os.PathLike, models=("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"),
                          tasks=tuple(TASKS), lengths=(4096, 8192, 16384), methods=tuple(METHODS),
                          sparsities=(0.5, 0.8, 0.9, 0.95), n=24, coupling=0.85, seed=42) -> int:
    """Write the grid to a fresh SQLite store at ``path`` (WAL mode); returns the number of rows."""
    rng = np.random.default_rng(seed)
    con = sqlite3.connect(os.fspath(path))
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(SCHEMA)
    rows = []
    for task in tasks:
        k, out_tokens = TASKS[task][2], TASKS[task][3]
        for length in lengths:
            # Shared per-sample draws: the same seed has the same difficulty for every model and method.
            base = rng.random((n, k))
            for model in models:
                shape = flops.shape_of(model)
                cells = [("dense", "dense", 0.0)]
                for m in methods:
                    phase = METHODS[m][0]
                    cells += [(m, "dense", s) if phase == "prefill" else ("dense", m, s) for s in sparsities]
                for pre, dec, s in cells:
                    method = pre if pre != "dense" else dec
                    p = 1.0 / (1.0 + math.exp(-true_logit(task, shape.non_embedding_params, length, method, s)))
                    redraw = rng.random((n, k)) > coupling
                    u = np.where(redraw, rng.random((n, k)), base)
                    scores = (u < p).mean(axis=1)
                    measured = np.clip(s + rng.normal(0, 0.004, n), 0, 0.999) if s else np.zeros(n)
                    cost = flops.sample_flops(shape, length, out_tokens, pre, dec, s if pre != "dense" else 0.0,
                                              s if dec != "dense" else 0.0)
                    params = json.dumps({}, sort_keys=True)
                    key = hashlib.sha1(json.dumps([model, pre, dec, s, task, length, params]).encode()).hexdigest()
                    for i in range(n):
                        rows.append((key, i, model, shape.non_embedding_params, pre, dec, s,
                                     float(measured[i]) if pre != "dense" else 0.0,
                                     float(measured[i]) if dec != "dense" else 0.0, task, length, i, length,
                                     out_tokens, "", "", float(scores[i]), cost["prefill"], cost["decode"],
                                     None, params, "synthetic"))
    con.executemany(f"INSERT OR REPLACE INTO results VALUES ({', '.join('?' * 22)})", rows)
    con.commit()
    con.close()
    return len(rows)
