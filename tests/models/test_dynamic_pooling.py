import json
import math

import numpy as np
import pytest
import torch

from leanformer.analysis.flops import forward_flops_per_token
from leanformer.errors import ConfigError, UserError
from leanformer.models import boundaries as B
from leanformer.models.dynamic_pooling import DynamicPooling, DynamicPoolingConfig
from leanformer.models.registry import build_model, model_config_from_dict

TEXT = [list(b"to be, or not to be: that is the q"), list(b"whether 'tis nobler in the mind t ")]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("uni") / "vocab.json"
    pieces = {"the": -3.0, "to": -3.5, "be": -4.0, "in": -4.0, "er": -4.5, "ing": -4.5, "no": -5.0, "ble": -5.0}
    pieces.update({chr(c): -8.0 for c in range(97, 123)})
    path.write_text(json.dumps(pieces))
    return str(path)


def tiny(source, vocab=None, **kw):
    torch.manual_seed(42)
    base = dict(vocab_size=260, d_model=32, n_heads=4, n_pre=1, n_short=2, n_post=1, boundaries=source,
                unigram_vocab=vocab, max_seq_len=128, fixed_k=3)
    base.update(kw)
    m = DynamicPooling(DynamicPoolingConfig(**base)).eval()
    if m.predictor is not None:  # a predictor that fires on some bytes and not others
        torch.nn.init.normal_(m.predictor.net[2].weight, std=1.0)
    return m


SOURCES = ["gumbel", "entropy", "unigram", "whitespace", "fixed", "none"]


def dependency(model, x, seed=None):
    """``D[t, s]``: output at t changed when token s changed (one forward per s; fixed noise when ``seed``)."""
    def run(ids):
        if seed is not None:
            torch.manual_seed(seed)
        return model(ids)[0]

    base, t = run(x), x.shape[1]
    rows = []
    for s in range(t):
        y = x.clone()
        y[0, s] = (y[0, s] + 1 + s) % 256
        rows.append((run(y) - base).abs().amax(-1))
    return torch.stack(rows).T


@pytest.mark.parametrize("source", SOURCES)
def test_causal_for_every_boundary_source(source, vocab):
    model = tiny(source, vocab)
    if source == "gumbel":
        model.train()  # relaxed-Bernoulli sampling, with the same noise for every forward
    x = torch.tensor(TEXT[:1])[:, :17]
    d = dependency(model, x, seed=7 if source == "gumbel" else None)
    past = torch.tril(torch.ones(17, 17, dtype=torch.bool))
    # a later token may change the number of segments, hence the padded shortened length and the float rounding
    # of the matmuls (~1e-7); a real leak moves logits by ~1e-2
    assert torch.all(d[~past] < 1e-6), f"an output changed when a later token changed: {d[~past].max()}"
    assert torch.all(d[past] > 1e-4)
    assert source == "none" or 0 < model.last_boundaries.sum() < 17


@pytest.mark.parametrize("source", SOURCES)
def test_cached_generation_equals_full_recomputation(source, vocab):
    model = tiny(source, vocab)
    x = torch.tensor(TEXT)[:, :13]  # two rows that close segments at different times
    cached = model.generate(x, max_new_tokens=24)
    seq = x
    for _ in range(24):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq[:, 13:])


@pytest.mark.parametrize("source", ["whitespace", "gumbel", "fixed"])
def test_chunked_prefill_gives_the_full_forward_logits(source):
    model = tiny(source)
    x = torch.tensor(TEXT)
    state, parts, pos = model.new_state(2, x.shape[1]), [], 0
    for n in (5, 1, 9, 1, 18):
        parts.append(model(x[:, pos:pos + n], state=state, pos=pos))
        pos += n
    torch.testing.assert_close(torch.cat(parts, 1), model(x), rtol=1e-5, atol=1e-5)


def test_training_losses_reach_the_parameters_they_should(vocab):
    x = torch.tensor(TEXT)
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    for source in SOURCES:
        model = tiny(source, vocab).train()
        loss, metrics = model.compute_loss(batch)
        loss.backward()
        no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
        assert no_grad == ({"null"} if source == "none" else set()), (source, no_grad)
        assert metrics["shortening"] >= 1.0
    ws = tiny("whitespace")
    ws.compute_loss(batch)
    rate = B.whitespace_boundaries(x[:, :-1]).mean()
    assert ws.compute_loss(batch)[1]["shortening"] == pytest.approx(1 / float(rate))


def test_unigram_targets_mark_word_internal_piece_ends_and_whitespace(vocab):
    seg = B.UnigramSegmenter.load(vocab)
    assert seg.split(b"nobler") == (2, 5, 6)  # no|ble|r
    t = seg.targets(torch.tensor([list(b"the nobler x")]))[0]
    # "the" is one piece (no inner boundary), space closes it; "no|ble|r" inner ends at 5 and 8; then space, "x"
    assert torch.nonzero(t).flatten().tolist() == [3, 5, 8, 10]


def _targets_per_byte(seg, ids):
    """The rule written out byte by byte: whitespace / ids > 255 are boundaries, and inside each word the ends of all
    pieces but the last."""
    out = torch.zeros(ids.shape)
    for r, row in enumerate(ids.tolist()):
        start = 0
        for t, c in enumerate(row + [32]):
            if c in B.WHITESPACE or c > 255:
                if t > start:
                    for e in seg.split(bytes(row[start:t]))[:-1]:
                        out[r, start + e - 1] = 1.0
                if t < len(row):
                    out[r, t] = 1.0
                start = t + 1
    return out


def test_unigram_targets_equal_the_per_byte_rule_on_random_text(vocab):
    seg = B.UnigramSegmenter.load(vocab)
    g = torch.Generator().manual_seed(0)
    alphabet = torch.tensor(list(b"abcdefghij nobler\n\t") + [300, 259])  # specials count as whitespace
    ids = alphabet[torch.randint(len(alphabet), (4, 97), generator=g)]
    ids[0, :6] = torch.tensor(list(b"nobler"))  # a word at the very start and one cut at the very end
    ids[1, -4:] = torch.tensor(list(b"nobl"))
    assert torch.equal(seg.targets(ids), _targets_per_byte(seg, ids))


def test_unigram_stream_targets_are_the_per_byte_rule_over_the_whole_stream(vocab):
    """Computed once per corpus in chunks that end at whitespace: equal to the rule applied to the stream as one row,
    whatever the chunk size (a chunk never cuts a word)."""
    seg = B.UnigramSegmenter.load(vocab)
    g = torch.Generator().manual_seed(1)
    alphabet = torch.tensor(list(b"abcdefghij nobler\n") + [259])
    ids = alphabet[torch.randint(len(alphabet), (1, 500), generator=g)]
    want = _targets_per_byte(seg, ids)[0].numpy()
    for chunk in (7, 64, 1 << 16):
        assert np.array_equal(seg.stream_targets(ids[0].numpy(), chunk=chunk), want), chunk


def test_unigram_batch_targets_replace_segmenting_in_the_loss(vocab):
    from leanformer.data.packing import RandomWindows

    seg = B.UnigramSegmenter.load(vocab)
    text = np.frombuffer(b"the nobler to be in the ring nobler things " * 20, dtype=np.uint8).astype(np.int64)
    windows = RandomWindows(text, 32, 3, seed=5, aligned={"boundary_targets": seg.stream_targets(text),
                                                          "echo": text})
    batch = windows.batch(2)
    assert torch.equal(batch["echo"], batch["input_ids"])  # aligned windows sit under the inputs
    model = tiny("unigram", vocab)
    loss_own = model.compute_loss({k: batch[k] for k in ("input_ids", "labels")})[0]
    fresh = seg.targets(batch["input_ids"])
    # the stream's targets equal per-window segmenting except where a window starts inside a word
    inner = batch["input_ids"][:, :1] == 32
    assert torch.equal(fresh[inner[:, 0]], batch["boundary_targets"][inner[:, 0]])
    assert model.compute_loss({**batch, "boundary_targets": fresh})[0] == loss_own
    assert model.compute_loss({**batch, "boundary_targets": torch.ones_like(fresh)})[0] != loss_own
    with pytest.raises(ValueError, match="boundary_targets of shape"):
        model.compute_loss({**batch, "boundary_targets": fresh[:, :-1]})
    with pytest.raises(UserError, match="aligned array 'x' has 3 values"):
        RandomWindows(text, 32, 3, aligned={"x": text[:3]})


def test_unigram_viterbi_agrees_with_sentencepiece():
    spm = pytest.importorskip("sentencepiece")
    import io

    from leanformer.data import load_source

    text = "\n".join(load_source("shakespeare").documents("validation"))[:200_000]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.split()), model_writer=buf, vocab_size=400,
                                   model_type="unigram", add_dummy_prefix=False, character_coverage=1.0,
                                   normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    seg = B.UnigramSegmenter({sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
                              if not (sp.is_unknown(i) or sp.is_control(i))})
    words = sorted(set(text.split()))[:3000:3]
    ours = [seg.split(w.encode()) for w in words]
    theirs = []
    for w in words:
        ends, n = [], 0
        for p in sp.encode(w, out_type=str):
            n += len(p.encode())
            ends.append(n)
        theirs.append(tuple(ends))
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(words)
    assert agree > 0.99


def test_entropy_targets_are_local_spikes_and_bce_applies_the_sigmoid_once():
    h = torch.tensor([[1.0, 3.0, 2.0, 2.5, 2.6, 0.1]])
    # build logits whose entropy is increasing in h: mix a peaked and a flat distribution
    logits = torch.stack([torch.tensor([10.0 - 3 * v, 0, 0, 0]) for v in h[0]])[None]
    assert B.entropy_targets(logits)[0].tolist() == [1, 1, 0, 0, 1, 0]
    z, y = torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([0.0, 1.0, 1.0])
    manual = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    torch.testing.assert_close(B.bce_loss(z, y), manual)


def test_binomial_prior_loss_is_smallest_at_the_prior_rate():
    t = 100
    losses = {k: float(B.binomial_prior_loss(torch.cat([torch.ones(1, k), torch.zeros(1, t - k)], 1), 0.2))
              for k in (5, 20, 40)}
    assert losses[20] < losses[5] and losses[20] < losses[40]
    assert losses[20] == pytest.approx(-math.log(math.comb(100, 20) * 0.2**20 * 0.8**80) / t, rel=1e-4)


def test_config_errors_registry_and_flops(vocab):
    with pytest.raises(ConfigError, match="unigram_vocab"):
        DynamicPoolingConfig(boundaries="unigram")
    with pytest.raises(ConfigError, match="choose one of"):
        model_config_from_dict({"name": "dynamic_pooling", "boundaries": "words"})
    model = build_model(model_config_from_dict({"name": "dynamic_pooling", "d_model": 32, "n_heads": 4}))
    assert isinstance(model, DynamicPooling)
    f = {s: forward_flops_per_token(DynamicPoolingConfig(boundaries=s, fixed_k=4), 2048) for s in ("fixed", "none")}
    assert f["fixed"] < 0.5 * f["none"]


def test_unigram_training_objective_labels_the_stream_once_and_batches_slice_it(vocab, monkeypatch):
    """What ``leanformer train`` uses: a unigram model's objective attaches the stream's targets to every batch
    (computed once per token stream, not per step); other boundary sources keep the plain causal-LM batches."""
    from leanformer.data import ByteTokenizer

    words = np.random.default_rng(0).choice(["the", "nobler", "to", "be", "in", "ring", "things"], 300)
    text = np.frombuffer(" ".join(words).encode(), dtype=np.uint8).astype(np.int64)  # windows are unique
    model = tiny("unigram", vocab)
    calls = []
    real = model.segmenter.stream_targets
    monkeypatch.setattr(model.segmenter, "stream_targets", lambda t: calls.append(len(t)) or real(t))
    obj = model.objective(ByteTokenizer(), 32)
    for seed in (0, 1):
        batch = obj.batches(text, 3, seed).batch(4)
        want = real(text)
        views = np.lib.stride_tricks.sliding_window_view(text, 32)
        starts = [np.flatnonzero((views == batch["input_ids"][r].numpy()).all(1)) for r in range(3)]
        assert all(len(s) == 1 for s in starts)
        starts = [int(s[0]) for s in starts]
        for r, s in enumerate(starts):
            assert np.array_equal(batch["boundary_targets"][r].numpy(), want[s:s + 32])
    assert calls == [len(text)]  # one labelling for two batch streams of the same tokens
    obj.batches(text[:400], 3, 0)
    assert calls == [len(text), 400]  # another stream (e.g. RHO loss's split) is labelled on its own
    assert "boundary_targets" not in tiny("whitespace", vocab).objective(ByteTokenizer(), 32).batches(
        text, 3, 0).batch(0)
