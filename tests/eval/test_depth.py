"""``leanformer depth``: each queried needle scored on its own and placed at its value's token position; the base
override re-bases plain RoPE only; a run resumes without repeating a sample and refuses another run's folder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from leanformer import cli
from leanformer.errors import UserError
from leanformer.eval.depth import needle_depths, read_records, table
from leanformer.eval.models import open_tokenizer, set_rope_theta
from leanformer.tasks import TASKS

REF = "leanformer:reference"


@pytest.fixture(scope="module")
def tok():
    return open_tokenizer(REF)


def test_each_queried_value_is_scored_and_score_is_their_mean(tok):
    task = TASKS["niah"]()
    sample = task.generate(tok, 1024, seed=3)
    values = list(sample.answer)
    assert task.item_scores(sample.answer_text, sample) == [True] * 4
    swapped = [values[1], values[0], *values[2:]]
    pred = f"<answer>{', '.join(swapped)}</answer>"
    assert task.item_scores(pred, sample) == [False, False, True, True]
    assert task.score(pred, sample) == 0.5
    assert task.item_scores(f"<answer>{values[0]}</answer>", sample) == [True, False, False, False]
    assert task.score("no answer", sample) == 0.0


def test_needle_positions_point_at_each_value_in_the_prompt(tok):
    sample = TASKS["niah"]().generate(tok, 2048, seed=5)
    ids = tok.encode(sample.prompt)
    places = needle_depths(sample, tok)
    assert [total for _, total in places] == [len(ids)] * 4
    for (pos, _), value in zip(places, sample.answer):
        assert value in tok.decode(ids[pos:pos + 8]).replace(" ", "")
        assert value not in tok.decode(ids[:pos])  # the needle's value starts at pos, not before
    twice = dataclasses.replace(sample, prompt=f"{sample.prompt} {sample.answer[2]}.")
    with pytest.raises(UserError, match=f"value '{sample.answer[2]}' occurs 2 times"):
        needle_depths(twice, tok)


def test_table_bins_needles_by_depth():
    recs = [{"length": 1024, "seed": 0, "needles": [{"depth": 0.0, "correct": True}, {"depth": 0.55, "correct": False},
                                                    {"depth": 0.999, "correct": True}]},
            {"length": 1024, "seed": 1, "needles": [{"depth": 0.05, "correct": False}]}]
    row = table(recs, 4)["1024"]
    assert row["bins"] == [[1, 2], [0, 0], [0, 1], [1, 1]]
    assert row["samples"] == 2 and row["accuracy"] == 0.5
    assert 0 < row["ci95"] < float("inf")


def test_table_interval_is_over_samples_not_needles():
    """Four needles a sample: the interval is the Student-t interval of the samples' shares found, wider than one
    that counts 24 needles as independent draws."""
    from leanformer.eval.store import mean_ci

    found = [4, 0, 3, 1, 4, 0]
    recs = [{"length": 2048, "seed": s, "needles": [{"depth": i / 4, "correct": i < h} for i in range(4)]}
            for s, h in enumerate(found)]
    row = table(recs, 2)["2048"]
    mean, half = mean_ci([h / 4 for h in found])
    assert row["accuracy"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half)
    needles = [1.0] * sum(found) + [0.0] * (24 - sum(found))
    assert row["ci95"] > mean_ci(needles)[1]


def _tiny(rope_parameters: dict | None = None):
    torch.manual_seed(0)
    kw = {"rope_parameters": rope_parameters} if rope_parameters else {}
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_rope_base_is_set_in_place_and_set_back_exactly():
    model = _tiny()
    x = torch.randint(0, 64, (1, 96))
    with torch.no_grad():
        before = model(x).logits
        base = model.config.rope_parameters["rope_theta"]
        assert set_rope_theta(model, 1e6) == 1
        inv = model.model.rotary_emb.inv_freq
        assert torch.allclose(inv.double(), 1e6 ** -(torch.arange(0, 8, 2, dtype=torch.float64) / 8), rtol=1e-6)
        moved = model(x).logits
        set_rope_theta(model, base)
        back = model(x).logits
    assert not torch.allclose(before, moved, atol=1e-4)  # positions beyond the first rotate differently
    assert torch.allclose(before, back, atol=1e-6)


def test_rope_base_refuses_scaled_rope():
    model = _tiny({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(Exception, match="not plain RoPE"):
        set_rope_theta(model, 1e5)


def test_depth_run_resumes_without_repeating_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "depth"
    args = ["depth", REF, "--lengths", "512", "--samples", "2", "--max-new-tokens", "48", "--device", "cpu",
            "--out", str(out)]
    assert cli.main(args) == 0
    lines = (out / "needles.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with open(out / "needles.jsonl", "a") as f:  # a run stopped while writing its next line
        f.write('{"length": 512, "seed": 2, "nee')
    assert cli.main([*args[:5], "3", *args[6:]]) == 0
    recs = read_records(out / "needles.jsonl")
    assert sorted((r["length"], r["seed"]) for r in recs) == [(512, 0), (512, 1), (512, 2)]
    assert (out / "needles.jsonl").read_text().splitlines()[:2] == lines  # the first two kept, not redone
    saved = json.loads((out / "depth.json").read_text())
    assert saved["table"]["512"]["samples"] == 3
    assert sum(n for _, n in saved["table"]["512"]["bins"]) == 12  # four queried needles a sample
    capsys.readouterr()
    assert cli.main([*args, "--rope-theta", "1e5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rope_theta=None (now 100000.0)" in err


@pytest.mark.parametrize("flag, value, words", [("--bins", "0", "--bins 0 must be at least 1"),
                                                ("--lengths", "100", "--lengths 100 is too short"),
                                                ("--rope-theta", "0.5", "--rope-theta 0.5 must be")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flag, value, words):
    out = tmp_path / "depth"
    args = ["depth", REF, "--lengths", "1024", "--device", "cpu", "--out", str(out)]
    if flag == "--lengths":
        args[3] = value
    else:
        args += [flag, value]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not out.exists()
