"""Reference system time (RST): charge each piece of training work the time it takes on a reference machine.

"No Train No Gain" (Kaddour et al., 2023) judges efficient-training methods under equal *reference system time*:
every operation is charged its time from tables measured once on a reference machine, so a method's budget does
not depend on the machine it happens to run on or on how busy that machine is. Here:

- :func:`calibrate` measures, for one run config on the current machine, the seconds of a forward + backward pass
  per micro-batch for every number of active layers ``k = 0..L`` (``k/L`` of each layer stack runs; the rest are
  skipped as in layer stacking / dropping), the seconds of a forward-only (no-grad) pass for each ``k``, and each
  optimizer's step overhead. Entries are timed in interleaved rounds (so a burst of machine noise hits all of
  them alike) and each keeps its *minimum* over rounds (noise only ever adds time; ``timeit``'s rule). The table
  keeps a robust straight-line fit ``a + b k`` (Theil-Sen: median of pairwise slopes) of the per-``k`` minima,
  since identical blocks cost the same; the raw minima are kept under ``measured``.
  ``leanformer rst calibrate CONFIG --out rst.json`` saves the :class:`RSTTable` as JSON with the machine and
  library versions.
- :class:`leanformer.train.budgets.RSTClock` advances by table lookups: a pass over ``n`` examples at active
  fraction ``f`` costs ``interp(table, f * L) * n / batch_size`` (linear in layers between measured points, linear
  in examples); an optimizer step costs its overhead. Measured wall time is ignored.

With ``trainer.rst_table=rst.json trainer.max_seconds=600`` the trainer's LR schedule is driven by the RST
fraction, so the baseline's LR reaches its floor exactly when the RST budget ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from leanformer.config import atomic_write_text
from leanformer.errors import ConfigError, UserError

FORMAT = 1


@dataclasses.dataclass
class RSTTable:
    """Seconds per micro-batch of ``batch_size`` sequences of ``seq_len`` tokens: ``fwd_bwd[k]`` / ``forward[k]``
    with ``k`` of ``layers`` blocks active (``k = 0..layers``); ``optimizer_step[name]`` per update."""

    model: dict
    seq_len: int
    batch_size: int
    layers: int
    fwd_bwd: list[float]
    forward: list[float]
    optimizer_step: dict[str, float]
    machine: dict = dataclasses.field(default_factory=dict)
    measured: dict = dataclasses.field(default_factory=dict)
    format: int = FORMAT

    def _interp(self, values: list[float], active_fraction: float, examples: int) -> float:
        k = min(1.0, max(0.0, active_fraction)) * self.layers
        return float(np.interp(k, np.arange(self.layers + 1), values)) * examples / self.batch_size

    def fwd_bwd_seconds(self, active_fraction: float, examples: int) -> float:
        return self._interp(self.fwd_bwd, active_fraction, examples)

    def forward_seconds(self, active_fraction: float, examples: int) -> float:
        return self._interp(self.forward, active_fraction, examples)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RSTTable:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"RST table {p} not found; make one with `leanformer rst calibrate CONFIG --out {p}`")
        try:
            raw = json.loads(p.read_text())
            table = cls(**raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"RST table {p} is not a valid table ({e}); re-run `leanformer rst calibrate`") from None
        if table.format != FORMAT or len(table.fwd_bwd) != table.layers + 1:
            raise UserError(f"RST table {p} has format {table.format} / {len(table.fwd_bwd)} entries; "
                            f"re-run `leanformer rst calibrate`")
        return table

    def check(self, cfg) -> RSTTable:
        """Refuse a table calibrated for another model or sequence length (batch size may differ: it scales)."""
        from leanformer.models.registry import model_config_to_dict

        model = model_config_to_dict(cfg.model)
        if model != self.model or cfg.data.seq_len != self.seq_len:
            diff = sorted(k for k in set(model) | set(self.model) if model.get(k) != self.model.get(k))
            what = ", ".join(f"model.{k}" for k in diff) or f"data.seq_len ({self.seq_len} vs {cfg.data.seq_len})"
            raise ConfigError(f"trainer.rst_table was calibrated for another configuration (differs in {what}); "
                              "re-run `leanformer rst calibrate` with this config")
        return self


def _timer(device):
    import torch

    def run(fn, warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def theil_sen(y: list[float]) -> list[float]:
    """Fitted values at ``k = 0..len(y)-1`` of the line through the median pairwise slope (kept >= 0)."""
    k = np.arange(len(y))
    if len(y) < 2:
        return [float(v) for v in y]
    slopes = [(y[j] - y[i]) / (j - i) for i in range(len(y)) for j in range(i + 1, len(y))]
    b = max(0.0, float(np.median(slopes)))
    a = float(np.median(np.asarray(y) - b * k))
    return [max(a + b * float(x), 1e-9) for x in k]


def calibrate(cfg, repeats: int = 5, warmup: int = 2, optimizers: tuple[str, ...] | None = None) -> RSTTable:
    """Time ``cfg``'s model on this machine (device and precision as the trainer would use them)."""
    import torch

    from leanformer import __version__
    from leanformer.data import get_tokenizer
    from leanformer.models.registry import build_model, model_config_to_dict
    from leanformer.train.device import resolve_device
    from leanformer.train.methods.common import layer_stacks, set_depth, to_device
    from leanformer.train.optim import OPTIMIZERS, build_optimizer

    t = cfg.trainer
    device = resolve_device(t.device)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    torch.manual_seed(cfg.seed)
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg.model).to(device).train()
    objective = model.objective(tokenizer, cfg.data.seq_len)
    # synthetic tokens: timing does not depend on the text, and calibration needs no data download
    vocab = min(getattr(tokenizer, "vocab_size", cfg.model.vocab_size), cfg.model.vocab_size)
    tokens = np.random.default_rng(0).integers(0, min(vocab, 256), size=max(200_000, 8 * cfg.data.seq_len),
                                              dtype=np.int64).astype(np.int32)
    batch = to_device(objective.batches(tokens, t.batch_size, cfg.seed).batch(0), device)
    layers = max(len(s) for s in layer_stacks(model))
    timer = _timer(device)

    def fwd_bwd():
        with autocast():
            loss, _ = model.compute_loss(batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def fwd():
        with torch.no_grad(), autocast():
            model.compute_loss(batch)

    fb, fo = [[] for _ in range(layers + 1)], [[] for _ in range(layers + 1)]
    for r in range(repeats):
        for k in range(layers + 1):
            set_depth(model, k / layers)
            fb[k].append(timer(fwd_bwd, warmup if r == 0 else 0, 1))
            fo[k].append(timer(fwd, warmup if r == 0 else 0, 1))
    set_depth(model, 1.0)
    fb, fo = [min(x) for x in fb], [min(x) for x in fo]
    with autocast():
        loss, _ = model.compute_loss(batch)
    loss.backward()  # the gradients stay; each optimizer steps on them
    names = list(optimizers or OPTIMIZERS)
    opts = {n: build_optimizer(model, dataclasses.replace(cfg.optim, name=n)) for n in names}
    steps: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names:
            steps[n].append(timer(opts[n].step, warmup if r == 0 else 0, 1))
    steps = {n: min(v) for n, v in steps.items()}
    model.zero_grad(set_to_none=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "leanformer": __version__, "device": str(device), "cpu_count": os.cpu_count(),
               "precision": "bf16" if bf16 else "fp32", "repeats": repeats}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return RSTTable(model=model_config_to_dict(cfg.model), seq_len=cfg.data.seq_len, batch_size=t.batch_size,
                    layers=layers, fwd_bwd=theil_sen(fb), forward=theil_sen(fo), optimizer_step=steps, machine=machine,
                    measured={"fwd_bwd": fb, "forward": fo})
