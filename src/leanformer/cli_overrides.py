"""One command-line convention for every ``leanformer`` subcommand that reads a config:

    leanformer COMMAND [PATH ...] [key.sub=value ...] [--flag VALUE ...]

in any order. ``PATH`` is the YAML config (or, for some commands, a checkpoint first); ``key.sub=value`` overrides
any config field with the validation of :func:`leanformer.config.from_dict` (unknown keys refused with the closest
one suggested, types and ranges checked, errors naming the dotted key); values are YAML (``lengths=[1024,2048]``),
and a list field also takes a comma list (``lengths=1024,2048``). Flags are only for what is not a config field
(``--out``, ``--device``, ``--allow-pickle``, ...).

A subcommand module uses four calls (no torch at import time):

- :func:`add_config_arguments` ``(parser, paths=("CONFIG",), help=...)`` registers the positional list. Items that
  follow flags are routed into it by :func:`leanformer.cli.parse` (argparse alone takes a positional list in one
  piece, so items after a flag would be "unrecognized arguments").
- :func:`config_arguments` ``(args, paths=("CONFIG",), required=0, example=...)`` splits what was given into
  ``(paths, overrides)``: ``paths`` a list as long as ``paths`` (``None`` where not given), ``overrides`` the
  ``key=value`` strings in command-line order (deprecated flag aliases first).
- :func:`build_config` ``(cls, path, overrides, base=None)`` loads the YAML (or starts from ``base``), applies the
  overrides and returns the validated dataclass (``RunConfig`` through its ``from_raw``).
- :func:`add_device_argument` ``(parser, default="auto")`` adds ``--device``, checked as it is parsed (a device
  this machine lacks is one error line naming ``--device``; see :func:`leanformer.devices.check_device`).

:func:`add_deprecated_flags` keeps an old flag that duplicated a config field as a hidden alias of its override
(``--budget 6`` -> ``budget=6``): old command lines keep working, while help and docs show only the overrides.
"""

from __future__ import annotations

import argparse
import re

DEST = "config_args"
# ``key.sub=value``: a dotted key (method_params.decode:quest.page_size) before the first '='; a path holding '='
# after a '/' stays a path.
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]*=")


def add_config_arguments(parser: argparse.ArgumentParser, paths: tuple[str, ...] = ("CONFIG",),
                         help: str = "") -> None:
    """The positional list ``[PATH ...] [key.sub=value ...]`` of a subcommand, accepted anywhere among its flags."""
    parser.add_argument(DEST, nargs="*", metavar="|".join((*paths, "key.sub=value")),
                        help=help or f"{' '.join(paths)} then config overrides such as trainer.max_steps=100, in "
                                     "any order among the flags")
    parser.set_defaults(_config_args=DEST, _prog=parser.prog)


def is_override(item: str) -> bool:
    return bool(_OVERRIDE.match(item))


def config_arguments(args: argparse.Namespace, paths: tuple[str, ...] = ("CONFIG",), required: int = 0,
                     example: str = "") -> tuple[list[str | None], list[str]]:
    """``(paths, overrides)`` of a subcommand's positional list; a :class:`UserError` for a missing or extra path."""
    from leanformer.errors import UserError

    given, overrides = [], []
    for item in getattr(args, DEST, None) or []:
        (overrides if is_override(item) else given).append(item)
    if len(given) > len(paths):
        want = f"{' '.join(paths)}, then key=value overrides" if paths else "key=value overrides"
        raise UserError(f"unexpected argument {given[len(paths)]!r}: give {want}"
                        + (f"; e.g. {example}" if example else ""))
    if len(given) < required:
        raise UserError(f"missing {paths[len(given)]}" + (f"; e.g. {example}" if example else ""))
    deprecated = [o for _, o in getattr(args, "_deprecated", None) or []]
    return given + [None] * (len(paths) - len(given)), deprecated + overrides


def legacy_config(path: str | None, flag: str, value: str | None) -> str | None:
    """The config file given as a path or through an old flag (``-c FILE``, ``--config FILE``), not both."""
    from leanformer.errors import UserError

    if value is None:
        return path
    if path is not None:
        raise UserError(f"two configs given ({path} and {flag} {value}); give one")
    return value


def with_device(overrides: list[str], device: str | None, key: str = "device") -> list[str]:
    """``overrides`` with a ``--device`` flag's value as the config's device field (when one was given)."""
    return overrides if device is None else [*overrides, f"{key}={device}"]


def build_config(cls, path, overrides: list[str], base: dict | None = None):
    """YAML file ``path`` (else ``base``, else nothing) + ``key=value`` overrides -> the validated ``cls``."""
    from leanformer.config import apply_overrides, from_dict, load_yaml

    raw = load_yaml(path) if path is not None else dict(base or {})
    raw = apply_overrides(raw, list(overrides))
    from_raw = getattr(cls, "from_raw", None)
    return from_raw(raw) if from_raw is not None else from_dict(cls, raw)


def device_flag(text: str) -> str:
    """argparse ``type`` of ``--device``: the device checked now, so a bad one is argparse's one-line error."""
    from leanformer.devices import check_device
    from leanformer.errors import UserError

    try:
        return check_device(text, "--device")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--device ")) from None


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto", help: str = "") -> None:
    parser.add_argument("--device", default=default, type=device_flag,
                        help=help or "auto (a GPU when there is one), cpu, cuda or cuda:N")


class _Alias(argparse.Action):
    """A deprecated flag: records ``key=value`` (or the fixed ``key=const`` of a switch) in ``_deprecated``."""

    def __init__(self, option_strings, dest, key: str, const=None, **kwargs):
        super().__init__(option_strings, "_deprecated", nargs=0 if const is not None else None, **kwargs)
        self.key, self.fixed = key, const

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.fixed if self.fixed is not None else values
        override = value if self.key is None else f"{self.key}={value}"
        items = list(getattr(namespace, "_deprecated", None) or [])
        namespace._deprecated = [*items, (option_string, override)]


def add_deprecated_flags(parser: argparse.ArgumentParser, flags: dict[str, str | tuple[str, str] | None]) -> None:
    """Hidden aliases: ``{"--budget": "budget", "--no-progress": ("progress", "false"), "--set": None}`` (``None``:
    the flag's value is itself a ``key=value`` override)."""
    parser.set_defaults(_deprecated=[])
    for flag, target in flags.items():
        key, const = target if isinstance(target, tuple) else (target, None)
        parser.add_argument(flag, action=_Alias, key=key, const=const, help=argparse.SUPPRESS)
