import numpy as np
import pytest
import torch

from leanformer.data import ByteTokenizer
from leanformer.data.span_corruption import (
    SpanCorruption,
    compute_input_and_target_lengths,
    random_spans_noise_mask,
    span_corrupt,
)
from leanformer.errors import ConfigError


def test_length_formula_matches_t5():
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    assert compute_input_and_target_lengths(1024, 0.15, 3.0)[0] > 1024


@pytest.mark.parametrize("inputs_len", [17, 63, 128, 511, 512, 1000])
def test_corrupted_inputs_have_exactly_the_requested_length(inputs_len):
    raw, tgt = compute_input_and_target_lengths(inputs_len, 0.15, 3.0)
    rng = np.random.default_rng(42)
    tokens = rng.integers(0, 200, size=(5, raw))
    mask = random_spans_noise_mask(rng, 5, raw, 0.15, 3.0)
    inputs, targets = span_corrupt(tokens, mask, sentinel_top=299, eos_id=258)
    assert inputs.shape == (5, inputs_len) and targets.shape == (5, tgt)
    # one more raw token would overflow the inputs
    noise = round((raw + 1) * 0.15)
    assert raw + 1 - noise + round(noise / 3.0) + 1 > inputs_len


def test_hand_computed_example():
    tokens = np.arange(10, 20)[None]
    mask = np.zeros((1, 10), bool)
    mask[0, [2, 3, 8, 9]] = True
    inputs, targets = span_corrupt(tokens, mask, sentinel_top=99, eos_id=1)
    assert inputs.tolist() == [[10, 11, 99, 14, 15, 16, 17, 98, 1]]
    assert targets.tolist() == [[99, 12, 13, 98, 18, 19, 1]]


def test_noise_mask_counts_and_shape():
    rng = np.random.default_rng(42)
    m = random_spans_noise_mask(rng, 64, 568, 0.15, 3.0)
    assert (m.sum(1) == 85).all()  # round(568 * 0.15)
    starts = m & ~np.pad(m, ((0, 0), (1, 0)))[:, :-1]
    assert (starts.sum(1) == 28).all()  # round(85 / 3)
    assert not m[:, 0].any() and m[:, -1].all()  # starts with non-noise, ends with noise
    assert len({r.tobytes() for r in m}) == 64  # rows differ
    # span positions are spread over the window, not clustered
    assert 0.3 < m[:, :284].mean() / m.mean() * 0.5 < 0.7


def test_round_trip_reconstructs_the_window():
    obj = SpanCorruption(ByteTokenizer(), 63, vocab_size=300)
    rng = np.random.default_rng(42)
    win = rng.integers(0, 256, size=(3, obj.raw_len))
    b = obj.corrupt(win, rng)
    for x, y, w in zip(b["input_ids"].tolist(), b["labels"].tolist(), win.tolist()):
        spans, cur = {}, None
        for t in y[:-1]:
            if t > 256:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [t for s in x[:-1] for t in (spans[s] if s > 256 else [s])]
        assert rebuilt == w and x[-1] == y[-1] == ByteTokenizer.eos_id


def test_batches_are_deterministic_per_step():
    obj = SpanCorruption(ByteTokenizer(), 31, vocab_size=300)
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.int32)
    a, b = obj.batches(tokens, 4, seed=7), obj.batches(tokens, 4, seed=7)
    assert torch.equal(a.batch(3)["input_ids"], b.batch(3)["input_ids"])
    assert not torch.equal(a.batch(3)["labels"], a.batch(4)["labels"])


def test_sentinels_must_fit_above_the_tokenizer_vocabulary():
    with pytest.raises(ConfigError, match="model.vocab_size=262 leaves no room"):
        SpanCorruption(ByteTokenizer(), 128, vocab_size=262)
