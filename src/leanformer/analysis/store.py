"""Read the sweep results store (SQLite, one ``results`` table; schema below) and group it for analysis.

One row per (cell, sample). A row's *phase* is ``dense`` (both methods dense), ``prefill`` / ``decode`` (only
that phase sparse) or ``both``; its *method* is the sparse method's name (``"vertical_slash+quest"`` for both).
The dense baseline of a (model, task, length) is its phase-``dense`` rows; paired comparisons pair rows by
(model, task, length, seed). Only numpy and the standard library are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from collections import defaultdict

import numpy as np

from leanformer.errors import UserError

SCHEMA = """CREATE TABLE IF NOT EXISTS results (
  cell_key TEXT NOT NULL, sample INTEGER NOT NULL, model TEXT NOT NULL, model_params INTEGER,
  prefill_method TEXT NOT NULL, decode_method TEXT NOT NULL, sparsity REAL NOT NULL,
  prefill_sparsity REAL, decode_sparsity REAL,
  task TEXT NOT NULL, length INTEGER NOT NULL, seed INTEGER NOT NULL,
  prompt_tokens INTEGER, output_tokens INTEGER, output TEXT, answer TEXT, score REAL NOT NULL,
  prefill_flops REAL, decode_flops REAL, time_s REAL, params TEXT, created_at TEXT,
  PRIMARY KEY (cell_key, sample)
)"""

COLUMNS = ("model", "model_params", "prefill_method", "decode_method", "sparsity", "prefill_sparsity",
           "decode_sparsity", "task", "length", "seed", "score", "prefill_flops", "decode_flops", "time_s", "params")
PHASES = ("dense", "prefill", "decode", "both")


def phase_of(prefill_method: str, decode_method: str) -> str:
    pre, dec = prefill_method != "dense", decode_method != "dense"
    return "both" if pre and dec else "prefill" if pre else "decode" if dec else "dense"


def method_of(prefill_method: str, decode_method: str) -> str:
    phase = phase_of(prefill_method, decode_method)
    return {"dense": "dense", "prefill": prefill_method, "decode": decode_method}.get(
        phase, f"{prefill_method}+{decode_method}")


@dataclasses.dataclass
class Cell:
    """All samples of one (model, task, length, phase, method, requested sparsity), keyed by seed."""

    model: str
    model_params: float
    task: str
    length: int
    phase: str
    method: str
    sparsity: float
    scores: dict[int, float]
    measured_sparsity: float
    prefill_flops: float
    decode_flops: float

    @property
    def accuracy(self) -> float:
        return float(np.mean(list(self.scores.values())))

    @property
    def n(self) -> int:
        return len(self.scores)

    def cost(self, kind: str = "phase") -> float:
        """Mean FLOPs per sample: ``prefill``, ``decode``, ``total``, or ``phase`` (the FLOPs of the phase this
        cell makes sparse; total for dense and both)."""
        if kind == "phase":
            kind = {"prefill": "prefill", "decode": "decode"}.get(self.phase, "total")
        if kind == "prefill":
            return self.prefill_flops
        if kind == "decode":
            return self.decode_flops
        if kind == "total":
            return self.prefill_flops + self.decode_flops
        raise UserError(f"cost={kind!r}: choose one of phase, prefill, decode, total")


def load_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of the store's ``results`` table as dicts (the analysed columns only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"results store {path!r} does not exist (expected the SQLite file a sweep writes)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results")
            rows = [dict(zip(COLUMNS, r)) for r in cur.fetchall()]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise UserError(f"results store {path!r} is not a readable results database: {e}") from None
    if not rows:
        raise UserError(f"results store {path!r} has no rows")
    return rows


def _phase_params(r: dict) -> dict:
    """``{"prefill": {...}, "decode": {...}}``: the method parameters a row was run with (``{}`` where unknown)."""
    try:
        p = json.loads(r.get("params") or "{}")
    except (TypeError, ValueError):
        return {}
    return p if isinstance(p, dict) else {}


def variant_keys(rows: list[dict], params: list[dict]) -> dict[tuple, list[str]]:
    """``(phase, method) -> parameter names`` whose values differ between the store's rows of that method: the
    settings that make variants of one method (``dense_layers: [0]`` beside none, two block sizes, ...).
    ``params``: each row's :func:`_phase_params`."""
    seen: dict[tuple, list[dict]] = defaultdict(list)
    for r, p in zip(rows, params):
        for side in ("prefill", "decode"):
            if r[f"{side}_method"] != "dense":
                seen[(side, r[f"{side}_method"])].append(p.get(side) or {})
    out = {}
    for key, dicts in seen.items():
        names = set().union(*dicts)
        out[key] = sorted(n for n in names if len({json.dumps(d.get(n), sort_keys=True) for d in dicts}) > 1)
    return out


def _label(method: str, params: dict, names: list[str]) -> str:
    parts = [f"{n}={json.dumps(params[n], separators=(',', ':'))}" for n in names if n in params]
    return f"{method}[{','.join(parts)}]" if parts else method


def group_cells(rows: list[dict]) -> list[Cell]:
    """Group rows into :class:`Cell` s; a seed repeated within a cell is averaged. Rows of one method run with
    different settings are cells apart, the method named with the settings that differ
    (``vertical_slash[dense_layers=[0]]`` beside ``vertical_slash``)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    params = [_phase_params(r) for r in rows]
    variants = variant_keys(rows, params)
    for r, p in zip(rows, params):
        pre, dec = r["prefill_method"], r["decode_method"]
        pre_l = pre if pre == "dense" else _label(pre, p.get("prefill") or {}, variants.get(("prefill", pre), []))
        dec_l = dec if dec == "dense" else _label(dec, p.get("decode") or {}, variants.get(("decode", dec), []))
        key = (r["model"], r["task"], int(r["length"]), phase_of(pre, dec), method_of(pre_l, dec_l),
               round(float(r["sparsity"]), 6))
        groups[key].append(r)
    cells = []
    for (model, task, length, phase, method, sparsity), rs in sorted(groups.items()):
        by_seed: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            by_seed[int(r["seed"])].append(float(r["score"]))
        measured = [_measured(r, phase) for r in rs]
        cells.append(Cell(
            model=model, model_params=_model_params(model, rs[0]["model_params"]), task=task, length=length,
            phase=phase, method=method, sparsity=0.0 if phase == "dense" else sparsity,
            scores={s: float(np.mean(v)) for s, v in by_seed.items()},
            measured_sparsity=float(np.nanmean(measured)) if measured else float("nan"),
            prefill_flops=_mean(rs, "prefill_flops"), decode_flops=_mean(rs, "decode_flops")))
    return cells


def _model_params(model: str, stored) -> float:
    """The stored non-embedding parameter count, else the preset's (``Qwen/Qwen2.5-7B-Instruct``), else NaN."""
    if stored:
        return float(stored)
    from leanformer.analysis.flops import shape_of

    try:
        return float(shape_of(model).non_embedding_params)
    except UserError:
        return float("nan")


def _measured(r: dict, phase: str) -> float:
    vals = {"prefill": [r["prefill_sparsity"]], "decode": [r["decode_sparsity"]],
            "both": [r["prefill_sparsity"], r["decode_sparsity"]], "dense": [0.0]}[phase]
    vals = [float(v) for v in vals if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _mean(rows: list[dict], col: str) -> float:
    vals = [float(r[col]) for r in rows if r[col] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def dense_baselines(cells: list[Cell]) -> dict[tuple, Cell]:
    """``(model, task, length) -> dense Cell``."""
    return {(c.model, c.task, c.length): c for c in cells if c.phase == "dense"}


def paired_scores(dense: Cell, sparse: Cell) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the seeds both cells share, aligned: ``(dense [n], sparse [n])``."""
    seeds = sorted(set(dense.scores) & set(sparse.scores))
    return (np.array([dense.scores[s] for s in seeds], dtype=float),
            np.array([sparse.scores[s] for s in seeds], dtype=float))
