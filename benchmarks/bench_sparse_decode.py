"""One decode step over a long cache: sparse decode methods vs dense SDPA, on one GPU.

    PYTHONPATH=src python benchmarks/bench_sparse_decode.py --cache 131072 --batch 1 16

Per batch size: dense attention of one query token over the whole bf16 cache (SDPA, default backend, GQA), then each
method at sparsity ``1 - 1/16`` (page scoring, top-k, gather and attention all timed; prompt-time work such as
SnapKV's scoring or Quest's page metadata is done once before timing, as in serving). Each step is captured in a CUDA
graph and replayed (both dense and sparse), and also timed eagerly. Writes ``sparse_decode-*.json``.

A method may carry parameters: ``quest:metadata=int8`` (int8 page summaries), ``quest:share_gqa=false``. Quest's
Triton step is three launches (fused page selection, split-K read, merge); the other methods' two (split-K read,
then the merge); ``--merge launch fused`` also times every method with the merge in the read's last split.
``--kernel-settings default "BLOCK_N=32,PROGRAMS_PER_SM=4" ...`` checks and times everything again under each setting
of the split-K read (key tile, warps, pipeline stages, programs per SM; ``default``: the module's own) or of Quest's
page choice (``QUEST_COMPACT_STEPS=6,QUEST_COMPACT_CAP=512``: its top-k's counts over the whole row before it
finishes on the candidates left, and how many; ``kernels/quest_scores.py``).

The sparse-decode targets of benchmarks/README.md in one command (~1 minute on an H100):

    PYTHONPATH=src python benchmarks/bench_sparse_decode.py --cache 131072 --batch 1 16 \
        --methods quest quest:metadata=int8 snapkv --impls triton
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, checked_settings, graphed, patched, record  # noqa: E402

from leanformer.sparse import build_decode  # noqa: E402
from leanformer.sparse.kernels import decode as kd  # noqa: E402
from leanformer.sparse.kernels import quest_scores as qs  # noqa: E402


def _spy(fn, seen: dict, name: str):
    """``fn`` that also records its arguments in ``seen[name]``."""
    def call(*a, **kw):
        seen[name] = (a, kw)
        return fn(*a, **kw)
    return call


def parse_method(spec: str) -> tuple[str, dict]:
    """``"quest:metadata=int8,share_gqa=false"`` -> ``("quest", {"metadata": "int8", "share_gqa": False})``."""
    name, _, rest = spec.partition(":")
    params = {}
    for pair in filter(None, rest.split(",")):
        key, _, val = pair.partition("=")
        low = val.strip().lower()
        params[key.strip()] = {"true": True, "false": False}.get(low, int(val) if val.strip().isdigit() else val)
    return name, params


KNOBS = ("BLOCK_N", "NUM_WARPS", "NUM_STAGES", "PROGRAMS_PER_SM", "QUEST_COMPACT_STEPS", "QUEST_COMPACT_CAP")


def _knob(key: str):
    """The module and attribute a ``--kernel-settings`` key sets: ``QUEST_*`` Quest's page choice, the rest the
    split-K read."""
    return (qs, key.removeprefix("QUEST_")) if key.startswith("QUEST_") else (kd, key)


class kernel_settings:
    """``with kernel_settings("BLOCK_N=32,NUM_WARPS=2"):`` the split-K decode kernel's launch constants (and Quest's
    page choice's, ``QUEST_*``) set, and put back after (``"default"`` leaves them)."""

    def __init__(self, text: str):
        self.new = checked_settings(text, KNOBS, "--kernel-settings")

    def __enter__(self):
        self._set = patched((*_knob(key), val) for key, val in self.new.items())
        self._set.__enter__()

    def __exit__(self, *exc):
        return self._set.__exit__(*exc)


def check(args, b: int = 2, length: int = 8191) -> dict:
    """Each method/impl's step vs the fp32 dense-masked reference on the same selection (error at most twice the
    same-precision reference's): ``{method/impl: ok}``."""
    k = torch.randn(b, args.kv_heads, length, args.dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(b, args.heads, 1, args.dim, device="cuda", dtype=torch.bfloat16)
    q_prompt = torch.randn(b, args.heads, 256, args.dim, device="cuda", dtype=torch.bfloat16)
    verdict = {}
    for spec in args.methods:
        name, params = parse_method(spec)
        for impl in args.impls:
            m = build_decode(name, impl=impl, **params)
            m.observe_prefill(0, q_prompt, k, v)
            # The selection the step used: intercept the kernel entry point the method's module calls (token
            # positions through run_decode, or Quest's page ids through gather_decode_pages_triton).
            seen = {}
            mod = sys.modules[type(m).attend.__module__]
            spies = [(mod, f, _spy(getattr(mod, f), seen, f)) for f in ("run_decode", "gather_decode_pages_triton")
                     if hasattr(mod, f)]
            with patched(spies):
                out, info = m.attend(0, q, k, v, sparsity=1 - args.budget)
            if "run_decode" in seen:
                _, _, _, idx, valid, scale, _ = seen["run_decode"][0]
            else:
                (_, _, _, pages, page_size, scale), opts = seen["gather_decode_pages_triton"]
                idx, valid = kd.expand_pages(pages, page_size, length, opts.get("last_page"))
            ref = kd.gather_decode_reference(q.float(), k.float(), v.float(), idx, valid, scale)
            base = kd.gather_decode_reference(q, k, v, idx, valid, scale)
            err, err_base = (out.float() - ref).abs().max().item(), (base.float() - ref).abs().max().item()
            ok = err <= 2 * err_base + 1e-5
            verdict[f"{spec}/{info['impl']}"] = ok
            print(f"check {spec}/{info['impl']}: err {err:.2e} vs same precision {err_base:.2e} -> "
                  f"{'ok' if ok else 'FAILED'}", flush=True)
    return verdict


def bench_batch(b, args, verdict) -> list[dict]:
    s = 1.0 - args.budget
    length = args.cache
    k = torch.randn(b, args.kv_heads, length, args.dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(b, args.heads, 1, args.dim, device="cuda", dtype=torch.bfloat16)
    q_prompt = torch.randn(b, args.heads, 256, args.dim, device="cuda", dtype=torch.bfloat16)

    def dense():
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    dense_eager = bench(dense, warmup=3, repeat=args.repeat) * 1e3
    dense_graph = bench(graphed(dense), warmup=3, repeat=args.repeat) * 1e3
    print(f"B={b} L={length} dense: eager {dense_eager:.3f} ms, graph {dense_graph:.3f} ms", flush=True)
    rows = []
    for merge, spec, impl in [(g, m, i) for g in args.merge for m in args.methods for i in args.impls]:
        name, params = parse_method(spec)
        kd.FUSED_MERGE = merge == "fused"
        m = build_decode(name, impl=impl, **params)
        m.observe_prefill(0, q_prompt, k, v)
        _, info = m.attend(0, q, k, v, sparsity=s)  # builds metadata / kept sets outside the timing

        def step(m=m):
            return m.attend(0, q, k, v, sparsity=s)

        eager = bench(step, warmup=3, repeat=args.repeat) * 1e3
        graph = bench(graphed(step), warmup=3, repeat=args.repeat) * 1e3
        ok = verdict.get(f"{spec}/{info['impl']}", False)
        row = {"batch": b, "cache_len": length, "method": name, "params": params, "variant": spec,
               "impl": info["impl"], "merge": merge, "checked": ok,
               "requested_sparsity": s,
               "sparsity": float(info["sparsity"]), "keys_read": float(info["keys_read"]),
               "keys_total": float(info["keys_total"]), "eager_ms": eager, "graph_ms": graph,
               "dense_eager_ms": dense_eager, "dense_graph_ms": dense_graph,
               "speedup_graph": dense_graph / graph if ok else None,
               "speedup_eager": dense_eager / eager if ok else None,
               "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.dim, "dtype": "bf16"}
        rows.append(row)
        speed = (f"speedup graph {dense_graph / graph:.2f}x eager {dense_eager / eager:.2f}x" if ok
                 else "speedup not reported: correctness check failed")
        print(f"B={b:>2} {spec:>22} {info['impl']:>7} {merge:>6} measured={row['sparsity']:.4f} eager={eager:.3f} ms "
              f"graph={graph:.3f} ms {speed}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=int, default=131072)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--budget", type=float, default=1 / 16, help="fraction of the cache read per step")
    ap.add_argument("--methods", nargs="+", default=["quest", "snapkv", "ada_snapkv", "streaming"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--impls", nargs="+", default=["triton", "gather"])
    ap.add_argument("--kernel-settings", nargs="+", default=["default"],
                    help='split-K read (and QUEST_* page choice) settings, each checked and timed: default '
                         '"BLOCK_N=32,PROGRAMS_PER_SM=4" "QUEST_COMPACT_STEPS=6" ...')
    ap.add_argument("--merge", nargs="+", choices=["fused", "launch"], default=["launch"],
                    help="how the Triton kernel merges its splits (token positions or Quest's pages): the last split "
                         "of each head (fused) or a second launch")
    args = ap.parse_args(argv)
    settings = [kernel_settings(text) for text in args.kernel_settings]  # bad text stops before any work
    torch.manual_seed(42)
    rows, verdicts = [], {}
    default_merge = kd.FUSED_MERGE  # each row sets it; put back after
    for text, setting in zip(args.kernel_settings, settings):
        with setting:
            if len(settings) > 1:
                print(f"kernel settings: {text}", flush=True)
            verdict = verdicts[text] = check(args)
            for b in args.batch:
                rows += [{**row, "kernel_settings": text} for row in bench_batch(b, args, verdict)]
                torch.cuda.empty_cache()
    kd.FUSED_MERGE = default_merge
    # "checks": the first setting's verdict (the default one unless named otherwise), as readers of one-setting runs
    # expect; "checks_by_setting": every setting's, keyed by its text
    verdict = verdicts[args.kernel_settings[0]]

    # the fused kernel's knobs and the split count a per-KV-head selection of the budget gets at each batch size
    sms, kept = kd.sm_count(torch.device("cuda")), round(args.budget * args.cache)
    knobs = {"block_n": kd.BLOCK_N, "num_warps": kd.NUM_WARPS, "num_stages": kd.NUM_STAGES,
             "programs_per_sm": kd.PROGRAMS_PER_SM,
             "splits_per_kv_head": {b: kd.split_plan(b * args.kv_heads, kept, sms)[0] for b in args.batch}}
    print(f"decode kernel: {knobs}", flush=True)
    path = record("sparse_decode", {"checks": verdict, "checks_by_setting": verdicts, "rows": rows,
                                    "decode_kernel": knobs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
