"""Sparse prefill attention vs dense cuDNN SDPA on one GPU, pattern estimation included.

    PYTHONPATH=src python benchmarks/bench_sparse_prefill.py --lengths 32768 65536 131072

For each length: dense causal SDPA with the cuDNN backend (keys/values expanded to all query heads beforehand, so
the dense number is not charged for GQA), then every method x sparsity through ``sparse.prefill_attention`` (scoring,
pattern building and the kernel, all timed), and the kernel alone on the same pattern; block top-k runs through both
FlexAttention and the Triton tile kernel, the flex path once per ``--flex-options`` setting (one GPU call picks the
best kernel options; each setting is checked for correctness on its own). Speedups are reported only for paths that
pass a correctness check first. ``--stream N`` (default 4) also times each call back to back over N distinct inputs,
as a model's layers call it, dense cuDNN the same way: one call's time then hides the host's work for the next one
behind the GPU's, unless the method syncs (none does). bf16, random q/k/v (the pattern of random data is diffuse: a
speed test, not a quality test). Writes ``sparse_prefill-*.json`` (after each length, so a cut-short run keeps its
data).

``--graph`` also times each call captured in one CUDA graph, dense cuDNN too (``graph_ms``, ``graph_speedup``): the
GPU's time for the whole call, estimation included, with the host's launch work taken out, which is what a call
costs inside a model whose other work keeps the GPU busy while the host launches (a capture also shows that the call
never syncs: one that does fails to capture, and the row says so).

``--estimate-config TRANSPOSE=1`` runs vertical-slash's and FlexPrefill's window scores at that setting of
``vs_estimate.DEFAULT_CONFIG`` (recorded with the results); ``bench_vs_estimate.py`` times the settings alone.

``--line-kernels 0`` builds vertical-slash's and FlexPrefill's line patterns with the PyTorch functions instead of
``kernels/line_pattern.py``'s launches (recorded with the results): what those launches save in a whole call.

``--cells 131072:0.95 32768:0.9`` times only those (length, sparsity) pairs instead of every length x sparsity.
``--line-options`` times vertical-slash and FlexPrefill once per tile-kernel setting (``COL_STAGES=0``: the first,
unpipelined column loop). Vertical-slash and FlexPrefill rows also time their window scores alone (``scores_ms``:
the fused estimation) and report estimation (everything but the kernel) as a share of dense.

The sparse-prefill targets of benchmarks/README.md in one command (~3 minutes on an H100, compiles included):

    PYTHONPATH=src python benchmarks/bench_sparse_prefill.py --cells 131072:0.95 32768:0.9 \
        --methods vertical_slash flexprefill block_topk --flex-options none --line-options default COL_STAGES=0 \
        --repeat 10 --stream 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, checked_settings, gpu_profile, graphed, parse_settings, record, utc_stamp  # noqa: E402

from leanformer import sparse  # noqa: E402
from leanformer.nn.attention import repeat_kv  # noqa: E402
from leanformer.sparse.kernels import line_pattern, run_pattern, vs_estimate  # noqa: E402


def parse_flex_options(items: list[str]) -> list[dict | None]:
    """``["default", "BLOCK_M=128,BLOCK_N=128,num_warps=8,num_stages=2"]`` -> ``[None, {...}]`` (ints / booleans)."""
    out = []
    for item in items:
        if item == "none":  # no run of this kind
            continue
        if item == "default":
            out.append(None)
            continue
        out.append(parse_settings(item))
    return out


def _label(impl: str, opts: dict | None) -> str:
    return impl if opts is None else impl + "[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]"


def variants(method, args):
    """``(impl, kernel_options, label)`` to run for a method: block top-k through flex (each option set) and triton;
    vertical-slash and FlexPrefill through the tile kernel once per ``--line-options`` setting."""
    if method in ("vertical_slash", "flexprefill"):
        return [("triton", o, _label("triton", o)) for o in args.line_options]
    if method != "block_topk":
        return [("auto", None, "auto")]
    return [("flex", o, _label("flex", o)) for o in args.flex_options] + [("triton", None, "triton")]


def dense_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def make_qkv(args, t: int):
    """Random bf16 ``q [1, heads, t, dim]``, ``k, v [1, kv_heads, t, dim]`` on the GPU."""
    return (torch.randn(1, args.heads, t, args.dim, device="cuda", dtype=torch.bfloat16),
            torch.randn(1, args.kv_heads, t, args.dim, device="cuda", dtype=torch.bfloat16),
            torch.randn(1, args.kv_heads, t, args.dim, device="cuda", dtype=torch.bfloat16))


def check_output(out, q, ke, ve, mask) -> dict:
    """``out`` against the fp32 attention under ``mask`` (``ke, ve`` expanded to the query heads): ``ok`` when its
    error is at most twice that of same-precision PyTorch SDPA (flash-attn's rule) and it holds no NaN."""
    s = torch.matmul(q.float(), ke.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    ref = torch.matmul(torch.softmax(s.masked_fill_(~mask, float("-inf")), -1), ve.float())
    base = F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)
    err, err_base = (out.float() - ref).abs().max().item(), (base.float() - ref).abs().max().item()
    ok = err <= 2 * err_base + 1e-5 and not torch.isnan(out).any().item()
    return {"ok": ok, "err": err, "err_sdpa_same_precision": err_base}


def check(args, t: int = 3001) -> dict:
    """Fast path vs fp32 reference under the same mask, at a small odd length: ``{method/impl: ok}``. A speedup is
    reported only for paths that pass :func:`check_output`."""
    q, k, v = make_qkv(args, t)
    g = args.heads // args.kv_heads
    ke, ve = repeat_kv(k, g), repeat_kv(v, g)
    verdict = {}
    runs = [(m, *var, {}) for m in args.methods for var in variants(m, args)]
    if "flexprefill" in args.methods:  # every head query-aware: the hybrid pattern (checked, not timed)
        runs.append(("flexprefill", "triton", None, "triton[all heads query-aware]", {"tau": 10.0}))
    for method, impl, opts, label, extra in runs:
        kw = {"kernel_options": opts} if opts else {}
        out, info = sparse.prefill_attention(q, k, v, method, 0.9, impl=impl, **kw, **extra)
        key = f"{method}/{info['impl'] if label == 'auto' else label}"
        verdict[key] = r = check_output(out, q, ke, ve, info["pattern"].to_mask())
        print(f"check {key}: err {r['err']:.2e} vs same-precision SDPA {r['err_sdpa_same_precision']:.2e} -> "
              f"{'ok' if r['ok'] else 'FAILED'}", flush=True)
        del out, info
    return verdict


def stream_ms(fn, layers, repeat) -> float:
    """Milliseconds per call of ``fn(q, k, v)`` over ``layers`` (distinct inputs) called back to back, as a model's
    layers call attention: the host prepares the next call while the GPU runs this one, unless a call syncs."""
    return bench(lambda: [fn(*x) for x in layers], warmup=1, repeat=repeat) * 1e3 / len(layers)


def graph_ms(fn, repeat) -> tuple[float | None, str | None]:
    """Milliseconds of ``fn`` replayed from one CUDA graph, or ``(None, why)`` where it cannot be captured."""
    try:
        replay = graphed(fn)
    except RuntimeError as e:  # a host sync or a CPU-side step inside the call
        torch.cuda.synchronize()
        return None, str(e).splitlines()[0][:200]
    return bench(replay, warmup=1, repeat=repeat) * 1e3, None


def scores_alone_ms(method, q, k, args) -> float | None:
    """Milliseconds of the fused window-score estimation alone (vertical-slash, FlexPrefill with its tail)."""
    if method not in ("vertical_slash", "flexprefill"):
        return None
    from leanformer.sparse.prefill.estimate import window_scores

    m = sparse.build_prefill(method)
    tail = m.params.block_size if method == "flexprefill" and m.params.query_aware else 0
    scale = q.shape[-1] ** -0.5
    return bench(lambda: window_scores(q, k, m.params.window, scale, tail, impl="triton"), warmup=1,
                 repeat=args.repeat) * 1e3


def bench_length(t, args, verdict, sparsities) -> list[dict]:
    q, k, v = make_qkv(args, t)
    layers = [(q, k, v)] + [make_qkv(args, t) for _ in range(args.stream - 1)] if args.stream else []
    g = args.heads // args.kv_heads
    ke, ve = repeat_kv(k, g).contiguous(), repeat_kv(v, g).contiguous()
    dense_ms = bench(lambda: dense_cudnn(q, ke, ve), warmup=2, repeat=args.repeat) * 1e3
    dense_graph = graph_ms(lambda: dense_cudnn(q, ke, ve), args.repeat)[0] if args.graph else None
    ke = ve = None  # free the expanded copies
    dense_stream = None
    if layers:
        expanded = [(a, repeat_kv(b, g).contiguous(), repeat_kv(c, g).contiguous()) for a, b, c in layers]
        dense_stream = stream_ms(dense_cudnn, expanded, args.repeat)
        del expanded
    print(f"T={t} dense cuDNN {dense_ms:.2f} ms" + (f", {dense_stream:.2f} ms a call in a stream of {len(layers)}"
                                                    if layers else "")
          + (f", {dense_graph:.2f} ms in a CUDA graph" if dense_graph else ""), flush=True)
    rows = []
    for method in args.methods:
        scores_ms = scores_alone_ms(method, q, k, args)
        for s in sparsities:
            for impl, opts, label in variants(method, args):
                kw = {"kernel_options": opts} if opts else {}

                def call(q=q, k=k, v=v, method=method, s=s, impl=impl, kw=kw):
                    return sparse.prefill_attention(q, k, v, method, s, impl=impl, **kw)

                _, info = call()
                total_ms = bench(call, warmup=1, repeat=args.repeat) * 1e3
                pat, used = info["pattern"], info["impl"]
                kernel_ms = bench(lambda pat=pat, used=used, opts=opts: run_pattern(q, k, v, pat, None, used, opts),
                                  warmup=1, repeat=args.repeat) * 1e3
                in_stream = (stream_ms(lambda a, b, c, call=call: call(a, b, c), layers, args.repeat)
                             if layers else None)
                in_graph, why = graph_ms(call, args.repeat) if args.graph else (None, None)
                key = f"{method}/{used if label == 'auto' else label}"
                ok = verdict.get(key, {}).get("ok", False)
                row = {"seq_len": t, "method": method, "impl": used, "kernel_options": opts, "variant": key,
                       "checked": ok, "requested_sparsity": s,
                       "sparsity": float(info["sparsity"]), "total_ms": total_ms, "kernel_ms": kernel_ms,
                       "estimation_ms": total_ms - kernel_ms, "dense_cudnn_ms": dense_ms,
                       "estimation_share_of_dense": (total_ms - kernel_ms) / dense_ms, "scores_ms": scores_ms,
                       "speedup": dense_ms / total_ms if ok else None,
                       "kernel_speedup": dense_ms / kernel_ms if ok else None,
                       "stream_ms": in_stream, "dense_cudnn_stream_ms": dense_stream,
                       "stream_speedup": dense_stream / in_stream if ok and layers else None,
                       "graph_ms": in_graph, "dense_cudnn_graph_ms": dense_graph, "graph_error": why,
                       "graph_speedup": dense_graph / in_graph if ok and in_graph and dense_graph else None,
                       "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.dim, "dtype": "bf16"}
                rows.append(row)
                speed = (f"speedup={dense_ms / total_ms:6.2f}x (kernel {dense_ms / kernel_ms:6.2f}x)" if ok
                         else "speedup not reported: correctness check failed")
                if layers and ok:
                    speed += f" in a stream {dense_stream / in_stream:6.2f}x ({in_stream:.2f} ms a call)"
                if args.graph and ok:
                    speed += (f" in a CUDA graph {dense_graph / in_graph:6.2f}x ({in_graph:.2f} ms)" if in_graph
                              and dense_graph else f" no CUDA graph ({why})")
                est_ms = total_ms - kernel_ms
                est = f" estimation={est_ms:.2f} ms ({100 * est_ms / dense_ms:.1f}% of dense)"
                if scores_ms is not None:
                    est += f", scores alone {scores_ms:.2f} ms"
                print(f"T={t:>6} {key:>40} s={s:.2f} measured={row['sparsity']:.3f} "
                      f"total={total_ms:8.2f} ms kernel={kernel_ms:8.2f} ms {speed}{est}", flush=True)
                del info, pat
                torch.cuda.empty_cache()
    return rows


def profile(args, t: int, s: float = 0.95):
    """Where the time of one call goes (pattern estimation vs kernel), by GPU op (the top 30) and by the project
    function that issued each PyTorch op."""
    q, k, v = make_qkv(args, t)
    for method in args.methods:
        sparse.prefill_attention(q, k, v, method, s)
        torch.cuda.synchronize()
        gpu_profile(lambda m=method: sparse.prefill_attention(q, k, v, m, s), f"profile {method} T={t} s={s}",
                    "profile_prefill.txt", row_limit=30, sites=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    ap.add_argument("--methods", nargs="+", default=["vertical_slash", "block_topk", "flexprefill", "streaming"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--flex-options", nargs="+", default=["default"],
                    help='FlexAttention kernel options to sweep for block_topk, each "default" or '
                         '"BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3" (ints, true/false); "none": no flex run')
    ap.add_argument("--line-options", nargs="+", default=["default"],
                    help='tile-kernel options for vertical_slash and flexprefill, each "default" or e.g. '
                         '"COL_STAGES=0" (the first column loop) or "num_stages=2,COL_STAGES=2"')
    ap.add_argument("--cells", nargs="+", default=None,
                    help='only these "length:sparsity" pairs (e.g. 131072:0.95 32768:0.9) instead of every '
                         '--lengths x --sparsities')
    ap.add_argument("--stream", type=int, default=4,
                    help="also time calls back to back over this many distinct inputs (a model's layers), dense too; "
                         "0: off")
    ap.add_argument("--graph", action="store_true",
                    help="also time each call (and dense) captured in one CUDA graph: the GPU's time alone")
    ap.add_argument("--estimate-config", default="default",
                    help='the window scores\' setting, "default" or e.g. "TRANSPOSE=1" (keys of '
                         'vs_estimate.DEFAULT_CONFIG)')
    ap.add_argument("--line-kernels", type=int, choices=(0, 1), default=1,
                    help="1: line patterns' bookkeeping in kernels/line_pattern.py's launches (the default); 0: the "
                         "PyTorch functions")
    ap.add_argument("--profile", action="store_true",
                    help="print the top GPU ops of each method at the longest and shortest length")
    args = ap.parse_args(argv)
    args.flex_options = parse_flex_options(args.flex_options)
    args.line_options = parse_flex_options(args.line_options)
    estimate_config = checked_settings(args.estimate_config, vs_estimate.DEFAULT_CONFIG, "--estimate-config")
    vs_estimate.DEFAULT_CONFIG.update(estimate_config)
    line_pattern.ENABLED = bool(args.line_kernels)
    cells = {}
    if args.cells:
        for cell in args.cells:
            t, _, s = cell.partition(":")
            cells.setdefault(int(t), []).append(float(s))
    else:
        cells = {t: list(args.sparsities) for t in args.lengths}
    # every (length, option set) is a separate compiled flex kernel; past the limit Dynamo silently runs eager
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
    torch.manual_seed(42)
    verdict = check(args)
    torch.cuda.empty_cache()
    rows, stamp = [], utc_stamp()
    for t, sparsities in cells.items():
        rows += bench_length(t, args, verdict, sparsities)
        torch.cuda.empty_cache()
        # after each length, into the same file (rewritten atomically): a run cut short keeps what it measured
        record("sparse_prefill", {"checks": verdict, "rows": rows, "estimate_config": dict(vs_estimate.DEFAULT_CONFIG),
                                  "line_kernels": line_pattern.ENABLED}, stamp=stamp)
    print(f"{'T':>7} {'variant':>40} {'req':>5} {'meas':>6} {'total ms':>9} {'kernel ms':>9} "
          f"{'dense ms':>9} {'speedup':>8}")
    for r in rows:
        sp = f"{r['speedup']:7.2f}x" if r["speedup"] else "   n/a"
        print(f"{r['seq_len']:>7} {r['variant']:>40} {r['requested_sparsity']:>5.2f} "
              f"{r['sparsity']:>6.3f} {r['total_ms']:>9.2f} {r['kernel_ms']:>9.2f} {r['dense_cudnn_ms']:>9.2f} {sp}")
    if args.profile:  # the longest length, where the kernel dominates, and the shortest, where launches show; each
        # at its cell's highest sparsity
        for t in sorted({max(cells), min(cells)}, reverse=True):
            profile(args, t, max(cells[t]))


if __name__ == "__main__":
    main()
