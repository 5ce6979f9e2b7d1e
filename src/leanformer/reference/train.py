"""Train a reference checkpoint: a small Llama-style ``gpt`` with a locally trained BPE tokenizer, on Shakespeare
mixed with task-suite samples (:mod:`leanformer.reference.mixture`), then measure its dense accuracy per task and
length with the harness's own prompt encoding, scorers and inference engine, and write the model card.

    PYTHONPATH=src python3 -m leanformer.reference.train --config configs/reference/small.yaml --out OUT_DIR

Runs on one GPU (bf16 autocast, ``torch.compile`` with dynamic shapes, falling back to eager if the compiler
fails) with batches built ahead by worker processes; ``--device cpu`` with a tiny config checks the whole path on a
laptop. The output directory is a checkpoint directory that ``leanformer.load`` and the ``frontier`` harness accept
(weights in bf16 safetensors, tokenizer files beside them). ``training.json`` is written when training ends and after
every evaluated (task, length) cell; ``--skip-eval`` stops after training, ``--skip-train`` evaluates an existing
folder (resuming an evaluation that was cut short), and the model card is written once the evaluation is complete.
Training checkpoints every ``checkpoint_every_s`` (``OUT/checkpoints``: weights, optimizer, step, clock) and a rerun
of a killed job resumes there; ``init_from=DIR`` continues a finished checkpoint in a new job (its weights and
tokenizer, a fresh optimizer, the data steps after its own), so a budget longer than one job is a chain of jobs; with
``model.n_layers`` a whole multiple of the checkpoint's it starts a deeper model that computes the same function, and
with fewer layers a shallower one from evenly spaced layers of it (the sizes of an isoFLOPS comparison).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from leanformer.config import atomic_write_text, cfg, from_dict, load_yaml
from leanformer.errors import UserError
from leanformer.models.gpt import GPTConfig
from leanformer.reference.mixture import ApproxCounter, MixtureConfig, batch_plan, bytes_per_token, make_batch
from leanformer.workers import in_workers


@dataclasses.dataclass(kw_only=True)
class ReferenceConfig:
    model: GPTConfig = dataclasses.field(default_factory=lambda: GPTConfig(
        vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=8448, rope_theta=50000.0))
    mixture: MixtureConfig = dataclasses.field(default_factory=MixtureConfig)
    tokenizer_vocab: int = cfg(4096, ge=300)
    lr: float = cfg(2e-3, gt=0.0)
    final_lr_fraction: float = cfg(0.05, ge=0.0, le=1.0)
    warmup_steps: int = cfg(200, ge=0)
    weight_decay: float = cfg(0.1, ge=0.0)
    max_seconds: float = cfg(300.0, gt=0.0, help="training wall-time budget incl. data waits (the LR follows it)")
    max_steps: int | None = cfg(None, ge=1)
    seed: int = cfg(0, ge=0)
    eval_lengths: list[int] = cfg(default_factory=lambda: [1024, 2048, 4096, 8192])
    eval_samples: int = cfg(50, ge=1)
    eval_tasks: list[str] = cfg(default_factory=lambda: ["niah", "variable_tracking", "common_words", "qa",
                                                          "story_retrieval", "story_multihop", "story_filtering"])
    eval_max_new_tokens: int = cfg(128, ge=1, help="generation budget per evaluation sample (keyed answers need "
                                                   "~300 for story_retrieval's 16 queries)")
    compile_scope: str = cfg("model", choices=("model", "blocks"),
                             help="what torch.compile takes: the whole loss (model) or each block apart (blocks: "
                                  "one graph for every block of one shape, compiled once whatever the depth; the "
                                  "embeddings, head and loss stay eager)")
    checkpoint_every_s: float = cfg(120.0, gt=0.0, help="seconds between resumable checkpoints (model, optimizer, "
                                                        "step, clock) under OUT/checkpoints; a rerun resumes there")
    init_from: str | None = cfg(None, help="a finished reference checkpoint folder to continue training from: its "
                                           "weights and tokenizer, a fresh optimizer, and the data steps after its "
                                           "own (a longer budget spread over several jobs); model.n_layers may "
                                           "be a whole multiple of its layers (depth grown, function kept) or "
                                           "fewer (evenly spaced layers kept, the first and last among them)")


# ---- tokenizer ------------------------------------------------------------------------------------------------


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int):
    """Byte-level BPE trained on the Shakespeare training plays plus task samples (training seeds only); digits are
    always single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from leanformer.data import ByteTokenizer, load_source
    from leanformer.reference.mixture import TRAIN_SEED_BASE
    from leanformer.tasks import TASKS

    texts = list(load_source("shakespeare").documents("train"))
    for i, name in enumerate(sorted(TASKS)):
        for j in range(12):
            texts.append(TASKS[name]().generate(ByteTokenizer(), 6000, TRAIN_SEED_BASE + 10**8 + 100 * i + j).prompt)
    tok = Tokenizer(models.BPE())
    # Digits one by one (as Llama's tokenizers do): a number is then the same tokens wherever it appears, so a value
    # seen in the prompt can be copied token by token into the answer.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(out_dir))


# ---- data workers ---------------------------------------------------------------------------------------------

_W: dict = {}


def _worker_init(tok_dir: str, mix: dict, shakespeare_path: str):
    import numpy as np

    from leanformer.data import HFTokenizer

    _W["tok"] = HFTokenizer.from_pretrained(tok_dir)
    _W["mix"] = from_dict(MixtureConfig, mix)
    _W["shakespeare"] = np.load(shakespeare_path)
    _W["tasks"] = {name: _W["mix"].task(name) for name in set(_W["mix"].tasks) | {"niah"}}
    # Calibrated per (task, length), 3% under the real count so prompts stay within the batch width.
    _W["counters"] = {}
    for name, task in _W["tasks"].items():
        for L in sorted(set(_W["mix"].lengths) | set(_W["mix"].short_lengths)):
            try:
                _W["counters"][(name, L)] = ApproxCounter(0.97 * bytes_per_token(task, _W["tok"], L))
            except UserError:  # too short for this task: make_batch substitutes a needle sample there
                pass


def _worker_batch(args):
    seed, step = args
    mix = _W["mix"]
    return make_batch(batch_plan(mix, seed, step), mix, _W["tok"], _W["shakespeare"], _W["tasks"], _W["tok"].pad_id,
                      _W["counters"])


# ---- training ------------------------------------------------------------------------------------------------


def train(rc: ReferenceConfig, out: Path, device: str, workers: int, compile_: bool) -> dict:
    import numpy as np
    import torch

    from leanformer.data import HFTokenizer, load_source, token_stream
    from leanformer.models.gpt import GPT
    from leanformer.train.checkpoint import latest_checkpoint, load_model, load_trainer_state, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    init = Path(rc.init_from) if rc.init_from else None
    offset, chain = 0, []  # data steps already trained on by ``init`` (not seen again); the jobs that made it
    if init is not None:
        try:
            prev = json.loads((init / "training.json").read_text())
            done = prev["training"]
            offset = int(done["steps"]) + int(done.get("data_step_offset", 0))
            chain = [*done.get("init_chain", []), {"config_file": prev.get("config_file"),
                                                   "overrides": prev.get("overrides", [])}]
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"init_from={rc.init_from!r}: not a finished reference checkpoint folder "
                            f"(training.json with its training steps): {e}") from None
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if not (out / f).is_file() and (init / f).is_file():
                shutil.copy(init / f, out / f)
    if not (out / "tokenizer.json").is_file():
        train_tokenizer(out, rc.tokenizer_vocab, rc.seed)
    tok = HFTokenizer.from_pretrained(out)
    if tok.vocab_size > rc.model.vocab_size:
        raise SystemExit(f"tokenizer has {tok.vocab_size} tokens > model.vocab_size {rc.model.vocab_size}")
    shakespeare = token_stream(load_source("shakespeare").documents("train"), tok)
    sh_path = out / ".shakespeare-train.npy"
    np.save(sh_path, shakespeare)
    torch.manual_seed(rc.seed)
    dev = torch.device(device)
    model = GPT(rc.model).to(dev)
    if init is not None:
        model.load_state_dict(_init_state(load_model(init, device=device).float(), rc))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": rc.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=rc.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    # dynamic shapes: the mixture's nine row widths (and row counts) share one compiled graph, not nine
    loss_fn = _compiled_loss(model, rc.compile_scope) if compile_ else model.compute_loss
    log, elapsed, start, tokens, compile_error = [], 0.0, 0, 0, None
    resume = latest_checkpoint(out)
    if resume is not None:  # a run cut short: same config, continue from its last checkpoint
        state = load_trainer_state(resume, opt)
        if state.get("config") != dataclasses.asdict(rc):
            raise UserError(f"{resume} was written by a run with another configuration; rerun with that one, or "
                            f"delete {out / 'checkpoints'} to start over")
        model.load_state_dict(load_model(resume, device=device).state_dict())
        start, elapsed, tokens, log = state["step"] + 1, state["elapsed"], state["tokens"], state["log"]
        compile_error = state.get("compile_error")
        print(f"resuming from {resume} (step {start}, {elapsed:.0f} s of {rc.max_seconds:.0f})", flush=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    steps = range(offset + start, offset + rc.max_steps) if rc.max_steps else itertools.count(offset + start)
    batches = in_workers(_worker_batch, ((rc.seed, s) for s in steps), workers, _worker_init,
                          (str(out), dataclasses.asdict(rc.mixture), str(sh_path)))
    step, last_ckpt = start - 1, elapsed
    t_start = time.perf_counter() - elapsed
    spent = elapsed >= rc.max_seconds or (rc.max_steps and start >= rc.max_steps)  # a resumed run, budget used up
    for step, batch in enumerate(() if spent else batches, start=start):
        frac = min(1.0, elapsed / rc.max_seconds)
        if rc.max_steps:
            frac = max(frac, step / rc.max_steps)
        if step < rc.warmup_steps:
            mult = (step + 1) / rc.warmup_steps
        else:
            mult = rc.final_lr_fraction + (1 - rc.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = rc.lr * mult
        b = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in batch.items()}
        try:
            with amp:
                loss, _ = loss_fn(b)
            loss.backward()
        except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the run: the step is redone eagerly
            if loss_fn == model.compute_loss:  # eager already (bound methods compare equal, never identical)
                raise
            compile_error = f"step {step}: {type(e).__name__}: {str(e)[:400]}"
            print(f"torch.compile failed at {compile_error}; training eagerly from here", flush=True)
            opt.zero_grad(set_to_none=True)
            loss_fn = _eager_loss(model)
            with amp:
                loss, _ = loss_fn(b)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0:
            lv = float(loss.detach())
            log.append({"step": step, "loss": lv, "lr": rc.lr * mult, "elapsed_s": elapsed,
                        "tokens": tokens, "length": int(b["input_ids"].shape[1])})
            print(f"step {step:5d}  loss {lv:.3f}  len {b['input_ids'].shape[1]:5d}  lr {rc.lr * mult:.2e}  "
                  f"{elapsed:6.0f}s", flush=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t_start  # wall time, data waits included: the budget bounds the job
        tokens += int((b["labels"] != -100).sum())
        if elapsed - last_ckpt >= rc.checkpoint_every_s:
            save_checkpoint(out, step, model, opt, {"config": dataclasses.asdict(rc), "elapsed": elapsed,
                                                    "tokens": tokens, "log": log, "compile_error": compile_error},
                            tokenizer_spec="files", keep_last=1)
            last_ckpt = elapsed
        if elapsed >= rc.max_seconds or (rc.max_steps and step + 1 >= rc.max_steps):
            break
    batches.close()  # the workers stop: queued batches dropped
    sh_path.unlink(missing_ok=True)
    wall = time.perf_counter() - t_start
    model.eval()
    model.to(torch.bfloat16).save_pretrained(out)  # bf16 keeps the file under 16 MB; loading casts back
    meta = json.loads((out / "model.json").read_text())
    meta["tokenizer"] = "files"  # tokenizer.json beside the weights (see train.checkpoint.load_tokenizer)
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    model.float()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the finished weights are saved: nothing to resume
    return {"steps": step + 1, "init_from": rc.init_from, "data_step_offset": offset, "init_chain": chain,
            "train_seconds": elapsed, "wall_seconds": wall, "tokens": tokens, "log": log,
            "compiled": compile_ and compile_error is None, "compile_error": compile_error,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
            "params": model.num_params(), "non_embedding_params": model.num_params(non_embedding=True)}


COMPILE_BACKEND = "inductor"  # tests trace with "eager": the same graphs, no code generation


class _BlocksCompiled:
    """``model.compute_loss`` with each block compiled apart (``nn.Module.compile``): blocks of one shape share one
    compiled graph, so the compile work is one block's, whatever the depth (the whole loss compiled took ~200 s for
    24 layers on one H100; on the 8-layer long reference there, step 25 came at 47 s this way and at 126 s with the
    whole loss, benchmarks/results/reference_long_chain-20261207T0255Z.json). A distinct object, so the training loop
    can tell it from the eager loss (a compiler failure falls back to :func:`_eager_loss`)."""

    def __init__(self, model):
        self.model = model
        for block in model.layers:
            block.compile(dynamic=True, backend=COMPILE_BACKEND)

    def __call__(self, batch):
        return self.model.compute_loss(batch)


def _compiled_loss(model, scope: str):
    import torch

    if scope == "blocks":
        return _BlocksCompiled(model)
    return torch.compile(model.compute_loss, dynamic=True, backend=COMPILE_BACKEND)


def _eager_loss(model):
    """The eager loss, with any block compiled apart returned to eager (``nn.Module.compile`` keeps the compiled call
    in ``_compiled_call_impl``; ``None`` is the module's eager state)."""
    for block in model.layers:
        block._compiled_call_impl = None
    return model.compute_loss


def _check_depth_named(rc: ReferenceConfig, overrides: list[str], config: str | None) -> None:
    """A job whose depth differs from its ``init_from`` checkpoint's must say so with ``model.n_layers=``: a config
    written for another depth would otherwise grow or cut the model silently (continuing a 4-layer checkpoint with
    an 8-layer config would grow it to 8)."""
    from leanformer.train.checkpoint import read_model_meta

    try:
        have = read_model_meta(rc.init_from)["config"]["n_layers"]
    except (UserError, KeyError):
        return  # not a checkpoint folder: training's own check names what is missing
    if have != rc.model.n_layers and not any(o.startswith("model.n_layers=") for o in overrides):
        raise UserError(f"init_from={rc.init_from!r} has {have} layers and the config "
                        f"({config or 'the defaults'}) {rc.model.n_layers}: name the depth, model.n_layers={have} to "
                        f"continue it as it is or model.n_layers={rc.model.n_layers} to change it")


def _init_state(src, rc: ReferenceConfig) -> dict:
    """``init_from``'s weights for this job's model: the same shape, or (every other shape equal) ``model.n_layers``
    a multiple of its layers, grown in depth with the function kept (:func:`leanformer.models.gpt.deepen_state`), or
    fewer layers, evenly spaced ones kept (:func:`leanformer.models.gpt.shallow_state`)."""
    from leanformer.models.gpt import deepen_state, shallow_state

    shape = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "tie_embeddings")
    have, want = src.config, rc.model
    diff = [f"{k} {getattr(have, k)} (model.{k}={getattr(want, k)})" for k in shape
            if getattr(have, k) != getattr(want, k)]
    if want.n_layers > have.n_layers and want.n_layers % have.n_layers:
        diff.append(f"n_layers {have.n_layers} (model.n_layers={want.n_layers}: fewer, or a multiple, is allowed)")
    if diff:
        raise UserError(f"init_from={rc.init_from!r} has {'; '.join(diff)}: only the depth may change (fewer layers, "
                        "or a whole multiple of its layers)")
    state = src.state_dict()
    if want.n_layers < have.n_layers:
        return shallow_state(state, have.n_layers, want.n_layers)
    return state if want.n_layers == have.n_layers else deepen_state(state, have.n_layers, want.n_layers)


def eval_samples(model_dir: Path, jobs: list[tuple[str, int, int]], workers: int = 1):
    """``(sample, prompt ids)`` for each ``(task, length, seed)`` of ``jobs``, in order, with the harness's encoding
    (:func:`leanformer.eval.generation.made_prompts`), made ahead by ``workers`` processes when more than one:
    64 samples x 7 tasks at 32K tokens are made in parallel while earlier cells run."""
    from leanformer.eval.generation import made_prompts

    for _, sample, ids in made_prompts(((name, {}, L, seed) for name, L, seed in jobs), str(model_dir),
                                       workers=workers if workers > 1 else 0):
        yield sample, ids


def evaluate(model_dir: Path, rc: ReferenceConfig, device: str, batch_size: int = 32,
             max_new_tokens: int = 128, on_cell=None, done: dict | None = None, workers: int = 1) -> dict:
    """Dense accuracy per task and length (seeds 0..eval_samples-1), with the harness's encoder, scorers and
    generation path (:class:`leanformer.infer.Engine`, bf16 on a GPU: the sweep's dense cells); ``on_cell(results)``
    after each (task, length) cell, e.g. to save what is measured so far. Cells in ``done`` (an earlier, interrupted
    evaluation's results) with ``eval_samples`` scores are kept, not measured again.

    The engine prefills rows right-padded (attention on each row's own tokens, no mask) and decodes the batch
    together: a left-padded batch through ``generate`` would build a ``[B, T, T]`` mask (~34 GB in bool for 32 rows
    at 32K tokens, 4x that once SDPA makes it additive). ``workers`` processes make the samples ahead
    (:func:`eval_samples`)."""
    from leanformer.eval.generation import PromptEncoder, generate_engine
    from leanformer.eval.models import load_model as load_hf
    from leanformer.infer import Engine
    from leanformer.tasks import TASKS
    from leanformer.train.checkpoint import load_tokenizer

    engine = Engine(load_hf(str(model_dir), device, "auto"))
    enc = PromptEncoder(load_tokenizer(model_dir), "off", "<answer>")
    measured: dict = {}
    todo = []
    for name in rc.eval_tasks:
        for L in rc.eval_lengths:
            prev = (done or {}).get(name, {}).get(str(L))
            if prev is not None and len(prev.get("scores", [])) == rc.eval_samples:
                measured[(name, L)] = prev
            else:
                todo.append((name, L))

    def results() -> dict:  # task -> length -> cell, in the config's order
        out: dict = {}
        for (name, L) in sorted(measured, key=lambda k: (rc.eval_tasks.index(k[0]), rc.eval_lengths.index(k[1]))):
            out.setdefault(name, {})[str(L)] = measured[(name, L)]
        return out

    made = eval_samples(model_dir, [(n, L, s) for n, L in todo for s in range(rc.eval_samples)], workers)
    for name, L in todo:
        task = TASKS[name]()
        scores, examples = [], []
        for i in range(0, rc.eval_samples, batch_size):
            chunk = [next(made) for _ in range(min(batch_size, rc.eval_samples - i))]
            gens, _ = generate_engine(engine, enc, [ids for _, ids in chunk], max_new_tokens)
            scores += [task.score(g.text, s) for g, (s, _) in zip(gens, chunk)]
            examples += [{"seed": s.seed, "output": g.text, "gold": s.answer_text}
                         for g, (s, _) in list(zip(gens, chunk))[:3 - len(examples)]]
        measured[(name, L)] = {"mean": sum(scores) / len(scores), "scores": scores, "examples": examples}
        print(f"{name:18s} {L:6d}  {sum(scores) / len(scores):.3f}", flush=True)
        if on_cell is not None:
            on_cell(results())
    made.close()
    return results()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML with ReferenceConfig fields (configs/reference/small.yaml)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--skip-train", action="store_true",
                    help="only evaluate an existing --out (its recorded training, if any, is kept)")
    ap.add_argument("--skip-eval", action="store_true",
                    help="only train: record the training, evaluate later with --skip-train")
    ap.add_argument("set", nargs="*", help="overrides key.sub=value")
    args = ap.parse_args(argv)
    if args.skip_train and args.skip_eval:
        ap.error("--skip-train and --skip-eval together leave nothing to do")
    from leanformer.devices import check_device

    try:
        check_device(args.device, "--device")
    except UserError as e:
        ap.error(str(e))  # one line and exit 2, before any work
    from leanformer.config import apply_overrides
    from leanformer.reference.card import write_card

    raw = apply_overrides(load_yaml(args.config) if args.config else {}, args.set)
    rc = from_dict(ReferenceConfig, raw)
    if rc.init_from and not args.skip_train:
        _check_depth_named(rc, args.set, args.config)
    out = Path(args.out)
    record = out / "training.json"
    report = {"config": raw, "resolved_config": dataclasses.asdict(rc), "config_file": args.config,
              "overrides": args.set, "training": {}}
    done: dict = {}
    if args.skip_train:
        if record.is_file():  # the record of how the weights were trained stays; only the accuracy is new
            prev = json.loads(record.read_text())
            report.update({k: prev[k] for k in ("config", "resolved_config", "config_file", "overrides", "training")
                           if k in prev})
            if prev.get("evaluation_complete") is False:  # an evaluation cut short resumes where it stopped
                done = prev.get("dense_accuracy", {})
    else:
        report["training"] = train(rc, out, args.device, args.workers, not args.no_compile)

    def save(acc: dict, complete: bool) -> None:
        report.update(dense_accuracy=acc, evaluation_complete=complete)
        atomic_write_text(record, json.dumps(report, indent=1))

    save(done, False)  # the training record survives an evaluation that is cut short
    if args.skip_eval:
        print(f"trained; evaluate with --skip-train --out {out}")
        return
    acc = evaluate(out, rc, args.device, max_new_tokens=rc.eval_max_new_tokens, on_cell=lambda a: save(a, False),
                   done=done, workers=args.workers)
    save(acc, True)
    write_card(out)
    print(json.dumps({k: {L: round(v["mean"], 3) for L, v in d.items()} for k, d in acc.items()}))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a bad config, override or folder: one line, as the leanformer command prints it
        print(f"leanformer.reference.train: error: {e}", file=sys.stderr)
        sys.exit(2)
