"""The training loop: bf16 autocast on GPU (fp32 on CPU), optional ``torch.compile``, gradient accumulation,
clipping, warmup + decay driven by the budget, periodic evaluation, JSONL metrics, atomic checkpoints, exact resume.

The time budget (``trainer.max_seconds``) is measured by the run's clock (:mod:`leanformer.train.budgets`): wall
time, or reference system time when ``trainer.rst_table`` is set. Hooks (:class:`~leanformer.train.hooks.TrainHook`:
efficient-training methods, Sophia's Hessian estimate) join the loop through a few calls and save their state in
every checkpoint.

Exact resume on CPU: batch ``i`` is a pure function of ``(seed, i)`` (:class:`~leanformer.data.RandomWindows`);
the checkpoint holds weights, optimizer tensors and RNG states; on resume the lines of ``metrics.jsonl`` after the
checkpoint's step move to ``metrics.replaced.jsonl`` (:mod:`leanformer.train.loggers`). A resumed run therefore logs
the same loss sequence as an uninterrupted one, bit for bit. What a run folder allows (resume, refuse, start over)
is :mod:`leanformer.train.resume`'s call, made before any work.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from leanformer.config import RunConfig, save_yaml
from leanformer.data import get_tokenizer
from leanformer.data.packing import split_tokens
from leanformer.errors import ConfigError, UserError
from leanformer.models.registry import build_model
from leanformer.reliability import check_output_dir, crash_point, removed_if_left_empty, training_bytes
from leanformer.train.budgets import build_clock
from leanformer.train.checkpoint import load_trainer_state, save_checkpoint
from leanformer.train.distributed import Distributed
from leanformer.train.loggers import MetricsLog
from leanformer.train.optim import build_optimizer
from leanformer.train.resume import check_resume_config, resume_point
from leanformer.train.schedules import lr_multiplier

# Dense bf16 tensor-core peak by the vendors' datasheets, for MFU.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def train_flops_per_token(config, seq_len: int) -> float | None:
    try:
        from leanformer.analysis import flops
    except ImportError:
        return None
    fn = getattr(flops, "train_flops_per_token", None)
    return fn(config, seq_len) if fn is not None else None


class Trainer:
    """Train ``cfg.model`` on ``cfg.data`` into ``out_dir``; resumes when ``out_dir`` holds a checkpoint.
    ``hooks``: :class:`~leanformer.train.hooks.TrainHook` objects (an optimizer may add its own via
    ``trainer_hooks()``)."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike, hooks=(), restart: bool = False):
        self.cfg, self.out = cfg, Path(out_dir)
        t = cfg.trainer
        # Data parallelism under torchrun (identity in one process): leanformer.train.distributed.
        self.dist = Distributed(t.distributed, t.device)
        self.device = self.dist.device
        # Resume, refuse (no usable checkpoint, or a config the run cannot change) or start over: before any work.
        if restart:  # rank 0 sets the old run aside while the others wait
            if self.dist.is_main:
                resume_point(self.out, restart=True)
            self.dist.barrier()
        self.resume_from = None if restart else resume_point(self.out)
        if self.resume_from is not None:
            check_resume_config(self.out, cfg)
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        torch.manual_seed(cfg.seed)
        self.tokenizer = get_tokenizer(cfg.data.tokenizer)
        self.model = build_model(cfg.model).to(self.device)
        self._check_shapes()
        d = cfg.data
        # A read-only or full output directory must fail now, not at the first checkpoint an hour in; one that
        # this call created is removed again if the data checks then fail.
        with removed_if_left_empty(self.out):
            check_output_dir(self.out, training_bytes(self.model, t.keep_last), "this run's checkpoints")
            toks = split_tokens(d, self.tokenizer, ("train", "validation"))
            self.train_tokens, self.val_tokens = toks["train"], toks["validation"]
            # The family decides how windows become batches and how it is evaluated (causal LM by default).
            self.objective = self.model.objective(self.tokenizer, d.seq_len)
            self.batches = self.objective.batches(self.train_tokens, t.batch_size, cfg.seed)
        self.engine = self.dist.wrap(self.model)  # forward(batch) = compute_loss(batch), through DDP / FSDP2
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.tokens_per_step = t.batch_size * t.grad_accum * d.seq_len
        self.total_steps = self._total_steps()
        self.loss_fn = torch.compile(self.engine) if t.compile else self.engine
        fpt = train_flops_per_token(cfg.model, d.seq_len)
        peak = peak_flops(self.device)
        self.flops_per_token, self.peak = fpt, peak
        self.clock = build_clock(cfg)
        self.hooks = list(hooks) + list(getattr(self.optimizer, "trainer_hooks", list)())
        for h in self.hooks:
            h.setup(self)
        self.metrics = MetricsLog(self.out, t.loggers, enabled=self.dist.is_main)
        self._check_warmup()

    def _check_warmup(self) -> None:
        """A warmup as long as a step (or token) budget leaves the LR rising when the run ends: say so."""
        s = self.cfg.schedule
        if s.name != "inverse_sqrt" and self.total_steps and s.warmup_steps >= self.total_steps and \
                self.dist.is_main:
            print(f"leanformer: warning: schedule.warmup_steps={s.warmup_steps} is not shorter than the run's "
                  f"{self.total_steps} steps: the LR is still warming up when the budget ends and never decays to "
                  "its floor; lower schedule.warmup_steps", file=sys.stderr)

    def _check_shapes(self) -> None:
        m, d = self.cfg.model, self.cfg.data
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and vocab > m.vocab_size:
            raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's vocabulary ({vocab})")
        max_len = getattr(m, "max_seq_len", None)
        if max_len is not None and d.seq_len > max_len:
            raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={max_len}")

    def _total_steps(self) -> int | None:
        t = self.cfg.trainer
        candidates = [t.max_steps] if t.max_steps else []
        if t.max_tokens:
            candidates.append(math.ceil(t.max_tokens / self.tokens_per_step))
        return min(candidates) if candidates else None

    def _progress(self, step: int, elapsed: float) -> float:
        """Fraction of the budget spent; ``elapsed`` is in the clock's seconds."""
        fractions = []
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.cfg.trainer.max_seconds:
            fractions.append(elapsed / self.cfg.trainer.max_seconds)
        return min(1.0, max(fractions))

    def log(self, event: dict) -> None:
        self.metrics.log(event)

    # ---- loop ----------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def evaluate(self) -> dict:
        t = self.cfg.trainer
        with self.dist.gathered():
            return self.objective.evaluate(self.model, self.val_tokens, t.batch_size, t.eval_batches, self.device,
                                           self.autocast_dtype)

    def _save(self, step: int, tokens: int, elapsed: float, last_eval: dict | None) -> Path:
        state = {"tokens": tokens, "elapsed_s": elapsed, "last_eval": last_eval, "seed": self.cfg.seed,
                 "clock": self.clock.state_dict(), "hooks": {h.name: h.state_dict() for h in self.hooks}}
        model, optimizer = self.dist.full_state(self.model, self.optimizer)  # collective under FSDP2
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.out, step, model, optimizer, state, self.cfg.data.tokenizer,
                                   self.cfg.trainer.keep_last)
        self.dist.barrier()
        return path

    def _micro_batch(self, index: int) -> dict:
        """Training micro-batch ``index``: from the first hook that supplies one (example selection), else the
        objective's batch ``index``."""
        for h in self.hooks:
            batch = h.micro_batch(self, index)
            if batch is not None:
                return batch
        return self.batches.batch(index)

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        step, tokens, elapsed, last_eval = 0, 0, 0.0, None
        ckpt = self.resume_from
        if ckpt is not None:
            self.dist.load_weights(self.model, ckpt / "model.safetensors")
            state = load_trainer_state(ckpt, self.dist.optimizer_view(self.optimizer))
            step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]
            last_eval = state.get("last_eval")
            self.clock.load_state_dict(state.get("clock") or {"seconds": elapsed})
            for h in self.hooks:
                h.load_state_dict(state.get("hooks", {}).get(h.name, {}))
            print(f"leanformer: resuming {self.out} from step {step}")
        if self.dist.is_main:  # the budget and cadence a resume may change are the run's from now on
            save_yaml(cfg.to_raw(), self.out / "config.yaml")
        self.metrics.start(step if ckpt is not None else None)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=step, disable=not t.progress or not self.dist.is_main,
                   desc="train", unit="step", dynamic_ncols=True)
        last_ckpt_step = step if ckpt is not None else -1
        while not self._done(step, self.clock.seconds):
            t0 = time.perf_counter()
            progress = self._progress(step, self.clock.seconds)
            lr = cfg.optim.lr * lr_multiplier(cfg.schedule, step, progress)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            # A model may follow the budget itself (DMC ramps its target compression ratio with progress).
            if hasattr(self.model, "on_train_step"):
                self.model.on_train_step(step, progress)
            for h in self.hooks:
                h.on_step_begin(self, step, progress)
            loss_sum, extras = 0.0, {}
            for micro in range(t.grad_accum):
                index = step * t.grad_accum + micro
                batch = self._micro_batch(index)
                rows = int(batch["input_ids"].shape[0])  # the global micro-batch: what the clock is charged
                batch = {k: v.to(self.device, non_blocking=True) for k, v in self.dist.shard(batch).items()}
                with self.dist.sync(micro == t.grad_accum - 1):  # gradients reduced on the last micro-batch
                    with self._autocast():
                        loss, info = self.loss_fn(batch)
                    (loss / t.grad_accum).backward()
                self.clock.micro_batch(rows)
                for h in self.hooks:
                    h.after_micro_batch(self, index)
                loss_sum += float(loss.detach()) / t.grad_accum
                for k, v in info.items():  # the loss's own parts (e.g. auxiliary losses), averaged over micro-steps
                    extras[k] = extras.get(k, 0.0) + float(v) / t.grad_accum
            loss_sum, *parts = self.dist.mean({"loss": loss_sum, **extras}).values()  # over ranks
            extras = dict(zip(extras, parts))
            if not math.isfinite(loss_sum):
                raise UserError(f"training loss became {loss_sum} at step {step + 1}; stopped. The last good "
                                f"checkpoint is kept in {self.out}; lower optim.lr or check the data")
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = self.dist.clip_grad_norm(self.model, cfg.optim.grad_clip)
            self.optimizer.step()
            self.clock.optimizer_step()
            self.optimizer.zero_grad(set_to_none=True)
            crash_point("train.step")
            for h in self.hooks:
                h.on_step_end(self, step)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = self.dist.max(time.perf_counter() - t0)  # the slowest rank's: one clock and schedule on all
            step += 1
            tokens += self.tokens_per_step
            elapsed += dt
            self.clock.wall(dt)
            tok_s = self.tokens_per_step / dt
            mfu = tok_s * self.flops_per_token / self.peak if self.flops_per_token and self.peak else None
            if step % t.log_every == 0 or step == 1:
                event = {"event": "train", "step": step, "loss": loss_sum, "lr": lr, "tokens": tokens,
                         "tok_per_s": tok_s, "elapsed_s": elapsed, "clock_s": self.clock.seconds, **extras}
                if grad_norm is not None:
                    event["grad_norm"] = grad_norm
                if mfu is not None:
                    event["mfu"] = mfu
                self.log(event)
            post = {"loss": f"{loss_sum:.3f}", "tok/s": f"{tok_s:,.0f}"}
            if mfu is not None:
                post["mfu"] = f"{100 * mfu:.1f}%"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
            done = self._done(step, self.clock.seconds)
            if step % t.eval_every == 0 or done:
                last_eval = self.evaluate()
                self.log({"event": "eval", "step": step, "clock_s": self.clock.seconds,
                          **{f"val_{k}": last_eval[k] for k in self.objective.log_keys}})
            if step % t.ckpt_every == 0 or done:
                self._save(step, tokens, elapsed, last_eval)
                self.metrics.flush()
                last_ckpt_step = step
        bar.close()
        if last_ckpt_step != step:
            self._save(step, tokens, elapsed, last_eval)
        self.metrics.close()
        return {"step": step, "tokens": tokens, "elapsed_s": elapsed, "last_eval": last_eval}

    def _done(self, step: int, elapsed: float) -> bool:
        t = self.cfg.trainer
        if self.total_steps is not None and step >= self.total_steps:
            return True
        return bool(t.max_seconds and elapsed >= t.max_seconds)
