"""The results store: the fixed schema, WAL mode, one transaction per row, no duplicates, several writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from leanformer.errors import UserError
from leanformer.eval.store import COLUMNS, ResultsStore, StaleStoreError, cell_key, mean_ci, phase, summary_table

SCHEMA_COLUMNS = ["cell_key", "sample", "model", "model_params", "prefill_method", "decode_method", "sparsity",
                  "prefill_sparsity", "decode_sparsity", "task", "length", "seed", "prompt_tokens", "output_tokens",
                  "output", "answer", "score", "prefill_flops", "decode_flops", "time_s", "params", "created_at"]


def _row(key="k", sample=0, score=0.5, **kw):
    return {"cell_key": key, "sample": sample, "model": "m", "prefill_method": "dense", "decode_method": "dense",
            "sparsity": 0.0, "task": "niah", "length": 101, "seed": sample, "score": score, **kw}


def test_schema_and_wal(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = sqlite3.connect(tmp_path / "r.db")
    info = conn.execute("PRAGMA table_info(results)").fetchall()
    assert [c[1] for c in info] == SCHEMA_COLUMNS == list(COLUMNS)
    assert [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]] == ["cell_key", "sample"]  # primary key
    notnull = {c[1] for c in info if c[3]}
    assert notnull == {"cell_key", "sample", "model", "prefill_method", "decode_method", "sparsity", "task",
                       "length", "seed", "score"}


def test_cell_key_is_canonical():
    a = {"model": "m", "sparsity": 0.5, "params": {"x": 1, "y": 2}}
    b = {"params": {"y": 2, "x": 1}, "sparsity": 0.5, "model": "m"}
    assert cell_key(a) == cell_key(b) and len(cell_key(a)) == 40
    assert cell_key(a) != cell_key({**a, "sparsity": 0.9})


def test_insert_or_ignore_and_validation(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        assert store.add(_row(sample=0)) is True
        assert store.add(_row(sample=0, score=1.0)) is False  # the first row wins, nothing duplicated
        assert store.add(_row(sample=1)) is True
        assert store.count() == 2 and store.done("k") == {0, 1} and store.done("other") == set()
        assert store.rows()[0]["score"] == 0.5 and store.rows()[0]["created_at"]
        with pytest.raises(ValueError, match="outside"):
            store.add(_row(sample=2, score=1.5))
        with pytest.raises(ValueError, match="lacks"):
            store.add({k: v for k, v in _row(sample=3).items() if k != "task"})
        with pytest.raises(ValueError, match="unknown columns"):
            store.add(_row(sample=4, bogus=1))
    # Every add is committed at once: a fresh connection sees the rows without any close/commit by the writer.
    writer = ResultsStore(tmp_path / "w.db")
    writer.add(_row(sample=7))
    assert sqlite3.connect(tmp_path / "w.db").execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_several_processes_write_one_store(tmp_path):
    path = tmp_path / "r.db"
    code = textwrap.dedent(f"""
        import sys
        from leanformer.eval.store import ResultsStore
        w = int(sys.argv[1])
        with ResultsStore({str(path)!r}) as s:
            for i in range(60):
                s.add({{"cell_key": f"c{{i % 6}}", "sample": i // 6 + 5 * w, "model": "m", "prefill_method": "dense",
                       "decode_method": "dense", "sparsity": 0.0, "task": "t", "length": 1, "seed": 0,
                       "score": 1.0}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(3)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0]
    with ResultsStore(path) as store:
        # samples 0..9, 5..14, 10..19 per cell overlap: 20 distinct per cell x 6 cells, no duplicates.
        assert store.count() == 120
        assert all(store.done(f"c{c}") == set(range(20)) for c in range(6))


def test_mean_ci_and_summary(tmp_path):
    mean, half = mean_ci([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and half == pytest.approx(3.182446 * 0.57735 / 2, rel=1e-4)  # Student t, 3 dof
    assert mean_ci([0.7]) == (0.7, 0.0)
    with ResultsStore(tmp_path / "r.db") as store:
        for i, s in enumerate([0.0, 1.0, 0.0, 1.0]):
            store.add(_row(key="a", sample=i, score=s))
        store.add(_row(key="b", sample=0, score=1.0, task="qa"))
        table = summary_table(store)
        only_b = summary_table(store, ["b"])
    assert "0.500  +/- 0.919" in table and "niah" in table and "qa" in table
    assert "niah" not in only_b and "1.000" in only_b


def test_phase():
    assert [phase("dense", "dense"), phase("vs", "dense"), phase("dense", "quest"), phase("vs", "quest")] == \
        ["dense", "prefill", "decode", "both"]


def test_opening_retries_a_locked_journal_mode_switch_and_raises_other_errors(tmp_path):
    import sqlite3

    class Flaky:  # answers "database is locked" to the first two WAL switches, as SQLite may when ranks race
        def __init__(self, conn, error):
            self.conn, self.error, self.calls = conn, error, 0

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode"):
                self.calls += 1
                if self.calls <= 2:
                    raise sqlite3.OperationalError(self.error)
            return self.conn.execute(sql, *args)

    with ResultsStore(tmp_path / "r.db") as store:
        real = store.conn
        store.conn = flaky = Flaky(real, "database is locked")
        assert store._setup(timeout_s=5.0) == "wal" and flaky.calls == 3
        store.conn = Flaky(real, "disk I/O error")
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            store._setup(timeout_s=5.0)
        store.conn = real


def test_a_model_name_means_one_checkpoint_per_store(tmp_path):
    path = tmp_path / "r.db"
    with ResultsStore(path) as store:
        store.check_model("m", "sha256:aaa")
        store.add(_row())
        store.check_model("m", "sha256:aaa")  # the same checkpoint resumes
        store.check_model("other", "sha256:bbb")  # another name is independent
        with pytest.raises(StaleStoreError, match=r"holds 1 samples of model 'm' from checkpoint sha256:aaa") as e:
            store.check_model("m", "sha256:ccc")
    assert isinstance(e.value, UserError) and e.value.model == "m"
    moved = e.value.move_aside()
    assert moved == tmp_path / "r-stale-1.db" and moved.is_file() and not path.exists()
    with ResultsStore(moved) as old:
        assert old.count() == 1
    with ResultsStore(path) as fresh:
        assert fresh.count() == 0
        fresh.check_model("m", "sha256:ccc")


def test_rows_without_a_recorded_checkpoint_are_not_resumed(tmp_path):
    """A store written before fingerprints were kept: its rows cannot be vouched for."""
    with ResultsStore(tmp_path / "r.db") as store:
        store.add(_row())
        with pytest.raises(StaleStoreError, match="did not fingerprint"):
            store.check_model("m", "sha256:aaa")
        store.check_model("new", "sha256:aaa")  # a name with no rows is simply recorded


def _store(path, model, fingerprint, keys, samples=(0, 1), score=1.0):
    with ResultsStore(path) as s:
        s.check_model(model, fingerprint)
        for k in keys:
            for i in samples:
                s.add(_row(k, i, score, model=model))
    return path


def test_merge_adds_the_rows_a_store_lacks_and_nothing_twice(tmp_path):
    """Rows are keyed by (cell_key, sample): a merge adds the missing ones with the source's fingerprints, keeps the
    rows already there as they are (the source's copy of a shared row is not written over), and a second merge adds
    nothing; the source is only read, and its rows still in the write-ahead log (a live writer) count."""
    into = _store(tmp_path / "into.db", "small", "sha256:aaa", ["a", "b"], score=1.0)
    src = tmp_path / "src.db"
    _store(src, "small", "sha256:aaa", ["b", "c"], samples=(1, 2), score=0.0)
    writer = ResultsStore(src)  # holds the WAL open: its rows are not yet in the main file
    writer.check_model("large", "sha256:bbb")
    writer.add(_row("d", 0, 0.25, model="large"))
    try:
        with ResultsStore(into) as s:
            assert s.merge(src) == (4, 1)  # c1 c2 b2 d0 added; b1 already here
            assert s.merge(src) == (0, 5)
            rows = {(r["cell_key"], r["sample"]): r["score"] for r in s.rows()}
            prints = dict(s.conn.execute("SELECT model, fingerprint FROM models"))
    finally:
        writer.close()
    assert rows[("b", 1)] == 1.0 and rows[("b", 2)] == 0.0 and rows[("d", 0)] == 0.25 and len(rows) == 8
    assert prints == {"small": "sha256:aaa", "large": "sha256:bbb"}
    with ResultsStore(src) as s:
        assert s.count() == 5


def test_merge_refuses_one_model_name_from_two_checkpoints_and_writes_nothing(tmp_path):
    into = _store(tmp_path / "into.db", "m", "sha256:aaa", ["a"])
    other = _store(tmp_path / "other.db", "m", "sha256:ccc", ["b"])
    plain = tmp_path / "plain.db"
    with ResultsStore(plain) as s:  # rows without a fingerprint (an older store)
        s.add(_row("c", 0))
    with ResultsStore(into) as s:
        with pytest.raises(UserError, match=r"both hold model 'm' \(checkpoints sha256:aaa and sha256:ccc\)"):
            s.merge(other)
        with pytest.raises(UserError, match="not fingerprinted"):
            s.merge(plain)
        with pytest.raises(UserError, match="into itself"):
            s.merge(into)
        with pytest.raises(UserError, match="does not exist"):
            s.merge(tmp_path / "missing.db")
        assert s.count() == 2


def test_merge_command_reports_counts_and_refuses_a_missing_source_before_creating_anything(tmp_path):
    src = _store(tmp_path / "src.db", "m", "sha256:aaa", ["a", "b"])
    into = tmp_path / "new" / "into.db"
    run = [sys.executable, "-m", "leanformer.cli", "merge"]
    bad = subprocess.run([*run, str(into), str(src), str(tmp_path / "nope.db")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope.db does not exist" in bad.stderr
    assert not into.exists()
    ok = subprocess.run([*run, str(into), str(src)], capture_output=True, text=True, check=True)
    assert "4 rows added, 0 already in" in ok.stdout
    with ResultsStore(into) as s:
        assert s.count() == 4


def test_merge_refuses_rows_under_a_name_the_store_fingerprinted_for_another_checkpoint(tmp_path):
    """A name this store knows only by its fingerprint (no rows yet) still means that checkpoint: rows of another
    checkpoint under it would later be resumed as this one's."""
    into = tmp_path / "into.db"
    with ResultsStore(into) as s:
        s.check_model("m", "sha256:aaa")
    other = _store(tmp_path / "other.db", "m", "sha256:ccc", ["b"])
    with ResultsStore(into) as s:
        with pytest.raises(UserError, match=r"both hold model 'm' \(checkpoints sha256:aaa and sha256:ccc\)"):
            s.merge(other)
        assert s.count() == 0
