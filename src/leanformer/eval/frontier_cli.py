"""``leanformer frontier [CONFIG] [key=value ...]``: run a sparse-attention sweep grid into a crash-safe SQLite
results store.

Examples::

    leanformer frontier configs/frontier/smoke.yaml
    leanformer frontier models=Qwen/Qwen2.5-7B-Instruct prefill=vertical_slash,flexprefill decode=quest \\
        sparsities=0.5,0.8,0.95 tasks=niah,qa lengths=16384 samples=20 store=runs/f/results.db --device cuda
    torchrun --nproc-per-node 8 -m leanformer.cli frontier configs/frontier/qwen.yaml   # ranks shard the grid

``key=value`` overrides any field of the YAML file (:class:`~leanformer.eval.harness.FrontierConfig`), nested ones
too (``task_params.niah.n_queries=2``); lists take ``a,b`` or ``[a, b]``. Re-running the same command skips finished
samples, so an interrupted sweep is resumed by running it again.
"""

from __future__ import annotations

import argparse

EXAMPLE = "leanformer frontier configs/frontier/smoke.yaml samples=2"
# Flags of earlier versions that duplicated a config field: hidden aliases of the override.
_OLD_FIELDS = ("models", "tasks", "lengths", "prefill", "decode", "methods", "sparsities", "samples", "seed",
               "batch_size", "max_new_tokens", "store", "device_map", "dtype", "tokenizer", "chat_template",
               "answer_prefix")


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from leanformer.cli_overrides import add_config_arguments, add_deprecated_flags, add_device_argument

    p = subparsers.add_parser(name, help="run a sparse-attention sweep grid into a SQLite results store",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, help="a YAML file with the grid (e.g. configs/frontier/smoke.yaml) and overrides like "
                                 "samples=2 tasks=niah,qa, in any order among the flags")
    add_device_argument(p, default=None, help="where to run: auto (cuda:LOCAL_RANK when there is a GPU), cpu, cuda "
                                              "or cuda:N (default: the config's device)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the grid size; run and write nothing")
    p.add_argument("--rank", type=int, default=None, help="this process's shard (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="local processes sharing the grid, one shard each (CPU: small models decode faster as "
                        "several one-thread processes than as one many-thread process); not with --rank/torchrun")
    p.add_argument("-c", "--config", dest="config_file", default=None, help=argparse.SUPPRESS)  # older CONFIG
    add_deprecated_flags(p, {**{f"--{k.replace('_', '-')}": k for k in _OLD_FIELDS},
                             "--no-progress": ("progress", "false"), "--set": None})
    return p


def raw_config(args: argparse.Namespace) -> dict:
    """YAML file + overrides (+ ``--device``), as plain data."""
    from leanformer.cli_overrides import config_arguments, legacy_config, with_device
    from leanformer.config import apply_overrides, load_yaml

    (config,), overrides = config_arguments(args, example=EXAMPLE)
    config = legacy_config(config, "-c", args.config_file)
    overrides = with_device(overrides, args.device)
    return apply_overrides(load_yaml(config) if config else {}, overrides)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from leanformer.errors import UserError
    from leanformer.eval import harness
    from leanformer.eval.store import remove_if_empty
    from leanformer.reliability import removed_if_left_empty

    c = harness.load_config(raw_config(args))
    env_rank, env_world = harness.rank_and_world()
    rank = env_rank if args.rank is None else args.rank
    world = env_world if args.world_size is None else args.world_size
    if world < 1:
        raise UserError(f"--world-size {world} must be >= 1")
    if args.dry_run:
        cells = harness.shard(harness.validate(c, dry_run=True), rank, world)
        print(f"grid ok: {len(cells)} cells x {c.samples} samples for rank {rank}/{world}; store {c.store}")
        return 0
    if args.workers != 1 and world != 1:
        raise UserError(f"--workers {args.workers} shards the grid itself: not with world size {world} "
                        "(--world-size / torchrun)")
    new_store = not Path(c.store).exists()
    # A sweep that fails before its first sample (a model that does not load, a device that is missing) leaves no
    # empty store or folder behind.
    with removed_if_left_empty(Path(c.store).absolute().parent):
        try:
            if args.workers != 1:
                stats, who = harness.run_sweep_processes(c, args.workers), f"{args.workers} processes"
            else:
                stats, who = harness.run_sweep(c, rank, world), f"rank {rank}/{world}"
        except BaseException:
            if new_store:
                remove_if_empty(c.store)
            raise
    print(f"{who}: {stats['cells']} cells, {stats['done_before']} samples already done, "
          f"{stats['added']} added; store {c.store}")
    if rank == 0:
        print(harness.summarize(c))
    return 0
