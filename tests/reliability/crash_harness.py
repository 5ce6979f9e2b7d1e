"""The crash harness: run a piece of work in a forked child and SIGKILL it — at a named crash point
(``LEANFORMER_CRASH_AT``, see :mod:`leanformer.reliability`) or after a random delay — then check what it left.

Forking (rather than a fresh ``python -m leanformer``) keeps each round at a fraction of a second because torch and
the data are already loaded; the child dies by ``SIGKILL`` exactly as with ``kill -9``: no ``finally``, no atexit,
no flush. Used by ``test_crash.py`` with a few rounds; ``python tests/reliability/crash_harness.py --rounds N`` runs the
same scenarios longer and prints the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=32",
        "trainer.batch_size=4", "trainer.eval_batches=2", "trainer.log_every=1", "trainer.progress=false",
        "trainer.device=cpu", "schedule.warmup_steps=2", "data.max_tokens=40000", "model.dropout=0.1",
        "trainer.max_steps=24", "trainer.ckpt_every=3", "trainer.eval_every=6", "trainer.keep_last=2"]
# Every crash point inside a checkpoint write and the training loop, in the order they are reached.
TRAIN_POINTS = ["ckpt.weights@2", "ckpt.trainer@1", "ckpt.before_rename@2", "ckpt.renamed@1", "ckpt.pruning@1",
                "train.step@4"]


def forked(work: Callable[[], None], env: dict | None = None, kill_after: float | None = None,
           timeout: float = 120.0) -> str:
    """Run ``work()`` in a forked child; SIGKILL it after ``kill_after`` seconds if given. Returns 'killed',
    'exit 0' or 'exit N' (N != 0: the work raised)."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.environ.update(env or {})
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            work()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + (kill_after if kill_after is not None else timeout)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


# ---- training --------------------------------------------------------------------------------------------------


def train_work(out: Path, extra: list[str] = ()) -> Callable[[], None]:
    def work():
        from leanformer.cli import main

        rc = main(["train", str(PRESET), *TINY, *extra, "--out", str(out)])
        if rc:
            raise SystemExit(rc)

    return work


def losses(run_dir: Path) -> list[tuple[int, float]]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    events = []
    for line in p.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line; the next resume cuts it
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]


def check_checkpoints(run_dir: Path) -> int:
    """Every ``step_*`` directory must verify (never a torn one); returns the newest verified step (0 if none)."""
    from leanformer.train.checkpoint import list_checkpoints, verify_checkpoint

    steps = [verify_checkpoint(c)["step"] for c in list_checkpoints(run_dir)]
    return max(steps, default=0)


def _timed(work: Callable[[], None]) -> float:
    """Run the uninterrupted reference in this process: it also warms the imports the forked rounds then share."""
    t0 = time.monotonic()
    work()
    return time.monotonic() - t0


def train_rounds(tmp: Path, points: list[str], random_kills: int, seed: int = 42) -> dict:
    """Kill a training run at each crash point, then ``random_kills`` times after random delays (uniform in 5-70%
    of a whole run's duration), resuming it each time. A run that finishes before its kill is compared with the
    uninterrupted reference and started afresh. Returns counts and what was lost."""
    rng = random.Random(seed)
    out, ref = tmp / "run", tmp / "ref"
    _timed(train_work(ref))  # in this process: warms the imports the forked rounds share
    want = losses(ref)
    t0 = time.monotonic()
    forked(train_work(tmp / "calibrate"))
    took = time.monotonic() - t0
    stats = {"kills": 0, "ckpt_kills": 0, "random_mid_write": 0, "torn": 0, "regressions": 0, "max_step_lost": 0,
             "completed": 0,
             "different": int(losses(tmp / "calibrate") != want)}
    newest = 0
    plan = [(p, None) for p in points] + [(None, rng.uniform(0.05 * took, 0.7 * took)) for _ in range(random_kills)]
    for point, delay_s in plan:
        result = forked(train_work(out), {"LEANFORMER_CRASH_AT": point} if point else None, kill_after=delay_s)
        if result != "killed":  # finished before the kill: check it, then start a fresh run
            stats["completed"] += 1
            stats["different"] += int(result != "exit 0" or losses(out) != want)
            shutil.rmtree(out)
            newest = 0
            continue
        stats["kills"] += 1
        stats["ckpt_kills"] += int(bool(point) and point.startswith("ckpt."))
        # a random kill that landed inside a checkpoint write leaves its hidden temp folder behind
        stats["random_mid_write"] += int(point is None and any((out / "checkpoints").glob(".tmp-*")))
        try:
            step = check_checkpoints(out)
        except Exception:  # noqa: BLE001 - counted, and the test asserts it stays 0
            stats["torn"] += 1
            continue
        stats["regressions"] += int(step < newest)
        newest = max(newest, step)
        logged = losses(out)[-1][0] if losses(out) else 0
        stats["max_step_lost"] = max(stats["max_step_lost"], logged - step)
    stats["final"] = forked(train_work(out))
    stats["identical"] = losses(out) == want and len(want) == 24 and not stats["different"]
    return stats


# ---- sweep -----------------------------------------------------------------------------------------------------


def tiny_llama(path: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(42)
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=257, eos_token_id=258, pad_token_id=256)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def sweep_work(model: str, store: Path) -> Callable[[], None]:
    def work():
        from leanformer.eval import harness

        raw = {"models": [model], "tasks": ["niah", "variable_tracking"], "lengths": [701], "samples": 5,
               "task_params": {"variable_tracking": {"n_chains": 2, "n_hops": 2}},
               "max_new_tokens": 4, "tokenizer": "byte", "store": str(store), "progress": False}
        harness.run_sweep(harness.load_config(raw))

    return work


def store_rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT cell_key, sample, output, score FROM results ORDER BY cell_key, sample").fetchall()
    except sqlite3.OperationalError:  # killed before the table was created
        return []
    finally:
        conn.close()


def sweep_rounds(tmp: Path, model: str, point_kills: int, random_kills: int, seed: int = 42) -> dict:
    """Kill a sweep after its k-th committed sample and after random delays (5-70% of a whole sweep's duration),
    resuming each time; a sweep that finishes before its kill is compared with the reference and started afresh.
    Finally: every sample exactly once, same outputs and scores as an uninterrupted sweep."""
    rng = random.Random(seed)
    db, ref = tmp / "r.db", tmp / "ref.db"
    _timed(sweep_work(model, ref))
    want = store_rows(ref)
    t0 = time.monotonic()
    forked(sweep_work(model, tmp / "calibrate.db"))
    took = time.monotonic() - t0
    stats = {"kills": 0, "duplicates": 0, "lost_rows": 0, "completed": 0,
             "different": int(store_rows(tmp / "calibrate.db") != want)}
    plan = [(f"sweep.sample@{rng.randint(1, 4)}", None) for _ in range(point_kills)]
    plan += [(None, rng.uniform(0.05 * took, 0.7 * took)) for _ in range(random_kills)]
    for point, delay_s in plan:
        before = len(store_rows(db))
        result = forked(sweep_work(model, db), {"LEANFORMER_CRASH_AT": point} if point else None,
                        kill_after=delay_s)
        if result != "killed":
            stats["completed"] += 1
            stats["different"] += int(result != "exit 0" or store_rows(db) != want)
            for p in tmp.glob("r.db*"):
                p.unlink()
            continue
        stats["kills"] += 1
        keys = [(r[0], r[1]) for r in store_rows(db)]
        stats["duplicates"] += len(keys) - len(set(keys))
        stats["lost_rows"] += max(0, before - len(keys))
    stats["final"] = forked(sweep_work(model, db))
    rows = store_rows(db)
    stats["rows"], stats["expected_rows"] = len(rows), len(want)
    stats["identical"] = rows == want and not stats["different"]
    return stats


def main() -> None:
    import argparse
    import tempfile

    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description="run the crash scenarios longer and print the counts")
    p.add_argument("--rounds", type=int, default=20, help="random kills per scenario")
    p.add_argument("--seeds", type=int, default=3, help="independent repetitions of each scenario")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    totals: dict[str, dict] = {"train": {}, "sweep": {}}
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as d:
            os.environ["LEANFORMER_CACHE"] = str(Path(d) / "cache")
            t = train_rounds(Path(d) / "t", TRAIN_POINTS, args.rounds, seed=seed)
            model = tiny_llama(Path(d) / "m")
            s = sweep_rounds(Path(d) / "s", model, 3, args.rounds, seed=seed)
        for name, st in (("train", t), ("sweep", s)):
            for k, v in st.items():
                if isinstance(v, bool):
                    totals[name][k] = totals[name].get(k, True) and v
                elif isinstance(v, int):
                    merge = max if k.startswith("max_") else int.__add__
                    totals[name][k] = merge(totals[name].get(k, 0), v)
        print(json.dumps({"seed": seed, "train": t, "sweep": s}))
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
