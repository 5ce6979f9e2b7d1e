"""Retrofit Dynamic Memory Compression onto a pretrained LM (Nawrot et al., 2024, Sec. 3.3), and the GQA-uptraining
baseline it is compared with.

DMC recipe, each stage one resumable :class:`~leanformer.train.trainer.Trainer` run initialised from the previous:

1. ``zero_out`` (``OUT/stages/zero_out``): the repurposed q/k channel fades linearly to 0, decisions off
   (``min(zero_out_steps, budget / 5)`` steps, paper: 250);
2. ``retrofit`` (``OUT/stages/retrofit``): decisions on, the target compression ratio of the auxiliary loss ramps
   linearly from 1 to ``target_cr``, constant LR;
3. ``finetune`` (``OUT`` itself, so ``leanformer eval OUT`` works): target fixed, cosine LR to
   ``final_lr_fraction`` (paper: 3e-5 -> 3e-6), the last ``finetune_fraction`` of the budget.

Two details make the decisions reach their target at a small model's budget (measured on the CPU, 2026-12-06:
a d128 x 4 byte-level base, 256-step retrofits at batch 4 x 128 bytes, LR 3e-4):

* After the zero-out stage the repurposed channel's rows of ``q_proj`` and ``k_proj`` are set to zero, as the
  released code does (``save_stage_one_final_model``), so every decision logit starts at exactly ``-5``.
* ``decision_scale`` (the paper's is 1): ``alpha_logit = decision_scale * k[c] - 5``. Adam moves each weight of
  the decision row by about the LR per step, so the logit moves at most ``LR * |x|_1`` per step, which grows with
  the width: a narrow model's decisions travel far slower than Llama 2's at width 4096. By default the scale is
  ``4096 / d_model`` (the paper's travel per step), at least 1 and at most 8 (the largest measured). With
  the paper's scale the logit travelled from -5.0 to -4.35 over the retrofit; the one-sided auxiliary loss never let
  go, so retrofits to CR 2 and 4 were the same run (CR 1.01 reached; the H200 study of 2026-12-06, d256 and 480
  steps, reached 1.53 / 1.58 / 1.62 for targets 2 / 4 / 8). With scale 8: CR 1.97 for target 2, 2.92 for targets
  4 and 8. The paper's Llama 2 retrofit runs 6,000 + 2,000 steps of 4M tokens. The scale multiplies the decision
  row's step size and nothing else (the channel is faded out of the attention scores; ``omega`` is unscaled); with the
  rows zeroed every logit still starts at ``-5``.

Past that point the limit is the loss, not the travel. Below its target the compression loss is linear in the mean
``alpha``, so its gradient does not depend on the target: a retrofit to 4 and one to 8 are the same run until one of
them reaches its target, and at weight 1 the LM loss balances it first. Measured on the CPU (2026-12-06: a d128 x 4
base of 800 steps at 16 x 128 bytes, 300-step retrofits at batch 8): weight 1 reaches CR 2.60 for targets 4 and 8
alike (2.550 bits/byte against the base's 2.408 after zero-out), weight 4 reaches 3.38 for target 4 (2.581) and 4.60
for target 8 (2.742), weight 16 reaches 5.05 for target 8 (2.806). ``aux_weight`` sets it (paper: 1).

The paper's LR (3e-5) is a tenth of Llama 2's pretraining peak; by default we take a tenth of the base run's
``optim.lr`` (3e-5 when the base is a Hugging Face model).

GQA uptraining (Ainslie et al., 2023): mean-pool each group of ``target_cr`` key/value heads into one, then continue
training for the same budget with the same LR (cosine), so both methods reach the same cache size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from leanformer.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainerConfig,
    atomic_write_text,
    cfg,
    load_run_config,
)
from leanformer.errors import ConfigError, UserError

MAX_DECISION_SCALE = 8.0  # the largest decision scale measured (2026-12-06, d128 on the CPU)


@dataclasses.dataclass(kw_only=True)
class RetrofitConfig:
    target_cr: float = cfg(4.0, ge=1.0, help="goal compression ratio (GQA: an integer dividing the KV heads)")
    budget: int = cfg(1000, ge=3, help="optimizer steps over all stages")
    zero_out_steps: int = cfg(250, ge=0, help="zero-out stage; capped at a fifth of the budget")
    finetune_fraction: float = cfg(0.25, ge=0.0, lt=1.0, help="share of the post-zero-out steps at fixed target")
    lr: float | None = cfg(None, gt=0.0, help="default: base run's optim.lr / 10, or 3e-5 for HF checkpoints")
    final_lr_fraction: float = cfg(0.1, ge=0.0, le=1.0)
    batch_size: int = cfg(16, ge=1)
    seq_len: int | None = cfg(None, ge=1, help="default: the base run's data.seq_len")
    window: int = cfg(12, ge=1, le=256)
    temperature: float = cfg(0.1, gt=0.0)
    aux_weight: float = cfg(1.0, ge=0.0, help="weight of the compression loss relu((1 - 1/CR(t)) - mean alpha) "
                                              "beside the LM loss (paper: 1)")
    decision_scale: float | None = cfg(None, gt=0.0, help="alpha logit = decision_scale * k[channel] - 5 (paper: "
                                       "1); default 4096 / d_model within [1, 8], see the module docstring")
    device: str = "auto"
    eval_every: int = cfg(200, ge=1)
    eval_batches: int = cfg(20, ge=1)
    seed: int = cfg(0, ge=0)
    progress: bool = True

    def scale_for(self, d_model: int) -> float:
        """The decision scale for a base of width ``d_model``: as set, else ``4096 / d_model`` within ``[1, 8]``."""
        return self.decision_scale or min(MAX_DECISION_SCALE, max(1.0, 4096 / d_model))

    def stage_steps(self) -> dict[str, int]:
        zero = min(self.zero_out_steps, self.budget // 5)
        fine = round((self.budget - zero) * self.finetune_fraction)
        return {"zero_out": zero, "retrofit": self.budget - zero - fine, "finetune": fine}


def load_base(path, data: DataConfig | None = None):
    """``(gpt_model, data_config, base_lr)`` from one of our checkpoints/runs or a Hugging Face Llama directory."""
    from leanformer.models.gpt import GPT
    from leanformer.train.checkpoint import load_model, resolve_checkpoint

    p = Path(path)
    if (p / "config.json").is_file() and not (p / "model.json").is_file():
        from transformers import AutoModelForCausalLM

        if data is None:
            raise UserError(f"{p} is a Hugging Face checkpoint: give the training data (--data SOURCE)")
        from leanformer.models.hf import hf_from_pretrained

        model = GPT.from_hf(hf_from_pretrained(AutoModelForCausalLM, p))  # safetensors unless --allow-pickle
        return model, dataclasses.replace(data, tokenizer=f"hf:{p}"), None
    ckpt = resolve_checkpoint(p)
    model = load_model(ckpt)
    if type(model) is not GPT:
        raise UserError(f"{p} holds a {model.family!r} model; DMC retrofitting and GQA uptraining start from 'gpt'")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else p
    run = load_run_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if data is None and run is None:
        raise UserError(f"{p} has no config.yaml beside it: give the training data (--data SOURCE)")
    if run is not None and data is not None:  # keep the run's tokenizer and packing; take only the new text
        data = dataclasses.replace(run.data, source=data.source)
    return model, data or run.data, run.optim.lr if run else None


def _run_config(model_cfg, data: DataConfig, rc: RetrofitConfig, lr: float, steps: int, schedule: str) -> RunConfig:
    if rc.seq_len:
        data = dataclasses.replace(data, seq_len=rc.seq_len)
    return RunConfig(model=model_cfg, data=data, optim=OptimConfig(lr=lr, weight_decay=0.0),
                     schedule=ScheduleConfig(name=schedule, warmup_steps=0, final_lr_fraction=rc.final_lr_fraction),
                     trainer=TrainerConfig(device=rc.device, batch_size=rc.batch_size, max_steps=steps,
                                           eval_every=min(rc.eval_every, steps), ckpt_every=min(rc.eval_every, steps),
                                           eval_batches=rc.eval_batches, log_every=10, progress=rc.progress),
                     seed=rc.seed)


def _train(cfg: RunConfig, out: Path, init_state: dict) -> tuple[dict, dict]:
    from leanformer.train.checkpoint import latest_checkpoint
    from leanformer.train.trainer import Trainer

    trainer = Trainer(cfg, out)
    if latest_checkpoint(out) is None:
        trainer.model.load_state_dict(init_state)
    result = trainer.fit()
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    return result, state


def retrofit(path, out, rc: RetrofitConfig, data: DataConfig | None = None) -> dict:
    """Run the three DMC stages from the base checkpoint ``path`` into ``out``; returns a summary dict."""
    from leanformer.models.dmc import DMC, DMCConfig

    base, data, base_lr = load_base(path, data)
    lr = rc.lr or (base_lr / 10 if base_lr else 3e-5)
    out = Path(out)
    state = base.state_dict()
    fields = dataclasses.asdict(base.config)
    summary = {"method": "dmc", "base": str(path), "target_cr": rc.target_cr, "lr": lr, "stages": {}}
    for stage, steps in rc.stage_steps().items():
        if steps == 0:
            continue
        model_cfg = DMCConfig(**fields, dmc_stage=stage, target_cr=rc.target_cr, window=rc.window,
                              temperature=rc.temperature, aux_weight=rc.aux_weight,
                              decision_scale=rc.scale_for(base.config.d_model))
        if stage == "retrofit":  # decisions start at "always append" whatever the base kept in the channel
            model = DMC(model_cfg)
            model.load_state_dict(state)
            model.clear_decision_channel()
            state = model.state_dict()
        cfg = _run_config(model_cfg, data, rc, lr, steps, "cosine" if stage == "finetune" else "constant")
        result, state = _train(cfg, out if stage == "finetune" else out / "stages" / stage, state)
        summary["stages"][stage] = {"steps": steps, "last_eval": result["last_eval"]}
    atomic_write_text(out / "retrofit.json", json.dumps(summary, indent=2))
    return summary


def mean_pool_kv(model, factor: int):
    """A :class:`GPT` with ``kv_heads / factor`` key/value heads, each the mean of ``factor`` adjacent heads
    (adjacent heads serve adjacent query groups, so every query head keeps attending to its own pooled head)."""
    from leanformer.models.gpt import GPT

    c = model.config
    if factor < 1 or c.kv_heads % factor:
        raise ConfigError(f"GQA factor {factor} must be a positive integer dividing the {c.kv_heads} key/value heads")
    new = GPT(dataclasses.replace(c, n_kv_heads=c.kv_heads // factor))
    sd = dict(model.state_dict())
    for name, w in list(sd.items()):
        if name.endswith(("attn.k_proj.weight", "attn.v_proj.weight")):
            sd[name] = w.view(c.kv_heads // factor, factor, c.head_dim, -1).mean(1).reshape(-1, w.shape[-1])
    new.load_state_dict(sd)
    return new.to(model.embed.weight.dtype)


def gqa_uptrain(path, out, rc: RetrofitConfig, data: DataConfig | None = None) -> dict:
    """Mean-pool key/value heads by ``rc.target_cr`` and continue training for ``rc.budget`` steps into ``out``."""
    base, data, base_lr = load_base(path, data)
    if not float(rc.target_cr).is_integer():
        raise ConfigError(f"target_cr: GQA uptraining needs an integer factor, got {rc.target_cr}")
    pooled = mean_pool_kv(base, int(rc.target_cr))
    lr = rc.lr or (base_lr / 10 if base_lr else 3e-5)
    cfg = _run_config(pooled.config, data, rc, lr, rc.budget, "cosine")
    result, _ = _train(cfg, Path(out), pooled.state_dict())
    summary = {"method": "gqa", "base": str(path), "target_cr": rc.target_cr, "lr": lr,
               "kv_heads": pooled.config.kv_heads, "last_eval": result["last_eval"]}
    atomic_write_text(Path(out) / "retrofit.json", json.dumps(summary, indent=2))
    return summary
