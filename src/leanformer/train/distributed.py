"""Data-parallel training on PyTorch's own engine: DDP and FSDP2 (``torch.distributed.fsdp.fully_shard``) under
``torchrun``, chosen by ``trainer.distributed`` (``auto`` | ``none`` | ``ddp`` | ``fsdp2``; ``auto``, the default, is
``ddp`` when torchrun started several ranks and ``none`` in one process).

The trainer talks to one :class:`Distributed` object and never branches on the mode:

- **Process group** from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``):
  NCCL on GPU (rank ``r`` on ``cuda:LOCAL_RANK``), gloo on CPU. Without ``WORLD_SIZE`` > 1 nothing is wrapped and
  every helper is the identity, so a one-process run is the plain trainer.
- **Data**: the global micro-batch is the one a single-process run draws (``RandomWindows`` batch ``i`` is a pure
  function of ``(seed, i)``); rank ``r`` of ``W`` trains on rows ``[r B/W, (r+1) B/W)`` (:meth:`Distributed.shard`).
  Gradients are averaged over ranks, so the update equals the single-process update on the whole batch; the loss
  logged is the mean over ranks (equal to the single-process loss when every row holds as many targets).
- **Clock**: the budget clock is charged the *global* batch, and each step's wall time is the slowest rank's
  (:meth:`Distributed.max`), so schedule, RST charges and the stop decision are identical on every rank and equal to
  a single-process run with the same global batch.
- **Gradient accumulation**: gradients are reduced on the last micro-batch only (DDP ``no_sync``, FSDP2
  ``set_requires_gradient_sync``).
- **Checkpoints** keep the one safetensors format: the full state (FSDP2: gathered with ``full_tensor``) is written by
  rank 0 only, so a run saved on ``W`` ranks resumes on any other number (every rank reads the full state and keeps
  its shard). Only rank 0 writes metrics.

FSDP2 shards every block of every ``nn.ModuleList`` (the transformer layers of each family) and the rest as one root
group, the layout of the FSDP2 tutorial (Zhao et al., 2023, "PyTorch FSDP"; Li et al., 2020, "PyTorch Distributed").
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from leanformer.errors import ConfigError, UserError

MODES = ("auto", "none", "ddp", "fsdp2")


class LossModule(nn.Module):
    """``forward(batch) = model.compute_loss(batch)``: the training step goes through the wrapper's ``forward`` so
    DDP's and FSDP2's hooks see it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model.compute_loss(batch)


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None


class Distributed:
    """Rank-aware helpers for one training run; ``mode`` is ``trainer.distributed``, ``device`` its device spec."""

    def __init__(self, mode: str = "auto", device: str = "auto"):
        if mode not in MODES:
            raise ConfigError(f"trainer.distributed: {mode!r} is not allowed; choose one of {', '.join(MODES)}")
        self.rank, self.world, self.local_rank = env_world()
        if mode == "auto":
            mode = "ddp" if self.world > 1 else "none"
        if self.world > 1 and mode == "none":
            raise ConfigError(f"launched on {self.world} processes (WORLD_SIZE={self.world}) but "
                              "trainer.distributed=none: every rank would train alone; set trainer.distributed="
                              "ddp or fsdp2")
        self.mode = mode if self.world > 1 else "none"
        self.device = self._device(device)
        self.engine: nn.Module | None = None
        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self, spec: str) -> torch.device:
        if not self.active or spec == "cpu":
            from leanformer.train.device import resolve_device

            return resolve_device(spec)
        if spec in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        if spec == "auto":
            return torch.device("cpu")
        raise ConfigError(f"trainer.device={spec!r} with trainer.distributed={self.mode}: use auto or cuda "
                          "(each rank takes cuda:LOCAL_RANK) or cpu (gloo)")

    # ---- model ---------------------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module whose ``forward(batch)`` returns ``compute_loss(batch)``; ``model`` stays the same object
        (under FSDP2 its parameters become sharded DTensors)."""
        root = LossModule(model)
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.engine = DistributedDataParallel(root, device_ids=ids)
        elif self.mode == "fsdp2":
            fully_shard = _fully_shard()
            for m in list(model.modules()):
                if isinstance(m, nn.ModuleList):
                    for block in m:
                        fully_shard(block)
            self.engine = fully_shard(root)
        else:
            self.engine = root
        return self.engine

    def sync(self, last_micro_batch: bool):
        """Context for one micro-batch's forward + backward: gradients are reduced on the last one only."""
        if self.mode == "ddp" and not last_micro_batch:
            return self.engine.no_sync()
        if self.mode == "fsdp2":
            self.engine.set_requires_gradient_sync(last_micro_batch)
        return nullcontext()

    @contextmanager
    def gathered(self):
        """Full root parameters for code that calls the model outside the wrapper (evaluation); every rank runs it
        on the same data, so FSDP2's per-block gathers line up."""
        if self.mode != "fsdp2":
            yield
            return
        self.engine.unshard()
        try:
            yield
        finally:
            self.engine.reshard()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """Global gradient norm before clipping (DTensor gradients included)."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # ---- data and metrics ----------------------------------------------------------------------------------

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of the global micro-batch ``batch`` (every tensor of ``batch_size`` rows)."""
        if not self.active:
            return batch
        rows = int(batch["input_ids"].shape[0])
        if rows % self.world:
            raise ConfigError(f"trainer.batch_size={rows} (the global micro-batch) is not divisible by the "
                              f"{self.world} ranks; choose a multiple of {self.world}")
        n = rows // self.world
        lo = self.rank * n
        return {k: v[lo:lo + n] if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
                for k, v in batch.items()}

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.active or not values:
            return values
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Means over ranks of a dict of floats (same keys in the same order on every rank)."""
        out = self._reduce(list(values.values()), dist.ReduceOp.SUM if self.active else None)
        return {k: v / self.world for k, v in zip(values, out)}

    def max(self, value: float) -> float:
        return self._reduce([value], dist.ReduceOp.MAX if self.active else None)[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def full_state(self, model: nn.Module, optimizer):
        """``(model, optimizer)`` to hand to :func:`~leanformer.train.checkpoint.save_checkpoint` on rank 0.
        Collective under FSDP2 (every rank must call it): a CPU copy of the full model and the full optimizer
        state; the objects themselves otherwise (DDP replicas are identical)."""
        if self.mode != "fsdp2":
            return model, optimizer
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from leanformer.models.registry import build_model

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        optim_sd = _full_optimizer_state(optimizer)
        if not self.is_main:
            return None, None
        copy = build_model(model.config)
        copy.load_state_dict(sd)
        return copy, _FrozenOptimizer(optim_sd)

    def load_weights(self, model: nn.Module, path) -> None:
        """Load a full safetensors checkpoint into ``model`` (every rank reads it; FSDP2 keeps its shard)."""
        if self.mode != "fsdp2":
            from safetensors.torch import load_model

            load_model(model, str(path))
            return
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, load_file(str(path)), options=StateDictOptions(full_state_dict=True))

    def optimizer_view(self, optimizer):
        """What :func:`~leanformer.train.checkpoint.load_trainer_state` restores into: under FSDP2 an adapter that
        shards full optimizer tensors like their parameters."""
        return _ShardingOptimizer(optimizer) if self.mode == "fsdp2" else optimizer


def shutdown() -> None:
    """End the process group a run started (after ``Trainer.fit`` in ``leanformer train``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def _full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with every DTensor gathered to a full CPU tensor (collective, fixed order)."""
    sd = optimizer.state_dict()
    state = {}
    for idx in sorted(sd["state"]):
        state[idx] = {}
        for name in sorted(sd["state"][idx]):
            v = sd["state"][idx][name]
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()
            state[idx][name] = v.detach().cpu() if torch.is_tensor(v) else v
    return {"state": state, "param_groups": sd["param_groups"]}


class _FrozenOptimizer:
    """A gathered optimizer state with the one method checkpoint writing calls."""

    def __init__(self, sd: dict):
        self._sd = sd

    def state_dict(self) -> dict:
        return self._sd


class _ShardingOptimizer:
    """Loads a full (index-keyed) optimizer state into an optimizer over FSDP2's sharded parameters."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.tensor import distribute_tensor

        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        state = {}
        for idx in sorted(sd["state"]):
            p = params[int(idx)]
            state[idx] = {}
            for name in sorted(sd["state"][idx]):
                v = sd["state"][idx][name]
                if torch.is_tensor(v) and hasattr(p, "device_mesh") and tuple(v.shape) == tuple(p.shape):
                    v = distribute_tensor(v.to(p.to_local().device), p.device_mesh, p.placements)
                state[idx][name] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
