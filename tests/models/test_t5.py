import math

import pytest
import torch

from leanformer.errors import ConfigError
from leanformer.models.t5 import T5, T5Config, relative_position_bucket

TINY = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, n_layers=2, n_heads=4, rel_buckets=8, rel_max_distance=20)


def tiny(**kw):
    torch.manual_seed(42)
    return T5(T5Config(**{**TINY, **kw})).eval()


def test_against_hf_logits_and_loss_with_padding():
    m = tiny(n_decoder_layers=3)
    hf = m.to_hf()
    x, y = torch.randint(0, 97, (3, 37)), torch.randint(0, 97, (3, 11))
    y[2, 7:] = -100
    am = torch.ones(3, 37, dtype=torch.long)
    am[1, 29:] = 0
    with torch.no_grad():
        logits, loss = m(x, labels=y, attention_mask=am)
        ref = hf(input_ids=x, labels=y, attention_mask=am)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-5)
    back = T5.from_hf(hf)
    for (k, a), b in zip(m.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_greedy_generation_matches_hf():
    m = tiny()
    hf = m.to_hf()
    x = torch.randint(2, 97, (2, 23))
    am = torch.ones_like(x)
    am[0, 17:] = 0
    ours = m.generate(x, 9, attention_mask=am)
    ref = hf.generate(input_ids=x, attention_mask=am, max_new_tokens=9, do_sample=False, num_beams=1)
    assert torch.equal(ours, ref[:, 1:])


def test_loads_a_saved_hf_checkpoint_by_path(tmp_path):
    m = tiny()
    m.to_hf().save_pretrained(tmp_path)
    back = T5.from_pretrained_hf(str(tmp_path))
    x = torch.randint(0, 97, (1, 13))
    torch.testing.assert_close(back(x, decoder_input_ids=x[:, :5]), m(x, decoder_input_ids=x[:, :5]))


def test_decoder_is_causal_and_encoder_sees_everything():
    m = tiny()
    x, d = torch.randint(0, 97, (1, 15)), torch.randint(0, 97, (1, 9))
    base = m(x, decoder_input_ids=d)
    d2 = d.clone()
    d2[0, 6] = (d2[0, 6] + 1) % 97
    out = m(x, decoder_input_ids=d2)
    torch.testing.assert_close(out[:, :6], base[:, :6])
    assert not torch.allclose(out[:, 6:], base[:, 6:])
    x2 = x.clone()
    x2[0, -1] = (x2[0, -1] + 1) % 97
    assert not torch.allclose(m(x2, decoder_input_ids=d)[:, 0], base[:, 0])


def test_relative_buckets_hand_values():
    rel = torch.tensor([-200, -20, -3, 0, 3, 20, 200])
    assert relative_position_bucket(rel, True, 32, 128).tolist() == [15, 10, 3, 0, 19, 26, 31]
    # causal, -20: 16 + floor(log(20/16) / log(128/16) * 16) = 17; the future maps to 0
    assert relative_position_bucket(rel, False, 32, 128).tolist() == [31, 17, 3, 0, 0, 0, 0]
    from transformers.models.t5.modeling_t5 import T5Attention

    r = torch.arange(-300, 301)
    for bi in (True, False):
        assert torch.equal(relative_position_bucket(r, bi, 32, 128), T5Attention._relative_position_bucket(r, bi))


def test_t5_base_size_and_head_init():
    c = T5Config()
    with torch.device("meta"):
        m = T5(c)
    assert abs(m.num_params() - 247_577_856) < 1e6  # google/t5-v1_1-base
    small = T5(T5Config(**{**TINY, "d_model": 256}))
    # LM head std d_model^-0.5 (nanoT5 issue #25), embedding std 1
    assert abs(small.lm_head.weight.std().item() - 256 ** -0.5) < 0.01
    assert abs(small.shared.weight.std().item() - 1.0) < 0.05
    x = torch.randint(0, 97, (2, 16))
    assert small(x, decoder_input_ids=x).std() < 3.0


def test_flops_count_t5_base():
    from leanformer.analysis.flops import train_flops_per_token

    c = T5Config()
    fpt = train_flops_per_token(c, 512)
    # about 6 * params per input token, plus attention: within a factor of 1.5 of the rough count
    assert 0.7 < fpt / (6 * 200e6) < 1.5
    assert math.isclose(c.forward_flops(512) * 3 / 512, fpt)


def test_bad_config_names_the_value():
    with pytest.raises(ConfigError, match="ff_act"):
        from leanformer.config import from_dict
        from_dict(T5Config, {"ff_act": "swish"}, prefix="model")


def test_attention_masks_reach_sdpa_with_unit_stride(monkeypatch):
    """SDPA's fused GPU kernels (memory-efficient, cuDNN) need the mask's last dimension contiguous; a strided mask
    (the relative bias as a permuted view) sends a call to the math path, which runs in fp32 under bf16 autocast."""
    import torch.nn.functional as F

    from leanformer.models import t5 as t5_module

    seen, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            seen.append((tuple(attn_mask.shape), attn_mask.stride()))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(t5_module.F, "scaled_dot_product_attention", spy)
    m = tiny().train()
    x, y = torch.randint(0, 97, (2, 15)), torch.randint(0, 97, (2, 9))
    m(x, labels=y)  # no padding mask: the encoder gets the relative bias alone
    m(x, labels=y, attention_mask=torch.ones(2, 15, dtype=torch.long))
    # encoder and decoder self-attention (with and without padding), cross-attention over padded keys
    assert {s[0][-2:] for s in seen} == {(15, 15), (9, 9), (1, 15)}
    assert all(stride[-1] == 1 for _, stride in seen), seen
