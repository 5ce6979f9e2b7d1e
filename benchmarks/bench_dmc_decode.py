"""DMC decode throughput: tokens/s at the largest batch whose KV cache fits a fixed memory budget, CR 1/2/4/8.

    PYTHONPATH=src python benchmarks/bench_dmc_decode.py                     # one GPU: Llama-3.2-1B shape, bf16
    PYTHONPATH=src python benchmarks/bench_dmc_decode.py --plan              # the batch arithmetic only (no GPU)
    PYTHONPATH=src python benchmarks/bench_dmc_decode.py --tiny --device cpu  # seconds, a smoke test

A Llama-shaped model of ~1.2B parameters (Llama 3.2 1B: d 2048, 16 layers, 32 query / 8 key-value heads of 64,
SwiGLU 8192, vocabulary 128256) with random weights runs DMC attention with decisions forced by position
(``DMC.force_compression``: token ``p`` appends iff ``p % CR == 0``), so every head holds exactly ``context / CR``
slots. Per row the batch is ``floor(kv_budget / bytes of one sequence's paged cache)`` (:func:`batch_fit`: whole
pages per head, with room for the timed steps); each sequence starts with ``--context`` tokens already in its cache
(written directly, prefill is not timed) and decodes ``--steps`` tokens greedily. A whole decode step (embedding ->
16 layers with the DMC update and paged attention kernels -> argmax) is captured in one CUDA graph and replayed, so
Python overhead does not hide the memory traffic; the elementwise steps between the matrix products are fused by
``torch.compile`` as in the inference engine (``--compile off`` runs them eagerly).

Rows: ``dense`` (reference: the CR-1 batch over a contiguous cache with ``F.scaled_dot_product_attention``, no
paging, no DMC update), DMC at each ``--crs``, and ``--combined GxC`` rows: DMC at ratio ``C`` on a GQA base with
``G`` times fewer key/value heads (the paper's GQA + DMC; ``2x4`` = 4 key/value heads, 8x fewer slots than CR 1).
``--streams 2`` also runs each row as two half batches on two CUDA streams in the same graph, so one half's
matrix products can overlap the other half's memory-bound attention. Per row the attention kernel alone is timed
too (``attn_ms``: 16 layers' worth), which splits a step into KV reading and the rest (matrix products grow with the
batch). Writes ``dmc_decode-*.json`` (rewritten after every row) with tokens/s, speed-up over CR 1, batch, step
time and KV bytes read per second.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, gpu_profile, graphed, record, utc_stamp  # noqa: E402

from leanformer.infer.layers import Fused  # noqa: E402
from leanformer.kvcache import dmc_kernels as K  # noqa: E402
from leanformer.kvcache.dmc_cache import DMCCache  # noqa: E402
from leanformer.models.dmc import DMC, DMCConfig  # noqa: E402

LLAMA_1B = dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                max_seq_len=131072, rope_theta=500000.0, tie_embeddings=True)
TINY = dict(vocab_size=260, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=4096)


@dataclass(frozen=True)
class Row:
    """One configuration: ``cr`` 0 is the dense reference; ``gqa`` divides the key/value heads."""

    cr: int
    gqa: int = 1
    streams: int = 1

    @property
    def label(self) -> str:
        name = "dense" if self.cr == 0 else f"gqa{self.gqa}+dmc{self.cr}" if self.gqa > 1 else str(self.cr)
        return name + (f" x{self.streams} streams" if self.streams > 1 else "")


def batch_fit(shape: dict, kv_heads: int, cr: int, context: int, steps: int, page: int, kv_gib: float) -> dict:
    """Sequences that fit ``kv_gib``: every (layer, key/value head) holds ``ceil(context / cr)`` slots plus room for
    ``steps + 8`` more tokens, in whole pages of ``page`` slots."""
    head_dim = shape["d_model"] // shape["n_heads"]
    slots = math.ceil(context / cr) + math.ceil((steps + 8) / cr) + 1
    pages = math.ceil(slots / page)
    seq_bytes = shape["n_layers"] * kv_heads * pages * page * head_dim * 2 * 2  # K and V, bf16
    return {"slots_per_head": slots, "pages_per_head": pages, "padding": pages * page / slots - 1,
            "seq_bytes": seq_bytes, "batch": int(kv_gib * 2**30 // seq_bytes)}


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
                         window=c.window, dtype=dtype, device=device, impl=args.impl, decode_block=args.decode_block)
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


def decode_step(model, caches, tok, pos, f: Fused):
    """One greedy step for every sequence; ``tok [B, 1]`` and the 0-d ``pos`` are updated in place. The layer
    order of :class:`~leanformer.infer.layers.DecoderStack` (the repository's inference engine): each residual add
    rides on the next RMSNorm and SiLU x up is one pass, fused when ``f`` is compiled."""
    c = model.config
    h = model.embed(tok)  # the residual stream (B, 1, d)
    cos, sin = model.rotary(pos.view(1), dtype=h.dtype)
    b = tok.shape[0]
    x = f.rms_norm(h, model.layers[0].attn_norm.weight, c.norm_eps)
    for i, (layer, cache) in enumerate(zip(model.layers, caches)):
        a = layer.attn
        q, k, v, logit, omega = a.project(x, cos, sin, pos)
        y = a.decode(q, k, v, logit, omega, cache) if isinstance(cache, DMCCache) else dense_attend(q, k, v, cache)
        x, h = f.add_rms_norm(a.o_proj(y.transpose(1, 2).reshape(b, 1, -1)), h, layer.mlp_norm.weight, c.norm_eps)
        m = layer.mlp
        nxt = model.layers[i + 1].attn_norm.weight if i + 1 < len(model.layers) else model.norm.weight
        x, h = f.add_rms_norm(m.down(f.silu_mul(m.gate(x), m.up(x))), h, nxt, c.norm_eps)
    tok.copy_(model.lm_head(x).argmax(-1))
    pos.add_(1)


def dense_attend(q, k, v, cache):
    """Reference: SDPA over a fixed-length contiguous cache ``(k, v)`` (the new token overwrites the last slot)."""
    kc, vc = cache
    kc[:, :, -1:] = k
    vc[:, :, -1:] = v
    return F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)


def on_streams(fns, device):
    """Run ``fns`` on their own CUDA streams (joined at the end), so a graph captures them as parallel branches."""
    if device.type != "cuda" or len(fns) == 1:
        return lambda: [f() for f in fns]
    streams = [torch.cuda.Stream(device) for _ in fns]

    def run():
        cur = torch.cuda.current_stream(device)
        for s, f in zip(streams, fns):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                f()
        for s in streams:
            cur.wait_stream(s)
    return run


def make_caches(model, row, batch, args, dtype, device):
    c = model.config
    if row.cr == 0:
        shape = (batch, c.kv_heads, args.context, c.head_dim)
        return [(torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype))
                for _ in range(c.n_layers)]
    return fill_caches(model, batch, row.cr, args, dtype, device)


def run_row(model, row: Row, args, dtype, device) -> dict:
    c = model.config
    fit = batch_fit(args.shape, c.kv_heads, max(row.cr, 1), args.context, args.steps, args.page_size, args.kv_gib)
    batch = min(args.max_batch, fit["batch"])
    if batch < row.streams:
        raise SystemExit(f"--kv-gib {args.kv_gib} cannot hold {row.streams} sequence(s) for row {row.label}")
    model.force_compression(max(row.cr, 1))
    parts = [batch // row.streams + (i < batch % row.streams) for i in range(row.streams)]
    groups = []
    for b in parts:
        tok = torch.randint(0, c.vocab_size, (b, 1), device=device)
        groups.append((make_caches(model, row, b, args, dtype, device), tok, torch.tensor(args.context, device=device)))
    fns = [lambda g=g: decode_step(model, *g, args.fused) for g in groups]
    fn = on_streams(fns, device)
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
    slots = math.ceil(args.context / max(row.cr, 1))
    kv_read = c.n_layers * c.kv_heads * slots * c.head_dim * 2 * dtype.itemsize * batch
    # matrix-product work grows with the batch while the KV bytes per step stay the same across rows
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    out = {"label": row.label, "cr": row.cr or "dense", "gqa": row.gqa, "kv_heads": c.kv_heads,
           "total_cr": max(row.cr, 1) * row.gqa, "streams": row.streams, "batch": batch, **fit,
           "step_ms": dt * 1e3, "tokens_per_s": batch / dt, "kv_bytes_per_step": kv_read,
           "kv_read_gb_per_s": kv_read / dt / 1e9, "linear_tflop_per_step": 2 * linear * batch / 1e12}
    caches = groups[0][0]
    if isinstance(caches[0], DMCCache):
        for cache in caches:
            cache.check()
        if device.type == "cuda" and row.streams == 1:  # the paged attention kernel alone, one layer x n_layers
            q = torch.randn(batch, c.n_heads, c.head_dim, device=device, dtype=dtype)
            attn = bench(lambda: caches[0].attend(q), warmup=2, repeat=10) * c.n_layers
            out.update(attn_ms=attn * 1e3, rest_ms=(dt - attn) * 1e3, attn_kv_gb_per_s=kv_read / attn / 1e9)
            tuned = getattr(K, "_decode_tuned", None)
            if args.decode_block is None and getattr(tuned, "best_config", None) is not None:
                out["decode_config"] = str(tuned.best_config)  # the autotuner's pick for this row's shape
    if args.profile and device.type == "cuda" and row.streams == 1:
        gpu_profile(fns[0], f"{row.label}: batch {batch}, one eager step", "dmc_decode_profile.txt")
    return out  # the captured graph and its memory pool go with this frame


def parse_rows(args) -> list[Row]:
    rows = [] if args.no_dense else [Row(0)]
    rows += [Row(cr) for cr in args.crs]
    for spec in args.combined:
        g, _, cr = spec.partition("x")
        if not (g.isdigit() and cr.isdigit() and int(g) >= 1 and args.shape["n_kv_heads"] % int(g) == 0):
            raise SystemExit(f"--combined {spec!r}: give GxC, G dividing the {args.shape['n_kv_heads']} "
                             "key/value heads and C a DMC ratio (e.g. 2x4)")
        rows.append(Row(int(cr), gqa=int(g)))
    return [Row(r.cr, r.gqa, s) for s in args.streams for r in rows if s == 1 or r.cr != 0]


def plan(args, rows: list[Row]) -> None:
    """Print what each row's batch is under page sizes 128 and ``--page-size`` (no model, no device)."""
    print("| row | page | slots/head | pages/head | padding | batch | batch / CR-1 batch |")
    print("|---|---|---|---|---|---|---|")
    for page in sorted({128, args.page_size}, reverse=True):
        fits = {r: batch_fit(args.shape, args.shape["n_kv_heads"] // r.gqa, max(r.cr, 1), args.context, args.steps,
                             page, args.kv_gib) for r in rows if r.streams == 1}
        base = fits.get(Row(1), next(iter(fits.values())))["batch"]
        for r, f in fits.items():
            print(f"| {r.label} | {page} | {f['slots_per_head']} | {f['pages_per_head']} | {f['padding']:.1%} | "
                  f"{f['batch']} | {f['batch'] / base:.3f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--combined", nargs="*", default=["2x4"], help="GxC rows: GQA factor G (fewer key/value "
                    "heads) with DMC ratio C")
    ap.add_argument("--streams", type=int, nargs="+", default=[1], help="also run rows as this many concurrent "
                    "micro-batches (e.g. 1 2)")
    ap.add_argument("--context", type=int, default=16384, help="tokens already in each sequence's cache")
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps")
    ap.add_argument("--kv-gib", type=float, default=64.0, help="memory budget of the KV cache")
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--page-size", type=int, default=16, help="slots per page (power of two >= 16)")
    ap.add_argument("--decode-block", type=int, default=None, help="decode tile in slots (default: autotuned)")
    ap.add_argument("--impl", default="auto", choices=("auto", "triton", "reference"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="fuse the elementwise steps "
                    "(norms, residual adds, SiLU x up) with torch.compile; auto: on CUDA")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense SDPA reference point")
    ap.add_argument("--profile", action="store_true", help="top GPU kernels of one eager step per row, to "
                    "$OUT/dmc_decode_profile.txt")
    ap.add_argument("--plan", action="store_true", help="print each row's batch arithmetic and exit")
    ap.add_argument("--tiny", action="store_true", help="tiny model and cache (CPU smoke test)")
    args = ap.parse_args()
    args.shape = TINY if args.tiny else LLAMA_1B
    if args.tiny:
        args.context, args.steps, args.kv_gib, args.page_size = 96, 4, 2 / 1024, 16
    rows = parse_rows(args)
    if args.plan:
        return plan(args, rows)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.fused = Fused(args.compile == "on" or (args.compile == "auto" and device.type == "cuda"))
    settings = {k: getattr(args, k) for k in ("context", "steps", "kv_gib", "page_size", "decode_block", "impl",
                                              "no_graph")}
    settings["compiled"] = args.fused.compiled
    stamp, results, model = utc_stamp(), [], None
    with torch.no_grad():
        for row in sorted(rows, key=lambda r: r.gqa):  # one model shape at a time
            kv = args.shape["n_kv_heads"] // row.gqa
            if model is None or model.config.kv_heads != kv:
                model = None
                torch.manual_seed(0)
                with torch.device(device):
                    model = DMC(DMCConfig(**{**args.shape, "n_kv_heads": kv}, dmc_stage="finetune")).to(dtype).eval()
                print(f"model: {model.num_params() / 1e9:.2f}B parameters, {kv} key/value heads, {dtype}, "
                      f"context {args.context}", flush=True)
            try:
                r = run_row(model, row, args, dtype, device)
            except Exception as e:  # a row that fails (e.g. capture on an old driver) must not lose the others
                r = {"label": row.label, "error": f"{type(e).__name__}: {e}"}
                print(f"{row.label}: FAILED {r['error']}", flush=True)
            else:
                print(f"{row.label}: batch {r['batch']}, {r['step_ms']:.2f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
                      f"KV read {r['kv_read_gb_per_s']:.0f} GB/s" + (f", attention {r['attn_ms']:.2f} ms "
                      f"({r['attn_kv_gb_per_s']:.0f} GB/s)" if "attn_ms" in r else ""), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.append(r)
            speedups(results)
            path = record("dmc_decode", {"model": args.shape, "dtype": str(dtype), **settings, "rows": results},
                          stamp=stamp)
    print("| row | batch | ms/step | attention ms | tokens/s | x CR 1 |\n|---|---|---|---|---|---|")
    for r in results:
        if "error" not in r:
            print(f"| {r['label']} | {r['batch']} | {r['step_ms']:.2f} | {r.get('attn_ms', float('nan')):.2f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['speedup_vs_cr1'] or float('nan'):.3f} |")
    print(f"wrote {path}")


def speedups(results: list[dict]) -> None:
    """``speedup_vs_cr1``: tokens/s over the CR-1 row run with the same number of streams."""
    base = {r["streams"]: r["tokens_per_s"] for r in results if r.get("cr") == 1 and r.get("gqa") == 1}
    for r in results:
        if "error" not in r:
            b = base.get(r["streams"])
            r["speedup_vs_cr1"] = r["tokens_per_s"] / b if b else None


if __name__ == "__main__":
    main()
