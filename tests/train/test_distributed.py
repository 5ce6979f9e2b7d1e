"""DDP and FSDP2 on CPU (gloo, 2 processes with torchrun's environment): the same losses as one process with the
same global batch, for every model family; resume on a different number of ranks (2 -> 1 and 1 -> 2); only rank 0
writes. One launch per test (gloo start-up dominates)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from leanformer.config import load_run_config
from leanformer.errors import ConfigError
from leanformer.train.checkpoint import list_checkpoints
from leanformer.train.distributed import Distributed
from leanformer.train.trainer import Trainer

ROOT = Path(__file__).parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
CFG = ROOT / "configs"
# seq_len and batch odd-free on purpose: the global micro-batch (4) splits into 2 rows per rank.
RUN = ["data.seq_len=17", "trainer.batch_size=4", "trainer.eval_batches=1", "trainer.log_every=1",
       "trainer.progress=false", "trainer.device=cpu", "schedule.warmup_steps=1", "data.max_tokens=20000",
       "trainer.eval_every=100", "trainer.ckpt_every=100", "seed=42"]
FAMILIES = {
    "gpt": ("gpt-shakespeare.yaml", ["model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                                     "model.n_kv_heads=1", "model.dropout=0.0"]),
    "dmc": ("gpt-shakespeare.yaml", ["model.name=dmc", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                                     "model.n_kv_heads=2", "model.dropout=0.0"]),
    "hourglass": ("hourglass-shakespeare.yaml", ["model.d_model=32", "model.n_heads=2", "model.hierarchy=1@1 1@2 1@1",
                                                 "model.dropout=0.0", "data.seq_len=16"]),
    "dynamic_pooling": ("dynamic-pooling-shakespeare.yaml", ["model.d_model=32", "model.n_heads=2",
                                                             "model.n_pre=1", "model.n_short=1", "model.n_post=1",
                                                             "model.dropout=0.0"]),
    "t5": ("t5-shakespeare.yaml", ["model.d_model=32", "model.n_heads=2", "model.d_kv=16", "model.d_ff=64",
                                   "model.n_layers=1"]),
    "bert": ("bert-shakespeare.yaml", ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=1"]),
}

# Exact up to float summation order where every row holds as many targets; BERT averages over its masked tokens
# (a different count per rank) and DMC draws its decision noise per row (other draws for a 2-row slice).
LOOSE = {"bert": 2e-3, "dmc": 2e-3}


def losses(run_dir) -> list[tuple[int, float]]:
    events = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]


def run_args(family: str, *over) -> tuple[str, list[str]]:
    preset, model = FAMILIES[family]
    return str(CFG / preset), model + RUN + list(over)


def single(out, preset, overrides):
    return Trainer(load_run_config(preset, overrides), out).fit()


def launch(runs: list, world: int = 2) -> None:
    """Start ``world`` ranks of ``dist_worker.py`` as torchrun would (its environment variables) and wait."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = json.dumps([[str(p), list(o), str(out)] for p, o, out in runs])
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), spec], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, text) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{text[-4000:]}"


def assert_close(a, b, rtol=2e-4):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (s, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, rel=rtol), f"step {s}: {x} vs {y}"


def clock(run_dir) -> list[tuple[int, float]]:
    events = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["clock_s"]) for e in events if e["event"] == "train"]


def test_ddp_and_fsdp2_equal_one_process_with_the_same_global_batch(tmp_path, ntng):
    """GPT with gradient accumulation under both engines, every other family under both; 2 ranks x 2 rows each =
    the single process's 4 rows. The RST clock charges the global batch: the same clock and stopping step."""
    runs, refs = [], {}
    preset, over = run_args("gpt", "trainer.grad_accum=2", "trainer.max_steps=null", "trainer.max_seconds=1.2",
                            f"trainer.rst_table={tmp_path / 'rst.json'}")
    ntng.synthetic_table(load_run_config(preset, over[:-1])).save(tmp_path / "rst.json")
    single(tmp_path / "rst-single", preset, over)
    runs.append((preset, over + ["trainer.distributed=fsdp2"], tmp_path / "rst-fsdp2"))
    for family in FAMILIES:
        accum = ["trainer.grad_accum=2", "trainer.max_steps=3"] if family == "gpt" else ["trainer.max_steps=2"]
        preset, over = run_args(family, *accum)
        single(tmp_path / f"{family}-single", preset, over)
        refs[family] = losses(tmp_path / f"{family}-single")
        for mode in ("ddp", "fsdp2"):
            runs.append((preset, over + [f"trainer.distributed={mode}"], tmp_path / f"{family}-{mode}"))
    launch(runs)
    # 2 micro-batches x (0.05 + 0.1 x 2 layers) s + 0.01 s per step: a 1.2 s budget ends after step 3.
    assert clock(tmp_path / "rst-fsdp2") == clock(tmp_path / "rst-single")
    assert clock(tmp_path / "rst-single")[-1] == (3, pytest.approx(1.53))
    assert_close(losses(tmp_path / "rst-fsdp2"), losses(tmp_path / "rst-single"), rtol=1e-5)
    for _, _, out in runs[1:]:
        got, family = losses(out), out.name.split("-")[0]
        assert_close(got, refs[family], rtol=LOOSE.get(family, 1e-5))
        assert len(got) == (3 if out.name.startswith("gpt") else 2)
        assert len(list_checkpoints(out)) == 1  # written once, by rank 0
    # The 2-rank checkpoints hold the same full weights as the one-process run's (FSDP2 gathered).
    from safetensors.torch import load_file

    ref = load_file(str(list_checkpoints(tmp_path / "gpt-single")[-1] / "model.safetensors"))
    for mode in ("ddp", "fsdp2"):
        got = load_file(str(list_checkpoints(tmp_path / f"gpt-{mode}")[-1] / "model.safetensors"))
        assert got.keys() == ref.keys()
        assert all((got[k] - ref[k]).abs().max() < 1e-4 for k in ref)


def test_resume_on_a_different_number_of_ranks(tmp_path):
    """Saved on 2 ranks (FSDP2), resumed on 1; saved on 1, resumed on 2 (FSDP2 and DDP): each loss sequence
    continues like the uninterrupted one-process run."""
    preset, over = run_args("gpt", "trainer.max_steps=4", "trainer.grad_accum=2", "optim.grad_clip=0.5")
    single(tmp_path / "ref", preset, over)
    stop = ["trainer.max_seconds=1e-9"]  # stops (and checkpoints) after the first step
    single(tmp_path / "one-fsdp", preset, over + stop)
    single(tmp_path / "one-ddp", preset, over + stop)
    resume = ["trainer.max_seconds=null"]
    launch([(preset, over + stop + ["trainer.distributed=fsdp2"], tmp_path / "two"),
            (tmp_path / "one-fsdp" / "config.yaml", resume + ["trainer.distributed=fsdp2"], tmp_path / "one-fsdp"),
            (tmp_path / "one-ddp" / "config.yaml", resume + ["trainer.distributed=ddp"], tmp_path / "one-ddp")])
    assert [s for s, _ in losses(tmp_path / "two")] == [1]
    single(tmp_path / "two", tmp_path / "two" / "config.yaml", resume + ["trainer.distributed=none"])
    ref = losses(tmp_path / "ref")
    assert len(ref) == 4
    for name in ("two", "one-fsdp", "one-ddp"):
        assert_close(losses(tmp_path / name), ref)


def test_each_rank_takes_its_own_slice_of_the_global_batch():
    import torch

    d = Distributed("none")
    batch = {"input_ids": torch.arange(12).reshape(6, 2), "labels": torch.arange(12).reshape(6, 2) + 100}
    d.mode, d.world = "ddp", 3
    parts = []
    for rank in range(3):
        d.rank = rank
        parts.append(d.shard(batch))
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch["labels"])
    assert all(p["input_ids"].shape == (2, 2) for p in parts)
    with pytest.raises(ConfigError, match="trainer.batch_size=6 .* not divisible by the 4 ranks"):
        d.world = 4
        d.shard(batch)


def test_errors_name_the_bad_setting(monkeypatch):
    with pytest.raises(ConfigError, match="trainer.distributed"):
        Distributed("zero3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        Distributed("none")
