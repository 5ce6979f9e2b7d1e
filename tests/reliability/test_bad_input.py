"""Bad input, property-based (hypothesis): any config value, any shape, any command line, any corpus bytes and any
sequence length is either accepted and works, or refused with a one-line error naming the problem and exit 2 —
never a traceback. Also NaN/inf losses: one line, and the last good checkpoint stays the newest."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanformer.cli import main
from leanformer.config import RunConfig, load_yaml
from leanformer.errors import ConfigError, UserError
from leanformer.models.registry import build_model, get_family, model_config_from_dict

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "gpt-shakespeare.yaml"
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
        "trainer.batch_size=2", "trainer.eval_batches=1", "trainer.progress=false", "trainer.device=cpu",
        "data.max_tokens=20000", "trainer.max_steps=2", "trainer.ckpt_every=2", "trainer.eval_every=2",
        "schedule.warmup_steps=1"]
FAST = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(), st.text(max_size=6),
                   st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text("ab", max_size=2),
                                                                            st.integers(), max_size=2))
KEYS = st.text("abcdefghijklmnopqrstuvwxyz_.0123", min_size=1, max_size=12)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("leanformer: error: ") and err.count("\n") == 1, err
    return err


@FAST
@given(section=st.sampled_from(["model", "data", "optim", "schedule", "trainer"]), data=st.data(), value=VALUES)
def test_any_config_value_is_accepted_or_refused_by_name(section, data, value):
    raw = load_yaml(PRESET)
    fields = [f.name for f in dataclasses.fields(type(getattr(RunConfig.from_raw(raw), section)))]
    fields += ["name"] if section == "model" else []  # the family, read by the registry
    key = data.draw(st.one_of(st.sampled_from(fields), KEYS))
    raw[section][key] = value
    try:
        cfg = RunConfig.from_raw(raw)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and (f"{section}." in msg or f"{section}:" in msg), msg
        if key not in fields:
            assert f"unknown config key '{section}.{key}'" in msg
        return
    assert key in fields
    assert RunConfig.from_raw(cfg.to_raw()).to_raw() == cfg.to_raw()  # what is accepted saves and reloads


@FAST
@given(family=st.sampled_from(["gpt", "hourglass", "dynamic_pooling", "dmc"]), d_model=st.integers(1, 48),
       n_heads=st.integers(1, 8), n_kv=st.one_of(st.none(), st.integers(1, 8)), seq=st.integers(1, 24))
def test_inconsistent_shapes_refused_consistent_ones_run(family, d_model, n_heads, n_kv, seq):
    raw = {"name": family, "d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv, "max_seq_len": 16,
           "vocab_size": 64}
    raw.update({"gpt": {"n_layers": 1}, "dmc": {"n_layers": 1}, "hourglass": {"hierarchy": "1@1 1@2 1@1"},
                "dynamic_pooling": {"n_pre": 1, "n_short": 1, "n_post": 1}}[family])
    kv = n_kv or n_heads
    consistent = d_model % n_heads == 0 and (d_model // n_heads) % 2 == 0 and n_heads % kv == 0
    try:
        config = model_config_from_dict(raw)
    except ConfigError as e:
        assert not consistent, e
        assert "\n" not in str(e) and str(e).startswith("model")
        return
    assert consistent
    torch.manual_seed(42)
    model = build_model(config).eval()
    x = torch.randint(0, 64, (1, seq))
    if seq > 16:  # longer than the model: refused by name, not an index error deep inside
        with pytest.raises(ValueError, match=f"sequence of {seq} tokens exceeds model.max_seq_len=16"):
            model(x)
    else:
        with torch.no_grad():
            logits = model(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        assert logits.shape == (1, seq, 64) and torch.isfinite(logits).all()


def test_every_family_config_names_unknown_keys():
    for family in ["gpt", "hourglass", "dynamic_pooling", "dmc", "t5"]:
        cfg_cls, _ = get_family(family)
        with pytest.raises(ConfigError, match=r"unknown config key 'model\.n_head'"):
            model_config_from_dict({"name": family, "n_head": 4})
        assert dataclasses.is_dataclass(cfg_cls)


ARG_WORDS = st.one_of(
    st.sampled_from(["--out", "--split", "--batch-size", "--max-batches", "--device", "models=x", "tasks=niah",
                     "lengths=1,2", "samples=-1", "sparsities=[2]", "store=/dev/null/r.db", "--dry-run", "--restart",
                     "--length", "--alpha", "--n-boot", "target_cr=0", "budget=x", "--budget", "--seeds", "retrofit",
                     "gqa", "calibrate", "nope.yaml", "model.d_model=-3", "trainer.max_steps=0", "optim.lr=abc",
                     "data.seq_len=99999", "x=1", "=", "--", "-1", "0", "1.5", "nan", "niah", "cuda:9", "test"]),
    st.text("abcxyz019=.-_/:", min_size=1, max_size=10))


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["train", "eval", "frontier", "analyze", "finetune", "dmc", "rst", "compare"]),
       words=st.lists(ARG_WORDS, max_size=6))
def test_any_command_line_fails_cleanly(command, words, tmp_path, monkeypatch, capsys):
    """Random argument lists (paths that do not exist, bad numbers, unknown keys, unknown or incomplete flags): exit
    2 and exactly one line, argparse's mistakes included (no usage dump, no traceback)."""
    monkeypatch.chdir(tempfile.mkdtemp(dir=tmp_path))
    rc = main([command, *words])
    assert rc == 2, (command, words)
    _one_line_error(capsys)


@FAST
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                         st.sampled_from([b"", b"   \n\t ", b"\x00" * 50, bytes(range(256)) * 2,
                                          "é".encode("latin-1") * 100])))
def test_any_corpus_bytes_give_text_or_a_named_refusal(content, tmp_path):
    from leanformer.data import load_source, token_stream
    from leanformer.data.packing import RandomWindows
    from leanformer.data.tokenizers import ByteTokenizer

    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "corpus.txt"
    path.write_bytes(content)
    try:
        source = load_source(str(path))
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        assert not content.decode("utf-8", "replace").strip() or b"\x00" in content or "binary" in str(e)
        return
    tokens = token_stream(source.documents("train"), ByteTokenizer())
    try:
        batches = RandomWindows(tokens, 16, 2)
    except UserError as e:
        assert "fewer than data.seq_len+2=18" in str(e)
        return
    assert batches.batch(0)["input_ids"].shape == (2, 16)


@pytest.mark.parametrize("content,message", [
    (b"", "holds no text"), (b"\x00\x01\x02" * 100, "looks binary (NUL bytes)"),
    (bytes(range(128, 256)) * 20, "looks binary"), (b"tiny", "fewer than data.seq_len+2=18")])
def test_train_on_empty_binary_or_tiny_corpus_exits_2(tmp_path, capsys, content, message):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    assert main(["train", str(PRESET), *TINY, f"data.source={corpus}", "--out", str(tmp_path / "run")]) == 2
    assert message in _one_line_error(capsys)


def test_sequence_longer_than_the_model_exits_2(tmp_path, capsys):
    assert main(["train", str(PRESET), *TINY, "data.seq_len=2000", "--out", str(tmp_path / "run")]) == 2
    assert "data.seq_len=2000 exceeds model.max_seq_len=1024" in _one_line_error(capsys)


def test_nan_loss_stops_in_one_line_and_never_checkpoints_bad_weights(tmp_path, capsys):
    from leanformer.train.checkpoint import latest_checkpoint, list_checkpoints

    out = tmp_path / "run"
    assert main(["train", str(PRESET), *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    # lr = inf: step 3's update turns the weights into NaN; its checkpoint (ckpt_every=1) must not be written
    assert main(["train", "--out", str(out), "trainer.max_steps=6", "trainer.ckpt_every=1", "optim.lr=.inf"]) == 2
    err = _one_line_error(capsys)
    assert "NaN/inf at step 3; not writing a checkpoint" in err or "training loss became nan" in err
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002"] == [latest_checkpoint(out).name]
    assert torch.isfinite(torch.cat([p.flatten() for p in __import__("leanformer").load(out).parameters()])).all()
