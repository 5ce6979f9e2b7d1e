"""The ``leanformer`` command. Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; this file only maps names to modules, so adding a command touches one line here.

User errors (:class:`leanformer.errors.UserError`) and command-line mistakes print one line
(``leanformer: error: ...``) and exit with status 2; bugs keep their traceback. Config overrides
(``key.sub=value``) may come before or after the flags (:mod:`leanformer.cli_overrides`). Every subcommand takes
``--allow-pickle``; without it no pickled weights file is ever loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from leanformer.errors import UserError

# subcommand -> module. Modules must import quickly (no torch at import time).
COMMANDS: dict[str, str] = {
    "train": "leanformer.train.cli",
    "finetune": "leanformer.train.finetune",
    "eval": "leanformer.eval.cli",
    "frontier": "leanformer.eval.frontier_cli",
    "analyze": "leanformer.analysis.cli",
    "merge": "leanformer.eval.merge_cli",
    "dmc": "leanformer.train.dmc_cli",
    "rst": "leanformer.train.rst_cli",
    "compare": "leanformer.train.compare",
    "demo": "leanformer.demo",
    "speed": "leanformer.infer.speed_cli",
    "depth": "leanformer.eval.depth",
}


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line and exit 2; the usage is what ``--help`` is for."""

    def error(self, message: str):
        self.exit(2, f"leanformer: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import leanformer

    about = leanformer.__doc__.split(": ", 1)[-1].strip()  # the package's one-sentence summary
    parser = Parser(prog="leanformer", description=about[:1].upper() + about[1:])
    parser.add_argument("--version", action="version", version=f"leanformer {leanformer.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # a command whose issue has not landed yet
            raise
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run, _prog=p.prog)
        _add_allow_pickle(p, default=False)
    return parser


def _add_allow_pickle(parser: argparse.ArgumentParser, default) -> None:
    """Every command that reads weights refuses pickled files unless ``--allow-pickle`` is given (see
    :mod:`leanformer.reliability`); nested actions (``dmc retrofit``) accept it too without resetting it."""
    parser.add_argument("--allow-pickle", action="store_true", default=default,
                        help="load pickled weights (.bin/.pt/.pth) you trust, with torch.load(weights_only=True)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_allow_pickle(nested, argparse.SUPPRESS)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; positionals that follow a flag (argparse takes a positional list in one piece, before or
    after the flags but not both) join the subcommand's config arguments, where it has them."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "_config_args", None)
    flags = [x for x in extra if x.startswith("-")]
    if extra and (dest is None or flags):
        prog = getattr(args, "_prog", parser.prog)
        parser.exit(2, f"leanformer: error: unrecognized arguments: {' '.join(extra)} (see: {prog} --help)\n")
    if extra:
        setattr(args, dest, [*getattr(args, dest), *extra])
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as e:  # --help, --version, or a command-line mistake (already printed in one line)
        return int(e.code or 0)
    if getattr(args, "allow_pickle", False):
        from leanformer.reliability import set_allow_pickle

        set_allow_pickle(True)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"leanformer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leanformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
