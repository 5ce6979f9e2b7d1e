"""``leanformer speed MODEL``: time to first token, decode tokens/s and memory of sparse prefill / decode methods on
a whole model, beside Hugging Face's dense path and the engine's dense path, measured in one run.

MODEL is our run or checkpoint, a Hugging Face folder or hub name, or ``arch:NAME`` — a preset shape from
``leanformer.analysis.flops.PRESETS`` (``arch:qwen2.5-7b``, ``arch:llama-3.1-8b``, ...) built with random weights
(enough for speed and memory; said in the output). Writes ``speed.json`` (rows, machine, versions, command,
commit), ``speed.md`` and ``speed.png`` (speedup against length per method) under ``--out``; a run that stops
resumes from ``speed.json`` (rows already measured with the same settings are kept, not re-measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from leanformer.cli_overrides import add_device_argument

EXAMPLE = """example (one GPU, Qwen2.5-7B's shape, random weights):
  leanformer speed arch:qwen2.5-7b --lengths 32768 131072 --prefill block_topk vertical_slash \\
      --decode snapkv quest --sparsity 0.9 0.95 --batch 1 max --new-tokens 64 --out runs/speed"""


# the presets' context: Qwen2.5 (with its YaRN setting) and Llama 3.1 both reach 128K positions
PRESET_POSITIONS = 131072


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="model-level speed and memory of sparse attention (TTFT, decode tokens/s)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run/checkpoint dir, Hugging Face dir or hub name, or arch:PRESET (random weights)")
    p.add_argument("--lengths", type=int, nargs="+", required=True, help="prompt lengths in tokens")
    p.add_argument("--prefill", nargs="*", default=["block_topk"], help="sparse prefill methods (TTFT rows)")
    p.add_argument("--decode", nargs="*", default=["snapkv", "quest"], help="sparse decode methods (decode rows)")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.9])
    p.add_argument("--batch", nargs="+", default=["1"], help="decode batch sizes; 'max' = largest that fits (GPU)")
    p.add_argument("--new-tokens", type=int, default=64, help="timed decode steps per measurement")
    p.add_argument("--repeat", type=int, default=3, help="timed prefills per TTFT (median; one warm-up before)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers (shorter runs)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter (e.g. block_size=64), given to whichever method has it")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face's own path (the engine's dense stays)")
    p.add_argument("--no-pack", action="store_true",
                   help="keep q/k/v and gate/up as the model holds them (default: packed into one matrix each, in "
                        "place, for every path: leanformer.infer.layers.pack_projections)")
    add_device_argument(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--out", default="runs/speed")
    return p


def _param(text: str):
    from leanformer.errors import UserError

    if "=" not in text:
        raise UserError(f"--param takes NAME=VALUE; got {text!r}")
    key, val = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(val)


def preset(spec: str):
    """The :class:`~leanformer.analysis.flops.ModelShape` an ``arch:NAME`` spec names (None for other specs)."""
    from leanformer.analysis.flops import PRESETS
    from leanformer.errors import UserError

    if not spec.startswith("arch:"):
        return None
    if spec[5:] not in PRESETS:
        raise UserError(f"unknown architecture preset {spec[5:]!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[spec[5:]]


def build_model(spec: str, device, dtype, layers: int | None = None):
    """``(model, random_weights)``: ``arch:`` presets get random weights at the preset's shape."""
    import torch

    from leanformer.errors import UserError

    s = preset(spec)
    if s is not None:
        import transformers

        name = spec[5:]
        n_layers = layers or s.n_layers
        need = (s.total_params - (s.n_layers - n_layers) * s.layer_params) * torch.finfo(dtype).bits // 8
        have = _free_bytes(device)
        if have is not None and need > 0.9 * have:
            raise UserError(f"{spec} needs ~{need / 2**30:.0f} GiB for its weights in {str(dtype)[6:]} but "
                            f"{device} has ~{have / 2**30:.0f} GiB free; use --layers N or a larger device")
        common = dict(hidden_size=s.d_model, intermediate_size=s.ff_dim, num_hidden_layers=n_layers,
                      num_attention_heads=s.n_heads, num_key_value_heads=s.kv_heads, vocab_size=s.vocab_size,
                      tie_word_embeddings=s.tie_embeddings, max_position_embeddings=PRESET_POSITIONS,
                      rms_norm_eps=1e-6)
        cls = transformers.Qwen2Config if name.startswith("qwen") else transformers.LlamaConfig
        cfg = cls(**common)
        cfg.rope_theta = 1e6 if name.startswith("qwen") else 5e5
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        return model.eval(), True
    from leanformer.eval.models import load_model

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    model = load_model(spec, device=str(device), dtype=names[dtype])
    if layers:
        if layers > model.config.num_hidden_layers:
            raise UserError(f"--layers {layers} exceeds the model's {model.config.num_hidden_layers} layers")
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model, False


def _free_bytes(device) -> int | None:
    """Memory free for a model's weights: the GPU's free memory, or the machine's physical memory on the CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _meta(args, model, device, dtype, random_weights: bool) -> dict:
    import torch
    import transformers

    from leanformer import __version__
    from leanformer.provenance import commit, device_name

    meta = {"model": args.model, "random_weights": random_weights, "layers": model.config.num_hidden_layers,
            "device": device_name(device),
            "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
            "transformers": transformers.__version__, "leanformer": __version__, "python": platform.python_version(),
            "command": " ".join(["leanformer", *sys.argv[1:]]) if sys.argv else "", "commit": commit(),
            "settings": {"lengths": args.lengths, "prefill": args.prefill, "decode": args.decode,
                         "sparsity": args.sparsity, "batch": args.batch, "new_tokens": args.new_tokens,
                         "repeat": args.repeat, "params": args.param, "hf": not args.no_hf,
                         "packed_projections": not args.no_pack}}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def _write(out: Path, meta: dict, rows):
    from leanformer.infer.speed_report import markdown, speedups

    table = speedups(rows)
    tmp = out / "speed.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    os.replace(tmp, out / "speed.json")
    (out / "speed.md").write_text(markdown(table, meta))
    return table


def plan(args) -> list[tuple]:
    """Every measurement, in order: per length, the dense baselines, then each prefill method and sparsity, then
    each batch spec with dense and each decode method and sparsity."""
    work = []
    for t in args.lengths:
        if not args.no_hf:
            work.append(("hf_prefill", t))
        work.append(("prefill", t, "dense", 0.0))
        for m in args.prefill:
            for s in args.sparsity:
                work.append(("prefill", t, m, s))
        for spec in args.batch:
            if spec == "1" and not args.no_hf:
                work.append(("hf_decode", t))
            work.append(("decode", t, "dense", 0.0, spec))
            for m in args.decode:
                for s in args.sparsity:
                    work.append(("decode", t, m, s, spec))
    return work


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from leanformer.errors import UserError
    from leanformer.infer.speed import Row, SpeedRun, batch_specs, check_engine
    from leanformer.infer.speed_report import plot
    from leanformer.reliability import check_output_dir
    from leanformer.sparse.registry import DECODE_METHODS, PREFILL_METHODS, param_names
    from leanformer.train.device import resolve_device

    args.batch = batch_specs(args.batch)
    for m in args.prefill:
        if m not in PREFILL_METHODS or m == "dense":
            raise UserError(f"unknown --prefill method {m!r}; choose from {sorted(set(PREFILL_METHODS) - {'dense'})}")
    for m in args.decode:
        if m not in DECODE_METHODS or m == "dense":
            raise UserError(f"unknown --decode method {m!r}; choose from {sorted(set(DECODE_METHODS) - {'dense'})}")
    for s in args.sparsity:
        if not 0.0 <= s < 1.0:
            raise UserError(f"--sparsity must be in [0, 1); got {s}")
    if min(args.lengths) < 16:
        raise UserError(f"--lengths must be at least 16 tokens; got {min(args.lengths)}")
    if args.new_tokens < 1 or args.repeat < 1:
        raise UserError("--new-tokens and --repeat must be at least 1")
    params = dict(_param(p) for p in args.param)
    known = set().union(*(param_names("prefill", m) for m in args.prefill),
                        *(param_names("decode", m) for m in args.decode)) if (args.prefill or args.decode) else set()
    for k in params:
        if k not in known:
            raise UserError(f"--param {k!r} belongs to none of the chosen methods; allowed: {sorted(known)}")
    device = resolve_device(args.device, "--device")
    if "max" in args.batch and device.type != "cuda":
        raise UserError("--batch max needs a CUDA device (it searches for the largest batch that fits in GPU memory)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
             "auto": torch.bfloat16 if device.type == "cuda" else torch.float32}[args.dtype]
    out = check_output_dir(args.out, what="--out")
    # refuse long lengths from the config, before building or loading any weights
    if preset(args.model) is not None:
        limit = PRESET_POSITIONS
    else:
        from leanformer.eval.models import context_length

        limit = context_length(args.model)
    if limit and max(args.lengths) > limit:
        raise UserError(f"length {max(args.lengths)} exceeds the model's position limit {limit}; choose "
                        f"--lengths up to {limit}")
    model, random_weights = build_model(args.model, device, dtype, args.layers)
    if not args.no_pack:
        from leanformer.infer.layers import pack_projections

        pack_projections(model)
    err = check_engine(model, model.config.vocab_size, device)
    meta = _meta(args, model, device, dtype, random_weights) | {"engine_check_rel_error": err}
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    old = out / "speed.json"
    if old.is_file():  # resume: keep rows measured with the same settings on the same model and device
        prev = json.loads(old.read_text())
        pm = prev.get("meta", {})
        if all(pm.get(k) == meta[k] for k in ("model", "layers", "device", "dtype", "settings")):
            fields = {f for f in Row.__dataclass_fields__}
            rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in prev.get("rows", [])]
    done = {r.key() for r in rows}
    sr = SpeedRun(model, device, repeat=args.repeat, new_tokens=args.new_tokens, params=params)
    maxes: dict = {}
    work = plan(args)
    bar = tqdm(work, desc="speed", unit="run", disable=not sys.stderr.isatty() and not os.environ.get("LF_PROGRESS"))
    for w in bar:
        bar.set_postfix_str(" ".join(str(x) for x in w))
        if w[0] == "hf_prefill":
            key = (w[1], "prefill", "hf", 0.0, "1")
        elif w[0] == "hf_decode":
            key = (w[1], "decode", "hf", 0.0, "1")
        elif w[0] == "prefill":
            key = (w[1], "prefill", w[2], w[3] if w[2] != "dense" else 0.0, "1")
        else:
            key = (w[1], "decode", w[2], w[3] if w[2] != "dense" else 0.0, w[4])
        if key in done:
            continue
        if w[0] == "hf_prefill":
            row = sr.hf_prefill(w[1])
        elif w[0] == "hf_decode":
            row = sr.hf_decode(w[1])
        elif w[0] == "prefill":
            row = sr.prefill(w[1], w[2], w[3])
        else:
            _, t, m, s, spec = w
            reserve = 0
            if spec == "max":
                if (t, m, s) not in maxes:
                    maxes[(t, m, s)] = sr.max_batch(t, m, s)
                batch, reserve = maxes[(t, m, s)]
            else:
                batch = int(spec)
            if batch == 0:
                row = Row(t, "decode", m, s if m != "dense" else 0.0, 0, spec, status="oom")
            else:
                row = sr.decode(t, m, s, batch, spec, reserve)
        rows.append(row)
        done.add(row.key())
        _write(out, meta, rows)
    table = _write(out, meta, rows)
    plot(table, out / "speed.png", f"{args.model} ({meta['layers']} layers, {meta['device']}, {meta['dtype']})")
    print((out / "speed.md").read_text())
    return 0
