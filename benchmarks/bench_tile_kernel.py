"""The Triton tile kernel's launch settings, kernel alone, on the patterns block top-k and streaming select.

    PYTHONPATH=src python benchmarks/bench_tile_kernel.py --lengths 32768 131072 --sparsities 0.9 0.95 \
        [--baseline-kernel .scratch/tile_attention_OLD.py]

(the baseline file from git, e.g. ``git show OLD:src/leanformer/sparse/kernels/tile_attention.py >
.scratch/tile_attention_OLD.py``; ``.scratch/`` is ignored by git: copy it to the GPU machine with the tree).

For each length x sparsity x method the pattern is made once (``sparse.prefill_attention``, bf16, 32 query heads /
8 KV heads, d = 128, random data) and the attention kernel alone is timed for every ``--configs`` setting of
``kernels.tile_attention`` (``BN`` keys per step, ``num_warps``, ``num_stages`` of the tile loop, ``USE_TMA``
loads), beside FlexAttention on the same block top-k pattern and, with ``--baseline-kernel`` (an older
``tile_attention.py``, loaded under another name), the older kernel: ratios from one run. Each setting is checked
against an fp32 reference at 3001 tokens first (error at most twice that of same-precision SDPA); failing ones
(and ones that do not compile or fit in shared memory) are not timed. Dense cuDNN SDPA at each length is timed
too. Writes ``tile_kernel-*.json`` after every length.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparse_prefill import check_output, dense_cudnn, make_qkv, parse_flex_options  # noqa: E402
from common import bench, record, utc_stamp  # noqa: E402

from leanformer import sparse  # noqa: E402
from leanformer.nn.attention import repeat_kv  # noqa: E402
from leanformer.sparse.kernels import run_pattern  # noqa: E402

DEFAULT_CONFIGS = [f"BN={bn},num_warps={w},num_stages={s},USE_TMA={tma}"
                   for bn in (64, 128) for w in (8,) for s in (2, 3, 4) for tma in ("false", "true")]


def load_kernel(path: str):
    """``tile_attention`` of an older copy of ``kernels/tile_attention.py`` (its Triton kernel compiled apart)."""
    spec = importlib.util.spec_from_file_location("baseline_tile_attention", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.tile_attention


def candidates(args, baseline):
    """``(label, fn(q, k, v, pattern))`` to time; FlexAttention only takes tile-only patterns (block top-k)."""
    out = [(f"triton[{','.join(f'{k}={v}' for k, v in c.items())}]",
            lambda q, k, v, p, c=c: run_pattern(q, k, v, p, None, "triton", c)) for c in args.configs]
    if baseline is not None:
        out.append(("baseline", lambda q, k, v, p: baseline(q, k, v, p)))
    out.append(("flex", lambda q, k, v, p: run_pattern(q, k, v, p, None, "flex")))
    return out


def check(args, cands, t: int = 3001) -> dict:
    q, k, v = make_qkv(args, t)
    g = args.heads // args.kv_heads
    ke, ve = repeat_kv(k, g), repeat_kv(v, g)
    verdict = {}
    for method in args.methods:
        _, info = sparse.prefill_attention(q, k, v, method, 0.9, impl="triton")
        pat = info["pattern"]
        mask = pat.to_mask()
        for label, fn in cands:
            if label == "flex" and method != "block_topk":
                continue
            try:
                out = fn(q, k, v, pat)
            except Exception as e:  # a setting that does not compile or fit (shared memory): reported, not timed
                verdict[f"{method}/{label}"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                print(f"check {method}/{label}: {type(e).__name__}: {e}", flush=True)
                continue
            verdict[f"{method}/{label}"] = r = check_output(out, q, ke, ve, mask)
            print(f"check {method}/{label}: err {r['err']:.2e} vs SDPA {r['err_sdpa_same_precision']:.2e} -> "
                  f"{'ok' if r['ok'] else 'FAILED'}", flush=True)
    return verdict


def bench_length(t, args, cands, verdict) -> list[dict]:
    q, k, v = make_qkv(args, t)
    g = args.heads // args.kv_heads
    ke, ve = repeat_kv(k, g).contiguous(), repeat_kv(v, g).contiguous()
    dense_ms = bench(lambda: dense_cudnn(q, ke, ve), warmup=2, repeat=args.repeat) * 1e3
    ke = ve = None  # free the expanded copies
    print(f"T={t} dense cuDNN {dense_ms:.2f} ms", flush=True)
    rows = []
    for method in args.methods:
        for s in args.sparsities:
            _, info = sparse.prefill_attention(q, k, v, method, s, impl="triton")
            pat = info["pattern"]
            for label, fn in cands:
                if not verdict.get(f"{method}/{label}", {}).get("ok"):
                    continue
                ms = bench(lambda fn=fn, pat=pat: fn(q, k, v, pat), warmup=2, repeat=args.repeat) * 1e3
                rows.append({"seq_len": t, "method": method, "requested_sparsity": s,
                             "sparsity": float(info["sparsity"]), "kernel": label, "kernel_ms": ms,
                             "dense_cudnn_ms": dense_ms, "kernel_speedup": dense_ms / ms})
                print(f"T={t:>6} {method:>10} s={s:.2f} {label:>60} {ms:8.3f} ms {dense_ms / ms:6.2f}x", flush=True)
            del info, pat
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    ap.add_argument("--methods", nargs="+", default=["block_topk", "streaming"])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help='tile kernel settings, each "BN=128,num_warps=8,num_stages=3,USE_TMA=true"')
    ap.add_argument("--baseline-kernel", default=None, help="an older kernels/tile_attention.py to time beside")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    args.configs = parse_flex_options(args.configs)
    torch.manual_seed(0)
    baseline = load_kernel(args.baseline_kernel) if args.baseline_kernel else None
    cands = candidates(args, baseline)
    verdict = check(args, cands)
    rows, stamp = [], utc_stamp()
    for t in args.lengths:
        rows += bench_length(t, args, cands, verdict)
        torch.cuda.empty_cache()
        record("tile_kernel", {"checks": verdict, "rows": rows, "heads": args.heads, "kv_heads": args.kv_heads,
                               "head_dim": args.dim, "dtype": "bf16"}, stamp=stamp)
    for t in args.lengths:
        for method in args.methods:
            for s in args.sparsities:
                sel = [r for r in rows if (r["seq_len"], r["method"], r["requested_sparsity"]) == (t, method, s)]
                if sel:
                    best = min(sel, key=lambda r: r["kernel_ms"])
                    print(f"best T={t} {method} s={s}: {best['kernel']} {best['kernel_ms']:.3f} ms "
                          f"({best['kernel_speedup']:.2f}x dense)")


if __name__ == "__main__":
    main()
