"""DMC decode throughput: tokens/s at the largest batch whose KV cache fits a fixed memory budget, CR 1/2/4/8.

    PYTHONPATH=src python benchmarks/bench_dmc_decode.py                     # H200: Llama-3.2-1B shape, bf16
    PYTHONPATH=src python benchmarks/bench_dmc_decode.py --tiny --device cpu  # seconds, a smoke test

A Llama-shaped model of ~1.2B parameters (Llama 3.2 1B: d 2048, 16 layers, 32 query / 8 key-value heads of 64,
SwiGLU 8192, vocabulary 128256) with random weights runs DMC attention with decisions forced by position
(``DMC.force_compression``: token ``p`` appends iff ``p % CR == 0``), so every head holds exactly ``context / CR``
slots. Per CR the batch is ``floor(kv_budget / bytes of one sequence's paged cache)``; each sequence starts with
``--context`` tokens already in its cache (written directly, prefill is not timed) and decodes ``--steps`` tokens
greedily. A whole decode step (embedding -> 16 layers with the DMC update and paged attention kernels -> argmax) is
captured in one CUDA graph and replayed, so Python overhead does not hide the memory traffic. ``dense-sdpa`` is a
reference point: the CR-1 batch over a contiguous cache with ``F.scaled_dot_product_attention`` (no paging, no DMC
update). Writes ``dmc_decode-*.json`` with tokens/s, speed-up over CR 1, batch, step time and KV bytes read per
second.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import graphed, record  # noqa: E402

from leanformer.kvcache.dmc_cache import DMCCache  # noqa: E402
from leanformer.models.dmc import DMC, DMCConfig  # noqa: E402

LLAMA_1B = dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                max_seq_len=131072, rope_theta=500000.0, tie_embeddings=True)
TINY = dict(vocab_size=260, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=4096)


def fill_caches(model, batch, cr, args, dtype, device):
    """Caches holding ``context`` tokens per head at ratio ``cr`` (slots written directly) + room for the steps."""
    c = model.config
    p = args.page_size
    slots = math.ceil(args.context / cr)
    now = math.ceil(slots / p)
    total = math.ceil((slots + math.ceil((args.steps + 8) / cr) + 1) / p)
    caches = []
    for _ in range(c.n_layers):
        cache = DMCCache(batch, c.kv_heads, c.head_dim, total * p, page_size=p, n_pages=batch * c.kv_heads * total,
                         window=c.window, dtype=dtype, device=device, impl=args.impl)
        cache.k_pages.normal_()
        cache.v_pages.normal_()
        heads = torch.arange(batch * c.kv_heads, device=device).view(batch, c.kv_heads, 1)
        cache.page_table[..., :now] = (heads * now + torch.arange(now, device=device)).to(torch.int32)
        cache.next_page.fill_(batch * c.kv_heads * now)
        cache.lengths.fill_(slots)
        cache.run.fill_(args.context - cr * (slots - 1))
        cache.acc_k.normal_()
        cache.acc_v.normal_()
        cache.acc_w.fill_(1.0)
        caches.append(cache)
    return caches


def decode_step(model, caches, tok, pos):
    """One greedy step for every sequence; ``tok [B, 1]`` and the 0-d ``pos`` are updated in place."""
    x = model.embed(tok)
    cos, sin = model.rotary(pos.view(1), dtype=x.dtype)
    b = tok.shape[0]
    for layer, cache in zip(model.layers, caches):
        a = layer.attn
        q, k, v, logit, omega = a.project(layer.attn_norm(x), cos, sin, pos)
        y = a.decode(q, k, v, logit, omega, cache) if cache is not None else dense_attend(a, q, k, v, pos)
        x = x + a.o_proj(y.transpose(1, 2).reshape(b, 1, -1))
        x = x + layer.mlp(layer.mlp_norm(x))
    tok.copy_(model.lm_head(model.norm(x)).argmax(-1))
    pos.add_(1)


def dense_attend(a, q, k, v, pos):
    """Reference: SDPA over a fixed-length contiguous cache (the new token overwrites the last position)."""
    a.k_cache[:, :, -1:] = k
    a.v_cache[:, :, -1:] = v
    return F.scaled_dot_product_attention(q, a.k_cache, a.v_cache, enable_gqa=True)


def measure(model, caches, batch, args, device):
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
    pos = torch.tensor(args.context, device=device)
    fn = lambda: decode_step(model, caches, tok, pos)  # noqa: E731
    if device.type == "cuda" and not args.no_graph:
        fn = graphed(fn)  # the bound replay keeps the graph alive
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    for c in caches:
        if c is not None:
            c.check()
    del fn  # releases the captured graph (and its memory pool) before the next configuration
    return dt


def run_config(model, cr, args, dtype, device) -> dict:
    c = model.config
    ratio = 1 if cr == "dense" else cr
    per_head = math.ceil((math.ceil(args.context / ratio) + math.ceil((args.steps + 8) / ratio) + 1) / args.page_size)
    seq_bytes = c.n_layers * c.kv_heads * per_head * args.page_size * c.head_dim * 2 * dtype.itemsize
    batch = min(args.max_batch, int(args.kv_gib * 2**30 // seq_bytes))
    if batch < 1:
        raise SystemExit(f"--kv-gib {args.kv_gib} cannot hold one sequence at CR {cr}")
    if cr == "dense":
        for a in model.attns():
            shape = (batch, c.kv_heads, args.context, c.head_dim)
            a.k_cache = torch.randn(shape, device=device, dtype=dtype)
            a.v_cache = torch.randn(shape, device=device, dtype=dtype)
        caches = [None] * c.n_layers
        model.force_compression(1)
    else:
        caches = fill_caches(model, batch, cr, args, dtype, device)
        model.force_compression(cr)
    dt = measure(model, caches, batch, args, device)
    kv_read = c.n_layers * c.kv_heads * math.ceil(args.context / ratio) * c.head_dim * 2 * dtype.itemsize * batch
    for a in model.attns():
        a.k_cache = a.v_cache = None
    del caches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"cr": cr, "batch": batch, "step_ms": dt * 1e3, "tokens_per_s": batch / dt,
            "kv_bytes_per_step": kv_read, "kv_read_gb_per_s": kv_read / dt / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--context", type=int, default=16384, help="tokens already in each sequence's cache")
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps")
    ap.add_argument("--kv-gib", type=float, default=64.0, help="memory budget of the KV cache")
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--page-size", type=int, default=128)
    ap.add_argument("--impl", default="auto", choices=("auto", "triton", "reference"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense SDPA reference point")
    ap.add_argument("--tiny", action="store_true", help="tiny model and cache (CPU smoke test)")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else LLAMA_1B
    if args.tiny:
        args.context, args.steps, args.kv_gib, args.page_size = 96, 4, 2 / 1024, 16
    torch.manual_seed(0)
    with torch.device(device):
        model = DMC(DMCConfig(**shape, dmc_stage="finetune")).to(dtype).eval()
    print(f"model: {model.num_params() / 1e9:.2f}B parameters, {dtype}, context {args.context}", flush=True)
    rows = []
    with torch.no_grad():
        for cr in ([] if args.no_dense else ["dense"]) + args.crs:
            row = run_config(model, cr, args, dtype, device)
            rows.append(row)
            print(f"CR {cr}: batch {row['batch']}, {row['step_ms']:.2f} ms/step, {row['tokens_per_s']:,.0f} tok/s, "
                  f"KV read {row['kv_read_gb_per_s']:.0f} GB/s", flush=True)
    base = next((r["tokens_per_s"] for r in rows if r["cr"] == 1), None)
    for r in rows:
        r["speedup_vs_cr1"] = r["tokens_per_s"] / base if base else None
    print("| CR | batch | ms/step | tokens/s | x CR 1 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cr']} | {r['batch']} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['speedup_vs_cr1'] or float('nan'):.2f} |")
    settings = {k: getattr(args, k) for k in ("context", "steps", "kv_gib", "page_size", "impl", "no_graph")}
    path = record("dmc_decode", {"model": shape, "params": model.num_params(), "dtype": str(dtype), **settings,
                                 "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
