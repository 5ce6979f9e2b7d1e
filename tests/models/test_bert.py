import numpy as np
import pytest
import torch

from leanformer.analysis.flops import train_flops_per_token
from leanformer.data.masked_lm import MaskedLMConfig, mask_tokens
from leanformer.errors import ConfigError
from leanformer.models.bert import Bert, BertConfig
from leanformer.models.registry import build_model, model_config_from_dict

TINY = dict(vocab_size=261, d_model=32, n_layers=3, n_heads=2, d_ff=48, max_seq_len=64)


def test_attention_is_bidirectional_and_shapes_hold():
    model = Bert(BertConfig(**TINY)).eval()
    x = torch.randint(0, 256, (2, 37))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 256
    a, b = model(x), model(y)
    assert a.shape == (2, 37, 261)
    assert not torch.allclose(a[:, 0], b[:, 0])  # the first position sees the last token


def test_masking_rule_80_10_10_and_labels_only_at_selected_positions():
    ids = np.random.default_rng(0).integers(0, 256, (64, 1001))
    out = mask_tokens(ids, np.random.default_rng(1), MaskedLMConfig(), mask_id=260, n_random=256)
    x, y = out["input_ids"].numpy(), out["labels"].numpy()
    sel = y != -100
    assert abs(sel.mean() - 0.15) < 0.005
    np.testing.assert_array_equal(y[sel], ids[sel])
    np.testing.assert_array_equal(x[~sel], ids[~sel])
    masked, kept = (x[sel] == 260).mean(), (x[sel] == ids[sel]).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - (0.1 + 0.1 / 256)) < 0.01
    assert x.max() <= 260 and (x[sel & (x != 260)] < 256).all()


def test_loss_is_cross_entropy_over_masked_positions_only():
    model = Bert(BertConfig(**TINY))
    x = torch.randint(0, 256, (2, 21))
    labels = torch.full_like(x, -100)
    labels[0, 3], labels[1, 20] = 7, 9
    logits, loss = model(x, labels=labels)
    ref = (torch.nn.functional.cross_entropy(logits[0, 3], torch.tensor(7))
           + torch.nn.functional.cross_entropy(logits[1, 20], torch.tensor(9))) / 2
    torch.testing.assert_close(loss, ref)


def test_registry_config_errors_and_flops():
    model = build_model(model_config_from_dict({"name": "bert", **TINY}))
    assert isinstance(model, Bert) and model.config.mask_id == 260
    with pytest.raises(ConfigError, match="model.mask_token_id=300 must be < model.vocab_size=261"):
        BertConfig(**TINY, mask_token_id=300)
    c = BertConfig(**TINY)
    per_token = train_flops_per_token(c, 64)
    matmul = 6 * (c.n_layers * (4 * 32 * 32 + 3 * 32 * 48) + 32 * 261)
    assert matmul < per_token < 1.5 * matmul
