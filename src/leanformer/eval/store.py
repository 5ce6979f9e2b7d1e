"""The crash-safe results store of the sweep harness: one SQLite file, WAL mode, one row per finished sample.

Crash safety: every sample is committed as its own transaction (``INSERT OR IGNORE`` on the primary key
``(cell_key, sample)``), with ``synchronous=FULL``; a process killed at any point leaves only whole rows, and a
re-run skips the ``(cell_key, sample)`` pairs already there, so nothing is lost and nothing duplicated. Several
processes (``torchrun`` ranks) may write to the same file: WAL lets readers run beside one writer, and a busy
timeout serializes the writers.

The schema is fixed (the analysis reads it, see :mod:`leanformer.analysis`): see :data:`SCHEMA`. The cell key is the
SHA-1 of the canonical JSON (sorted keys, no spaces) of the cell's description (:func:`cell_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from leanformer.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
  cell_key TEXT NOT NULL,
  sample INTEGER NOT NULL,
  model TEXT NOT NULL,
  model_params INTEGER,
  prefill_method TEXT NOT NULL,
  decode_method TEXT NOT NULL,
  sparsity REAL NOT NULL,
  prefill_sparsity REAL,
  decode_sparsity REAL,
  task TEXT NOT NULL, length INTEGER NOT NULL, seed INTEGER NOT NULL,
  prompt_tokens INTEGER, output_tokens INTEGER,
  output TEXT, answer TEXT,
  score REAL NOT NULL,
  prefill_flops REAL, decode_flops REAL,
  time_s REAL, params TEXT,
  created_at TEXT,
  PRIMARY KEY (cell_key, sample)
);
"""
# which checkpoint each model name in the store stands for (see leanformer.eval.models.model_fingerprint)
MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
  model TEXT PRIMARY KEY,
  fingerprint TEXT NOT NULL,
  created_at TEXT
);
"""
COLUMNS = ("cell_key", "sample", "model", "model_params", "prefill_method", "decode_method", "sparsity",
           "prefill_sparsity", "decode_sparsity", "task", "length", "seed", "prompt_tokens", "output_tokens",
           "output", "answer", "score", "prefill_flops", "decode_flops", "time_s", "params", "created_at")
REQUIRED = ("cell_key", "sample", "model", "prefill_method", "decode_method", "sparsity", "task", "length", "seed",
            "score")


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cell_key(cell: dict) -> str:
    """SHA-1 of the canonical JSON of a cell description; identical cells give identical keys."""
    return hashlib.sha1(canonical_json(cell).encode()).hexdigest()


def phase(prefill_method: str, decode_method: str) -> str:
    """'dense', 'prefill' (only prefill sparse), 'decode' (only decode sparse) or 'both'."""
    p, d = prefill_method != "dense", decode_method != "dense"
    return "both" if p and d else "prefill" if p else "decode" if d else "dense"


class ResultsStore:
    """A results file. ``done(key)`` lists finished samples of a cell; ``add(row)`` commits one row."""

    def __init__(self, path: str | os.PathLike, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: autocommit; each INSERT is its own transaction, committed before it returns.
            self.conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            mode = self._setup(timeout_s)
        except sqlite3.DatabaseError as e:
            raise UserError(f"results store {self.path} cannot be opened as SQLite: {e}") from None
        if str(mode).lower() != "wal":
            raise UserError(f"results store {self.path}: cannot switch to WAL mode (got {mode!r}); is it on a "
                            "network file system?")

    def _setup(self, timeout_s: float) -> str:
        """WAL mode and the schema. Ranks of a sharded sweep open one new store at the same moment, and SQLite can
        answer "database is locked" to a journal-mode switch without waiting on the busy handler: retry until
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute(SCHEMA)
                self.conn.execute(MODELS_SCHEMA)
                return mode
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)

    def done(self, key: str) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT sample FROM results WHERE cell_key = ?", (key,))}

    def add(self, row: dict) -> bool:
        """Insert one finished sample in its own transaction; False if ``(cell_key, sample)`` was already there."""
        missing = [c for c in REQUIRED if row.get(c) is None]
        if missing:
            raise ValueError(f"result row lacks {missing}")
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"result row has unknown columns {sorted(unknown)}")
        if not 0.0 <= float(row["score"]) <= 1.0 or math.isnan(float(row["score"])):
            raise ValueError(f"score {row['score']!r} is outside [0, 1]")
        row = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), **row}
        cols = [c for c in COLUMNS if c in row]
        sql = f"INSERT OR IGNORE INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        try:
            return self.conn.execute(sql, [row[c] for c in cols]).rowcount == 1
        except sqlite3.OperationalError as e:  # disk full, read-only: committed rows stay; a re-run resumes
            raise UserError(f"results store {self.path}: cannot write ({e}); the {self.count()} samples already "
                            "committed are kept, and re-running the same command resumes") from None

    def check_model(self, model: str, fingerprint: str, record: bool = True) -> None:
        """Record that ``model`` means the checkpoint ``fingerprint`` here (unless ``record`` is False: a dry run), or
        raise :class:`StaleStoreError` if the store already holds results of that name from another checkpoint (or
        from before fingerprints were kept: rows without one cannot be vouched for)."""
        row = self.conn.execute("SELECT fingerprint FROM models WHERE model = ?", (model,)).fetchone()
        if row is not None and row[0] == fingerprint:
            return
        n = self.conn.execute("SELECT COUNT(*) FROM results WHERE model = ?", (model,)).fetchone()[0]
        if row is not None or n:
            raise StaleStoreError(self.path, model, n, row[0] if row else None, fingerprint)
        if not record:
            return
        self.conn.execute("INSERT OR IGNORE INTO models (model, fingerprint, created_at) VALUES (?, ?, ?)",
                          (model, fingerprint, datetime.now(UTC).isoformat(timespec="seconds")))

    def merge(self, src: str | os.PathLike) -> tuple[int, int]:
        """Add the rows of the store ``src`` that this one lacks (by ``(cell_key, sample)``), and its model
        fingerprints, in one transaction: a failure leaves this store as it was. Returns ``(added, already here)``.
        A model name both stores hold for different checkpoints (or that either holds rows of without a
        fingerprint) is refused before anything is written; ``src`` is only read. For sweeps run apart (slices on
        different machines, a second model's cells) that one analysis should see together."""
        src = Path(src)
        if not src.is_file():
            raise UserError(f"results store {src} does not exist")
        if src.resolve() == self.path.resolve():
            raise UserError(f"results store {src} cannot be merged into itself")
        try:
            other = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=120.0)
            try:
                tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "results" not in tables:
                    raise UserError(f"{src} is not a results store (it has no results table)")
                cur = other.execute("SELECT * FROM results")
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
                prints = dict(other.execute("SELECT model, fingerprint FROM models")) if "models" in tables else {}
            finally:
                other.close()
        except sqlite3.DatabaseError as e:
            raise UserError(f"results store {src} cannot be read as SQLite: {e}") from None
        unknown = set(names) - set(COLUMNS)
        if unknown:
            raise UserError(f"results store {src} has unknown columns {sorted(unknown)}")
        mine = dict(self.conn.execute("SELECT model, fingerprint FROM models"))
        theirs_models = {r[names.index("model")] for r in rows} | prints.keys()
        mine_models = {r[0] for r in self.conn.execute("SELECT DISTINCT model FROM results")} | mine.keys()
        for model in sorted(theirs_models & mine_models):  # a name either store knows, by rows or fingerprint
            a, b = mine.get(model), prints.get(model)
            if a is None or b is None or a != b:
                what = f"checkpoints {a[:19]} and {b[:19]}" if a and b else "a checkpoint not fingerprinted"
                raise UserError(f"results stores {self.path} and {src} both hold model {model!r} ({what}); merging "
                                "would mix two checkpoints' results. Nothing was merged")
        sql = f"INSERT OR IGNORE INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        before = self.count()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.executemany("INSERT OR IGNORE INTO models (model, fingerprint, created_at) VALUES (?, ?, ?)",
                                      [(m, f, datetime.now(UTC).isoformat(timespec="seconds"))
                                       for m, f in prints.items()])
                self.conn.executemany(sql, rows)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            raise UserError(f"results store {self.path}: cannot write ({e}); nothing was merged") from None
        added = self.count() - before
        return added, len(rows) - added

    def rows(self, where: str = "", args: tuple = ()) -> list[dict]:
        cur = self.conn.execute(f"SELECT * FROM results {where}", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_if_empty(path: str | os.PathLike) -> bool:
    """Delete the store at ``path`` (and its WAL files) if it holds no result row; True if it did. For a run that
    created the store and then failed before its first sample."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with ResultsStore(path, timeout_s=5.0) as store:
            if store.count():
                return False
    except (UserError, sqlite3.Error):
        return False
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    return True


class StaleStoreError(UserError):
    """A store holds results of a model name from another checkpoint: resuming would mix the two."""

    def __init__(self, path: Path, model: str, n_rows: int, stored: str | None, current: str):
        self.path, self.model = Path(path), model
        was = f"checkpoint {stored[:19]}" if stored else "a checkpoint it did not fingerprint (older leanformer)"
        super().__init__(f"results store {path} holds {n_rows} samples of model {model!r} from {was}, not the "
                         f"current one ({current[:19]}); resuming would mix the two. Write to a new store "
                         f"(store=PATH) or delete {path} to start over")

    def move_aside(self) -> Path:
        """Rename the store (and its WAL files) to ``<name>-stale-<n>.db`` beside it; returns the new path."""
        n = 1
        while (dest := self.path.with_name(f"{self.path.stem}-stale-{n}{self.path.suffix}")).exists():
            n += 1
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                side.rename(str(dest) + suffix)
        self.path.rename(dest)
        return dest


def mean_ci(scores: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single score)."""
    n = len(scores)
    if n == 0:
        return float("nan"), float("nan")
    mean = statistics.fmean(scores)
    if n == 1:
        return mean, 0.0
    # scipy is the analysis extra's; a sweep prints this summary without it, so the fallback stays.
    try:
        from scipy.stats import t

        q = float(t.ppf(0.5 + level / 2, n - 1))
    except ImportError:  # the normal quantile: a slightly narrow interval for small n
        q = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    return mean, q * statistics.stdev(scores) / math.sqrt(n)


def summary_table(store: ResultsStore, keys: list[str] | None = None) -> str:
    """Mean score +/- 95% CI per cell (all cells, or the given ones), as an aligned text table."""
    rows = store.rows()
    wanted = None if keys is None else set(keys)
    cells: dict[str, list[dict]] = {}
    for r in rows:
        if wanted is None or r["cell_key"] in wanted:
            cells.setdefault(r["cell_key"], []).append(r)
    header = ("model", "prefill", "decode", "sparsity", "measured", "task", "length", "n", "score", "95% CI")
    lines = [header]
    for group in sorted(cells.values(), key=lambda g: (g[0]["model"], g[0]["task"], g[0]["length"],
                                                       g[0]["prefill_method"], g[0]["decode_method"],
                                                       g[0]["sparsity"])):
        r0 = group[0]
        mean, half = mean_ci([g["score"] for g in group])
        measured = [max(g["prefill_sparsity"] or 0.0, g["decode_sparsity"] or 0.0) for g in group]
        lines.append((r0["model"], r0["prefill_method"], r0["decode_method"], f"{r0['sparsity']:.3g}",
                      f"{statistics.fmean(measured):.3f}", r0["task"], str(r0["length"]), str(len(group)),
                      f"{mean:.3f}", f"+/- {half:.3f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
