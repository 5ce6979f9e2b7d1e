"""DMC retrofitting against GQA uptraining at one retrofit budget (Nawrot et al., 2024: DMC keeps quality up to 4x
and beats up-trained GQA at the same cache size), as a sequence of resumable stages under one folder ``OUT``:

* ``base``: pretrain a multi-head-attention ``gpt`` for a fixed token budget;
* ``dmc-cr{C}-s{S}``: DMC retrofit to ratio ``C`` (:func:`~leanformer.train.dmc_retrofit.retrofit`), seed ``S``;
* ``gqa-cr{C}-s{S}``: mean-pool every ``C`` key/value heads, continue training
  (:func:`~leanformer.train.dmc_retrofit.gqa_uptrain`);
* ``control-s{S}``: continue the base without compression (what the budget alone does).

Every run after ``base`` gets the same budget (``retrofit_fraction`` of the base's pretraining tokens), LR and
batch. A stage is done when ``OUT/<stage>/test_eval.json`` exists (bits per test window, the compression ratio
reached); a rerun skips finished stages and resumes cut ones from their checkpoints. Each stage runs under its own
time limit (``SIGALRM``), and no stage starts past the study's deadline, so a call with a hard wall-clock limit keeps
everything that finished. :func:`summarize` turns the finished stages into rows with hierarchical-bootstrap
intervals (seeds, then blocks of test windows) and DMC-minus-GQA differences at each ratio.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from leanformer.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainerConfig,
    atomic_write_text,
    load_run_config,
)
from leanformer.models.gpt import GPTConfig


@dataclasses.dataclass(kw_only=True)
class StudyConfig:
    """The whole comparison. Token budgets are counted as ``steps * batch * seq_len``."""

    model: GPTConfig
    data: DataConfig
    pretrain_steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    retrofit_fraction: float = 0.08  # of the base's pretraining tokens, for every later run
    retrofit_batch_size: int = 16
    retrofit_lr: float | None = None  # default: lr / 10
    zero_out_steps: int = 250  # capped at a fifth of the retrofit steps
    aux_weight: float = 1.0  # DMC's compression-loss weight (paper: 1; RetrofitConfig.aux_weight)
    crs: tuple[int, ...] = (2, 4, 8)
    seeds: tuple[int, ...] = (0, 1)
    control: bool = True
    eval_batch_size: int = 64
    eval_batches: int | None = None  # test windows: the whole split by default
    device: str = "auto"
    deadline_s: float | None = None  # no stage starts after this many seconds of the study
    stage_timeout_s: dict = dataclasses.field(default_factory=dict)  # per stage kind: base / dmc / gqa / control

    @property
    def retrofit_steps(self) -> int:
        tokens = self.retrofit_fraction * self.pretrain_steps * self.batch_size * self.data.seq_len
        return max(3, math.ceil(tokens / (self.retrofit_batch_size * self.data.seq_len)))


@dataclasses.dataclass(frozen=True)
class Stage:
    kind: str  # base | dmc | gqa | control
    cr: int = 1
    seed: int = 0

    @property
    def name(self) -> str:
        if self.kind == "base":
            return "base"
        return f"control-s{self.seed}" if self.kind == "control" else f"{self.kind}-cr{self.cr}-s{self.seed}"


def plan(crs, seeds, control: bool = True) -> list[Stage]:
    """Stages in the order they run: the base, then per seed every ratio (DMC, then GQA), then the controls; a cut
    study keeps whole seeds rather than whole ratios."""
    stages = [Stage("base")]
    stages += [Stage(kind, cr, s) for s in seeds for cr in crs for kind in ("dmc", "gqa")]
    return stages + ([Stage("control", 1, s) for s in seeds] if control else [])


class StageTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (no limit for ``None``)."""
    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise StageTimeout(f"stage exceeded its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@torch.no_grad()
def window_bits(run_dir, batch_size: int, max_batches: int | None, device: str) -> dict:
    """Test-split bits (sum of next-token NLL / ln 2) and bytes of every window of a run; DMC runs add the
    compression ratio reached (hard decisions, as decoding with the cache)."""
    from leanformer.data.packing import sequential_windows, split_tokens
    from leanformer.eval.lm import token_byte_lengths
    from leanformer.train.checkpoint import load_model, load_tokenizer, resolve_checkpoint
    from leanformer.train.device import resolve_device

    ckpt = resolve_checkpoint(run_dir)
    cfg = load_run_config(Path(run_dir) / "config.yaml")
    dev = resolve_device(device)
    model = load_model(ckpt, device=str(dev)).eval()
    tok = load_tokenizer(ckpt)
    tokens = split_tokens(cfg.data, tok, ("test",))["test"]
    blen = torch.from_numpy(token_byte_lengths(tok, model.config.vocab_size)).to(dev)
    if hasattr(model, "reset_compression_stats"):
        model.reset_compression_stats()
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    bits, nbytes = [], []
    for batch in sequential_windows(tokens, cfg.data.seq_len, batch_size, max_batches):
        x, y = batch["input_ids"].to(dev), batch["labels"].to(dev)
        with ctx:
            logits = model(x)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        b = blen[y]
        bits.append((nll * (b > 0)).sum(1).double().cpu() / math.log(2))
        nbytes.append(b.sum(1).cpu())
    out = {"bits": torch.cat(bits).tolist(), "bytes": torch.cat(nbytes).tolist()}
    out["bits_per_byte"] = sum(out["bits"]) / max(1, sum(out["bytes"]))
    stats = model.compression_stats() if hasattr(model, "compression_stats") else {}
    return {**out, **{k: stats[k] for k in ("compression_ratio", "compression_ratio_per_layer") if k in stats}}


def _pretrain(cfg: StudyConfig, out: Path) -> None:
    from leanformer.train.trainer import Trainer

    n = cfg.pretrain_steps
    run = RunConfig(model=cfg.model, data=cfg.data, optim=OptimConfig(lr=cfg.lr, weight_decay=0.1),
                    schedule=ScheduleConfig(warmup_steps=min(100, n // 10)),
                    trainer=TrainerConfig(device=cfg.device, batch_size=cfg.batch_size, max_steps=n,
                                          eval_every=max(1, n // 6), ckpt_every=max(1, n // 3), eval_batches=20,
                                          progress=False),
                    seed=0)
    Trainer(run, out).fit()


def run_stage(stage: Stage, cfg: StudyConfig, root: Path) -> None:
    """Train one stage into ``root / stage.name`` (resuming its checkpoints)."""
    from leanformer.train.dmc_retrofit import RetrofitConfig, gqa_uptrain, retrofit

    out = root / stage.name
    if stage.kind == "base":
        return _pretrain(cfg, out)
    steps = cfg.retrofit_steps
    rc = RetrofitConfig(target_cr=float(stage.cr), budget=steps, zero_out_steps=cfg.zero_out_steps,
                        lr=cfg.retrofit_lr or cfg.lr / 10, batch_size=cfg.retrofit_batch_size, device=cfg.device,
                        eval_every=steps, eval_batches=10, seed=stage.seed, aux_weight=cfg.aux_weight, progress=False)
    (retrofit if stage.kind == "dmc" else gqa_uptrain)(root / "base", out, rc)


def load_evals(root: Path) -> dict[str, dict]:
    """Every finished stage's ``test_eval.json`` under ``root``, by stage name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(root).glob("*/test_eval.json"))}


def run(cfg: StudyConfig, root, on_stage=None) -> dict[str, dict]:
    """Run (or resume) every stage of :func:`plan` under ``root``; ``on_stage(status)`` is called after each stage
    with ``{stage name: {"status": ..., "seconds": ...}}`` so a caller can record results as they come. A stage
    that fails or runs out of time is recorded and the study goes on (later stages that need the base skip)."""
    root = Path(root)
    t0 = time.perf_counter()
    status: dict[str, dict] = {}
    for stage in plan(cfg.crs, cfg.seeds, cfg.control):
        out = root / stage.name
        if (out / "test_eval.json").is_file():
            status[stage.name] = {"status": "done earlier"}
            continue
        left = None if cfg.deadline_s is None else cfg.deadline_s - (time.perf_counter() - t0)
        limit = cfg.stage_timeout_s.get(stage.kind)
        if left is not None and left <= 5:
            status[stage.name] = {"status": "skipped: study deadline reached"}
            continue
        if stage.kind != "base" and not (root / "base" / "test_eval.json").is_file():
            status[stage.name] = {"status": "skipped: no finished base"}
            continue
        s0 = time.perf_counter()
        try:
            with time_limit(min(x for x in (limit, left) if x is not None) if (limit or left) else None):
                run_stage(stage, cfg, root)
                result = window_bits(out, cfg.eval_batch_size, cfg.eval_batches, cfg.device)
            atomic_write_text(out / "test_eval.json", json.dumps(result))
            status[stage.name] = {"status": "done", "bits_per_byte": result["bits_per_byte"],
                                  **{k: result[k] for k in ("compression_ratio",) if k in result}}
        except StageTimeout as e:
            status[stage.name] = {"status": f"timeout: {e} (checkpoints kept; rerun to resume)"}
        except Exception as e:  # one failed stage must not lose the others
            status[stage.name] = {"status": f"failed: {type(e).__name__}: {e}"}
        status[stage.name]["seconds"] = round(time.perf_counter() - s0, 1)
        print(f"{stage.name}: {status[stage.name]}", flush=True)
        if on_stage is not None:
            on_stage(status)
    return status
