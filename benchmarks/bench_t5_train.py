"""T5 v1.1 base training step: leanformer's ``T5`` vs ``transformers.T5ForConditionalGeneration``, same batch,
same weights, same optimizer, same run (nanoT5, Nawrot, 2023: 0.56 s/step on an A100, batch 128 x 512).

One step = forward + backward of span-corruption batches (128 x 512 inputs, 128 x 114 targets by default; random
token ids, so data loading is not measured) under bf16 autocast, grad-norm clip 1.0 and an AdamWScale step
(``foreach``; nanoT5's per-tensor loop is timed separately as ``optimizer_loop_s``). Both models start from the same
weights (``T5.to_hf``), so their first losses must agree: ``first_loss`` is recorded per model. MFU = FLOPs per
step (:func:`leanformer.analysis.flops.train_flops_per_token`, encoder + decoder + cross-attention + LM head, matmuls
only) / step time / peak bf16 FLOP/s (``PEAK_BF16_FLOPS``).

    PYTHONPATH=src python benchmarks/bench_t5_train.py                 # H200: ~4-6 min (two compiles)
    PYTHONPATH=src python benchmarks/bench_t5_train.py --tiny --device cpu   # quick check of the script
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpu_profile, record  # noqa: E402

from leanformer.analysis.flops import train_flops_per_token  # noqa: E402
from leanformer.data.span_corruption import (  # noqa: E402
    compute_input_and_target_lengths,
    random_spans_noise_mask,
    span_corrupt,
)
from leanformer.models.t5 import T5, T5Config  # noqa: E402
from leanformer.train.optim.adamw_scale import AdamWScale  # noqa: E402
from leanformer.train.trainer import peak_flops  # noqa: E402

NANOT5_A100_S_PER_STEP = 0.56


def make_batch(cfg: T5Config, batch: int, seq_len: int, device) -> dict:
    raw, _ = compute_input_and_target_lengths(seq_len, cfg.objective.noise_density,
                                              cfg.objective.mean_noise_span_length)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 32000 if cfg.vocab_size > 32000 else cfg.vocab_size - 100, size=(batch, raw))
    mask = random_spans_noise_mask(rng, batch, raw)
    x, y = span_corrupt(tokens, mask, sentinel_top=cfg.vocab_size - 29 if cfg.vocab_size == 32128 else
                        cfg.vocab_size - 1, eos_id=1)
    return {"input_ids": torch.from_numpy(x).to(device), "labels": torch.from_numpy(y).to(device)}


def time_steps(loss_fn, model, batch, steps: int, warmup: int, device, bf16: bool, grad_accum: int,
               profile_as: str | None = None) -> dict:
    opt = AdamWScale(model.parameters(), lr=2e-2)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    micro = [{k: v.chunk(grad_accum)[i] for k, v in batch.items()} for i in range(grad_accum)]
    losses = []

    def step():
        total = 0.0
        for mb in micro:
            with ctx():
                loss = loss_fn(mb)
            (loss / grad_accum).backward()
            total = total + loss.detach() / grad_accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        losses.append(float(step()))
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    out = {"step_s": step_s, "warmup_s": warmup_s, "first_loss": losses[0], "last_loss": float(last)}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if profile_as:
            gpu_profile(step, f"one training step: {profile_as}", "t5_profile.txt", row_limit=25)
    return out


def optimizer_times(model, device, repeat: int = 5) -> dict:
    """Seconds per AdamWScale step over the model's parameters: foreach vs nanoT5's per-tensor loop."""
    out = {}
    for name, foreach in (("optimizer_foreach_s", True), ("optimizer_loop_s", False)):
        opt = AdamWScale(model.parameters(), lr=1e-6, foreach=foreach)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / repeat
        model.zero_grad(set_to_none=True)
        del opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--grad-accum", type=int, default=1, help="split the batch into micro-batches")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["compiled", "eager"], choices=["compiled", "eager"])
    ap.add_argument("--models", nargs="+", default=["leanformer", "transformers"],
                    choices=["leanformer", "transformers"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny config for a quick CPU check")
    ap.add_argument("--profile", action="store_true", help="top GPU ops of one step per model -> $OUT/t5_profile.txt")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, n_layers=2, n_heads=4) if args.tiny else T5Config()
    if args.tiny:
        args.batch_size, args.seq_len, args.steps, args.warmup = 4, 64, 2, 1
    torch.manual_seed(0)
    ours = T5(cfg)
    batch = make_batch(cfg, args.batch_size, args.seq_len, device)
    tgt_len = batch["labels"].shape[1]
    flops_step = train_flops_per_token(cfg, args.seq_len) * args.seq_len * args.batch_size
    peak = peak_flops(device)
    rows = []
    for mode in args.modes:
        for name in args.models:
            torch.manual_seed(0)  # every run starts from the same weights
            fresh = T5(cfg)
            model = (fresh.to_hf() if name == "transformers" else fresh).to(device).train()
            if name == "transformers":
                def fn(b, m=model):
                    return m(input_ids=b["input_ids"], labels=b["labels"]).loss
                impl = getattr(model.config, "_attn_implementation", None)
            else:
                def fn(b, m=model):
                    return m.compute_loss(b)[0]
                impl = "sdpa"
            loss_fn = torch.compile(fn) if mode == "compiled" else fn
            try:
                r = time_steps(loss_fn, model, batch, args.steps, args.warmup, device, device.type == "cuda",
                               args.grad_accum, f"{name} {mode}" if args.profile else None)
            except torch.OutOfMemoryError as e:
                r = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            r.update({"model": name, "mode": mode, "attn_implementation": impl, "params": ours.num_params(),
                      "batch_size": args.batch_size, "seq_len": args.seq_len, "target_len": tgt_len,
                      "grad_accum": args.grad_accum, "flops_per_step": flops_step})
            if "step_s" in r:
                r["tflops"] = flops_step / r["step_s"] / 1e12
                r["mfu"] = flops_step / r["step_s"] / peak if peak else None
                r["speedup_vs_nanoT5_A100"] = NANOT5_A100_S_PER_STEP / r["step_s"]
            rows.append(r)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            del model, fresh, loss_fn
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
    opt_t = optimizer_times(ours.to(device), device)
    for mode in args.modes:
        by = {r["model"]: r for r in rows if r["mode"] == mode and "step_s" in r}
        if len(by) == 2:
            s = by["transformers"]["step_s"] / by["leanformer"]["step_s"]
            print(f"{mode}: leanformer {by['leanformer']['step_s']:.4f} s/step, transformers "
                  f"{by['transformers']['step_s']:.4f} s/step -> {s:.2f}x; vs nanoT5 A100 0.56 s/step: "
                  f"{NANOT5_A100_S_PER_STEP / by['leanformer']['step_s']:.2f}x")
    print(opt_t)
    path = record("t5_train_step", {"rows": rows, **opt_t, "nanoT5_A100_s_per_step": NANOT5_A100_S_PER_STEP})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
