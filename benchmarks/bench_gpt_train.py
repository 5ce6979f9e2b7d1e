"""Training throughput and MFU of the ``gpt`` baseline (about 124M parameters, sequence 1024, bf16, compiled).

Runs the trainer's own step (``model.compute_loss`` under bf16 autocast, ``torch.compile``, clip, fused AdamW) on
random tokens, so data loading is not measured. MFU = achieved FLOP/s / peak bf16 FLOP/s, with FLOPs from
``leanformer.analysis.flops.train_flops_per_token`` (causal attention counted as the pairs actually computed) and
the peak from ``leanformer.train.trainer.PEAK_BF16_FLOPS`` (989.4 TFLOP/s for H100/H200, the datasheet value). The
"PaLM" MFU that charges full (non-causal) attention, as nanoGPT reports it, is recorded beside it.

    PYTHONPATH=src python benchmarks/bench_gpt_train.py --batch-size 32 --steps 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from leanformer.analysis import flops  # noqa: E402
from leanformer.models.gpt import GPT, GPTConfig  # noqa: E402
from leanformer.train.trainer import peak_flops  # noqa: E402


def gpt124m(**kw) -> GPTConfig:
    base = dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024,
                tie_embeddings=True)
    base.update(kw)
    return GPTConfig(**base)


def run_one(batch_size: int, seq_len: int, steps: int, compile_: bool, backend: str = "sdpa",
            mode: str | None = None) -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg = gpt124m(max_seq_len=seq_len, attn_backend=backend)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    loss_fn = torch.compile(model.compute_loss, mode=mode) if compile_ else model.compute_loss
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=device)
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        loss = step()
    end.record()
    torch.cuda.synchronize()
    step_s = start.elapsed_time(end) / 1e3 / steps
    tokens = batch_size * seq_len
    tok_s = tokens / step_s
    fpt = flops.train_flops_per_token(cfg, seq_len)
    n_params = model.num_params()
    palm_fpt = 6 * n_params + 12 * cfg.n_layers * cfg.d_model * seq_len  # nanoGPT's estimate (non-causal)
    peak = peak_flops(device)
    return {
        "params": n_params, "non_embedding_params": model.num_params(non_embedding=True),
        "batch_size": batch_size, "seq_len": seq_len, "compile": compile_, "compile_mode": mode,
        "attn_backend": backend, "steps": steps,
        "step_s": step_s, "tokens_per_s": tok_s, "flops_per_token": fpt, "achieved_tflops": tok_s * fpt / 1e12,
        "mfu": tok_s * fpt / peak if peak else None, "mfu_palm": tok_s * palm_fpt / peak if peak else None,
        "peak_tflops": peak / 1e12 if peak else None, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "warmup_s": warmup_s, "final_loss": float(loss),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--attn-backend", nargs="+", default=["sdpa"], help="GPTConfig.attn_backend values to compare")
    ap.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for backend in args.attn_backend:
        for bs in args.batch_size:
            r = run_one(bs, args.seq_len, args.steps, not args.no_compile, backend, args.mode)
            rows.append(r)
            print(f"{backend:6s} batch {bs:3d} x {args.seq_len}: {r['step_s'] * 1e3:7.1f} ms/step  "
                  f"{r['tokens_per_s']:,.0f} tok/s  MFU {100 * (r['mfu'] or 0):.1f}% "
                  f"(PaLM-style {100 * (r['mfu_palm'] or 0):.1f}%)  peak mem {r['peak_mem_gib']:.1f} GiB", flush=True)
    path = record("gpt_train_mfu", rows)
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
