"""``leanformer demo``: the main job on its embedded default.

Until the sparse-frontier demo lands (it will replace this), the demo trains the default model
(``configs/gpt-shakespeare.yaml``, embedded in the package) on the CPU, evaluates it on the held-out test plays and
prints test bits per byte next to the corpus's unigram entropy. Re-running resumes or reuses the finished run.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="run the main job on its embedded default (trains and evaluates the default GPT)",
                       description=__doc__)
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--device", default="auto")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=50")
    return p


def default_config_text() -> str:
    return resources.files("leanformer").joinpath("configs/gpt-shakespeare.yaml").read_text()


def run(args) -> int:
    import tempfile

    from leanformer.config import load_run_config
    from leanformer.data import load_source, token_stream
    from leanformer.eval.cli import evaluate_run
    from leanformer.eval.lm import token_byte_lengths, unigram_entropy_bits_per_byte
    from leanformer.train.checkpoint import latest_checkpoint
    from leanformer.train.trainer import Trainer

    out = Path(args.out)
    overrides = [f"trainer.device={args.device}", *args.overrides]
    if latest_checkpoint(out) is not None and (out / "config.yaml").is_file():
        cfg = load_run_config(out / "config.yaml", overrides)
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(default_config_text())
        cfg = load_run_config(f.name, overrides)
        Path(f.name).unlink()
    print(f"leanformer demo: training {cfg.model.n_layers}-layer GPT (d={cfg.model.d_model}) on Shakespeare, "
          f"byte level, into {out}")
    Trainer(cfg, out).fit()
    result = evaluate_run(out, "test", device=args.device)
    from leanformer.data import ByteTokenizer

    test = token_stream(load_source("shakespeare").documents("test"), ByteTokenizer())
    unigram = unigram_entropy_bits_per_byte(test, token_byte_lengths(ByteTokenizer(), 260))
    summary = {"run_dir": str(out), "test_bits_per_byte": round(result["bits_per_byte"], 4),
               "test_perplexity_per_byte": round(result["perplexity"], 3),
               "unigram_entropy_bits_per_byte": round(unigram, 4), "test_bytes": result["bytes"]}
    print(json.dumps(summary))
    return 0
