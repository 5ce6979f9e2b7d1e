"""Layer stacking (Gong et al., 2019, "Efficient Training of BERT by Progressively Stacking"; the variant of
"No Train No Gain", Kaddour et al., 2023): start shallow and double the depth by copying the current layers.

Rule: every layer stack (``gpt.layers``; ``t5.encoder`` and ``t5.decoder``) starts with ``L / 2^s`` active blocks
for ``s = len(schedule)`` stackings; when the budget fraction reaches ``schedule[i]`` (default 12.5% and 30%,
the paper's), blocks ``n..2n-1`` become exact copies of blocks ``0..n-1`` (stacked on top) and start running.
The model is built at full depth from the start; blocks not yet active are skipped (no compute, no gradient, no
optimizer state), so checkpoints keep one shape and resume exactly. ``optimizer_state``: ``"fresh"`` (default:
the copies start with empty optimizer state) or ``"copy"`` (they inherit the state of the blocks they copy).
The RST clock is charged for the active fraction of the layers only.
"""

from __future__ import annotations

from leanformer.errors import ConfigError
from leanformer.train.hooks import TrainHook
from leanformer.train.methods.common import layer_stacks, set_skipped


class LayerStacking(TrainHook):
    name = "stacking"

    def __init__(self, schedule: tuple[float, ...] | list[float] = (0.125, 0.3), optimizer_state: str = "fresh"):
        schedule = tuple(float(x) for x in schedule)
        if not schedule or list(schedule) != sorted(schedule) or not all(0.0 < x < 1.0 for x in schedule):
            raise ConfigError(f"stacking.schedule: {list(schedule)} must be increasing budget fractions in (0, 1)")
        if optimizer_state not in ("fresh", "copy"):
            raise ConfigError(f"stacking.optimizer_state: {optimizer_state!r}; choose 'fresh' or 'copy'")
        self.schedule, self.optimizer_state = schedule, optimizer_state
        self.level = 0

    def setup(self, trainer) -> None:
        self.trainer = trainer
        self.stacks = layer_stacks(trainer.model)
        factor = 2 ** len(self.schedule)
        for s in self.stacks:
            if len(s) % factor:
                raise ConfigError(f"stacking: a stack of {len(s)} layers cannot be halved {len(self.schedule)} "
                                  f"times; use a layer count divisible by {factor} or a shorter stacking.schedule")
        self._apply()

    def active(self, stack) -> int:
        return len(stack) * 2 ** self.level // 2 ** len(self.schedule)

    def _apply(self) -> None:
        for s in self.stacks:
            n = self.active(s)
            for i, layer in enumerate(s):
                set_skipped(layer, i >= n)
        total = sum(len(s) for s in self.stacks)
        self.trainer.clock.active_fraction = sum(self.active(s) for s in self.stacks) / total

    def stack(self) -> None:
        """Double every stack: block ``n + i`` <- copy of block ``i`` (weights, and optimizer state on 'copy')."""
        opt = self.trainer.optimizer
        for s in self.stacks:
            n = self.active(s)
            for i in range(n):
                s[n + i].load_state_dict(s[i].state_dict())
                for src, dst in zip(s[i].parameters(), s[n + i].parameters()):
                    opt.state.pop(dst, None)
                    if self.optimizer_state == "copy" and src in opt.state:
                        opt.state[dst] = {k: v.clone() if hasattr(v, "clone") else v
                                          for k, v in opt.state[src].items()}
        self.level += 1
        self._apply()

    def on_step_begin(self, trainer, step: int, progress: float) -> None:
        while self.level < len(self.schedule) and progress >= self.schedule[self.level]:
            self.stack()
            trainer.log({"event": "stacking", "step": step, "progress": progress,
                         "active_layers": [self.active(s) for s in self.stacks]})

    def state_dict(self) -> dict:
        return {"level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.level = int(state.get("level", 0))
        self._apply()
