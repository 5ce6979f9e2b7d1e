"""The one command-line convention (:mod:`leanformer.cli_overrides`): positional paths and ``key=value`` overrides
in any order, validated by the config's own dataclass; comma lists; hidden aliases of older flags."""

import argparse

import pytest

from leanformer.cli import Parser, parse
from leanformer.cli_overrides import (
    add_config_arguments,
    add_deprecated_flags,
    add_device_argument,
    build_config,
    config_arguments,
)
from leanformer.config import apply_overrides
from leanformer.errors import ConfigError, UserError
from leanformer.eval.harness import FrontierConfig


def _parser():
    top = Parser(prog="leanformer")
    sub = top.add_subparsers(dest="command")
    p = sub.add_parser("cmd")
    add_config_arguments(p, ("CHECKPOINT", "CONFIG"))
    p.add_argument("--out")
    add_device_argument(p)
    add_deprecated_flags(p, {"--samples": "samples", "--quiet": ("progress", "false"), "--set": None})
    return top


def test_paths_and_overrides_in_any_order():
    args = parse(_parser(), ["cmd", "ckpt", "a.b=1", "--out", "x", "grid.yaml", "c=[1, 2]", "--device", "cpu"])
    assert (args.out, args.device) == ("x", "cpu")
    assert config_arguments(args, ("CHECKPOINT", "CONFIG")) == (["ckpt", "grid.yaml"], ["a.b=1", "c=[1, 2]"])
    args = parse(_parser(), ["cmd", "--out", "x", "runs/a=b", "k=v"])  # '=' after a '/' is a path
    assert config_arguments(args, ("CHECKPOINT", "CONFIG")) == (["runs/a=b", None], ["k=v"])
    with pytest.raises(UserError, match="unexpected argument 'three'"):
        config_arguments(parse(_parser(), ["cmd", "one", "two", "three"]), ("CHECKPOINT", "CONFIG"))
    with pytest.raises(UserError, match="missing CHECKPOINT; e.g. leanformer cmd ckpt"):
        config_arguments(parse(_parser(), ["cmd", "k=v"]), ("CHECKPOINT", "CONFIG"), required=1,
                         example="leanformer cmd ckpt")


def test_old_flags_are_aliases_of_overrides():
    args = parse(_parser(), ["cmd", "--samples", "3", "k=v", "--quiet", "--set", "task_params.niah.n=2"])
    assert config_arguments(args, ("CHECKPOINT", "CONFIG"))[1] == ["samples=3", "progress=false",
                                                                    "task_params.niah.n=2", "k=v"]


def test_build_config_validates_like_train():
    c = build_config(FrontierConfig, None, ["tasks=niah,qa", "lengths=1024", "sparsities=[0.5, 0.9]",
                                            "answer_prefix=Answer: "])
    assert (c.tasks, c.lengths, c.sparsities, c.answer_prefix) == (["niah", "qa"], [1024], [0.5, 0.9], "Answer: ")
    with pytest.raises(ConfigError, match="unknown config key 'sampels'; did you mean 'samples'"):
        build_config(FrontierConfig, None, ["sampels=2"])
    with pytest.raises(ConfigError, match=r"lengths\[1\]: expected an integer, got 'x'"):
        build_config(FrontierConfig, None, ["lengths=1,x"])
    assert apply_overrides({}, ["a.b=[1, 2]", "c={d: 1}"]) == {"a": {"b": [1, 2]}, "c": {"d": 1}}


def test_device_flag_is_checked_as_it_is_parsed(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["cmd", "--device", "tpu"])
    err = capsys.readouterr().err
    assert err == ("leanformer: error: argument --device: tpu: not a device; choose auto, cpu, cuda or cuda:N "
                   "(see: leanformer cmd --help)\n")
    assert isinstance(_parser().parse_args(["cmd"]), argparse.Namespace)
