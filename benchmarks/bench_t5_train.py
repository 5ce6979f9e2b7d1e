"""T5 v1.1 base training step: leanformer's ``T5`` vs ``transformers.T5ForConditionalGeneration``, same batch,
same weights, same optimizer, same run (nanoT5, Nawrot, 2023: 0.56 s/step on an A100, batch 128 x 512).

One step = forward + backward of span-corruption batches (128 x 512 inputs, 128 x 114 targets by default; random
token ids, so data loading is not measured) under bf16 autocast, grad-norm clip 1.0 and an AdamWScale step
(``foreach``; nanoT5's per-tensor loop is timed separately as ``optimizer_loop_s``). Both models start from the same
weights (``T5.to_hf``), so their first losses must agree: ``first_loss`` is recorded per model. MFU = FLOPs per
step (:func:`leanformer.analysis.flops.train_flops_per_token`, encoder + decoder + cross-attention + LM head, matmuls
only) / step time / peak bf16 FLOP/s (``PEAK_BF16_FLOPS``).

``--attn sdpa_split sdpa flex`` gives one leanformer row per ``T5Config.attn_impl`` (transformers runs once per mode,
right after the first leanformer row). ``sdpa_split`` hands SDPA the bias detached (cuDNN runs) and computes the
bias gradient with :mod:`leanformer.models.bias_grad`'s kernels.
``--compile-optimizer`` runs clipping and the optimizer update as one compiled graph, for both models alike
(:func:`compiled_clip_and_step`); its agreement with the eager AdamWScale is checked first and recorded.
``--sdpa-check`` first records which SDPA kernels can run each attention call of both models (:func:`sdpa_backends`).

    PYTHONPATH=src python benchmarks/bench_t5_train.py --modes compiled --attn sdpa flex --compile-optimizer
    PYTHONPATH=src python benchmarks/bench_t5_train.py --tiny --device cpu --compile-optimizer   # script check
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gpu_profile, record, utc_stamp  # noqa: E402

from leanformer.analysis.flops import train_flops_per_token  # noqa: E402
from leanformer.data.span_corruption import (  # noqa: E402
    compute_input_and_target_lengths,
    random_spans_noise_mask,
    span_corrupt,
)
from leanformer.models.t5 import ATTN_IMPLS, T5, T5Config  # noqa: E402
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


def compiled_clip_and_step(params: list[torch.Tensor], opt: AdamWScale, max_norm: float = 1.0):
    """``step()``: ``clip_grad_norm_`` + ``opt.step()`` (one param group, foreach) as one ``torch.compile`` graph.

    AdamWScale counts steps in a Python int, which dynamo specialises on (a recompile every step, then eager after
    the recompile limit), so the graph holds the optimizer's own :meth:`AdamWScale.foreach_direction` times the
    bias-corrected step size as a 0-dim device tensor refilled outside the graph; the state (``exp_avg``,
    ``exp_avg_sq``, ``step``) stays the optimizer's.
    :func:`check_compiled_optimizer` compares it with ``opt.step()``."""
    (group,) = opt.param_groups
    if group["weight_decay"]:
        raise ValueError("compiled_clip_and_step replays AdamWScale without weight decay (nanoT5 uses none)")
    for p in params:
        opt.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    step_size = torch.zeros((), device=params[0].device)
    opt._rms_scales(params)  # builds its per-tensor constants now, not inside the graph (no recompile)

    @torch.compile
    @torch.no_grad()
    def update():
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        upd = opt.foreach_direction(group, params)
        torch._foreach_mul_(upd, step_size)
        torch._foreach_sub_(params, upd)

    def step():
        t = opt.state[params[0]]["step"] + 1
        for p in params:
            opt.state[p]["step"] = t
        step_size.fill_(opt._step_size(group, t))
        update()

    return step


def check_compiled_optimizer(device, steps: int = 3) -> float:
    """Max |difference| of a tiny T5's parameters after ``steps`` clipped AdamWScale steps, eager vs compiled."""
    out = []
    for compiled in (False, True):
        torch.manual_seed(0)
        m = T5(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24, n_layers=1, n_heads=2)).to(device)
        params = list(m.parameters())
        opt = AdamWScale(params, lr=2e-2)
        step = compiled_clip_and_step(params, opt) if compiled else None
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            for p in params:
                p.grad = (torch.randn(p.shape, generator=g) * 0.3).to(device)
            if compiled:
                step()
            else:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
        out.append([p.detach().clone() for p in params])
    return max(float((a - b).abs().max()) for a, b in zip(*out))


def time_steps(loss_fn, model, batch, steps: int, warmup: int, device, bf16: bool, grad_accum: int,
               profile_as: str | None = None, compile_optimizer: bool = False) -> dict:
    opt = AdamWScale(model.parameters(), lr=2e-2)
    params = [p for p in model.parameters() if p.requires_grad]
    if compile_optimizer:
        clip_and_step = compiled_clip_and_step(params, opt)
    else:
        def clip_and_step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
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
        clip_and_step()
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


def optimizer_times(model, device, compiled: bool, repeat: int = 5) -> dict:
    """Seconds per AdamWScale step over the model's parameters: foreach vs nanoT5's per-tensor loop, and (with
    ``compiled``) clipping + foreach step as one compiled graph."""
    out = {}
    kinds = [("optimizer_foreach_s", True), ("optimizer_loop_s", False)]
    for name, foreach in kinds + ([("optimizer_compiled_clip_step_s", "compiled")] if compiled else []):
        params = list(model.parameters())
        opt = AdamWScale(params, lr=1e-6, foreach=foreach is not False)
        step = compiled_clip_and_step(params, opt) if foreach == "compiled" else opt.step
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / repeat
        model.zero_grad(set_to_none=True)
        del opt
    return out


def sdpa_backends(forward, device) -> list[dict]:
    """Which SDPA kernel can run each distinct attention call of one training step (forward + backward, bf16
    autocast): every call of an eager ``forward()`` is captured, then replayed alone under each backend with fresh
    leaf inputs. A backend PyTorch cannot use there raises, and the first line of its reason is kept. (The H200 profile
    results/t5_profile-20261129T052029Z.txt showed an fp32 math-path attention; this says which call, and why the fused
    kernels refused it.)"""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    calls, real = {}, F.scaled_dot_product_attention

    def capture(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        key = (tuple(q.shape), tuple(k.shape), None if attn_mask is None else tuple(attn_mask.shape), is_causal)
        if key not in calls:
            calls[key] = (q.detach(), k.detach(), v.detach(),
                          None if attn_mask is None else (attn_mask.detach(), attn_mask.requires_grad,
                                                          attn_mask.stride()), is_causal, scale)
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

    F.scaled_dot_product_attention = capture
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            forward()
    finally:
        F.scaled_dot_product_attention = real
    rows = []
    for (qs, ks, ms, causal), (q, k, v, mask, _, scale) in calls.items():
        row = {"q": list(qs), "k": list(ks), "mask": None if ms is None else list(ms), "is_causal": causal,
               "dtype": str(q.dtype).replace("torch.", "")}
        if mask is not None:
            row.update(mask_requires_grad=mask[1], mask_stride=list(mask[2]), mask_dtype=str(mask[0].dtype))
        for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
            backend = getattr(SDPBackend, name, None)
            if backend is None:
                continue
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            m = None
            if mask is not None:
                m = mask[0].clone().requires_grad_(mask[1])
            try:
                with sdpa_kernel(backend):
                    out = real(*leaves, attn_mask=m, is_causal=causal, scale=scale)
                    out.float().sum().backward()
                row[name.lower()] = "ok"
            except RuntimeError as e:
                row[name.lower()] = str(e).strip().splitlines()[0][:200]
        rows.append(row)
        print(row, flush=True)
    return rows


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
    ap.add_argument("--attn", nargs="+", choices=ATTN_IMPLS, default=None,
                    help="leanformer rows, one per T5Config.attn_impl (default: sdpa_split sdpa flex on CUDA, "
                    "sdpa_split sdpa on CPU: FlexAttention has no CPU backward)")
    ap.add_argument("--compile-optimizer", action="store_true",
                    help="clip + optimizer step as one torch.compile graph, for both models")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny config for a quick CPU check")
    ap.add_argument("--profile", action="store_true", help="top GPU ops of one step per model -> $OUT/t5_profile.txt")
    ap.add_argument("--sdpa-check", action="store_true",
                    help="first report which SDPA kernels can run each attention call of both models (recorded)")
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
    attns = args.attn or (["sdpa_split", "sdpa", "flex"] if device.type == "cuda" else ["sdpa_split", "sdpa"])
    extra = {}
    if args.sdpa_check:  # both models: transformers' T5 builds its position bias the same way
        torch.manual_seed(0)
        check = T5(cfg).to(device).train()
        hf = check.to_hf().to(device).train()
        extra["sdpa_backends"] = {
            "leanformer": sdpa_backends(lambda: check.compute_loss(batch), device),
            "transformers": sdpa_backends(lambda: hf(input_ids=batch["input_ids"], labels=batch["labels"]), device)}
        del check, hf
    if args.compile_optimizer:
        extra["compiled_optimizer_max_abs_diff"] = diff = check_compiled_optimizer(device)
        print(f"compiled clip + AdamWScale vs eager: max |param difference| {diff:.2e} after 3 steps", flush=True)
    # the first leanformer row, then transformers, then the other leanformer rows: a run cut by its time limit
    # still holds the side-by-side comparison
    runs = [("leanformer", a) for a in attns if "leanformer" in args.models]
    runs[1:1] = [("transformers", None)] if "transformers" in args.models else []
    rows, stamp = [], utc_stamp()
    for mode in args.modes:
        for name, attn in runs:
            torch.manual_seed(0)  # every run starts from the same weights
            fresh = T5(dataclasses.replace(cfg, attn_impl=attn or "sdpa"))
            model = (fresh.to_hf() if name == "transformers" else fresh).to(device).train()
            if name == "transformers":
                def fn(b, m=model):
                    return m(input_ids=b["input_ids"], labels=b["labels"]).loss
                impl = getattr(model.config, "_attn_implementation", None)
            else:
                def fn(b, m=model):
                    return m.compute_loss(b)[0]
                impl = attn
            loss_fn = torch.compile(fn) if mode == "compiled" else fn
            try:
                r = time_steps(loss_fn, model, batch, args.steps, args.warmup, device, device.type == "cuda",
                               args.grad_accum, f"{name} {impl} {mode}" if args.profile else None,
                               args.compile_optimizer)
            except torch.OutOfMemoryError as e:
                r = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            except Exception as e:  # e.g. FlexAttention's backward on CPU: the row records why, the others run
                r = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
            r.update({"model": name, "mode": mode, "attn_implementation": impl,
                      "compile_optimizer": args.compile_optimizer, "params": ours.num_params(),
                      "batch_size": args.batch_size, "seq_len": args.seq_len, "target_len": tgt_len,
                      "grad_accum": args.grad_accum, "flops_per_step": flops_step})
            if "step_s" in r:
                r["tflops"] = flops_step / r["step_s"] / 1e12
                r["mfu"] = flops_step / r["step_s"] / peak if peak else None
                r["speedup_vs_nanoT5_A100"] = NANOT5_A100_S_PER_STEP / r["step_s"]
            rows.append(r)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            # after every run: a benchmark cut short by its time limit keeps what it measured
            record("t5_train_step", {"rows": rows, **extra, "complete": False,
                                     "nanoT5_A100_s_per_step": NANOT5_A100_S_PER_STEP}, stamp=stamp)
            del model, fresh, loss_fn
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
    opt_t = optimizer_times(ours.to(device), device, args.compile_optimizer)
    for mode in args.modes:
        ok = [r for r in rows if r["mode"] == mode and "step_s" in r]
        hf = next((r for r in ok if r["model"] == "transformers"), None)
        for r in ok:
            if r["model"] == "leanformer" and hf is not None:
                print(f"{mode} ({r['attn_implementation']}): leanformer {r['step_s']:.4f} s/step, transformers "
                      f"{hf['step_s']:.4f} s/step -> {hf['step_s'] / r['step_s']:.2f}x; vs nanoT5 A100 0.56 "
                      f"s/step: {NANOT5_A100_S_PER_STEP / r['step_s']:.2f}x")
    print(opt_t)
    path = record("t5_train_step", {"rows": rows, **opt_t, **extra, "complete": True,
                                    "nanoT5_A100_s_per_step": NANOT5_A100_S_PER_STEP}, stamp=stamp)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
