"""Data-parallel scaling of the 124M GPT: tokens/s on 1 and 2 GPUs under ``torchrun`` (NCCL), DDP and FSDP2.

Each point is a real ``leanformer train`` run launched by ``torchrun --standalone --nproc-per-node N`` with
``trainer.distributed=ddp|fsdp2`` (the trainer's own step: bf16 autocast, ``torch.compile``, clipping, AdamW, loss
and wall-time reductions over ranks, a checkpoint at the end). Weak scaling: every GPU keeps ``--batch-per-gpu``
sequences of ``--seq-len`` tokens per micro-batch, so the global batch grows with the GPUs. Throughput is the median
of the trainer's logged ``tok_per_s`` (global tokens per step / the slowest rank's step time) after ``--skip`` warm-up
(compile) steps; scaling efficiency = tok/s on N GPUs / (N x tok/s on 1 GPU). NVLink multicast stays off
(``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``).

The model is ``bench_gpt_train.gpt124m`` (d 768, 12 layers, 12 heads, vocabulary 50304, tied embeddings) reading
byte tokens of ``--data-file`` (any UTF-8 text; a synthetic one is written when absent: data is not what is timed).

    PYTHONPATH=src python benchmarks/bench_ddp.py                      # H200 x2: 1 GPU, 2 GPUs DDP, 2 GPUs FSDP2
    PYTHONPATH=src python benchmarks/bench_ddp.py --tiny --device cpu  # CPU check (gloo, tiny model), ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
GPT124M = ["model.vocab_size=50304", "model.d_model=768", "model.n_layers=12", "model.n_heads=12",
           "model.n_kv_heads=12", "model.d_ff=2048", "model.tie_embeddings=true", "model.dropout=0.0"]
TINY = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2", "model.dropout=0.0"]


def synthetic_text(path: Path, n_bytes: int = 4_000_000) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(words) for _ in range(12)) + ".\n"
        out.append(line)
        size += len(line)
    path.write_text("".join(out))
    return path


def run_point(gpus: int, mode: str, args, data: Path, work: Path) -> dict:
    out = work / f"run-{mode}-{gpus}"
    model = TINY if args.tiny else GPT124M
    over = model + [
        f"data.source={data}", "data.tokenizer=byte", f"data.seq_len={args.seq_len}", "data.val_fraction=0.01",
        f"data.cache_dir={work / 'cache'}", f"model.max_seq_len={args.seq_len}",
        f"trainer.batch_size={args.batch_per_gpu * gpus}", f"trainer.max_steps={args.steps}",
        f"trainer.device={args.device}", f"trainer.compile={str(not args.no_compile).lower()}",
        f"trainer.distributed={mode if gpus > 1 else 'none'}", "trainer.log_every=1", "trainer.eval_every=100000",
        "trainer.eval_batches=1", "trainer.ckpt_every=100000", "trainer.keep_last=1", "trainer.progress=false",
        "optim.lr=6e-4", "schedule.warmup_steps=2"]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "leanformer.cli", "train", str(PRESET), *over, "--out", str(out)]
    print(f"[bench_ddp] {gpus} x {args.device}, {mode if gpus > 1 else 'single process'}: {out}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        return {"gpus": gpus, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"][args.skip:]
    tok_s = statistics.median(e["tok_per_s"] for e in train)
    mfu = [e["mfu"] for e in train if "mfu" in e]
    point = {"gpus": gpus, "mode": mode if gpus > 1 else "single", "tokens_per_s": tok_s,
             "tokens_per_s_per_gpu": tok_s / gpus, "step_s": statistics.median(e["tokens"] / e["step"] / e["tok_per_s"]
                                                                               for e in train),
             "global_batch": args.batch_per_gpu * gpus, "seq_len": args.seq_len, "steps_timed": len(train),
             "mfu_per_gpu": statistics.median(mfu) / gpus if mfu else None, "final_loss": train[-1]["loss"],
             "wall_s": wall}
    print(f"[bench_ddp]   {tok_s:,.0f} tok/s ({tok_s / gpus:,.0f} per GPU), wall {wall:.0f} s", flush=True)
    return point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="1,2", help="process counts to run (comma-separated)")
    p.add_argument("--modes", default="ddp,fsdp2", help="engines for the multi-process points")
    p.add_argument("--batch-per-gpu", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the median")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a tiny model, 8 steps (CPU check)")
    p.add_argument("--data-file", default=None, help="UTF-8 text to train on (default: synthetic words)")
    args = p.parse_args()
    if args.tiny:
        args.seq_len, args.batch_per_gpu, args.steps, args.skip = 64, 2, 8, 3
    if args.device == "cpu":
        args.no_compile = True
    work = Path(tempfile.mkdtemp(prefix="bench_ddp-"))
    data = Path(args.data_file) if args.data_file else synthetic_text(work / "data.txt",
                                                                      200_000 if args.tiny else 4_000_000)
    counts = [int(x) for x in args.gpus.split(",")]
    points = []
    for n in counts:
        for mode in (args.modes.split(",") if n > 1 else ["ddp"]):
            points.append(run_point(n, mode, args, data, work))
    base = next((x for x in points if x["gpus"] == 1 and "error" not in x), None)
    for x in points:
        if base and "error" not in x:
            x["scaling_efficiency"] = x["tokens_per_s"] / (x["gpus"] * base["tokens_per_s"])
    results = {"model": "tiny" if args.tiny else "gpt124m", "device": args.device, "compile": not args.no_compile,
               "batch_per_gpu": args.batch_per_gpu, "seq_len": args.seq_len, "steps": args.steps,
               "skip": args.skip, "data": str(args.data_file or "synthetic"), "points": points}
    path = record("ddp_scaling" + ("_tiny" if args.tiny else ""), results)
    for x in points:
        eff = x.get("scaling_efficiency")
        print(f"{x['gpus']} x {x['mode']}: " + (f"{x['tokens_per_s']:,.0f} tok/s, efficiency "
              f"{100 * eff:.1f}%" if eff is not None else str(x.get("error"))))
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
