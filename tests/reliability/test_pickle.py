"""Pickled checkpoints are refused unless the user passes ``--allow-pickle``; even then they are read with
``torch.load(weights_only=True)``, so a malicious pickle never runs. Covers our checkpoints, Hugging Face model
folders (frontier, DMC base) and T5 init, the CLI flag, and a source scan that keeps it true afterwards."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

import leanformer
from leanformer.cli import main
from leanformer.errors import CheckpointError, UserError
from leanformer.models.registry import build_model, model_config_from_dict
from leanformer.reliability import ALLOW_PICKLE_ENV, load_pickled_weights

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "leanformer"


class Exploit:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def _no_pickle_env(monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)  # restored after tests that pass --allow-pickle


def _our_pickled_checkpoint(path: Path):
    model = build_model(model_config_from_dict({"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2}))
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "model.pt")
    return model


def test_our_pickled_checkpoint_refused_then_loaded_weights_only(tmp_path):
    model = _our_pickled_checkpoint(tmp_path)
    for target in (tmp_path, tmp_path / "model.pt"):
        with pytest.raises(UserError, match=r"model\.pt is a pickled checkpoint.*--allow-pickle"):
            leanformer.load(target)
    from leanformer.train.checkpoint import load_model

    loaded = load_model(tmp_path, allow_pickle=True)
    x = torch.randint(0, 256, (1, 9))
    assert torch.equal(loaded(x), model.eval()(x))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    with open(bad, "wb") as f:
        pickle.dump({"w": Exploit(marker)}, f, protocol=2)
    with pytest.raises(UserError, match="pickled checkpoint"):
        load_pickled_weights(bad)
    with pytest.raises(CheckpointError, match=f"{bad} cannot be read as weights only"):
        load_pickled_weights(bad, allow=True)
    torch.save({"w": torch.ones(2), "x": "not a tensor"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="flat name -> tensor"):
        load_pickled_weights(tmp_path / "mixed.pt", allow=True)
    assert not marker.exists()


@pytest.fixture(scope="module")
def hf_pickled(tmp_path_factory):
    """A tiny random Llama saved as config.json + pytorch_model.bin only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(42)
    path = tmp_path_factory.mktemp("hf_bin")
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=257, eos_token_id=258, pad_token_id=256)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path, model.eval()


def test_hf_pickled_model_refused_unless_allowed(hf_pickled):
    from leanformer.eval.models import load_model

    path, ref = hf_pickled
    with pytest.raises(UserError, match=r"pytorch_model\.bin is a pickled checkpoint"):
        load_model(str(path), device="cpu")
    os.environ[ALLOW_PICKLE_ENV] = "1"
    model = load_model(str(path), device="cpu")
    x = torch.randint(0, 256, (1, 7))
    torch.testing.assert_close(model(x).logits, ref(x).logits)


def test_dmc_base_from_pickled_hf_folder_refused(hf_pickled):
    from leanformer.config import DataConfig
    from leanformer.train.dmc_retrofit import load_base

    with pytest.raises(UserError, match=r"pytorch_model\.bin is a pickled checkpoint"):
        load_base(hf_pickled[0], DataConfig())


def test_t5_from_pickled_hf_folder_refused(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from leanformer.models.t5 import T5

    cfg = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"pytorch_model\.bin is a pickled checkpoint"):
        T5.from_pretrained_hf(str(tmp_path))


def test_cli_refuses_then_accepts_with_flag(hf_pickled, tmp_path, capsys):
    base = ["frontier", f"models={hf_pickled[0]}", "tasks=niah", "lengths=701", "samples=1", "max_new_tokens=2",
            "tokenizer=byte", f"store={tmp_path / 'r.db'}", "progress=false"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pytorch_model.bin is a pickled checkpoint" in err and "--allow-pickle" in err
    assert main(base + ["--allow-pickle"]) == 0
    assert "1 added" in capsys.readouterr().out


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _scan(text: str, rel: str) -> list[str]:
    problems = []
    for node, owner, name in _calls(ast.parse(text)):
        const = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        where = f"{rel}:{node.lineno}"
        if owner == "torch" and name == "load" and const.get("weights_only") is not True:
            problems.append(f"{where}: torch.load without weights_only=True")
        if owner in ("pickle", "dill", "cloudpickle") and name in ("load", "loads"):
            problems.append(f"{where}: {owner}.{name}")
        if const.get("trust_remote_code") is True or const.get("allow_pickle") is True:
            problems.append(f"{where}: trust_remote_code/allow_pickle=True")
        if name == "from_pretrained" and ("For" in owner or owner.startswith("AutoModel")):
            problems.append(f"{where}: {owner}.from_pretrained outside leanformer.models.hf.hf_from_pretrained")
    return problems


def test_source_never_unpickles_or_runs_remote_code():
    """Every torch.load passes weights_only=True; no pickle.load(s), no trust_remote_code=True, no numpy
    allow_pickle=True; model classes are loaded through leanformer.models.hf.hf_from_pretrained."""
    bad = ("torch.load(p)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
           "AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True)\n")
    assert len(_scan(bad, "x.py")) == 5  # the scan itself can fail
    problems = []
    for path in sorted([*SRC.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        problems += _scan(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, problems
