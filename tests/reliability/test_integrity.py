"""Integrity: every file of a checkpoint truncated, bit-flipped or emptied is detected with a message naming that
file; the run falls back to the previous checkpoint; the CLI says so in one line and exits 2. Also checkpoints
without state.json (``save_pretrained`` folders), unknown format versions and truncated tokenizer files."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanformer.cli import main
from leanformer.config import load_run_config
from leanformer.errors import CheckpointError, UserError
from leanformer.train.checkpoint import latest_checkpoint, list_checkpoints, load_model, verify_checkpoint
from leanformer.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
        "trainer.batch_size=2", "trainer.eval_batches=1", "trainer.progress=false", "trainer.device=cpu",
        "data.max_tokens=20000", "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.eval_every=4",
        "trainer.log_every=1"]
FILES = ["model.safetensors", "trainer.safetensors", "state.json", "model.json"]
MUTATIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "bit-flipped": lambda b: b[:-7] + bytes([b[-7] ^ 0x01]) + b[-6:],
    "emptied": lambda b: b"",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(load_run_config(PRESET, TINY), out).fit()
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002", "step_00000004"]
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("name", FILES)
def test_damaged_checkpoint_file_is_named_and_previous_used(run, name, mutation, capsys):
    newest = list_checkpoints(run)[-1]
    path = newest / name
    path.write_bytes(MUTATIONS[mutation](path.read_bytes()))
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(newest)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert latest_checkpoint(run).name == "step_00000002"  # the previous one, with a warning naming the file
    assert str(path) in capsys.readouterr().err
    assert main(["eval", str(newest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leanformer: error: ") and err.count("\n") == 1 and str(path) in err


def test_resume_after_damage_continues_from_previous_checkpoint(run, capsys):
    newest = list_checkpoints(run)[-1]
    (newest / "model.safetensors").write_bytes(b"\0" * 64)
    cfg = load_run_config(run / "config.yaml", ["trainer.max_steps=5"])
    result = Trainer(cfg, run).fit()
    assert result["step"] == 5
    assert "resuming" in capsys.readouterr().out
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # steps 3 and 4 are re-run from step 2, not duplicated in the log
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5]


def test_unknown_format_version_and_missing_checksums(run):
    newest = list_checkpoints(run)[-1]
    state = json.loads((newest / "state.json").read_text())
    (newest / "state.json").write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99; this leanformer reads version 1"):
        verify_checkpoint(newest)
    (newest / "state.json").write_text(json.dumps({**state, "files": {}}))
    with pytest.raises(CheckpointError, match="no checksums"):
        verify_checkpoint(newest)
    (newest / "state.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        verify_checkpoint(newest)


def test_folder_without_state_json_names_the_bad_file(run, tmp_path):
    model = load_model(run)
    plain = tmp_path / "plain"
    model.save_pretrained(plain)  # model.safetensors + model.json, no checksums
    weights = plain / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match=f"cannot load weights from {weights}"):
        load_model(plain)
    weights.write_bytes(good)
    meta = plain / "model.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(CheckpointError, match=f"{meta} is corrupted"):
        load_model(plain)
    meta.write_text(json.dumps({"family": "gpt", "config": {"name": "gpt", "d_model": 31}}))
    with pytest.raises(CheckpointError, match=f"{meta} holds an invalid config"):
        load_model(plain)
    (plain / "model.json").unlink()
    with pytest.raises(CheckpointError, match="no valid checkpoint found"):
        load_model(plain)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["tokenizer.json", "tokenizer_config.json"]), data=st.data())
def test_corrupt_tokenizer_file_is_named(tmp_path, name, data):
    """Any truncation or byte substitution of a tokenizer file: a working tokenizer or a UserError naming it."""
    from leanformer.data.tokenizers import get_tokenizer

    d = Path(tempfile.mkdtemp(dir=tmp_path)) / "tok"
    shutil.copytree(ROOT / "src" / "leanformer" / "assets" / "reference", d)
    f = d / name
    raw = f.read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "replace", "garbage"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "replace":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i + 1:]
    else:
        raw = data.draw(st.binary(max_size=200))
    f.write_bytes(raw)
    try:
        tok = get_tokenizer(str(d))
    except UserError as e:
        assert str(f) in str(e) or str(d) in str(e), e
        assert "\n" not in str(e)
        return
    ids = tok.encode("To be, or not to be")
    assert all(0 <= i < tok.vocab_size for i in ids)
