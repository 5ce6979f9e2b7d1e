"""Where a training run's metrics go (``trainer.loggers``).

- ``jsonl`` (always on): ``OUT/metrics.jsonl``, one JSON object per event (``{"event": "train" | "eval", "step":
  ..., ...}``); the run's record, read by resume, reports and tests. A resume replays the steps after its checkpoint,
  so the lines logged after that step are moved (not deleted) to ``OUT/metrics.replaced.jsonl``, after a marker
  line ``{"event": "replaced", "resumed_from": STEP, "lines": N}``: ``metrics.jsonl`` then equals the log of an
  uninterrupted run, and no line is ever lost.
- ``tensorboard``: event files under ``OUT/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``; needs the
  ``tensorboard`` package, ``pip install 'leanformer[tensorboard]'``), one scalar per numeric field, tagged
  ``<event>/<field>`` (``train/loss``, ``eval/val_bits_per_byte``) at the event's step. A resume purges the events
  after its checkpoint's step, as the JSONL log does. Offline, no account: ``tensorboard --logdir OUT``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from leanformer.config import atomic_write_text
from leanformer.errors import ConfigError


class MetricsLog:
    """The metrics of one run in ``out``; ``enabled=False`` (ranks other than 0) makes every call a no-op."""

    def __init__(self, out: Path, loggers=("jsonl",), enabled: bool = True):
        self.out, self.loggers, self.enabled = Path(out), tuple(loggers), enabled
        self.path = self.out / "metrics.jsonl"
        self.replaced = self.out / "metrics.replaced.jsonl"
        self.writer = None

    def start(self, resumed_from: int | None) -> None:
        """Open the logs for a run starting at step 0 (``None``) or resuming from checkpoint step ``resumed_from``;
        lines beyond that step (or, at step 0, left by a run that never checkpointed) move to the replaced log."""
        if not self.enabled:
            return
        self._set_aside(resumed_from or 0)
        if "tensorboard" in self.loggers:
            self.writer = _summary_writer(self.out / "tensorboard", None if resumed_from is None else resumed_from + 1)

    def _set_aside(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep, drop = [], []
        for line in self.path.read_text().splitlines():
            try:
                ok = not drop and json.loads(line).get("step", 0) <= step
            except (json.JSONDecodeError, AttributeError):
                ok = False  # a torn last line from a crash
            (keep if ok else drop).append(line)
        if not drop:
            return
        with open(self.replaced, "a") as f:  # first the copy, durably; only then the shorter log
            f.write(json.dumps({"event": "replaced", "resumed_from": step, "lines": len(drop)}) + "\n")
            f.writelines(x + "\n" for x in drop)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_text(self.path, "".join(x + "\n" for x in keep))

    def log(self, event: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
        if self.writer is not None:
            kind, step = event.get("event", "event"), int(event.get("step", 0))
            for k, v in event.items():
                if k not in ("event", "step") and isinstance(v, int | float) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("trainer.loggers includes 'tensorboard', but the tensorboard package is not installed; "
                          "pip install 'leanformer[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=10)
