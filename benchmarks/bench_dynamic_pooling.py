"""Dynamic Token Pooling vs fixed pooling (Hourglass) vs vanilla on byte-level Shakespeare, at an equal budget.

"Efficient Transformers with Dynamic Token Pooling" (Nawrot et al., 2023). Every model has 2 + 8 + 2 layers of the
same width: vanilla (12 full-length layers), Hourglass ``"2@1 8@3 2@1"`` (fixed pooling, avg / repeat), and DTP with
``fixed`` (k=3), ``whitespace``, ``unigram``, ``gumbel`` (prior 0.2) and ``entropy`` boundaries. Each trains for the
same wall-clock seconds (``--budget seconds``, default) or the same steps (``--budget steps``) with its cosine
schedule decaying fully at its budget; records test bits per byte, training step time, the average shortening factor
reached (over the second half of training and on validation windows) and FLOPs per byte at that factor; plots them.

Data as in ``bench_hourglass.py`` (``--data-dir`` with train/validation/test.txt). The unigram boundaries need a
piece vocabulary trained with ``sentencepiece`` where it is installed (``prepare`` writes ``DATA_DIR/unigram.json``;
only training the vocabulary needs the package, segmenting does not):

    PYTHONPATH=src python3 benchmarks/bench_dynamic_pooling.py prepare --data-dir shakespeare
    PYTHONPATH=src python3 benchmarks/bench_dynamic_pooling.py budget --data-dir shakespeare --seconds 45
    PYTHONPATH=src python3 benchmarks/bench_dynamic_pooling.py budget --tiny --device cpu --data-dir shakespeare
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hourglass import autocast, load_splits, plot_budget, train_budget  # noqa: E402
from common import record, utc_stamp  # noqa: E402

from leanformer.analysis.flops import train_flops_per_token  # noqa: E402
from leanformer.data import sequential_windows  # noqa: E402
from leanformer.models.boundaries import UnigramSegmenter  # noqa: E402
from leanformer.models.dynamic_pooling import DynamicPooling, DynamicPoolingConfig  # noqa: E402
from leanformer.models.gpt import GPT, GPTConfig  # noqa: E402
from leanformer.models.hourglass import Hourglass, HourglassConfig  # noqa: E402

MODELS = ("vanilla", "hourglass", "dtp-fixed", "dtp-whitespace", "dtp-unigram", "dtp-gumbel", "dtp-entropy")


def build(name: str, args):
    d, h, n, drop = args.d_model, args.heads, args.seq_len, args.dropout
    if name == "vanilla":
        return GPT(GPTConfig(vocab_size=260, d_model=d, n_layers=12, n_heads=h, max_seq_len=n, dropout=drop))
    if name == "hourglass":
        return Hourglass(HourglassConfig(vocab_size=260, d_model=d, n_heads=h, hierarchy="2@1 8@3 2@1",
                                         downsampling="avg", upsampling="repeat", max_seq_len=n, dropout=drop))
    source = name.removeprefix("dtp-")
    vocab = str(Path(args.data_dir) / "unigram.json") if source == "unigram" else None
    return DynamicPooling(DynamicPoolingConfig(vocab_size=260, d_model=d, n_heads=h, n_pre=2, n_short=8, n_post=2,
                                               boundaries=source, fixed_k=3, unigram_vocab=vocab, max_seq_len=n,
                                               dropout=drop))


@torch.no_grad()
def eval_shortening(model, tokens, args, device) -> float | None:
    if not isinstance(model, DynamicPooling):
        return 3.0 if isinstance(model, Hourglass) else 1.0
    model.eval()
    rates = []
    for batch in sequential_windows(tokens, args.seq_len, args.batch_size, 4):
        with autocast(device):
            model(batch["input_ids"].to(device))
        rates.append(float(model.last_boundaries.float().mean()) if model.last_boundaries is not None else 1.0)
    model.train()
    return 1.0 / max(statistics.mean(rates), 1.0 / args.seq_len)  # no boundary at all: one segment per window


def cmd_prepare(args):
    text = (Path(args.data_dir) / "train.txt").read_text(encoding="utf-8")
    seg = UnigramSegmenter.train(text, vocab_size=args.unigram_size)
    out = Path(args.data_dir) / "unigram.json"
    seg.save(out)
    print(f"wrote {out} ({len(seg.scores)} pieces)")


def cmd_budget(args, device):
    data = load_splits(args.data_dir, 20_000 if args.tiny else None)
    amount = args.seconds if args.budget == "seconds" else args.train_steps
    rows, stamp = [], utc_stamp()
    for name in args.models or MODELS:
        torch.manual_seed(0)
        model = build(name, args)
        fpt = train_flops_per_token(model.config, args.seq_len)
        aligned, prep_s = None, 0.0
        if isinstance(model, DynamicPooling) and model.segmenter is not None:
            t0 = time.perf_counter()  # once per corpus, like tokenization: not charged to the training budget
            aligned = {"boundary_targets": model.segmenter.stream_targets(data["train"])}
            prep_s = time.perf_counter() - t0
        r = train_budget(model, data, args, device, args.budget, amount, fpt, aligned)
        r["boundary_targets_prep_s"] = prep_s
        short = eval_shortening(model, data["validation"], args, device)
        if isinstance(model, DynamicPooling):  # FLOPs at the factor this model actually reached
            r["flops_per_token"] = 3 * model.config.forward_flops(args.seq_len, short) / args.seq_len
        r.update(model=name, params=model.num_params(), budget=args.budget, amount=amount,
                 step_s=r["train_seconds"] / max(r["steps"], 1), shortening_val=short,
                 shortening_train=r["mean_metrics"].get("shortening", short))
        rows.append(r)
        path = record(f"dynamic_pooling_budget_{args.budget}", {"config": vars(args), "runs": rows, "complete": False},
                      stamp=stamp)
        print(f"{name:15s} steps {r['steps']:5d}  {1e3 * r['step_s']:7.1f} ms/step  shortening {short:5.2f}  "
              f"{r['flops_per_token'] / 1e6:7.1f} MFLOP/byte  test bpb {r['test_bits_per_byte']:.4f}", flush=True)
        del model

    path = record(f"dynamic_pooling_budget_{args.budget}", {"config": vars(args), "runs": rows, "complete": True},
                  stamp=stamp)
    plot_budget(rows, path.with_suffix(".png"), f"DTP, equal {args.budget}")
    print(f"recorded {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("prepare", "budget"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long CPU check")
    ap.add_argument("--models", nargs="+", default=None, choices=MODELS)
    ap.add_argument("--data-dir", default="shakespeare")
    ap.add_argument("--unigram-size", type=int, default=2000)
    ap.add_argument("--budget", choices=("seconds", "steps"), default="seconds")
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    args = ap.parse_args()
    if args.tiny:
        args.d_model, args.heads, args.seq_len, args.batch_size = 64, 4, 96, 4
        args.seconds, args.train_steps, args.eval_every, args.warmup = 2.0, 4, 2, 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.command == "prepare":
        return cmd_prepare(args)
    cmd_budget(args, device)


if __name__ == "__main__":
    main()
